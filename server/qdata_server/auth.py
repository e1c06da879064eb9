"""Caller authentication and authorization: bearer tokens, hashed in configuration, and permissions.

Each calling service presents `authorization: Bearer <token>`. Configuration holds only the
SHA-256 digest of each token, with the calling service's name and its permissions
(QDATA_AUTH_TOKENS or QDATA_AUTH_TOKENS_FILE; docs/security.md documents the format). `PERMISSIONS` names
the permission every RPC needs, as the contract's `(qdata.v1.permission)` method options state it;
the interceptor asks `Authenticator.authorize` before each call.

With mutual TLS (QDATA_TLS_CLIENT_CA_FILE), an entry may name a client certificate identity
instead of a token digest (`<service> cert:<identity> <grants>`): a call without a bearer token
whose verified certificate carries that identity (a subject alternative name, DNS or URI, or the
subject common name) is that service. A bearer token, when sent, always decides (the token wins
over the certificate), so one certificate can carry several callers' tokens.

Why a fast hash: tokens are 256-bit random strings, not passwords. Nobody can guess one, so a
slow, salted password hash (bcrypt) would add nothing but milliseconds to every RPC; SHA-256 keeps
a leaked configuration from revealing usable tokens. The presented token's digest is compared
with every configured digest through `hmac.compare_digest` (constant time, no early exit), so
response timing says nothing about how close a guess came.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, TextIO

from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server import contract
from qdata_server.config import ConfigError
from qdata_server.errors import PermissionDenied, Unauthenticated

if TYPE_CHECKING:
    from qdata_server.config import Settings

ANONYMOUS = "anonymous"
DEV_SERVICE = "dev"
TOKEN_PREFIX = "qdt_"
_DIGEST_PREFIX = "sha256:"
CERT_PREFIX = "cert:"

# Services any caller may use without a token: probes and tooling.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


# Full method name -> the one permission it needs, from each RPC's (qdata.v1.permission) option in
# the contract (qdata_server.contract reads the descriptors). A method missing there is refused.
PERMISSIONS = contract.PERMISSIONS
KNOWN_PERMISSIONS = contract.KNOWN_PERMISSIONS
SERVICE_DESCRIPTORS = contract.SERVICE_DESCRIPTORS

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_GRANT = re.compile(r"^(\*|[a-z]+\.\*|[a-z]+\.[a-z]+)$")


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


def grants_allow(grants: Iterable[str], permission: str) -> bool:
    """True if a grant is the permission itself, its family ("ledger.*") or "*"."""
    family = permission.split(".", 1)[0] + ".*"
    return any(grant in ("*", permission, family) for grant in grants)


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


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: the service name audit records and idempotency scopes carry."""

    service: str
    grants: frozenset[str]


ANONYMOUS_PRINCIPAL = Principal(ANONYMOUS, frozenset({"*"}))
_EXEMPT_PRINCIPAL = Principal(ANONYMOUS, frozenset())


def startup_problem(settings: Settings) -> str | None:
    """Why serve must refuse to start with these settings, or None."""
    if settings.auth_tokens or settings.allow_insecure or settings.embedded:
        return None
    return (
        "no caller tokens are configured (QDATA_AUTH_TOKENS or QDATA_AUTH_TOKENS_FILE) for a server "
        "on DATABASE_URL; configure tokens, or set QDATA_ALLOW_INSECURE=true to accept every call "
        "unauthenticated"
    )


def with_dev_token(settings: Settings) -> tuple[Settings, str | None]:
    """For the embedded default without tokens: adds a fresh all-permission development token.

    Returns the settings to serve with and the plain token to print (None if nothing was added).
    """
    if not settings.embedded or settings.auth_tokens or settings.allow_insecure:
        return settings, None
    token = new_token()
    entry = TokenEntry(service=DEV_SERVICE, digest=token_digest(token), grants=frozenset({"*"}))
    return dataclasses.replace(settings, auth_tokens=(entry,)), token


class Authenticator:
    """Decides, per call, who the caller is and whether it may call the method."""

    def __init__(self, entries: Sequence[TokenEntry], *, insecure: bool = False):
        self.entries = tuple(e for e in entries if not e.identity)
        self.cert_entries = {e.identity: e for e in entries if e.identity}
        # Insecure only when no caller is configured: configured callers are always enforced.
        self.insecure = insecure and not self.entries and not self.cert_entries

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        if not settings.auth_tokens and not settings.allow_insecure:
            raise ConfigError(
                startup_problem(settings)
                or "no caller tokens are configured; `serve` generates a development token for the embedded database"
            )
        return cls(settings.auth_tokens, insecure=settings.allow_insecure)

    def authorize(
        self,
        method: str,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        peer: Mapping[str, Sequence[bytes]] | None = None,
    ) -> Principal:
        """The caller of method, or raises Unauthenticated / PermissionDenied.

        peer is the call's auth context (`context.auth_context()`): with mutual TLS it holds the
        verified client certificate's identities, which identify a caller that sent no token.
        """
        if method.startswith(EXEMPT_PREFIXES):
            return _EXEMPT_PRINCIPAL
        required = PERMISSIONS.get(method)
        if required is None:
            # Fail closed: an RPC nobody gave a permission is refused (the table test prevents it).
            raise PermissionDenied(
                f"{method.lstrip('/')} has no permission assigned", reason=ErrorReason.ERROR_REASON_MISSING_PERMISSION
            )
        if self.insecure:
            return ANONYMOUS_PRINCIPAL
        entry = self._caller(metadata, peer)
        if not entry.allows(required):
            raise PermissionDenied(
                f"caller {entry.service!r} lacks the {required} permission for {method.lstrip('/')}",
                reason=ErrorReason.ERROR_REASON_MISSING_PERMISSION,
                metadata={"permission": required, "service": entry.service},
            )
        return Principal(entry.service, entry.grants)

    def _caller(
        self, metadata: Iterable[tuple[str, str | bytes]] | None, peer: Mapping[str, Sequence[bytes]] | None = None
    ) -> TokenEntry:
        values = [value for key, value in (metadata or ()) if key == "authorization"]
        if not values:
            entry = self._certificate_caller(peer)
            if entry is not None:
                return entry
            raise Unauthenticated(
                "this call needs a token: send metadata 'authorization: Bearer <token>'"
                + (" or a mapped client certificate" if self.cert_entries else ""),
                reason=ErrorReason.ERROR_REASON_UNAUTHENTICATED,
            )
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if len(values) != 1 or scheme.lower() != "bearer" or not token:
            raise Unauthenticated(
                "the authorization metadata must be a single 'Bearer <token>'",
                reason=ErrorReason.ERROR_REASON_INVALID_TOKEN,
            )
        presented = token_digest(token)
        found: TokenEntry | None = None
        for entry in self.entries:
            # Compare with every entry, without stopping at a match, in constant time each.
            if hmac.compare_digest(presented, entry.digest):
                found = entry
        if found is None:
            raise Unauthenticated("the token is not valid", reason=ErrorReason.ERROR_REASON_INVALID_TOKEN)
        return found

    def _certificate_caller(self, peer: Mapping[str, Sequence[bytes]] | None) -> TokenEntry | None:
        """The entry the verified client certificate's identity maps to, or None.

        gRPC puts a client certificate's properties into the auth context only once the TLS
        handshake verified it against the configured client CA, so these values are trustworthy.
        """
        if not self.cert_entries or not peer:
            return None
        identities = certificate_identities(peer)
        matches = {self.cert_entries[i] for i in identities if i in self.cert_entries}
        if len(matches) > 1:
            raise Unauthenticated(
                "the client certificate maps to more than one configured service",
                reason=ErrorReason.ERROR_REASON_AMBIGUOUS_CERTIFICATE,
            )
        return matches.pop() if matches else None


def certificate_identities(peer: Mapping[str, Sequence[bytes]]) -> list[str]:
    """A verified client certificate's identities: its subject alternative names, then its CN."""
    if b"ssl" not in peer.get("transport_security_type", ()):
        return []
    values = [*peer.get("x509_subject_alternative_name", ()), *peer.get("x509_common_name", ())]
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def check_table(descriptors: Iterable = SERVICE_DESCRIPTORS) -> tuple[set[str], set[str]]:
    """(RPCs without a permission, table entries naming no RPC); both empty when in step."""
    methods = {f"/{service.full_name}/{method.name}" for service in descriptors for method in service.methods}
    return methods - PERMISSIONS.keys(), PERMISSIONS.keys() - methods


def hash_token_command(stdin: TextIO, stdout: TextIO) -> int:
    """`python -m qdata_server hash-token`: the configuration form of a token read from stdin.

    The token comes on stdin (a prompt without echo on a terminal), never as an argument, so it
    stays out of shell history and process listings. Empty input makes a new random token and
    prints it once, with its digest.
    """
    if stdin.isatty():
        token = getpass.getpass("token (empty: make a new one): ").strip()
    else:
        token = stdin.readline().strip()
    if not token:
        token = new_token()
        stdout.write(f"token: {token}\n")
    stdout.write(f"{hash_token(token)}\n")
    return 0
