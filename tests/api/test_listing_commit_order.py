"""Listings newest first cannot skip a row whose transaction committed after a later one.

A reader that pages or polls newest first (stopping at the first row it has seen before) must see
every committed row. Each test makes a writer X that starts (or writes) before writer Y but
commits after it, reads between the two commits, and checks that the poll after X's commit finds
X above what the reader had already seen (0012_listing_commit_order.sql).
"""

from __future__ import annotations

import asyncio
import json

import psycopg

from qdata.v1 import ledger_pb2, user_pb2
from tests.support.calls import rid
from tests.support.ledger import USD, charge, deposit, new_user
from tests.support.server import serving


async def poll(list_page, items: str, seen: set) -> list:
    """Newest first, page by page, until an item already seen (or the end): the ids found.

    list_page(token) returns one page; its repeated field `items` holds the listed rows.
    """
    found: list = []
    token = ""
    while True:
        page = await list_page(token)
        for item in getattr(page, items):
            if item.id in seen:
                return found
            found.append(item.id)
        token = page.next_page_token
        if not token:
            return found


async def poll_transactions(api, user_id: str, seen: set[str]) -> list[str]:
    def page(token: str):
        return api.ledger.ListTransactions(
            ledger_pb2.ListTransactionsRequest(user_id=user_id, page_size=1, page_token=token)
        )

    return await poll(page, "transactions", seen)


async def test_a_transaction_committed_after_a_later_one_is_not_skipped(database_url):
    async with serving(database_url, ledger_currencies=("USD", "EUR")) as api:
        user_id = await new_user(api, funds=10 * USD)
        await deposit(api, user_id, 10 * USD, currency_code="EUR")
        seen = set(await poll_transactions(api, user_id, set()))
        async with await psycopg.AsyncConnection.connect(api.database_url) as blocker:
            # Holding the user's EUR account lets an EUR charge start now and commit only later.
            async with blocker.transaction():
                await blocker.execute(
                    "SELECT 1 FROM ledger_accounts WHERE user_id = %s AND currency_code = 'EUR' FOR UPDATE",
                    (user_id,),
                )
                late = asyncio.create_task(charge(api, user_id, USD, currency_code="EUR"))
                await asyncio.sleep(0.3)  # X has begun and waits on the account
                assert not late.done()
                early = await charge(api, user_id, USD)  # Y: starts after X, commits first
                first_poll = await poll_transactions(api, user_id, seen)
                assert first_poll == [early.id]
                seen.update(first_poll)
            x = await late
        assert x.create_time.ToDatetime() < early.create_time.ToDatetime()  # X started first
        # Polling again from the top finds X above everything already seen.
        assert await poll_transactions(api, user_id, seen) == [x.id]


async def test_a_transfer_takes_a_position_on_both_sides(database_url):
    async with serving(database_url) as api:
        sender = await new_user(api, funds=5 * USD)
        receiver = await new_user(api, funds=5 * USD)
        sent = await api.ledger.Transfer(
            ledger_pb2.TransferRequest(request_id=rid(), from_user_id=sender, to_user_id=receiver, amount_micros=USD)
        )
        after = await charge(api, receiver, USD)
        listed = await api.ledger.ListTransactions(ledger_pb2.ListTransactionsRequest(user_id=receiver))
        assert [t.id for t in listed.transactions][:2] == [after.id, sent.transaction.id]
        listed = await api.ledger.ListTransactions(ledger_pb2.ListTransactionsRequest(user_id=sender))
        assert listed.transactions[0].id == sent.transaction.id


async def poll_audit(api, seen: set[int]) -> list[int]:
    def page(token: str):
        return api.users.ListAuditEvents(user_pb2.ListAuditEventsRequest(page_size=2, page_token=token))

    return await poll(page, "events", seen)


async def test_an_audit_event_committed_after_a_later_one_is_not_skipped(database_url):
    async with serving(database_url) as api:
        user_id = await new_user(api, funds=USD)
        seen = set(await poll_audit(api, set()))
        async with await psycopg.AsyncConnection.connect(api.database_url) as writer:
            # X writes its event first and commits last.
            async with writer.transaction():
                cur = await writer.execute(
                    "INSERT INTO audit_events (actor, user_id, action, target_type, target_id, request_id, summary)"
                    " VALUES ('test', %s, 'test.Late', 'user', %s, %s, %s) RETURNING audit_event_id",
                    (user_id, user_id, rid(), json.dumps({})),
                )
                late_id = (await cur.fetchone())[0]
                early = await charge(api, user_id, USD // 2)  # Y: writes its event after X, commits first
                seen.update(await poll_audit(api, seen))
            all_after = await poll_audit(api, seen)
        early_events = await api.users.ListAuditEvents(
            user_pb2.ListAuditEventsRequest(user_id=user_id, action="ledger.Charge")
        )
        early_id = next(e.id for e in early_events.events if e.target_id == early.id)
        assert late_id < early_id  # X's event was numbered first
        # Everything is seen once both have committed: nothing fell behind the reader's mark.
        assert {late_id, early_id} <= seen | set(all_after)
