"""BudgetService.ListBudgetAlerts: the alert feed in commit order, resumable with its cursor.

Alerts are written by the spending transactions (enforcement, db/functions/budget_enforcement.sql);
here they are inserted as the database owner, each in a transaction of its own that stamps
written_xid as the enforcement does, so the feed's order, filters and horizon are tested alone:
an alert of a transaction still open is not listed (even when a later transaction's alert has
committed) until it ends, and a reader resuming from its cursor then gets it, never skips it.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import grpc
import psycopg
import pytest

from qdata.v1 import budget_pb2
from tests.support.calls import create_user, expect_error, field_violations

INVALID = grpc.StatusCode.INVALID_ARGUMENT
INSERT_ALERT = (
    "INSERT INTO budget_alerts (user_id, budget_id, period_start, period_end, threshold_percent, limit_micros,"
    " consumed_micros, currency_code, written_xid)"
    " VALUES (%s, %s, %s, %s, %s, 1000, %s, 'USD', pg_current_xact_id()::text::bigint) RETURNING alert_id"
)
DAY = datetime.datetime(2026, 3, 29, tzinfo=datetime.UTC)


def alert_values(user_id: str, threshold: int, *, budget_id: str | None = None, lifetime: bool = False) -> list[Any]:
    start = datetime.datetime.min if lifetime else DAY
    return [
        user_id,
        budget_id or str(uuid.uuid4()),
        "-infinity" if lifetime else start,
        None if lifetime else DAY + datetime.timedelta(days=1),
        threshold,
        threshold * 10,
    ]


async def insert_alert(api, user_id: str, threshold: int, **kwargs: Any) -> str:
    """One alert, committed in a transaction of its own; returns its id."""
    async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True) as conn:
        cur = await conn.execute(INSERT_ALERT, alert_values(user_id, threshold, **kwargs))
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])


async def feed(api, user_id: str = "", token: str = "", page_size: int = 0) -> budget_pb2.ListBudgetAlertsResponse:
    return await api.budgets.ListBudgetAlerts(
        budget_pb2.ListBudgetAlertsRequest(user_id=user_id, page_token=token, page_size=page_size)
    )


async def test_alerts_are_listed_oldest_first_with_what_they_record(api):
    user = await create_user(api)
    budget_id = str(uuid.uuid4())
    first = await insert_alert(api, user.id, 50, budget_id=budget_id)
    second = await insert_alert(api, user.id, 80, budget_id=budget_id)
    lifetime = await insert_alert(api, user.id, 100, lifetime=True)
    page = await feed(api)
    assert [a.id for a in page.alerts] == [first, second, lifetime]
    alert = page.alerts[0]
    assert (alert.user_id, alert.budget_id, alert.threshold_percent) == (user.id, budget_id, 50)
    assert (alert.limit_micros, alert.consumed_micros, alert.currency_code) == (1000, 500, "USD")
    assert alert.period_start.ToDatetime(datetime.UTC) == DAY
    assert alert.period_end.ToDatetime(datetime.UTC) == DAY + datetime.timedelta(days=1)
    assert alert.create_time.seconds > 0
    # A lifetime budget's alert has no period bounds.
    assert not page.alerts[2].HasField("period_start") and not page.alerts[2].HasField("period_end")


async def test_the_cursor_resumes_after_the_last_alert_and_is_never_empty(api):
    user = await create_user(api)
    empty = await feed(api)
    assert list(empty.alerts) == [] and empty.next_page_token  # a cursor even before any alert
    ids = [await insert_alert(api, user.id, t) for t in (10, 20, 30, 40, 50)]
    # The cursor of the empty page starts before every alert.
    seen: list[str] = []
    token = empty.next_page_token
    for _ in range(3):
        page = await feed(api, token=token, page_size=2)
        assert page.next_page_token
        seen.extend(a.id for a in page.alerts)
        token = page.next_page_token
    assert seen == ids
    # Caught up: no alert, and the same cursor back.
    caught_up = await feed(api, token=token)
    assert list(caught_up.alerts) == [] and caught_up.next_page_token
    later = await insert_alert(api, user.id, 60)
    assert [a.id for a in (await feed(api, token=caught_up.next_page_token)).alerts] == [later]
    assert [a.id for a in (await feed(api, token=token)).alerts] == [later]


async def test_one_users_alerts_and_tokens_bound_to_the_filter(api):
    user, other = await create_user(api), await create_user(api)
    mine = [await insert_alert(api, user.id, 10), await insert_alert(api, user.id, 20)]
    theirs = await insert_alert(api, other.id, 30)
    page = await feed(api, user_id=user.id)
    assert [a.id for a in page.alerts] == mine
    assert [a.id for a in (await feed(api, user_id=other.id)).alerts] == [theirs]
    assert [a.id for a in (await feed(api)).alerts] == [*mine, theirs]
    # A token names the filter it was issued for.
    for token, user_id in ((page.next_page_token, ""), (page.next_page_token, other.id)):
        error = await expect_error(feed(api, user_id=user_id, token=token), INVALID)
        assert set(field_violations(error)) == {"page_token"}
    all_users = (await feed(api)).next_page_token
    await expect_error(feed(api, user_id=user.id, token=all_users), INVALID)


@pytest.mark.parametrize(
    "request_fields",
    [{"page_size": -1}, {"page_token": "forged"}, {"user_id": "not-a-uuid"}],
)
async def test_bad_requests_are_invalid_argument(api, request_fields):
    await expect_error(api.budgets.ListBudgetAlerts(budget_pb2.ListBudgetAlertsRequest(**request_fields)), INVALID)


async def test_page_size_defaults_to_100_and_is_capped_at_1000(api):
    user = await create_user(api)
    async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True) as conn:
        # 1,001 alerts of one transaction (one budget per threshold value repeats, so vary the budget).
        await conn.execute(
            "INSERT INTO budget_alerts (user_id, budget_id, period_start, period_end, threshold_percent,"
            " limit_micros, consumed_micros, currency_code, written_xid)"
            " SELECT %s, gen_random_uuid(), now(), now(), 50, 1000, 500, 'USD', pg_current_xact_id()::text::bigint"
            "   FROM generate_series(1, 1001)",
            [user.id],
        )
    assert len((await feed(api)).alerts) == 100
    assert len((await feed(api, page_size=5000)).alerts) == 1000
    assert len((await feed(api, page_size=7)).alerts) == 7


async def test_an_alert_of_an_open_transaction_is_listed_once_it_commits_never_skipped(api):
    user = await create_user(api)
    before = await insert_alert(api, user.id, 10)
    page = await feed(api)
    assert [a.id for a in page.alerts] == [before]
    cursor = page.next_page_token
    async with await psycopg.AsyncConnection.connect(api.database_url) as slow:
        # The slow transaction writes its alert first (the lower transaction id) and stays open...
        cur = await slow.execute(INSERT_ALERT, alert_values(user.id, 20))
        row = await cur.fetchone()
        assert row is not None
        slow_id = str(row[0])
        # ...while a later transaction's alert commits.
        fast_id = await insert_alert(api, user.id, 30)
        # Neither is listed yet: listing the later one now would move a reader's cursor past the
        # slow one, which would then never be listed.
        waiting = await feed(api, token=cursor)
        assert list(waiting.alerts) == []
        assert [a.id for a in (await feed(api, user_id=user.id)).alerts] == [before]
        await slow.commit()
    resumed = await feed(api, token=waiting.next_page_token)
    assert [a.id for a in resumed.alerts] == [slow_id, fast_id]


async def test_an_alert_of_a_rolled_back_transaction_never_appears(api):
    user = await create_user(api)
    async with await psycopg.AsyncConnection.connect(api.database_url) as conn:
        await conn.execute(INSERT_ALERT, alert_values(user.id, 20))
        await conn.rollback()
    kept = await insert_alert(api, user.id, 30)
    assert [a.id for a in (await feed(api)).alerts] == [kept]


# ---- the qdata_budget_alerts gauge (metrics_database.py) ----------------------------------------


async def test_the_alert_gauge_counts_each_listable_alert_once_by_threshold(api, monkeypatch):
    from qdata_server import metrics_database
    from qdata_server.metrics_qdata import QdataMetrics

    metrics = QdataMetrics()

    async def counted() -> dict[str, float]:
        await metrics_database.refresh(api.server.deps, metrics)
        [family] = metrics.database_gauges().budget_alerts.collect()
        return {s.labels["threshold"]: s.value for s in family.samples}

    user = await create_user(api)
    assert await counted() == {}
    for threshold in (50, 50, 80):
        await insert_alert(api, user.id, threshold)
    assert await counted() == {"50": 2, "80": 1}
    assert await counted() == {"50": 2, "80": 1}  # counted once, however many rounds
    async with await psycopg.AsyncConnection.connect(api.database_url) as open_transaction:
        await open_transaction.execute(INSERT_ALERT, alert_values(user.id, 100))
        await insert_alert(api, user.id, 50)
        # Neither the open transaction's alert nor the one after it, until it ends.
        assert await counted() == {"50": 2, "80": 1}
        await open_transaction.commit()
    assert await counted() == {"50": 3, "80": 1, "100": 1}
    # A bounded number per round: a long history is caught up over several rounds.
    monkeypatch.setattr(metrics_database, "BUDGET_ALERTS_PER_ROUND", 2)
    for threshold in (10, 10, 10, 20):
        await insert_alert(api, user.id, threshold)
    assert await counted() == {"50": 3, "80": 1, "100": 1, "10": 2}
    assert await counted() == {"50": 3, "80": 1, "100": 1, "10": 3, "20": 1}


async def test_an_alert_with_a_transaction_id_this_cluster_has_not_reached_waits(api):
    """A restored alert from a cluster further ahead is not listed (it would move cursors past the
    alerts written here meanwhile, which a reader would then skip)."""
    user = await create_user(api)
    async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True) as conn:
        await conn.execute(
            INSERT_ALERT.replace("pg_current_xact_id()::text::bigint", "pg_current_xact_id()::text::bigint + 1000000"),
            alert_values(user.id, 40),
        )
    local = await insert_alert(api, user.id, 50)
    page = await feed(api)
    assert [a.id for a in page.alerts] == [local]
    later = await insert_alert(api, user.id, 60)
    assert [a.id for a in (await feed(api, token=page.next_page_token)).alerts] == [later]
