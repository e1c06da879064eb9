"""Page sizes and opaque page tokens.

A page token is a keyset cursor (the sort key of the last row returned) sealed with Fernet
(AES-128-CBC + HMAC-SHA-256, from `cryptography`) under a key every replica reads from the
database, together with a digest of the method and filters it was issued for. Callers cannot read
or forge one, and a token used with other filters is INVALID_ARGUMENT instead of a wrong page.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server.db.connection import Conn
from qdata_server.db.sql import fetch_one
from qdata_server.errors import Unavailable, invalid

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_TOKEN_LENGTH = 2048
# The server_secrets row that holds the page token key (made by the migrations).
PAGE_TOKEN_SECRET = "page_token_key"


def page_size(
    requested: int, *, field: str = "page_size", default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    """0 means the default, above the maximum is capped, negative is INVALID_ARGUMENT."""
    if requested < 0:
        raise invalid(field, "must not be negative")
    if requested == 0:
        return default
    return min(requested, maximum)


class PageTokens:
    """Seals and opens page tokens with one key (shared by all processes through the database)."""

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("page token key must be 32 bytes")
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    @staticmethod
    def _scope(method: str, filters: dict[str, Any]) -> str:
        encoded = json.dumps([method, filters], sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(encoded.encode()).hexdigest()[:32]

    def seal(self, method: str, filters: dict[str, Any], cursor: list[Any]) -> str:
        """A token for the page after `cursor` under these filters."""
        payload = json.dumps({"s": self._scope(method, filters), "c": cursor}, separators=(",", ":"))
        return self._fernet.encrypt(payload.encode()).decode()

    def page(
        self, rows: list[Any], limit: int, method: str, filters: dict[str, Any], cursor_of: Callable[[Any], list[Any]]
    ) -> tuple[list[Any], str]:
        """Splits rows fetched with LIMIT limit + 1 into the page and the token for the next one.

        The extra row only says that more follow; the token's cursor is the last row kept.
        """
        if len(rows) <= limit:
            return rows, ""
        rows = rows[:limit]
        return rows, self.seal(method, filters, cursor_of(rows[-1]))

    def open(self, token: str, method: str, filters: dict[str, Any], *, field: str = "page_token") -> list[Any] | None:
        """The cursor in token, None for an empty token; INVALID_ARGUMENT if forged or misused."""
        if not token:
            return None
        if len(token) > MAX_TOKEN_LENGTH:
            raise invalid(field, "is not a token issued by this service")
        try:
            payload = json.loads(self._fernet.decrypt(token.encode("ascii")))
        except (InvalidToken, UnicodeEncodeError, ValueError):
            raise invalid(field, "is not a token issued by this service") from None
        if payload.get("s") != self._scope(method, filters):
            raise invalid(field, "was issued for different filters; start again without a token")
        cursor: list[Any] = payload["c"]
        return cursor


async def read_key(conn: Conn) -> bytes:
    """The page token key every replica shares (stored in the database by the migrations)."""
    row = await fetch_one(conn, "get_server_secret", {"name": PAGE_TOKEN_SECRET})
    if row is None:
        raise Unavailable("the schema is not migrated", reason=ErrorReason.ERROR_REASON_SCHEMA_NOT_READY)
    return bytes(row["secret"])


def keyset(cursor: list[Any] | None, names: str, limit: int) -> dict[str, Any]:
    """The parameters of a keyset page's query: each of the space-separated bound names from its
    place in the cursor (None on the first page), and "limit" as limit + 1 (the extra row tells
    PageTokens.page that more follow)."""
    bounds = {name: cursor[i] if cursor else None for i, name in enumerate(names.split())}
    return {**bounds, "limit": limit + 1}
