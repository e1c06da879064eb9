"""LedgerService reads over real gRPC and PostgreSQL: GetTransaction, ListTransactions (order,
pagination, filters, page tokens) and VerifyLedger, which must find tampering done with direct SQL.

Tampering is the one place these tests write to the database directly; the append-only triggers
leave only the cached balances and holds open to UPDATE, and new rows to INSERT.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
from google.protobuf import timestamp_pb2

from qdata.v1 import ledger_pb2
from tests.support.calls import case_id, field_violations
from tests.support.database import sql
from tests.support.ledger import (
    CHARGE,
    DEPOSIT,
    HOLD_CAPTURE,
    INVALID,
    NOT_FOUND,
    REFUND,
    TRANSFER,
    USD,
    assert_ledger_clean,
    capture,
    charge,
    create_hold,
    deposit,
    get_transaction,
    list_all,
    new_user,
    refund,
    rejected,
    transfer,
    verify,
)

UNSPECIFIED = ledger_pb2.TRANSACTION_KIND_UNSPECIFIED
BALANCE_MISMATCH = ledger_pb2.DISCREPANCY_KIND_BALANCE_MISMATCH
HELD_MISMATCH = ledger_pb2.DISCREPANCY_KIND_HELD_MISMATCH
UNBALANCED = ledger_pb2.DISCREPANCY_KIND_UNBALANCED_TRANSACTION
HOLD_INCONSISTENT = ledger_pb2.DISCREPANCY_KIND_HOLD_INCONSISTENT
REFUND_EXCEEDS = ledger_pb2.DISCREPANCY_KIND_REFUND_EXCEEDS_ORIGINAL


def order_key(tx: ledger_pb2.Transaction) -> tuple[int, str]:
    return tx.create_time.ToNanoseconds(), tx.id


async def history(api) -> tuple[str, str, list[ledger_pb2.Transaction]]:
    """A user with 11 transactions of every kind (oldest first), and the friend of its transfers."""
    user_id, friend = await new_user(api), await new_user(api)
    made = [await deposit(api, user_id, 50 * USD), await deposit(api, friend, 50 * USD)]
    made.append(await charge(api, user_id, 5 * USD))
    made.append(await refund(api, user_id, made[-1].id, 2 * USD))
    made.append(await transfer(api, user_id, friend, 3 * USD))
    made.append(await transfer(api, friend, user_id, 4 * USD))
    hold = await create_hold(api, user_id, 6 * USD)
    made.append((await capture(api, user_id, hold.id, 6 * USD)).transaction)
    for i in range(4):
        made.append(await charge(api, user_id, (i + 1) * USD))
    made.append(await deposit(api, user_id, 1 * USD))
    mine = [tx for tx in made if user_id in (tx.user_id, tx.counterparty_user_id)]
    assert len(mine) == 11
    return user_id, friend, mine


# ---- GetTransaction and ListTransactions --------------------------------------------------------


async def test_list_is_newest_first_and_pages_without_skips_or_repeats(api):
    user_id, friend, made = await history(api)
    newest_first = list(reversed(made))
    everything = await list_all(api, user_id)
    assert [t.id for t in everything] == [t.id for t in newest_first]
    assert everything == sorted(everything, key=order_key, reverse=True)
    for size in (1, 5, 11, 12, 13, 2000):  # 2000 is capped at 1000, not an error
        assert await list_all(api, user_id, page_size=size) == everything, size
    # Each listed transaction is what GetTransaction returns, postings and refunded total included.
    for tx in everything:
        assert await get_transaction(api, user_id, tx.id) == tx
    [charged] = [t for t in everything if t.id == made[1].id]
    assert charged.refunded_micros == 2 * USD
    assert [t.refunded_micros for t in everything if t.kind == CHARGE and t.id != charged.id] == [0] * 4
    # The friend sees the two transfers and its own deposit, nothing else.
    assert [t.kind for t in await list_all(api, friend)] == [TRANSFER, TRANSFER, DEPOSIT]

    # A page comes with a token exactly when more follow.
    first = await api.ledger.ListTransactions(ledger_pb2.ListTransactionsRequest(user_id=user_id, page_size=11))
    assert len(first.transactions) == 11
    assert first.next_page_token == ""
    await rejected(
        api,
        api.ledger.ListTransactions,
        ledger_pb2.ListTransactionsRequest(user_id=user_id, page_size=-1),
        INVALID,
        "INVALID_ARGUMENT",
    )


async def test_new_transactions_do_not_disturb_a_walk_in_progress(api):
    user_id, _, made = await history(api)
    page = await api.ledger.ListTransactions(ledger_pb2.ListTransactionsRequest(user_id=user_id, page_size=5))
    await charge(api, user_id, USD)  # newer than the cursor: not part of this walk
    seen = list(page.transactions)
    token = page.next_page_token
    while token:
        request = ledger_pb2.ListTransactionsRequest(user_id=user_id, page_size=5, page_token=token)
        page = await api.ledger.ListTransactions(request)
        seen.extend(page.transactions)
        token = page.next_page_token
    assert [t.id for t in seen] == [t.id for t in reversed(made)]


async def test_list_filters_by_kind_time_and_currency(api):
    user_id, _, made = await history(api)
    by_kind = {
        (CHARGE,): [t for t in made if t.kind == CHARGE],
        (DEPOSIT, REFUND): [t for t in made if t.kind in (DEPOSIT, REFUND)],
        (TRANSFER,): [t for t in made if t.kind == TRANSFER],
        (HOLD_CAPTURE, HOLD_CAPTURE): [t for t in made if t.kind == HOLD_CAPTURE],
    }
    for kinds, expected in by_kind.items():
        found = await list_all(api, user_id, page_size=2, kinds=list(kinds))
        assert [t.id for t in found] == [t.id for t in reversed(expected)], kinds
    # [start, end): from the 3rd transaction up to (not including) the 8th.
    start, end = made[2].create_time, made[7].create_time
    found = await list_all(api, user_id, page_size=2, start_time=start, end_time=end)
    assert [t.id for t in found] == [t.id for t in reversed(made[2:7])]
    assert [t.id for t in await list_all(api, user_id, start_time=made[-1].create_time)] == [made[-1].id]
    assert [t.id for t in await list_all(api, user_id, end_time=made[1].create_time)] == [made[0].id]
    found = await list_all(api, user_id, kinds=[CHARGE], start_time=start, end_time=end)
    assert [t.id for t in found] == [t.id for t in reversed(made[2:7]) if t.kind == CHARGE]
    assert await list_all(api, user_id, currency_code="USD") == await list_all(api, user_id)
    assert await list_all(api, user_id, currency_code="EUR") == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        # "t0" is the time of the history's fourth transaction, "later" a minute after it.
        ({"end_time": "t0", "start_time": "t0"}, "end_time"),  # empty range
        ({"end_time": "t0", "start_time": "later"}, "end_time"),  # reversed range
        ({"kinds": [UNSPECIFIED]}, "kinds[0]"),
        ({"kinds": [CHARGE, 42]}, "kinds[1]"),
        ({"kinds": [CHARGE] * 6}, "kinds"),
        ({"currency_code": "usd"}, "currency_code"),
        ({"user_id": "someone"}, "user_id"),
        ({"user_id": ""}, "user_id"),
        # Outside what a Timestamp may hold (years 1 to 9999).
        ({"start_time": timestamp_pb2.Timestamp(seconds=10**12)}, "start_time"),
        ({"end_time": timestamp_pb2.Timestamp(seconds=-(10**12))}, "end_time"),
        ({"start_time": timestamp_pb2.Timestamp(seconds=0, nanos=-1)}, "start_time"),
    ],
    ids=case_id,
)
async def test_list_rejects_bad_filters(api, fields, field):
    user_id, _, made = await history(api)
    t0 = made[3].create_time
    times = {"t0": t0, "later": timestamp_pb2.Timestamp(seconds=t0.seconds + 60)}
    fields = {k: times[v] if k.endswith("_time") and isinstance(v, str) else v for k, v in fields.items()}
    request = ledger_pb2.ListTransactionsRequest(**{"user_id": user_id, **fields})
    error = await rejected(api, api.ledger.ListTransactions, request, INVALID, "INVALID_ARGUMENT")
    assert field in field_violations(error), field_violations(error)


async def test_list_accepts_the_extremes_a_timestamp_holds(api):
    user_id, _, _ = await history(api)
    # The extremes a Timestamp can hold are fine.
    wide = {
        "start_time": timestamp_pb2.Timestamp(seconds=-62_135_596_800),
        "end_time": timestamp_pb2.Timestamp(seconds=253_402_300_799),
    }
    assert len(await list_all(api, user_id, **wide)) == 11


async def test_page_token_is_bound_to_its_filters(api):
    user_id, friend, made = await history(api)
    filters = {"kinds": [CHARGE, DEPOSIT], "start_time": made[0].create_time}
    first = await api.ledger.ListTransactions(
        ledger_pb2.ListTransactionsRequest(user_id=user_id, page_size=2, **filters)
    )
    token = first.next_page_token
    assert token
    call = api.ledger.ListTransactions
    for changed in [
        {"kinds": [CHARGE]},
        {"kinds": [CHARGE, DEPOSIT, REFUND]},
        {"kinds": []},
        {"start_time": made[1].create_time},
        {"end_time": made[-1].create_time},
        {"currency_code": "USD"},
        {"user_id": friend},
    ]:
        request = ledger_pb2.ListTransactionsRequest(**{"user_id": user_id, **filters, **changed, "page_token": token})
        error = await rejected(api, call, request, INVALID, "INVALID_ARGUMENT")
        assert set(field_violations(error)) == {"page_token"}, changed
    for forged in ("garbage", token[:-4] + "AAAA", "x" * 5000):
        request = ledger_pb2.ListTransactionsRequest(user_id=user_id, page_token=forged, **filters)
        error = await rejected(api, call, request, INVALID, "INVALID_ARGUMENT")
        assert set(field_violations(error)) == {"page_token"}
    # The same filters (kinds in another order) and another page size continue the walk.
    same = {"kinds": [DEPOSIT, CHARGE], "start_time": made[0].create_time}
    rest = await call(ledger_pb2.ListTransactionsRequest(user_id=user_id, page_size=100, page_token=token, **same))
    walked = [*first.transactions, *rest.transactions]
    assert [t.id for t in walked] == [t.id for t in reversed(made) if t.kind in (CHARGE, DEPOSIT)]


async def test_get_transaction_rejects_bad_lookups(api):
    user_id, friend, made = await history(api)
    call = api.ledger.GetTransaction
    own = next(t for t in made if t.user_id == user_id and t.kind == CHARGE)
    for who, transaction_id in [(user_id, str(uuid.uuid4())), (friend, own.id)]:
        request = ledger_pb2.GetTransactionRequest(user_id=who, transaction_id=transaction_id)
        await rejected(api, call, request, NOT_FOUND, "TRANSACTION_NOT_FOUND")
    for fields, field in [({"transaction_id": "t-1"}, "transaction_id"), ({"user_id": ""}, "user_id")]:
        request = ledger_pb2.GetTransactionRequest(**{"user_id": user_id, "transaction_id": own.id, **fields})
        error = await rejected(api, call, request, INVALID, "INVALID_ARGUMENT")
        assert field in field_violations(error)


async def test_list_for_a_user_that_never_existed_is_not_found_and_an_empty_history_is_empty(api):
    # The user check and the page travel together (one round trip): an unknown user is still
    # NOT_FOUND, not an empty page, and a user without transactions still gets an empty page.
    request = ledger_pb2.ListTransactionsRequest(user_id=str(uuid.uuid4()))
    await rejected(api, api.ledger.ListTransactions, request, NOT_FOUND, "USER_NOT_FOUND")
    fresh = await new_user(api)
    page = await api.ledger.ListTransactions(ledger_pb2.ListTransactionsRequest(user_id=fresh))
    assert list(page.transactions) == [] and page.next_page_token == ""


# ---- VerifyLedger -------------------------------------------------------------------------------


async def test_verify_reports_what_it_checked(api):
    user_id, _, made = await history(api)
    report = await assert_ledger_clean(api)
    assert (report.accounts_checked, report.holds_checked) == (2, 1)
    assert report.transactions_checked == len({t.id for t in made}) + 1  # + the friend's deposit
    assert report.HasField("check_time")
    mine = await verify(api, user_id)
    assert list(mine.discrepancies) == []
    assert (mine.accounts_checked, mine.holds_checked) == (1, 1)
    await rejected(
        api,
        api.ledger.VerifyLedger,
        ledger_pb2.VerifyLedgerRequest(max_discrepancies=-1),
        INVALID,
        "INVALID_ARGUMENT",
    )
    await rejected(
        api, api.ledger.VerifyLedger, ledger_pb2.VerifyLedgerRequest(user_id="me"), INVALID, "INVALID_ARGUMENT"
    )


async def test_verify_finds_a_tampered_posted_balance(api):
    user_id, friend, _ = await history(api)
    [before] = await sql(api, "SELECT posted_micros FROM ledger_accounts WHERE user_id = %s", (user_id,))
    await sql(api, "UPDATE ledger_accounts SET posted_micros = posted_micros + 7 WHERE user_id = %s", (user_id,))
    report = await verify(api)
    [found] = report.discrepancies
    assert found.kind == BALANCE_MISMATCH
    assert (found.account, found.currency_code) == (f"users/{user_id}", "USD")
    assert (found.expected_micros, found.actual_micros) == (before["posted_micros"], before["posted_micros"] + 7)
    assert found.detail
    assert not report.truncated
    assert list((await verify(api, friend)).discrepancies) == []
    assert list((await verify(api, user_id)).discrepancies) == [found]


async def test_verify_finds_a_tampered_held_amount(api):
    user_id, _, _ = await history(api)
    await create_hold(api, user_id, 2 * USD)
    await sql(api, "UPDATE ledger_accounts SET held_micros = held_micros + 1 WHERE user_id = %s", (user_id,))
    [found] = (await verify(api)).discrepancies
    assert found.kind == HELD_MISMATCH
    assert found.account == f"users/{user_id}"
    assert (found.expected_micros, found.actual_micros) == (2 * USD, 2 * USD + 1)


async def test_verify_finds_an_unbalanced_transaction(api):
    user_id, _, _ = await history(api)
    bad = str(uuid.uuid4())
    await sql(
        api,
        "INSERT INTO ledger_transactions (user_id, transaction_id, kind, amount_micros, currency_code)"
        " VALUES (%s, %s, 'charge', 5, 'USD')",
        (user_id, bad),
    )
    # One leg only, on a system account (which keeps no cached balance to disagree with).
    await sql(
        api,
        "INSERT INTO ledger_postings (user_id, transaction_id, leg, system_account, currency_code, amount_micros)"
        " VALUES (%s, %s, 1, 'revenue', 'USD', 5)",
        (user_id, bad),
    )
    [found] = (await verify(api)).discrepancies
    assert found.kind == UNBALANCED
    assert (found.transaction_id, found.currency_code) == (bad, "USD")
    assert (found.expected_micros, found.actual_micros) == (0, 5)


async def test_verify_finds_inconsistent_holds_and_excess_refunds(api):
    user_id, _, made = await history(api)
    [captured] = [t for t in made if t.kind == HOLD_CAPTURE]
    await sql(
        api, "UPDATE ledger_holds SET captured_micros = captured_micros - 1 WHERE hold_id = %s", (captured.hold_id,)
    )
    # A refund above its original, balanced between system accounts so nothing else disagrees.
    original = [t for t in made if t.kind == CHARGE][-1]
    excess = str(uuid.uuid4())
    await sql(
        api,
        "INSERT INTO ledger_transactions (user_id, transaction_id, kind, amount_micros, currency_code,"
        " original_transaction_id) VALUES (%s, %s, 'refund', %s, 'USD', %s)",
        (user_id, excess, original.amount_micros + 1, original.id),
    )
    await sql(
        api,
        "INSERT INTO ledger_postings (user_id, transaction_id, leg, system_account, currency_code, amount_micros)"
        " VALUES (%(u)s, %(t)s, 1, 'refunds', 'USD', -%(a)s), (%(u)s, %(t)s, 2, 'revenue', 'USD', %(a)s)",
        {"u": user_id, "t": excess, "a": original.amount_micros + 1},
    )
    found = {d.kind: d for d in (await verify(api)).discrepancies}
    assert set(found) == {HOLD_INCONSISTENT, REFUND_EXCEEDS}
    assert found[HOLD_INCONSISTENT].hold_id == captured.hold_id
    assert (found[HOLD_INCONSISTENT].expected_micros, found[HOLD_INCONSISTENT].actual_micros) == (
        captured.amount_micros,
        captured.amount_micros - 1,
    )
    assert found[REFUND_EXCEEDS].transaction_id == original.id
    assert (found[REFUND_EXCEEDS].expected_micros, found[REFUND_EXCEEDS].actual_micros) == (
        original.amount_micros,
        original.amount_micros + 1,
    )


async def test_verify_truncates_at_max_discrepancies(api):
    users = [await new_user(api, USD) for _ in range(5)]
    await sql(
        api, "UPDATE ledger_accounts SET posted_micros = posted_micros + 1 WHERE user_id = ANY(%s::uuid[])", (users,)
    )
    limited = await verify(api, max_discrepancies=2)
    assert len(limited.discrepancies) == 2 and limited.truncated
    exact = await verify(api, max_discrepancies=5)
    assert len(exact.discrepancies) == 5 and not exact.truncated
    everything = await verify(api)  # 0 means 100
    assert {d.account for d in everything.discrepancies} == {f"users/{u}" for u in users}
    assert not everything.truncated


async def test_database_keeps_the_ledger_append_only_and_never_negative(api):
    await history(api)
    async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True) as conn:
        for statement in [
            "UPDATE ledger_transactions SET amount_micros = amount_micros + 1",
            "DELETE FROM ledger_transactions WHERE kind = 'charge'",
            "UPDATE ledger_postings SET amount_micros = amount_micros * 2",
            "DELETE FROM ledger_postings",
            "TRUNCATE ledger_postings",
            "TRUNCATE ledger_transactions CASCADE",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(statement)
        # Available (posted - held) can never go below zero, whatever writes the row.
        for statement in [
            "UPDATE ledger_accounts SET posted_micros = -1",
            "UPDATE ledger_accounts SET held_micros = posted_micros + 1",
            "UPDATE ledger_accounts SET held_micros = -1",
        ]:
            with pytest.raises(psycopg.errors.CheckViolation):
                await conn.execute(statement)
    await assert_ledger_clean(api)
