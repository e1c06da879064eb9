"""BudgetService's writes: each is one idempotent transaction around one budget_*_once SQL function.

One database call does the whole request (db/functions/budgets.sql): it claims the request's
idempotency key, checks what only the database can tell, locks the user's account in the budget's
currency (the lock every spend of that user and currency holds, so a budget change and a spend's
check never interleave), writes, appends the audit event and returns the budget with its current
period in the same statement; the answer is stored with the commit (idempotency.run_claiming).
A rejection rolls everything back, the claim included, so a corrected request may reuse its id.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from qdata.v1 import budget_pb2
from qdata_server import audit
from qdata_server.budgets import convert, rules, time_zones
from qdata_server.db.connection import Conn
from qdata_server.db.sql import fetch_row
from qdata_server.db.transactions import acting_for
from qdata_server.errors import FieldViolation, InvalidArgument
from qdata_server.idempotency import Held, RequestKey, request_key
from qdata_server.validation import Violations, mask_flags, mask_paths

if TYPE_CHECKING:
    from qdata_server.deps import Deps

# The output-only fields of a Budget in a request: ignored, so left out of the fingerprint.
_OUTPUT_ONLY = ("id", "user_id", "current_period", "create_time", "update_time")


def _once(action: str, key: RequestKey, summary: dict[str, Any]) -> dict[str, Any]:
    """The key and the audit event (action budgets.<action>, target the budget) as a budget_*_once
    function takes them."""
    return {**key.params(), **audit.params(f"budgets.{action}", summary)}


async def create_budget(deps: Deps, request: budget_pb2.CreateBudgetRequest) -> budget_pb2.CreateBudgetResponse:
    given = request.budget
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    if not request.HasField("budget"):
        v.add("budget", "is required (limit_micros and period at least)")
    display_name = rules.display_name(v, "budget.display_name", given.display_name)
    currency = rules.currency(v, "budget.currency_code", given.currency_code)
    limit = rules.limit(v, "budget.limit_micros", given.limit_micros)
    period = rules.period(v, "budget.period", given.period)
    time_zone = rules.time_zone(v, "budget.time_zone", given.time_zone)
    model_id = rules.model_id(v, "budget.model_id", given.model_id)
    caller = rules.caller(v, "budget.caller", given.caller)
    enforcement = rules.enforcement(v, "budget.enforcement", given.enforcement)
    thresholds = rules.thresholds(v, "budget.alert_thresholds_percent", list(given.alert_thresholds_percent))
    v.raise_if_any()
    assert user_id is not None  # raise_if_any() passed
    rules.check_supported("budget.currency_code", currency, deps.settings.ledger_currencies)
    if not await time_zones.known(deps, time_zone):
        raise InvalidArgument([FieldViolation("budget.time_zone", rules.TIME_ZONE_UNKNOWN)])

    # The request as understood: defaults filled in, thresholds sorted, output-only fields dropped,
    # so a replay that spells a default out (or orders its thresholds otherwise) matches.
    canonical = budget_pb2.CreateBudgetRequest()
    canonical.CopyFrom(request)
    for name in _OUTPUT_ONLY:
        canonical.budget.ClearField(name)
    canonical.budget.currency_code = currency
    canonical.budget.time_zone = time_zone
    canonical.budget.enforcement = rules.ENFORCEMENT_FROM_DB[enforcement]
    del canonical.budget.alert_thresholds_percent[:]
    canonical.budget.alert_thresholds_percent.extend(thresholds)
    key = request_key(request, user_id=user_id, canonical=canonical)
    params = {
        "user_id": user_id,
        "display_name": display_name,
        "currency_code": currency,
        "limit_micros": limit,
        "period": period,
        "time_zone": time_zone,
        "model_id": model_id,
        "caller": caller,
        "enforcement": enforcement,
        "thresholds": thresholds,
        "max_budgets": rules.MAX_BUDGETS_PER_USER,
    }
    summary = {
        "currency_code": currency,
        "limit_micros": limit,
        "period": period,
        "time_zone": time_zone,
        "enforcement": enforcement,
        "model_scoped": model_id is not None,
        "caller_scoped": caller is not None,
        "alert_thresholds_percent": thresholds,
    }

    async def work(conn: Conn) -> budget_pb2.CreateBudgetResponse | Held:
        row = await fetch_row(conn, "budget_create_once", {**params, **_once("CreateBudget", key, summary)})
        if not row["claimed"]:
            return Held.of(row)
        return budget_pb2.CreateBudgetResponse(budget=convert.budget(row))

    return await deps.idempotent_once(budget_pb2.CreateBudgetResponse, work, key=key, acting=acting_for(user_id))


async def update_budget(deps: Deps, request: budget_pb2.UpdateBudgetRequest) -> budget_pb2.UpdateBudgetResponse:
    paths = mask_paths("update_mask", list(request.update_mask.paths), set(rules.UPDATABLE_PATHS))
    given = request.budget
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    budget_id = v.uuid("budget.id", given.id)
    # Only the fields the mask names are read (and checked); the others are ignored.
    display_name = rules.display_name(v, "budget.display_name", given.display_name) if "display_name" in paths else ""
    limit = rules.limit(v, "budget.limit_micros", given.limit_micros) if "limit_micros" in paths else None
    enforcement = rules.enforcement(v, "budget.enforcement", given.enforcement) if "enforcement" in paths else "hard"
    thresholds = (
        rules.thresholds(v, "budget.alert_thresholds_percent", list(given.alert_thresholds_percent))
        if "alert_thresholds_percent" in paths
        else []
    )
    v.raise_if_any()
    assert user_id is not None and budget_id is not None  # raise_if_any() passed

    # The request as understood: the budget's id and the masked fields only (the others are
    # ignored), defaults filled in, the mask's paths sorted.
    understood = budget_pb2.Budget(id=given.id)
    if "display_name" in paths:
        understood.display_name = display_name
    if limit is not None:
        understood.limit_micros = limit
    if "enforcement" in paths:
        understood.enforcement = rules.ENFORCEMENT_FROM_DB[enforcement]
    if "alert_thresholds_percent" in paths:
        understood.alert_thresholds_percent.extend(thresholds)
    canonical = budget_pb2.UpdateBudgetRequest(user_id=request.user_id, budget=understood)
    canonical.update_mask.paths.extend(sorted(paths))
    key = request_key(request, user_id=user_id, canonical=canonical)
    params = {
        "user_id": user_id,
        "budget_id": budget_id,
        "display_name": display_name,
        "limit_micros": limit,
        "enforcement": enforcement,
        "thresholds": thresholds,
        **mask_flags(paths, rules.UPDATABLE_PATHS),
    }
    summary: dict[str, Any] = {"fields": sorted(paths)}
    if limit is not None:
        summary["limit_micros"] = limit
    if "enforcement" in paths:
        summary["enforcement"] = enforcement
    if "alert_thresholds_percent" in paths:
        summary["alert_thresholds_percent"] = thresholds

    async def work(conn: Conn) -> budget_pb2.UpdateBudgetResponse | Held:
        row = await fetch_row(conn, "budget_update_once", {**params, **_once("UpdateBudget", key, summary)})
        if not row["claimed"]:
            return Held.of(row)
        return budget_pb2.UpdateBudgetResponse(budget=convert.budget(row))

    return await deps.idempotent_once(budget_pb2.UpdateBudgetResponse, work, key=key, acting=acting_for(user_id))


async def delete_budget(deps: Deps, request: budget_pb2.DeleteBudgetRequest) -> budget_pb2.DeleteBudgetResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    budget_id = v.uuid("budget_id", request.budget_id)
    v.raise_if_any()
    assert user_id is not None and budget_id is not None  # raise_if_any() passed
    key = request_key(request, user_id=user_id)
    params: dict[str, uuid.UUID] = {"user_id": user_id, "budget_id": budget_id}

    async def work(conn: Conn) -> budget_pb2.DeleteBudgetResponse | Held:
        row = await fetch_row(conn, "budget_delete_once", {**params, **_once("DeleteBudget", key, {})})
        if not row["claimed"]:
            return Held.of(row)
        return budget_pb2.DeleteBudgetResponse()

    return await deps.idempotent_once(budget_pb2.DeleteBudgetResponse, work, key=key, acting=acting_for(user_id))
