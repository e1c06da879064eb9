"""BudgetService CRUD over real gRPC and PostgreSQL: CreateBudget, GetBudget, ListBudgets,
UpdateBudget, DeleteBudget, with their validation, field masks, request_id replays, audit events,
permissions and the current period each budget is read with. The alert feed is in
test_budget_alerts.py; enforcement (spend counted and refused) in test_budget_enforcement*.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2
from psycopg.rows import dict_row

from qdata.v1 import budget_pb2, user_pb2
from qdata_server import auth
from qdata_server.budgets.rules import MAX_BUDGETS_PER_USER
from qdata_server.tokens import hash_token
from tests.support.calls import case_id, create_user, error_info, expect_error, field_violations, rid
from tests.support.ledger import charge, deposit
from tests.support.server import TEST_SETTINGS
from tests.support.usage import create_model

NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def owner_rows(api, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True, row_factory=dict_row) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


def budget(**fields: Any) -> budget_pb2.Budget:
    values: dict[str, Any] = {"limit_micros": 5_000_000, "period": budget_pb2.BUDGET_PERIOD_DAILY}
    values.update(fields)
    return budget_pb2.Budget(**values)


def create_request(user_id: str, *, request_id: str | None = None, **fields: Any) -> budget_pb2.CreateBudgetRequest:
    return budget_pb2.CreateBudgetRequest(request_id=request_id or rid(), user_id=user_id, budget=budget(**fields))


async def create(api, user_id: str, **fields: Any) -> budget_pb2.Budget:
    return (await api.budgets.CreateBudget(create_request(user_id, **fields))).budget


def update_request(user_id: str, budget_id: str, paths: list[str], **fields: Any) -> budget_pb2.UpdateBudgetRequest:
    return budget_pb2.UpdateBudgetRequest(
        request_id=rid(),
        user_id=user_id,
        budget=budget_pb2.Budget(id=budget_id, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )


async def get(api, user_id: str, budget_id: str) -> budget_pb2.Budget:
    return (await api.budgets.GetBudget(budget_pb2.GetBudgetRequest(user_id=user_id, budget_id=budget_id))).budget


async def stored_budgets(api) -> int:
    return (await owner_rows(api, "SELECT count(*) AS n FROM budgets"))[0]["n"]


def local_bounds(period: str, zone: str, at: datetime.datetime) -> tuple[datetime.datetime, datetime.datetime]:
    """The calendar period containing at, in zone (what budget_period_bounds computes)."""
    local = at.astimezone(ZoneInfo(zone))
    start = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    if period == "weekly":
        start -= datetime.timedelta(days=start.weekday())
        end = start + datetime.timedelta(days=7)
    elif period == "monthly":
        start = start.replace(day=1)
        end = (start + datetime.timedelta(days=32)).replace(day=1)
    else:
        end = start + datetime.timedelta(days=1)
    tz = ZoneInfo(zone)
    return start.replace(tzinfo=tz).astimezone(datetime.UTC), end.replace(tzinfo=tz).astimezone(datetime.UTC)


# ---- CreateBudget and GetBudget ------------------------------------------------------------------


async def test_create_fills_defaults_and_get_returns_the_same_budget(api):
    user = await create_user(api)
    made = await create(api, user.id, display_name="Daily cap", alert_thresholds_percent=[80, 50, 100])
    assert uuid.UUID(made.id) and made.user_id == user.id
    assert made.display_name == "Daily cap"
    assert made.currency_code == "USD" and made.time_zone == "UTC"
    assert made.enforcement == budget_pb2.BUDGET_ENFORCEMENT_HARD
    assert made.period == budget_pb2.BUDGET_PERIOD_DAILY and made.limit_micros == 5_000_000
    assert list(made.alert_thresholds_percent) == [50, 80, 100]  # stored ascending
    assert made.model_id == "" and made.caller == ""
    assert made.create_time.seconds > 0 and made.update_time == made.create_time
    # The spend already made is backfilled (none here: a new user).
    assert made.current_period.spent_micros == 0 and made.current_period.held_micros == 0
    assert made.current_period.remaining_micros == 5_000_000
    assert await get(api, user.id, made.id) == made


async def test_scopes_enforcement_and_currency_are_kept(api_with):
    api = await api_with(ledger_currencies=("USD", "EUR"))
    await create_model(api, "acme/model-x")
    user = await create_user(api)
    made = await create(
        api,
        user.id,
        currency_code="EUR",
        model_id="acme/model-x",
        caller="chat-gateway",
        enforcement=budget_pb2.BUDGET_ENFORCEMENT_SOFT,
        period=budget_pb2.BUDGET_PERIOD_MONTHLY,
        time_zone="Europe/Berlin",
    )
    assert (made.currency_code, made.model_id, made.caller) == ("EUR", "acme/model-x", "chat-gateway")
    assert made.enforcement == budget_pb2.BUDGET_ENFORCEMENT_SOFT and made.time_zone == "Europe/Berlin"
    row = (await owner_rows(api, "SELECT model_id, caller, enforcement FROM budgets WHERE budget_id = %s", [made.id]))[
        0
    ]
    assert row == {"model_id": "acme/model-x", "caller": "chat-gateway", "enforcement": "soft"}


@pytest.mark.parametrize(
    ("period", "zone"),
    [
        ("daily", "UTC"),
        ("daily", "America/New_York"),
        ("weekly", "Europe/Berlin"),
        ("monthly", "Asia/Kolkata"),
        ("monthly", "UTC"),
    ],
)
async def test_the_current_period_is_the_calendar_period_in_the_budgets_time_zone(api, period, zone):
    user = await create_user(api)
    proto_period = {
        "daily": budget_pb2.BUDGET_PERIOD_DAILY,
        "weekly": budget_pb2.BUDGET_PERIOD_WEEKLY,
        "monthly": budget_pb2.BUDGET_PERIOD_MONTHLY,
    }[period]
    before = datetime.datetime.now(datetime.UTC)
    made = await create(api, user.id, period=proto_period, time_zone=zone)
    after = datetime.datetime.now(datetime.UTC)
    got = (
        made.current_period.period_start.ToDatetime(datetime.UTC),
        made.current_period.period_end.ToDatetime(datetime.UTC),
    )
    # Either side of the call (a period boundary could fall in between).
    assert got in {local_bounds(period, zone, before), local_bounds(period, zone, after)}


async def test_a_lifetime_budget_has_no_period_bounds(api):
    user = await create_user(api)
    made = await create(api, user.id, period=budget_pb2.BUDGET_PERIOD_LIFETIME)
    assert made.period == budget_pb2.BUDGET_PERIOD_LIFETIME
    assert not made.current_period.HasField("period_start") and not made.current_period.HasField("period_end")
    assert made.current_period.remaining_micros == made.limit_micros
    assert (await get(api, user.id, made.id)).current_period == made.current_period


async def test_get_reads_the_spend_of_the_current_period(api):
    user = await create_user(api)
    made = await create(api, user.id, limit_micros=1_000)
    start = made.current_period.period_start.ToDatetime(datetime.UTC)
    async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True) as conn:
        # The current period's rollup, and an older period's, which does not count.
        await conn.execute(
            "INSERT INTO budget_periods (user_id, budget_id, period_start, spent_micros) VALUES (%s, %s, %s, 300),"
            " (%s, %s, %s, 999)",
            [user.id, made.id, start, user.id, made.id, start - datetime.timedelta(days=1)],
        )
    usage = (await get(api, user.id, made.id)).current_period
    assert (usage.spent_micros, usage.remaining_micros) == (300, 700)
    async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True) as conn:
        await conn.execute("UPDATE budget_periods SET spent_micros = 1500 WHERE period_start = %s", [start])
    usage = (await get(api, user.id, made.id)).current_period
    assert (usage.spent_micros, usage.remaining_micros) == (1_500, 0)  # never negative


async def test_get_of_another_users_or_an_unknown_budget_is_not_found(api):
    owner, other = await create_user(api), await create_user(api)
    made = await create(api, owner.id)
    for user_id, budget_id in ((other.id, made.id), (owner.id, str(uuid.uuid4()))):
        await expect_error(
            api.budgets.GetBudget(budget_pb2.GetBudgetRequest(user_id=user_id, budget_id=budget_id)),
            NOT_FOUND,
            "BUDGET_NOT_FOUND",
        )
    error = await expect_error(
        api.budgets.GetBudget(budget_pb2.GetBudgetRequest(user_id=owner.id, budget_id="nope")), INVALID
    )
    assert set(field_violations(error)) == {"budget_id"}


async def test_create_writes_one_audit_event_naming_the_budget(api):
    user = await create_user(api)
    made = await create(api, user.id, limit_micros=7, alert_thresholds_percent=[100])
    rows = await owner_rows(
        api, "SELECT action, target_type, user_id, summary FROM audit_events WHERE target_id = %s", [made.id]
    )
    assert len(rows) == 1
    assert (rows[0]["action"], rows[0]["target_type"], str(rows[0]["user_id"])) == (
        "budgets.CreateBudget",
        "budget",
        user.id,
    )
    assert rows[0]["summary"]["limit_micros"] == 7 and rows[0]["summary"]["period"] == "daily"
    assert rows[0]["summary"]["alert_thresholds_percent"] == [100]


# ---- request_ids ---------------------------------------------------------------------------------


async def test_a_replay_returns_the_first_response_and_creates_nothing_more(api):
    user = await create_user(api)
    request = create_request(user.id, alert_thresholds_percent=[90, 10])
    first = (await api.budgets.CreateBudget(request)).budget
    again = (await api.budgets.CreateBudget(request)).budget
    assert again == first
    # The defaults spelled out and the thresholds in another order are the same request.
    spelled = create_request(
        user.id,
        request_id=request.request_id,
        alert_thresholds_percent=[10, 90],
        currency_code="USD",
        time_zone="UTC",
        enforcement=budget_pb2.BUDGET_ENFORCEMENT_HARD,
        id=str(uuid.uuid4()),  # output only: ignored
    )
    assert (await api.budgets.CreateBudget(spelled)).budget == first
    assert await stored_budgets(api) == 1
    events = await owner_rows(api, "SELECT count(*) AS n FROM audit_events WHERE action = 'budgets.CreateBudget'")
    assert events[0]["n"] == 1


async def test_a_request_id_reused_for_other_parameters_is_refused(api):
    user = await create_user(api)
    request = create_request(user.id)
    made = (await api.budgets.CreateBudget(request)).budget
    other = create_request(user.id, request_id=request.request_id, limit_micros=6_000_000)
    await expect_error(api.budgets.CreateBudget(other), grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    # Another method under the same id, too.
    delete = budget_pb2.DeleteBudgetRequest(request_id=request.request_id, user_id=user.id, budget_id=made.id)
    await expect_error(api.budgets.DeleteBudget(delete), grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert await stored_budgets(api) == 1


async def test_update_and_delete_replays_return_their_first_responses(api):
    user = await create_user(api)
    made = await create(api, user.id)
    update = update_request(user.id, made.id, ["limit_micros"], limit_micros=9)
    first = (await api.budgets.UpdateBudget(update)).budget
    later = await api.budgets.UpdateBudget(update_request(user.id, made.id, ["limit_micros"], limit_micros=11))
    assert later.budget.limit_micros == 11
    assert (await api.budgets.UpdateBudget(update)).budget == first  # the first answer, not redone
    assert (await get(api, user.id, made.id)).limit_micros == 11
    changed = update_request(user.id, made.id, ["limit_micros"], limit_micros=12)
    changed.request_id = update.request_id
    await expect_error(api.budgets.UpdateBudget(changed), grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")

    delete = budget_pb2.DeleteBudgetRequest(request_id=rid(), user_id=user.id, budget_id=made.id)
    await api.budgets.DeleteBudget(delete)
    await api.budgets.DeleteBudget(delete)  # the first response, though the budget is gone
    delete.request_id = rid()
    await expect_error(api.budgets.DeleteBudget(delete), NOT_FOUND, "BUDGET_NOT_FOUND")


# ---- validation ----------------------------------------------------------------------------------

BAD_BUDGETS = [
    ({"limit_micros": 0}, "budget.limit_micros"),
    ({"limit_micros": -5}, "budget.limit_micros"),
    ({"limit_micros": 10**15 + 1}, "budget.limit_micros"),
    ({"period": budget_pb2.BUDGET_PERIOD_UNSPECIFIED}, "budget.period"),
    ({"period": 99}, "budget.period"),
    ({"enforcement": 7}, "budget.enforcement"),
    ({"alert_thresholds_percent": [0]}, "budget.alert_thresholds_percent"),
    ({"alert_thresholds_percent": [101]}, "budget.alert_thresholds_percent"),
    ({"alert_thresholds_percent": [-1]}, "budget.alert_thresholds_percent"),
    ({"alert_thresholds_percent": [50, 50]}, "budget.alert_thresholds_percent"),
    ({"alert_thresholds_percent": list(range(1, 12))}, "budget.alert_thresholds_percent"),
    ({"display_name": "x" * 101}, "budget.display_name"),
    ({"display_name": "bad\x00name"}, "budget.display_name"),
    ({"caller": "c" * 101}, "budget.caller"),
    ({"caller": "   "}, "budget.caller"),
    ({"currency_code": "usd"}, "budget.currency_code"),
    ({"model_id": "bad model id"}, "budget.model_id"),
]


@pytest.mark.parametrize(("fields", "field"), BAD_BUDGETS, ids=case_id)
async def test_bad_fields_are_invalid_argument_and_store_nothing(api, fields, field):
    user = await create_user(api)
    error = await expect_error(api.budgets.CreateBudget(create_request(user.id, **fields)), INVALID, "INVALID_ARGUMENT")
    assert set(field_violations(error)) == {field}
    assert await stored_budgets(api) == 0


async def test_every_bad_field_is_reported_at_once(api):
    user = await create_user(api)
    request = budget_pb2.CreateBudgetRequest(request_id=rid(), user_id="nope", budget=budget_pb2.Budget())
    error = await expect_error(api.budgets.CreateBudget(request), INVALID)
    assert set(field_violations(error)) == {"user_id", "budget.limit_micros", "budget.period"}
    missing = budget_pb2.CreateBudgetRequest(request_id=rid(), user_id=user.id)
    assert "budget" in field_violations(await expect_error(api.budgets.CreateBudget(missing), INVALID))
    no_id = create_request(user.id, request_id=" ")
    assert set(field_violations(await expect_error(api.budgets.CreateBudget(no_id), INVALID))) == {"request_id"}


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "PST", "CEST", "UTC+3", "EST5EDT,M3.2.0,M11.1.0", "europe/berlin", "+02:00"]
)
async def test_a_time_zone_postgresql_does_not_know_by_name_is_refused(api, zone):
    user = await create_user(api)
    error = await expect_error(api.budgets.CreateBudget(create_request(user.id, time_zone=zone)), INVALID)
    assert error_info(error).reason == "INVALID_ARGUMENT"
    assert set(field_violations(error)) == {"budget.time_zone"}
    assert await stored_budgets(api) == 0
    # Nothing of the request is kept either: the same request_id serves a corrected request.
    assert (await owner_rows(api, "SELECT count(*) AS n FROM idempotency_keys WHERE user_id = %s", [user.id]))[0][
        "n"
    ] == 0


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/Argentina/Buenos_Aires", "Etc/GMT+5", "UTC"])
async def test_iana_time_zone_names_are_accepted(api, zone):
    user = await create_user(api)
    assert (await create(api, user.id, time_zone=zone)).time_zone == zone


async def test_a_currency_that_is_not_enabled_is_unsupported(api):
    user = await create_user(api)
    error = await expect_error(
        api.budgets.CreateBudget(create_request(user.id, currency_code="EUR")), INVALID, "UNSUPPORTED_CURRENCY"
    )
    assert set(field_violations(error)) == {"budget.currency_code"}
    assert await stored_budgets(api) == 0


async def test_a_model_scope_outside_the_catalog_is_not_found_with_a_field_violation(api):
    user = await create_user(api)
    error = await expect_error(
        api.budgets.CreateBudget(create_request(user.id, model_id="acme/nonexistent")), NOT_FOUND, "MODEL_NOT_FOUND"
    )
    assert set(field_violations(error)) == {"budget.model_id"}
    assert await stored_budgets(api) == 0


async def test_an_unknown_or_deleted_user_is_not_found(api):
    await expect_error(api.budgets.CreateBudget(create_request(str(uuid.uuid4()))), NOT_FOUND, "USER_NOT_FOUND")
    user = await create_user(api)
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user.id))
    await expect_error(api.budgets.CreateBudget(create_request(user.id)), NOT_FOUND, "USER_NOT_FOUND")
    assert await stored_budgets(api) == 0


async def test_a_user_has_at_most_twenty_budgets(api_with):
    api = await api_with(ledger_currencies=("USD", "EUR"))
    user = await create_user(api)
    # In two currencies: the count is the user's, whatever the currency.
    for i in range(MAX_BUDGETS_PER_USER):
        await create(api, user.id, currency_code="EUR" if i % 2 else "USD")
    error = await expect_error(
        api.budgets.CreateBudget(create_request(user.id)), grpc.StatusCode.FAILED_PRECONDITION, "TOO_MANY_BUDGETS"
    )
    assert "20" in error.details()
    assert await stored_budgets(api) == MAX_BUDGETS_PER_USER
    # Another user is not affected, and a deletion makes room again.
    other = await create_user(api)
    await create(api, other.id)
    first = (await api.budgets.ListBudgets(budget_pb2.ListBudgetsRequest(user_id=user.id))).budgets[0]
    await api.budgets.DeleteBudget(
        budget_pb2.DeleteBudgetRequest(request_id=rid(), user_id=user.id, budget_id=first.id)
    )
    await create(api, user.id)


# ---- UpdateBudget --------------------------------------------------------------------------------


async def test_update_changes_only_the_masked_fields(api):
    user = await create_user(api)
    made = await create(api, user.id, display_name="before", alert_thresholds_percent=[50])
    changed = (
        await api.budgets.UpdateBudget(
            update_request(
                user.id,
                made.id,
                ["limit_micros", "alert_thresholds_percent"],
                limit_micros=42,
                alert_thresholds_percent=[100, 75],
                display_name="ignored: not in the mask",
                enforcement=budget_pb2.BUDGET_ENFORCEMENT_SOFT,
            )
        )
    ).budget
    assert changed.limit_micros == 42 and list(changed.alert_thresholds_percent) == [75, 100]
    assert changed.display_name == "before" and changed.enforcement == budget_pb2.BUDGET_ENFORCEMENT_HARD
    assert changed.current_period.remaining_micros == 42  # the new limit at once
    assert changed.update_time.ToDatetime() >= made.update_time.ToDatetime()
    assert await get(api, user.id, made.id) == changed

    renamed = await api.budgets.UpdateBudget(
        update_request(
            user.id,
            made.id,
            ["display_name", "enforcement"],
            display_name="",
            enforcement=budget_pb2.BUDGET_ENFORCEMENT_SOFT,
        )
    )
    assert renamed.budget.display_name == "" and renamed.budget.enforcement == budget_pb2.BUDGET_ENFORCEMENT_SOFT
    cleared = await api.budgets.UpdateBudget(update_request(user.id, made.id, ["alert_thresholds_percent"]))
    assert list(cleared.budget.alert_thresholds_percent) == []
    events = await owner_rows(
        api,
        "SELECT summary FROM audit_events WHERE action = 'budgets.UpdateBudget' AND target_id = %s"
        " ORDER BY audit_event_id",
        [made.id],
    )
    assert [e["summary"]["fields"] for e in events] == [
        ["alert_thresholds_percent", "limit_micros"],
        ["display_name", "enforcement"],
        ["alert_thresholds_percent"],
    ]
    assert events[0]["summary"]["limit_micros"] == 42


@pytest.mark.parametrize(
    ("paths", "fields", "field"),
    [
        ([], {}, "update_mask"),
        (["period"], {}, "update_mask"),
        (["time_zone"], {}, "update_mask"),
        (["currency_code"], {}, "update_mask"),
        (["model_id"], {}, "update_mask"),
        (["caller"], {}, "update_mask"),
        (["no_such_field"], {}, "update_mask"),
        (["limit_micros", "limit_micros"], {"limit_micros": 5}, "update_mask"),
        (["limit_micros"], {"limit_micros": 0}, "budget.limit_micros"),
        (["alert_thresholds_percent"], {"alert_thresholds_percent": [0]}, "budget.alert_thresholds_percent"),
        (["display_name"], {"display_name": "x" * 101}, "budget.display_name"),
        (["enforcement"], {"enforcement": 9}, "budget.enforcement"),
    ],
    ids=case_id,
)
async def test_bad_updates_are_invalid_argument_and_change_nothing(api, paths, fields, field):
    user = await create_user(api)
    made = await create(api, user.id)
    error = await expect_error(api.budgets.UpdateBudget(update_request(user.id, made.id, paths, **fields)), INVALID)
    assert set(field_violations(error)) == {field}
    assert await get(api, user.id, made.id) == made


async def test_update_and_delete_of_another_users_budget_are_not_found(api):
    owner, other = await create_user(api), await create_user(api)
    made = await create(api, owner.id)
    await expect_error(
        api.budgets.UpdateBudget(update_request(other.id, made.id, ["limit_micros"], limit_micros=1)),
        NOT_FOUND,
        "BUDGET_NOT_FOUND",
    )
    await expect_error(
        api.budgets.DeleteBudget(budget_pb2.DeleteBudgetRequest(request_id=rid(), user_id=other.id, budget_id=made.id)),
        NOT_FOUND,
        "BUDGET_NOT_FOUND",
    )
    assert await get(api, owner.id, made.id) == made
    # The failed calls left no request_id behind.
    assert (await owner_rows(api, "SELECT count(*) AS n FROM idempotency_keys WHERE user_id = %s", [other.id]))[0][
        "n"
    ] == 0


# ---- DeleteBudget --------------------------------------------------------------------------------


async def test_delete_removes_the_budget_and_audits_it(api):
    user = await create_user(api)
    made = await create(api, user.id)
    kept = await create(api, user.id)
    async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO budget_periods (user_id, budget_id, period_start, spent_micros) VALUES (%s, %s, now(), 1)",
            [user.id, made.id],
        )
    await api.budgets.DeleteBudget(budget_pb2.DeleteBudgetRequest(request_id=rid(), user_id=user.id, budget_id=made.id))
    await expect_error(
        api.budgets.GetBudget(budget_pb2.GetBudgetRequest(user_id=user.id, budget_id=made.id)),
        NOT_FOUND,
        "BUDGET_NOT_FOUND",
    )
    assert await get(api, user.id, kept.id) == kept
    assert await owner_rows(api, "SELECT 1 FROM budget_periods WHERE budget_id = %s", [made.id]) == []
    events = await owner_rows(api, "SELECT action, target_type FROM audit_events WHERE target_id = %s", [made.id])
    assert sorted((e["action"], e["target_type"]) for e in events) == [
        ("budgets.CreateBudget", "budget"),
        ("budgets.DeleteBudget", "budget"),
    ]


# ---- ListBudgets ---------------------------------------------------------------------------------


async def test_list_pages_oldest_first_with_tokens_bound_to_the_user(api):
    user, other = await create_user(api), await create_user(api)
    made = [await create(api, user.id, display_name=f"b{i}") for i in range(5)]
    await create(api, other.id)
    seen: list[budget_pb2.Budget] = []
    token = ""
    pages = 0
    while True:
        page = await api.budgets.ListBudgets(
            budget_pb2.ListBudgetsRequest(user_id=user.id, page_size=2, page_token=token)
        )
        seen.extend(page.budgets)
        pages += 1
        if not page.next_page_token:
            break
        token = page.next_page_token
        # A token is bound to the user it was issued for.
        error = await expect_error(
            api.budgets.ListBudgets(budget_pb2.ListBudgetsRequest(user_id=other.id, page_token=token)), INVALID
        )
        assert set(field_violations(error)) == {"page_token"}
    assert pages == 3
    assert seen == made  # oldest first, each with its current period
    everything = await api.budgets.ListBudgets(budget_pb2.ListBudgetsRequest(user_id=user.id))
    assert list(everything.budgets) == made and everything.next_page_token == ""


async def test_list_of_an_unknown_user_is_empty_and_bad_requests_are_invalid(api):
    empty = await api.budgets.ListBudgets(budget_pb2.ListBudgetsRequest(user_id=str(uuid.uuid4())))
    assert list(empty.budgets) == [] and empty.next_page_token == ""
    user = await create_user(api)
    for request in (
        budget_pb2.ListBudgetsRequest(user_id=user.id, page_size=-1),
        budget_pb2.ListBudgetsRequest(user_id=user.id, page_token="forged"),
        budget_pb2.ListBudgetsRequest(user_id=""),
    ):
        await expect_error(api.budgets.ListBudgets(request), INVALID)


async def test_list_caps_the_page_size_at_one_hundred(api_with):
    api = await api_with()
    user = await create_user(api)
    for _ in range(3):
        await create(api, user.id)
    page = await api.budgets.ListBudgets(budget_pb2.ListBudgetsRequest(user_id=user.id, page_size=10_000))
    assert len(page.budgets) == 3 and page.next_page_token == ""


# ---- permissions ---------------------------------------------------------------------------------

TOKENS = {
    "everything-else": "qdt_budgets-none-" + uuid.uuid4().hex,
    "read": "qdt_budgets-read-" + uuid.uuid4().hex,
    "write": "qdt_budgets-write-" + uuid.uuid4().hex,
    "alerts": "qdt_budgets-alerts-" + uuid.uuid4().hex,
    "family": "qdt_budgets-family-" + uuid.uuid4().hex,
}
GRANTS = {
    "everything-else": ",".join(sorted(p for p in auth.KNOWN_PERMISSIONS if not p.startswith("budgets."))),
    "read": "budgets.read",
    "write": "budgets.write,users.write",
    "alerts": "budgets.alerts.read",
    "family": "budgets.*",
}
AUTH_SETTINGS = dataclasses.replace(
    TEST_SETTINGS,
    allow_insecure=False,
    auth_tokens=auth.parse_tokens(
        "\n".join(f"svc-{name} {hash_token(token)} {GRANTS[name]}" for name, token in TOKENS.items()), "test"
    ),
)


def _as(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[name]}"),)


async def test_budget_calls_need_the_budgets_permissions(api_with):
    api = await api_with(allow_insecure=False, auth_tokens=AUTH_SETTINGS.auth_tokens)
    user = (
        await api.users.CreateUser(
            user_pb2.CreateUserRequest(
                request_id=rid(), email="b@example.com", username="budgeted", password="a long enough password"
            ),
            metadata=_as("write"),
        )
    ).user
    made = (await api.budgets.CreateBudget(create_request(user.id), metadata=_as("write"))).budget
    calls = {
        "write": [
            lambda md: api.budgets.CreateBudget(create_request(user.id), metadata=md),
            lambda md: api.budgets.UpdateBudget(
                update_request(user.id, made.id, ["limit_micros"], limit_micros=3), metadata=md
            ),
            lambda md: api.budgets.DeleteBudget(
                budget_pb2.DeleteBudgetRequest(request_id=rid(), user_id=user.id, budget_id=str(uuid.uuid4())),
                metadata=md,
            ),
        ],
        "read": [
            lambda md: api.budgets.GetBudget(
                budget_pb2.GetBudgetRequest(user_id=user.id, budget_id=made.id), metadata=md
            ),
            lambda md: api.budgets.ListBudgets(budget_pb2.ListBudgetsRequest(user_id=user.id), metadata=md),
        ],
        "alerts": [lambda md: api.budgets.ListBudgetAlerts(budget_pb2.ListBudgetAlertsRequest(), metadata=md)],
    }
    for needs, group in calls.items():
        for call in group:
            for name in TOKENS:
                allowed = name in (needs, "family")
                try:
                    await call(_as(name))
                except grpc.aio.AioRpcError as error:
                    denied = error.code() == grpc.StatusCode.PERMISSION_DENIED
                    assert denied != allowed, f"{needs} call as {name}: {error.code()} {error.details()}"
                    if denied:
                        assert error_info(error).reason == "MISSING_PERMISSION"
                else:
                    assert allowed, f"{needs} call as {name} was not refused"


async def test_the_python_client_exposes_the_budget_service(api):
    from qdata.client import AsyncQdataClient

    user = await create_user(api)
    async with AsyncQdataClient(api.address) as client:
        made = (await client.budgets.CreateBudget(create_request(user.id))).budget
        listed = await client.budgets.ListBudgets(budget_pb2.ListBudgetsRequest(user_id=user.id))
        alerts = await client.budgets.ListBudgetAlerts(budget_pb2.ListBudgetAlertsRequest(user_id=user.id))
    assert list(listed.budgets) == [made]
    assert list(alerts.alerts) == [] and alerts.next_page_token


async def test_concurrent_creations_in_two_currencies_never_pass_twenty(api_with):
    import asyncio

    api = await api_with(ledger_currencies=("USD", "EUR"))
    user = await create_user(api)
    for _ in range(MAX_BUDGETS_PER_USER - 1):
        await create(api, user.id)
    # Different currencies take different account locks: the count is taken under the user's own.
    calls = [api.budgets.CreateBudget(create_request(user.id, currency_code=c)) for c in ["USD", "EUR"] * 4]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(outcomes) - len(failures) == 1
    assert {(f.code(), error_info(f).reason) for f in failures} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "TOO_MANY_BUDGETS")
    }
    assert await stored_budgets(api) == MAX_BUDGETS_PER_USER


async def test_a_new_budget_starts_with_the_spend_of_its_current_period(api):

    user = await create_user(api)
    await deposit(api, user.id, 10_000)
    await charge(api, user.id, 300)
    made = await create(api, user.id, limit_micros=1_000)
    assert (made.current_period.spent_micros, made.current_period.remaining_micros) == (300, 700)
    assert (await get(api, user.id, made.id)).current_period == made.current_period


async def test_the_time_zone_list_is_read_again_for_a_name_it_lacks_at_most_once_a_minute(api, monkeypatch):
    from qdata_server.budgets import time_zones

    user = await create_user(api)
    # A list read before the database knew Europe/Berlin (say, before a tz database upgrade).
    monkeypatch.setattr(time_zones, "_names", frozenset({"UTC"}))
    monkeypatch.setattr(time_zones, "_read_at", time.monotonic())
    error = await expect_error(api.budgets.CreateBudget(create_request(user.id, time_zone="Europe/Berlin")), INVALID)
    assert set(field_violations(error)) == {"budget.time_zone"}
    # A minute later the unknown name makes the server read the list again, and it is found.
    monkeypatch.setattr(time_zones, "_read_at", time.monotonic() - time_zones.REFRESH_AFTER_SECONDS)
    assert (await create(api, user.id, time_zone="Europe/Berlin")).time_zone == "Europe/Berlin"
    assert "Europe/Berlin" in time_zones._names
