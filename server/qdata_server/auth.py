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
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import TextIO

from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server.config import Settings
from qdata_server.errors import PermissionDenied, Unauthenticated

# The permission table and the token entry format live below configuration (config.py parses
# tokens; this module checks calls against them); the names callers have always found here stay.
from qdata_server.permissions import (  # noqa: F401 (re-exported)
    KNOWN_PERMISSIONS,
    PERMISSIONS,
    SERVICE_DESCRIPTORS,
    check_table,
    grants_allow,
)
from qdata_server.startup import ConfigError
from qdata_server.tokens import (  # noqa: F401 (re-exported)
    ANONYMOUS,
    CERT_PREFIX,
    TOKEN_PREFIX,
    TokenEntry,
    hash_token,
    new_token,
    parse_tokens,
    token_digest,
)

DEV_SERVICE = "dev"

# Services any caller may use without a token: probes and tooling.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


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
        peer: Mapping[str, Iterable[bytes]] | None = None,
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
        self, metadata: Iterable[tuple[str, str | bytes]] | None, peer: Mapping[str, Iterable[bytes]] | None = None
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

    def _certificate_caller(self, peer: Mapping[str, Iterable[bytes]] | None) -> TokenEntry | None:
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


def certificate_identities(peer: Mapping[str, Iterable[bytes]]) -> list[str]:
    """A verified client certificate's identities: its subject alternative names, then its CN."""
    if b"ssl" not in peer.get("transport_security_type", ()):
        return []
    values = [*peer.get("x509_subject_alternative_name", ()), *peer.get("x509_common_name", ())]
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


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
