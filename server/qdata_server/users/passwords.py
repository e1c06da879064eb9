"""Password hashing: bcrypt over an HMAC-SHA-256 pre-hash, plus legacy PBKDF2 verification.

bcrypt reads at most 72 bytes (bcrypt 5 raises beyond), so the password is first reduced to
HMAC-SHA-256(pepper, password), base64-encoded (44 bytes): every byte of any length counts, and
the optional pepper keeps a stolen table useless without the configuration. bcrypt and PBKDF2
both run off the event loop, on a thread pool of their own with one thread per core this process
may run on (`hash_executor`), not asyncio's default executor: that one is shared with everything
else sent to a thread (the event loop's getaddrinfo, which psycopg uses when the pool opens a
connection, and every asyncio.to_thread) and has cores + 4 threads, so a burst of logins would
queue a new database connection's name lookup behind seconds of hashing, and threads beyond the
cores add switching, not hashes (bcrypt and hashlib release the GIL while they work). The same
pepper keys the digests under which failures of unknown logins are counted (`login_digest`), so
the table of those never holds a login.

Stored formats:
- current:  "bcrypt-hmac-sha256$" + bcrypt hash ("$2b$12$...")
- Werkzeug: "pbkdf2:sha256:ITERATIONS$SALT$HEX"
- Django:   "pbkdf2_sha256$ITERATIONS$SALT$BASE64"
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import bcrypt

from qdata_server.config import Settings

CURRENT_PREFIX = "bcrypt-hmac-sha256$"
MIN_LEGACY_ITERATIONS = 1_000
MAX_LEGACY_ITERATIONS = 2_000_000

SCHEME_BCRYPT = "bcrypt"
SCHEME_WERKZEUG = "werkzeug"
SCHEME_DJANGO = "django"

# A salt is any characters but "$" and control characters (PostgreSQL text cannot hold NUL).
_SALT = r"(?P<salt>[^$\x00-\x1f\x7f]{1,128})"
_WERKZEUG = re.compile(r"^pbkdf2:sha256:(?P<iterations>\d{1,8})\$" + _SALT + r"\$(?P<hash>[0-9a-f]{32,128})$")
_DJANGO = re.compile(r"^pbkdf2_sha256\$(?P<iterations>\d{1,8})\$" + _SALT + r"\$(?P<hash>[A-Za-z0-9+/]{20,172}={0,2})$")


T = TypeVar("T")
# The hashing threads of this process: created on first use, again after a fork (see hash_executor).
_executor: tuple[int, ThreadPoolExecutor] | None = None


def hash_cores() -> int:
    """The cores this process may run on: the hashing pool's size."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def hash_executor() -> ThreadPoolExecutor:
    """This process's password-hashing thread pool (hash_cores() threads; see the module doc)."""
    global _executor
    pid = os.getpid()
    if _executor is None or _executor[0] != pid:
        # A forked worker does not inherit the parent's threads: it builds its own pool.
        _executor = (pid, ThreadPoolExecutor(max_workers=hash_cores(), thread_name_prefix="qdata-hash"))
    return _executor[1]


async def _off_loop(function: Callable[..., T], *args: str) -> T:
    return await asyncio.get_running_loop().run_in_executor(hash_executor(), function, *args)


class LegacyHashError(ValueError):
    """An imported hash is not in a supported format or its cost is out of bounds."""


@dataclasses.dataclass(frozen=True)
class LegacyHash:
    scheme: str
    iterations: int
    salt: bytes
    digest: bytes


def parse_legacy(stored: str) -> LegacyHash:
    """Parses a Werkzeug or Django PBKDF2-SHA256 hash; raises LegacyHashError otherwise."""
    if match := _WERKZEUG.match(stored):
        scheme, digest = SCHEME_WERKZEUG, bytes.fromhex(match["hash"]) if len(match["hash"]) % 2 == 0 else b""
    elif match := _DJANGO.match(stored):
        scheme = SCHEME_DJANGO
        try:
            digest = base64.b64decode(match["hash"], validate=True)
        except ValueError:
            digest = b""
    else:
        raise LegacyHashError(
            "must be pbkdf2:sha256:ITERATIONS$SALT$HEX (Werkzeug) or pbkdf2_sha256$ITERATIONS$SALT$BASE64 (Django)"
        )
    if not 16 <= len(digest) <= 64:
        raise LegacyHashError("the hash part has an unsupported length")
    iterations = int(match["iterations"])
    if not MIN_LEGACY_ITERATIONS <= iterations <= MAX_LEGACY_ITERATIONS:
        raise LegacyHashError(f"iterations must be between {MIN_LEGACY_ITERATIONS} and {MAX_LEGACY_ITERATIONS}")
    return LegacyHash(scheme, iterations, match["salt"].encode("utf-8"), digest)


def scheme_of(stored: str | None) -> str | None:
    """Which scheme made a stored hash (None for no hash)."""
    if not stored:
        return None
    if stored.startswith(CURRENT_PREFIX):
        return SCHEME_BCRYPT
    return SCHEME_WERKZEUG if stored.startswith("pbkdf2:") else SCHEME_DJANGO


@dataclasses.dataclass(frozen=True)
class Verification:
    """Whether a password matched, and whether its hash should be replaced by a current one."""

    ok: bool
    needs_rehash: bool = False


class PasswordHasher:
    """Hashes and verifies passwords with the configured cost and pepper."""

    def __init__(self, settings: Settings, dummy_hash: str):
        self._cost = settings.bcrypt_cost
        self._pepper = settings.password_pepper.encode("utf-8")
        # A key of its own for login digests, so that no login digest is ever a password's pre-hash.
        self._login_key = hmac.new(self._pepper, b"qdata/unknown-login-key/v1", hashlib.sha256).digest()
        # A hash of a random password at the current cost, verified for unknown users so that
        # an unknown login takes about as long as a wrong password.
        self._dummy_hash = dummy_hash

    @classmethod
    async def create(cls, settings: Settings) -> PasswordHasher:
        probe = cls(settings, "")
        dummy = await probe.hash(base64.b64encode(hashlib.sha256(str(id(probe)).encode()).digest()).decode())
        return cls(settings, dummy)

    def login_digest(self, login: str) -> bytes:
        """The key under which failures of a login that names no user are counted (32 bytes).

        Keyed with the pepper, so the unknown logins people tried (often mistyped addresses) cannot
        be recovered from the table by hashing guesses without the configuration.
        """
        return hmac.new(self._login_key, login.encode("utf-8"), hashlib.sha256).digest()

    def _prehash(self, password: str) -> bytes:
        digest = hmac.new(self._pepper, password.encode("utf-8"), hashlib.sha256).digest()
        return base64.b64encode(digest)

    def _hash_sync(self, password: str) -> str:
        hashed = bcrypt.hashpw(self._prehash(password), bcrypt.gensalt(rounds=self._cost))
        return CURRENT_PREFIX + hashed.decode("ascii")

    def _verify_sync(self, password: str, stored: str) -> Verification:
        if stored.startswith(CURRENT_PREFIX):
            hashed = stored[len(CURRENT_PREFIX) :].encode("ascii")
            ok = bcrypt.checkpw(self._prehash(password), hashed)
            # "$2b$12$..." carries its cost in the third field.
            cost = int(hashed.split(b"$")[2])
            return Verification(ok, needs_rehash=ok and cost != self._cost)
        legacy = parse_legacy(stored)
        derived = hashlib.pbkdf2_hmac(
            "sha256", password.encode("utf-8"), legacy.salt, legacy.iterations, dklen=len(legacy.digest)
        )
        ok = hmac.compare_digest(derived, legacy.digest)
        return Verification(ok, needs_rehash=ok)

    async def hash(self, password: str) -> str:
        """A new current-scheme hash of password."""
        return await _off_loop(self._hash_sync, password)

    async def verify(self, password: str, stored: str | None) -> Verification:
        """Checks password against stored; with no stored hash, burns the same time and fails."""
        if not stored:
            await _off_loop(self._verify_sync, password, self._dummy_hash)
            return Verification(False)
        return await _off_loop(self._verify_sync, password, stored)
