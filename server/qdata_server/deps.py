"""What service code needs from the runtime: settings, pool, password hasher, key ring, page tokens.

One `Deps` is built per process by the composition root (app.py; serve.py's seed builds one
without a key ring) and handed to every servicer. Service functions take it as their first
argument and reach the database only through `transaction`, `statement` (a call that is one
statement: one round trip) and `idempotent`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from google.protobuf.message import Message

from qdata_server import idempotency, pagination
from qdata_server.config import Settings
from qdata_server.db import transactions
from qdata_server.db.connection import Conn, Params, Pool, Row
from qdata_server.pagination import PageTokens
from qdata_server.users.passwords import PasswordHasher
from qdata_server.users.vault import KeyRing

R = TypeVar("R")
M = TypeVar("M", bound=Message)
Work = Callable[[Conn], Awaitable[R]]


@dataclasses.dataclass
class Deps:
    """The runtime's shared pieces, and the two ways service code runs a transaction."""

    settings: Settings
    pool: Pool
    passwords: PasswordHasher
    # The API key vault's key ring; None when none is configured (the API key RPCs then answer
    # FAILED_PRECONDITION VAULT_NOT_CONFIGURED).
    key_ring: KeyRing | None = None
    _page_tokens: PageTokens | None = dataclasses.field(default=None, repr=False)

    async def transaction(self, work: Work[R], *, acting: transactions.Acting, snapshot: bool = False) -> R:
        """Runs work(conn) in one transaction acting for `acting` (see db/transactions.py)."""
        return await transactions.run(
            self.pool, work, acting=acting, retries=self.settings.transaction_retries, snapshot=snapshot
        )

    async def statement(self, name: str, params: Params, *, acting: transactions.Acting) -> list[Row]:
        """Runs one named statement as its own transaction in one round trip; returns its rows."""
        return await transactions.statement(
            self.pool, name, params, acting=acting, retries=self.settings.transaction_retries
        )

    async def statements(
        self, queries: Sequence[tuple[str, Params]], *, acting: transactions.Acting
    ) -> list[list[Row]]:
        """As statement, for a few statements none of which needs another's result; each one's rows."""
        return await transactions.statements(
            self.pool, queries, acting=acting, retries=self.settings.transaction_retries
        )

    async def statement_row(self, name: str, params: Params, *, acting: transactions.Acting) -> Row | None:
        """As statement, for a statement of at most one row: that row, or None."""
        rows = await self.statement(name, params, acting=acting)
        return rows[0] if rows else None

    async def idempotent(
        self,
        request: Message,
        response_type: type[M],
        work: Work[M],
        *,
        user_id: uuid.UUID | None = None,
        acting: transactions.Acting | None = None,
        secret_fields: Iterable[str] = (),
        canonical: Message | None = None,
        key: idempotency.RequestKey | None = None,
        remembered: Work[M] | None = None,
        committed: Callable[[M], None] | None = None,
    ) -> M:
        """Runs a mutation once per request_id; see qdata_server.idempotency.

        The request_id is scoped to user_id; the transaction acts for user_id (or for nobody)
        unless `acting` says otherwise (a transfer acts for both of its users). A money-moving
        request passes its key and how to answer it from the ledger once its record is purged.
        """
        return await idempotency.run_idempotent(
            self.pool,
            request,
            response_type,
            work,
            user_id=user_id,
            acting=acting or transactions.acting_for(user_id),
            secret_fields=secret_fields,
            canonical=canonical,
            key=key,
            remembered=remembered,
            committed=committed,
            retries=self.settings.transaction_retries,
        )

    async def idempotent_once(
        self,
        response_type: type[M],
        work: Callable[[Conn], Awaitable[M | idempotency.Held]],
        *,
        key: idempotency.RequestKey,
        acting: transactions.Acting,
        remembered: Work[M] | None = None,
        committed: Callable[[M], None] | None = None,
    ) -> M:
        """Like idempotent, for work whose one database call claims the key itself (see
        qdata_server.idempotency.run_claiming): the ledger's movements."""
        return await idempotency.run_claiming(
            self.pool,
            response_type,
            work,
            key=key,
            acting=acting,
            remembered=remembered,
            committed=committed,
            retries=self.settings.transaction_retries,
        )

    async def replayed(self, request: Message, *, user_id: uuid.UUID | None = None) -> bool:
        """True if request's request_id already holds a committed response."""
        return await idempotency.was_recorded(self.pool, request, user_id=user_id)

    async def page_tokens(self) -> PageTokens:
        """The page token sealer, keyed by the secret stored in the database (read once)."""
        if self._page_tokens is None:
            key = await self.transaction(pagination.read_key, acting=transactions.ACTING_FOR_NO_USER)
            self._page_tokens = PageTokens(key)
        return self._page_tokens
