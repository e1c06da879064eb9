"""The configured callers: the token entry format of QDATA_AUTH_TOKENS and QDATA_AUTH_TOKENS_FILE.

Each entry is `<service> sha256:<hex> <perm>[,<perm>...]` (or `<service> cert:<identity> ...`
with mutual TLS); configuration holds only the SHA-256 digest of each token (auth.py says why a
fast hash is right for tokens). Settings.from_env parses the entries here, and auth.py checks
calls against them; this module sits below both, so neither imports the other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets

from qdata_server.permissions import KNOWN_PERMISSIONS, grants_allow
from qdata_server.startup import ConfigError

ANONYMOUS = "anonymous"
TOKEN_PREFIX = "qdt_"
_DIGEST_PREFIX = "sha256:"
CERT_PREFIX = "cert:"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
# A permission has two or three parts ("chat.read", "chat.shared.read"); a wildcard names a family.
_GRANT = re.compile(r"^(\*|[a-z]+\.\*|[a-z]+(\.[a-z]+){1,2})$")


@dataclasses.dataclass(frozen=True)
class TokenEntry:
    """One configured caller: its service name, the SHA-256 of its token and what it may do.

    A certificate entry has an empty digest and the client certificate identity instead.
    """

    service: str
    digest: bytes = dataclasses.field(default=b"", repr=False)
    grants: frozenset[str] = frozenset()
    identity: str = ""

    def allows(self, permission: str) -> bool:
        return grants_allow(self.grants, permission)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def hash_token(token: str) -> str:
    """The configuration form of a token's digest: "sha256:<64 hex digits>"."""
    return _DIGEST_PREFIX + token_digest(token).hex()


def new_token() -> str:
    """A fresh random token (256 bits); the prefix makes leaked tokens easy to scan for."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_tokens(text: str, source: str) -> tuple[TokenEntry, ...]:
    """Parses entries separated by newlines or ";": `<service> sha256:<hex> <perm>[,<perm>...]`.

    The second field may instead be `cert:<identity>`, a client certificate identity (mTLS).

    Blank lines and lines starting with "#" are skipped. Errors name the entry's position, never
    its content beyond the service name.
    """
    entries: list[TokenEntry] = []
    seen_digests: set[bytes] = set()
    seen_identities: set[str] = set()
    for number, raw in enumerate(re.split(r"[;\n]", text), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"{source} entry {number}"
        if len(fields) != 3:
            raise ConfigError(
                f"{where}: expected '<service> sha256:<hex digest> <permissions>' "
                "or '<service> cert:<identity> <permissions>'"
            )
        service, digest_text, grant_text = fields
        if not _NAME.match(service) or service == ANONYMOUS:
            raise ConfigError(f"{where}: invalid service name {service!r}")
        digest, identity = b"", ""
        if digest_text.startswith(CERT_PREFIX):
            identity = digest_text[len(CERT_PREFIX) :]
            if not identity:
                raise ConfigError(f"{where}: cert: needs the certificate identity (a SAN or the common name)")
            if identity in seen_identities:
                raise ConfigError(f"{where}: the certificate identity {identity!r} is configured twice")
            seen_identities.add(identity)
        elif digest_text.startswith(_DIGEST_PREFIX) and _DIGEST.match(digest_text[len(_DIGEST_PREFIX) :]):
            digest = bytes.fromhex(digest_text[len(_DIGEST_PREFIX) :])
            if digest in seen_digests:
                raise ConfigError(f"{where}: the same token digest is configured twice")
            seen_digests.add(digest)
        else:
            raise ConfigError(
                f"{where}: the token must be given as sha256:<64 lowercase hex digits> "
                "(python -m qdata_server hash-token prints it), or a client certificate as "
                "cert:<identity>; never configure a plain token"
            )
        grants = frozenset(g.strip() for g in grant_text.split(",") if g.strip())
        for grant in grants:
            if not _GRANT.match(grant):
                raise ConfigError(f"{where}: invalid permission {grant!r}")
            if grant != "*" and not grant.endswith(".*") and grant not in KNOWN_PERMISSIONS:
                raise ConfigError(f"{where}: unknown permission {grant!r}")
            if grant.endswith(".*") and not any(p.startswith(grant[:-1]) for p in KNOWN_PERMISSIONS):
                raise ConfigError(f"{where}: {grant!r} matches no permission")
        if not grants:
            raise ConfigError(f"{where}: no permissions")
        entries.append(TokenEntry(service=service, digest=digest, grants=grants, identity=identity))
    return tuple(entries)
