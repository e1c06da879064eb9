"""Budget enforcement (issue 16): what counts, periods, scopes, holds, refunds, backfill.

Budgets are made with tests/support/budgets.py create_budget (the row and its backfill, as
BudgetService.CreateBudget makes them); spend goes through the real LedgerService and UsageService
RPCs; consumption is read with budget_usage (db/functions/budget_enforcement.sql). Period
boundaries move the server's budgets' clock (the `clock` fixture), never sleep across them.
"""

from __future__ import annotations

import datetime
import zoneinfo

import grpc
import psycopg
import pytest

from qdata.v1 import ledger_pb2
from tests.support.budgets import (
    MODEL,
    OTHER_MODEL,
    alerts_of,
    capture,
    charge,
    create_budget,
    hold,
    priced,
    record,
    update_budget,
    usage_of,
)
from tests.support.calls import error_info, expect_error, rid
from tests.support.database import scalar, sql
from tests.support.ledger import age_holds, ledger_state
from tests.support.usage import funded_user

PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXCEEDED = "BUDGET_EXCEEDED"
UTC = datetime.UTC


async def refund(api, user_id: str, transaction_id: str, micros: int) -> None:
    await api.ledger.Refund(
        ledger_pb2.RefundRequest(
            request_id=rid(), user_id=user_id, original_transaction_id=transaction_id, amount_micros=micros
        )
    )


async def exceeded(call) -> dict[str, str]:
    """The BUDGET_EXCEEDED metadata of a call that must fail with it."""
    error = await expect_error(call, PRECONDITION, EXCEEDED)
    return dict(error_info(error).metadata)


async def spent(api, user_id: str, budget_id: str) -> int:
    return (await usage_of(api, user_id, budget_id))["spent_micros"]


async def figures(api, user_id: str, budget_id: str) -> tuple[int, int]:
    """(spent, held) of the budget in its current period."""
    got = await usage_of(api, user_id, budget_id)
    return got["spent_micros"], got["held_micros"]


# ---- what counts, and the error ---------------------------------------------------------------


async def test_charge_hold_and_usage_count_and_the_error_names_the_budget(api):
    await priced(api)
    user = await funded_user(api)
    budget = await create_budget(api, user.id, limit_micros=1_000)
    await charge(api, user.id, 300)
    await hold(api, user.id, 200)
    await api.usage.RecordUsage(record(user.id, 100))
    assert await figures(api, user.id, budget) == (400, 200)
    meta = await exceeded(charge(api, user.id, 401))
    end = (await usage_of(api, user.id, budget))["period_end"]
    assert meta == {
        "budget_id": budget,
        "limit_micros": "1000",
        "spent_micros": "400",
        "held_micros": "200",
        "requested_micros": "401",
        "period_end": end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    await exceeded(hold(api, user.id, 401))
    await exceeded(api.usage.RecordUsage(record(user.id, 401)))
    await charge(api, user.id, 400)  # exactly to the limit
    assert (await usage_of(api, user.id, budget))["consumed_micros"] == 1_000


async def test_deposits_and_transfers_are_not_spend(api):
    user = await funded_user(api)
    other = await funded_user(api)
    budget = await create_budget(api, user.id, limit_micros=100)
    await api.ledger.Transfer(
        ledger_pb2.TransferRequest(
            request_id=rid(), from_user_id=user.id, to_user_id=other.id, amount_micros=500, currency_code="USD"
        )
    )
    assert (await usage_of(api, user.id, budget))["consumed_micros"] == 0


async def test_a_rejected_call_changes_nothing_and_its_request_id_works_later(api):
    await priced(api)
    user = await funded_user(api)
    budget = await create_budget(api, user.id, limit_micros=500, thresholds=[50])
    await charge(api, user.id, 400)
    before = await ledger_state(api)
    alerts = await alerts_of(api, user.id)
    request_id = rid()
    await exceeded(charge(api, user.id, 200, request_id=request_id))
    await exceeded(hold(api, user.id, 200))
    usage_request = record(user.id, 200)
    await exceeded(api.usage.RecordUsage(usage_request))
    assert await ledger_state(api) == before
    assert await alerts_of(api, user.id) == alerts
    assert await scalar(api, "SELECT count(*) FROM usage_records WHERE user_id = %s", (user.id,)) == 0
    assert await spent(api, user.id, budget) == 400
    # Once the limit allows it, the same request_ids succeed (they were not used up).
    await update_budget(api, user.id, budget, limit_micros=10_000)
    transaction = await charge(api, user.id, 200, request_id=request_id)
    assert transaction.amount_micros == 200
    await api.usage.RecordUsage(usage_request)
    assert await spent(api, user.id, budget) == 800


# ---- periods, with the injected clock --------------------------------------------------------


def local(zone: str, *parts: int) -> datetime.datetime:
    return datetime.datetime(*parts, tzinfo=zoneinfo.ZoneInfo(zone)).astimezone(UTC)


PERIOD_CASES = {
    # period, zone, last second of a period (local), first second of the next, its length (hours)
    "daily-utc": ("daily", "UTC", (2026, 5, 4, 23, 59, 59), (2026, 5, 5, 0, 0, 0), 24),
    "daily-new-york-dst-start": ("daily", "America/New_York", (2026, 3, 7, 23, 59, 59), (2026, 3, 8, 0, 0, 0), 23),
    "daily-new-york-dst-end": ("daily", "America/New_York", (2026, 10, 31, 23, 59, 59), (2026, 11, 1, 0, 0, 0), 25),
    "weekly-from-monday": ("weekly", "UTC", (2026, 12, 6, 23, 59, 59), (2026, 12, 7, 0, 0, 0), 7 * 24),
    "monthly": ("monthly", "Europe/Berlin", (2026, 1, 31, 23, 59, 59), (2026, 2, 1, 0, 0, 0), 28 * 24),
}


@pytest.mark.parametrize("case", PERIOD_CASES.values(), ids=PERIOD_CASES.keys())
async def test_a_period_ends_at_local_midnight_and_the_next_starts_with_the_full_limit(api, clock, case):
    period, zone, last, first, hours = case
    user = await funded_user(api)
    clock.now = local(zone, *last)
    budget = await create_budget(api, user.id, limit_micros=1_000, period=period, time_zone=zone)
    await charge(api, user.id, 1_000)  # at 23:59:59 local: the old period
    meta = await exceeded(charge(api, user.id, 1))
    assert meta["period_end"] == local(zone, *first).strftime("%Y-%m-%dT%H:%M:%SZ")
    clock.now = local(zone, *first)  # 00:00:00 local: a fresh period
    now = await usage_of(api, user.id, budget)
    assert (now["period_start"], now["spent_micros"]) == (local(zone, *first), 0)
    assert now["period_end"] - now["period_start"] == datetime.timedelta(hours=hours)
    await charge(api, user.id, 1_000)
    await exceeded(charge(api, user.id, 1))
    clock.now = local(zone, *last)  # the old period kept its own spend
    assert await spent(api, user.id, budget) == 1_000


async def test_a_lifetime_budget_never_resets(api, clock):
    user = await funded_user(api)
    clock.now = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    budget = await create_budget(api, user.id, limit_micros=1_000, period="lifetime")
    await charge(api, user.id, 600)
    clock.now = datetime.datetime(2036, 1, 1, tzinfo=UTC)
    await charge(api, user.id, 400)
    meta = await exceeded(charge(api, user.id, 1))
    assert (meta["spent_micros"], meta["period_end"]) == ("1000", "")
    got = await usage_of(api, user.id, budget)
    assert (got["period_start"], got["period_end"]) == (None, None)


# ---- scopes ------------------------------------------------------------------------------------


async def test_a_model_scope_counts_only_that_models_usage(api):
    await priced(api)
    await priced(api, OTHER_MODEL)
    user = await funded_user(api)
    budget = await create_budget(api, user.id, limit_micros=300, model_id=MODEL)
    await charge(api, user.id, 500)  # Charge names no model
    await hold(api, user.id, 500)  # holds name no model
    await api.usage.RecordUsage(record(user.id, 500, OTHER_MODEL))
    await api.usage.RecordUsage(record(user.id, 300, MODEL))
    assert await figures(api, user.id, budget) == (300, 0)
    await exceeded(api.usage.RecordUsage(record(user.id, 1, MODEL)))
    await api.usage.RecordUsage(record(user.id, 1, OTHER_MODEL))


async def test_a_caller_scope_counts_only_that_callers_spend(api):
    user = await funded_user(api)
    mine = await create_budget(api, user.id, limit_micros=300, caller="anonymous")  # the tests' caller
    gateway = await create_budget(api, user.id, limit_micros=300, caller="chat-gateway")
    await charge(api, user.id, 300)
    # The gateway's spend, as the ledger records it for that calling service.
    await sql(api, "SELECT ledger_charge(%s, 250, 'USD', '', '', %s, p_caller => 'chat-gateway')", (user.id, rid()))
    assert await spent(api, user.id, mine) == 300
    assert await spent(api, user.id, gateway) == 250
    meta = await exceeded(charge(api, user.id, 1))
    assert meta["budget_id"] == mine


async def test_the_tightest_budget_decides_and_is_named(api):
    user = await funded_user(api)
    loose = await create_budget(api, user.id, limit_micros=10_000)
    tight = await create_budget(api, user.id, limit_micros=1_000, period="lifetime")
    middle = await create_budget(api, user.id, limit_micros=2_000, period="monthly")
    await charge(api, user.id, 900)
    meta = await exceeded(charge(api, user.id, 1_200))  # exceeds tight and middle: tight has less room
    assert (meta["budget_id"], meta["spent_micros"], meta["requested_micros"]) == (tight, "900", "1200")
    await charge(api, user.id, 100)
    assert [await spent(api, user.id, b) for b in (loose, tight, middle)] == [1_000, 1_000, 1_000]


async def test_a_soft_budget_never_refuses_but_alerts(api):
    user = await funded_user(api)
    soft = await create_budget(api, user.id, limit_micros=100, enforcement="soft", thresholds=[50, 100])
    await charge(api, user.id, 60)
    await charge(api, user.id, 500)
    assert await spent(api, user.id, soft) == 560
    alerts = await alerts_of(api, user.id, soft)
    assert [(a["threshold_percent"], a["consumed_micros"]) for a in alerts] == [(50, 60), (100, 560)]


async def test_alerts_once_per_threshold_and_period(api, clock):
    user = await funded_user(api)
    clock.now = datetime.datetime(2026, 6, 1, 12, tzinfo=UTC)
    budget = await create_budget(api, user.id, limit_micros=1_000, thresholds=[80, 50])
    for _ in range(10):
        await charge(api, user.id, 100)
    clock.now = datetime.datetime(2026, 6, 2, 12, tzinfo=UTC)
    await charge(api, user.id, 900)
    alerts = await alerts_of(api, user.id, budget)
    assert [(a["threshold_percent"], a["consumed_micros"], a["period_start"].astimezone(UTC).day) for a in alerts] == [
        (50, 500, 1),
        (80, 800, 1),
        (50, 900, 2),
        (80, 900, 2),
    ]


# ---- holds ------------------------------------------------------------------------------------


async def test_a_hold_counts_while_active_and_stops_when_released(api):
    user = await funded_user(api)
    budget = await create_budget(api, user.id, limit_micros=1_000)
    held = await hold(api, user.id, 800)
    await exceeded(charge(api, user.id, 201))
    await api.ledger.ReleaseHold(ledger_pb2.ReleaseHoldRequest(request_id=rid(), user_id=user.id, hold_id=held.id))
    assert (await usage_of(api, user.id, budget))["consumed_micros"] == 0
    await charge(api, user.id, 1_000)


async def test_a_hold_stops_counting_when_it_expires(api):
    user = await funded_user(api)
    budget = await create_budget(api, user.id, limit_micros=1_000)
    held = await hold(api, user.id, 800, ttl_seconds=60)
    await exceeded(charge(api, user.id, 201))
    # The ledger's own expiry: the hold's time moved past its expire_time (no sleep).
    await age_holds(api, 61, held.id)
    assert (await usage_of(api, user.id, budget))["held_micros"] == 0
    await charge(api, user.id, 1_000)


async def test_a_capture_below_its_hold_never_fails_even_under_a_lowered_limit(api):
    await priced(api)
    user = await funded_user(api)
    budget = await create_budget(api, user.id, limit_micros=1_000)
    first = await hold(api, user.id, 500)
    second = await hold(api, user.id, 500)
    await update_budget(api, user.id, budget, limit_micros=100)
    transaction = await capture(api, user.id, first.id, 400)
    assert transaction.amount_micros == 400
    # A usage record capturing its hold, within the hold too.
    await api.usage.RecordUsage(record(user.id, 500, hold_id=second.id))
    assert await figures(api, user.id, budget) == (900, 0)
    await exceeded(charge(api, user.id, 1))


async def test_a_capture_fails_only_above_what_its_hold_counted(api):
    user = await funded_user(api)
    # The hold is the tests' caller's ("anonymous"); the gateway's budget never counted it.
    gateway = await create_budget(api, user.id, limit_micros=100, caller="chat-gateway")
    held = await hold(api, user.id, 500)
    capture_as_gateway = "SELECT ledger_capture_hold(%s, %s, %s, '', %s, p_caller => 'chat-gateway')"
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        await sql(api, capture_as_gateway, (user.id, held.id, 101, rid()))
    assert raised.value.diag.constraint_name == "budget_exceeded"
    await sql(api, capture_as_gateway, (user.id, held.id, 100, rid()))
    assert await figures(api, user.id, gateway) == (100, 0)


# ---- refunds ----------------------------------------------------------------------------------


async def test_refunds_give_back_in_the_current_period_and_add_up(api):
    user = await funded_user(api)
    budget = await create_budget(api, user.id, limit_micros=1_000)
    charged = await charge(api, user.id, 1_000)
    await exceeded(charge(api, user.id, 1))
    await refund(api, user.id, charged.id, 300)
    await refund(api, user.id, charged.id, 200)
    assert await spent(api, user.id, budget) == 500
    await charge(api, user.id, 500)
    await exceeded(charge(api, user.id, 1))


async def test_a_refund_in_a_later_period_gives_nothing_back(api, clock):
    user = await funded_user(api)
    clock.now = datetime.datetime(2026, 6, 1, 12, tzinfo=UTC)
    budget = await create_budget(api, user.id, limit_micros=1_000)
    charged = await charge(api, user.id, 1_000)
    clock.now = datetime.datetime(2026, 6, 2, 12, tzinfo=UTC)
    await charge(api, user.id, 900)
    await refund(api, user.id, charged.id, 1_000)
    assert await spent(api, user.id, budget) == 900  # not a negative or lowered new period
    clock.now = datetime.datetime(2026, 6, 1, 12, tzinfo=UTC)
    assert await spent(api, user.id, budget) == 1_000  # nor the old one


async def test_a_refund_of_a_backfilled_charge_gives_back(api):
    user = await funded_user(api)
    charged = await charge(api, user.id, 700)
    budget = await create_budget(api, user.id, limit_micros=1_000)
    assert await spent(api, user.id, budget) == 700
    await refund(api, user.id, charged.id, 300)
    assert await spent(api, user.id, budget) == 400
    await refund(api, user.id, charged.id, 400)
    assert await spent(api, user.id, budget) == 0


# ---- backfill ---------------------------------------------------------------------------------


async def test_a_new_budget_starts_with_the_spend_of_its_period(api):
    await priced(api)
    user = await funded_user(api)
    charged = await charge(api, user.id, 300)
    await refund(api, user.id, charged.id, 100)
    await api.usage.RecordUsage(record(user.id, 150))
    held = await hold(api, user.id, 100)
    await capture(api, user.id, held.id, 50)
    await hold(api, user.id, 70)  # active: counted live, not backfilled
    daily = await create_budget(api, user.id, limit_micros=1_000)
    scoped = await create_budget(api, user.id, limit_micros=1_000, model_id=MODEL)
    assert (await usage_of(api, user.id, daily))["spent_micros"] == 200 + 150 + 50
    assert (await usage_of(api, user.id, daily))["held_micros"] == 70
    assert await spent(api, user.id, scoped) == 150


async def test_a_lifetime_budget_backfills_everything_and_a_daily_only_its_day(api):
    user = await funded_user(api)
    await charge(api, user.id, 400)
    # An old charge, from before today (moved back as the owner).
    old = await charge(api, user.id, 250)
    await sql(
        api,
        "ALTER TABLE ledger_transactions DISABLE TRIGGER ledger_transactions_immutable;"
        " UPDATE ledger_transactions SET created_at = created_at - interval '3 days' WHERE transaction_id = %s;"
        " ALTER TABLE ledger_transactions ENABLE TRIGGER ledger_transactions_immutable;".replace("%s", f"'{old.id}'"),
    )
    lifetime = await create_budget(api, user.id, limit_micros=1_000, period="lifetime")
    daily = await create_budget(api, user.id, limit_micros=1_000)
    assert await spent(api, user.id, lifetime) == 650
    assert await spent(api, user.id, daily) == 400
    meta = await exceeded(charge(api, user.id, 351))
    assert meta["budget_id"] == lifetime
