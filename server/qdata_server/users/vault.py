"""Envelope encryption of provider API keys (no database here).

Each secret gets a fresh random 256-bit data key (DEK). The DEK encrypts the secret with
AES-256-GCM under a fresh 96-bit nonce; the associated data binds the ciphertext to its row
(`qdata/api_key/v1|<user_id>|<api_key_id>`), so a ciphertext copied to another row fails to
decrypt. The DEK itself is wrapped by a key-encryption key (KEK) from the key ring, again
AES-256-GCM with its own nonce, bound to the same row and to the KEK version. Every stored row
names the KEK version that wraps it, so KEKs can rotate: new secrets use the primary KEK, and
`rewrap` re-encrypts only the 48-byte wrapped DEK (the secret's ciphertext never changes).

The key ring comes from configuration:
- QDATA_KEY_RING: "1:<base64 32 bytes>,2:<base64 32 bytes>" (the highest version is primary);
- QDATA_KEY_RING_FILE: a JSON file {"keys": {"1": "<base64>", "2": "<base64>"}, "primary": 2}
  ("primary" optional, default the highest version), e.g. a mounted Kubernetes Secret;
- neither, with the embedded PostgreSQL: a development ring generated once next to the embedded
  data directory (`.qdata/keyring.json`, mode 0600);
- neither, with DATABASE_URL: no ring; the API key RPCs answer FAILED_PRECONDITION
  (VAULT_NOT_CONFIGURED) while every other RPC keeps working.

Nothing here ever puts key material or plaintext into an exception message, a repr or a log.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qdata_server.config import ConfigError, Settings

log = logging.getLogger("qdata.vault")

AAD_PREFIX = b"qdata/api_key/v1|"
KEY_BYTES = 32
NONCE_BYTES = 12
MAX_VERSION = 2**31 - 1
DEV_RING_NAME = "keyring.json"


class VaultError(Exception):
    """A secret cannot be opened; the message never holds key material or plaintext."""


class SecretUnreadable(VaultError):
    """Authentication failed: wrong key, tampered data, or a ciphertext from another row."""


class MissingKeyVersion(VaultError):
    """The row is wrapped by a KEK version the ring does not hold."""

    def __init__(self, version: int):
        super().__init__(f"the key ring has no key-encryption key version {version}")
        self.version = version


@dataclasses.dataclass(frozen=True)
class KeyRing:
    """KEK versions to 32-byte keys, and the version that wraps new secrets."""

    keys: Mapping[int, bytes] = dataclasses.field(repr=False)
    primary: int
    source: str = ""

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigError("the key ring holds no keys")
        for version, key in self.keys.items():
            if not 1 <= version <= MAX_VERSION:
                raise ConfigError(f"key ring versions must be 1 to {MAX_VERSION}, got {version}")
            if len(key) != KEY_BYTES:
                raise ConfigError(f"key ring version {version} must be {KEY_BYTES} bytes (base64), got {len(key)}")
        if self.primary not in self.keys:
            raise ConfigError(f"the key ring's primary version {self.primary} is not among its keys")

    @property
    def versions(self) -> list[int]:
        return sorted(self.keys)

    def __repr__(self) -> str:  # never the keys
        return f"KeyRing(versions={self.versions}, primary={self.primary}, source={self.source!r})"


@dataclasses.dataclass(frozen=True)
class Sealed:
    """What a row stores for one secret."""

    key_version: int
    wrapped_key: bytes
    key_nonce: bytes
    ciphertext: bytes
    nonce: bytes


def _decode_key(version: int, text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip() + "=" * (-len(text.strip()) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"key ring version {version} is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise ConfigError(f"key ring version {version} must decode to {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def _version(text: str) -> int:
    try:
        version = int(str(text).strip())
    except ValueError:
        raise ConfigError(f"key ring versions must be integers, got {str(text)[:20]!r}") from None
    if not 1 <= version <= MAX_VERSION:
        raise ConfigError(f"key ring versions must be 1 to {MAX_VERSION}, got {version}")
    return version


def parse_ring(text: str, source: str = "QDATA_KEY_RING") -> KeyRing:
    """Parses "1:<base64>,2:<base64>"; the highest version is primary."""
    keys: dict[int, bytes] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        number, sep, encoded = entry.partition(":")
        if not sep:
            raise ConfigError(f"{source} entries must look like <version>:<base64 key>")
        version = _version(number)
        if version in keys:
            raise ConfigError(f"{source} names version {version} twice")
        keys[version] = _decode_key(version, encoded)
    if not keys:
        raise ConfigError(f"{source} holds no keys")
    return KeyRing(keys=keys, primary=max(keys), source=source)


def parse_ring_json(text: str, source: str) -> KeyRing:
    """Parses {"keys": {"1": "<base64>", ...}, "primary": 2} (primary optional)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError(f"{source} is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), dict) or not data["keys"]:
        raise ConfigError(f'{source} must hold {{"keys": {{"1": "<base64 key>", ...}}, "primary": 1}}')
    keys: dict[int, bytes] = {}
    for number, encoded in data["keys"].items():
        version = _version(number)
        if version in keys or not isinstance(encoded, str):
            raise ConfigError(f"{source}: version {version} is repeated or not a base64 string")
        keys[version] = _decode_key(version, encoded)
    primary = _version(data["primary"]) if data.get("primary") is not None else max(keys)
    return KeyRing(keys=keys, primary=primary, source=source)


def dev_ring_path(settings: Settings) -> Path:
    """Where the embedded default keeps its development ring: next to the embedded data dir."""
    return Path(settings.embedded_data_dir).resolve().parent / DEV_RING_NAME


def _generate_dev_ring(path: Path) -> None:
    """Writes a fresh one-key ring with mode 0600 unless the file exists (race-safe)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"keys": {"1": base64.b64encode(os.urandom(KEY_BYTES)).decode()}, "primary": 1}, indent=2)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(body + "\n")
    log.warning(
        "generated a development key ring for the API key vault; set QDATA_KEY_RING or "
        "QDATA_KEY_RING_FILE in production",
        extra={"path": str(path)},
    )


def load_key_ring(settings: Settings) -> KeyRing | None:
    """The configured ring, a generated development ring (embedded only), or None."""
    if settings.key_ring and settings.key_ring_file:
        raise ConfigError("set QDATA_KEY_RING or QDATA_KEY_RING_FILE, not both")
    if settings.key_ring:
        return parse_ring(settings.key_ring)
    path = Path(settings.key_ring_file) if settings.key_ring_file else None
    if path is None and settings.embedded:
        path = dev_ring_path(settings)
        if not path.exists():
            _generate_dev_ring(path)
    if path is None:
        return None
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the key ring file {path}: {type(exc).__name__}") from None
    return parse_ring_json(text, str(path))


def associated_data(user_id: uuid.UUID | str, api_key_id: uuid.UUID | str) -> bytes:
    """Binds a ciphertext to its row."""
    return AAD_PREFIX + str(user_id).encode() + b"|" + str(api_key_id).encode()


def _wrap_ad(row_ad: bytes, version: int) -> bytes:
    return row_ad + b"|kek=" + str(version).encode()


def _kek(ring: KeyRing, version: int) -> bytes:
    key = ring.keys.get(version)
    if key is None:
        raise MissingKeyVersion(version)
    return key


def seal(ring: KeyRing, user_id: uuid.UUID | str, api_key_id: uuid.UUID | str, plaintext: str) -> Sealed:
    """Encrypts plaintext under a fresh data key wrapped by the primary KEK."""
    ad = associated_data(user_id, api_key_id)
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext.encode("utf-8"), ad)
    key_nonce = os.urandom(NONCE_BYTES)
    wrapped = AESGCM(_kek(ring, ring.primary)).encrypt(key_nonce, data_key, _wrap_ad(ad, ring.primary))
    return Sealed(ring.primary, wrapped, key_nonce, ciphertext, nonce)


def _unwrap(ring: KeyRing, ad: bytes, sealed: Sealed) -> bytes:
    kek = _kek(ring, sealed.key_version)
    try:
        return AESGCM(kek).decrypt(sealed.key_nonce, sealed.wrapped_key, _wrap_ad(ad, sealed.key_version))
    except (InvalidTag, ValueError):
        raise SecretUnreadable("the data key does not authenticate for this row") from None


def open_secret(ring: KeyRing, user_id: uuid.UUID | str, api_key_id: uuid.UUID | str, sealed: Sealed) -> str:
    """The plaintext; SecretUnreadable if anything (key, nonce, row binding) does not match."""
    ad = associated_data(user_id, api_key_id)
    data_key = _unwrap(ring, ad, sealed)
    try:
        plaintext = AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, ad)
    except (InvalidTag, ValueError):
        raise SecretUnreadable("the secret does not authenticate for this row") from None
    return plaintext.decode("utf-8")


def rewrap(ring: KeyRing, user_id: uuid.UUID | str, api_key_id: uuid.UUID | str, sealed: Sealed) -> Sealed:
    """The same secret ciphertext with its data key re-wrapped under the primary KEK."""
    ad = associated_data(user_id, api_key_id)
    data_key = _unwrap(ring, ad, sealed)
    key_nonce = os.urandom(NONCE_BYTES)
    wrapped = AESGCM(_kek(ring, ring.primary)).encrypt(key_nonce, data_key, _wrap_ad(ad, ring.primary))
    return dataclasses.replace(sealed, key_version=ring.primary, wrapped_key=wrapped, key_nonce=key_nonce)


def generate_key_text() -> str:
    """A new base64 KEK, for operators adding a ring version."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()
