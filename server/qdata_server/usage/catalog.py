"""The model catalog: UpsertModel, GetModel, ListModels, ListModelPrices.

Models change in place (status, names); prices never do: each UpsertModel with a price adds an
immutable version with its effective time, possibly ahead, and usage is priced by the version in
force at its call time. All versions of a model share one currency, fixed by the first.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from qdata.v1 import usage_pb2
from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server import audit
from qdata_server.db.connection import Conn
from qdata_server.db.sql import fetch_all, fetch_one, fetch_row
from qdata_server.db.transactions import ACTING_FOR_NO_USER
from qdata_server.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from qdata_server.ledger import rules as money
from qdata_server.pagination import keyset, page_size
from qdata_server.usage import convert, rules
from qdata_server.validation import Violations, mask_flags

if TYPE_CHECKING:
    from qdata_server.deps import Deps

_CATALOG_PATHS = ("provider", "display_name", "context_window_tokens", "status")


def model_not_found() -> NotFound:
    return NotFound("model not found", reason=ErrorReason.ERROR_REASON_MODEL_NOT_FOUND)


def _mask(v: Violations, paths: list[str]) -> set[str]:
    """The catalog fields an update changes: the whitelisted paths, "*" for all of them."""
    chosen: set[str] = set()
    for path in paths:
        if path == "*":
            chosen.update(_CATALOG_PATHS)
        elif path in _CATALOG_PATHS:
            chosen.add(path)
        else:
            v.add("update_mask", f"unknown path {path[:100]!r}; allowed: {', '.join(_CATALOG_PATHS)} or *")
    if len(set(paths)) != len(paths):
        v.add("update_mask", "names a path twice")
    return chosen


def _price_values(v: Violations, request: usage_pb2.UpsertModelRequest, now: datetime.datetime) -> dict[str, Any]:
    price = request.price
    if price.model_id and price.model_id != request.model.id:
        v.add("price.model_id", "must be empty or equal to model.id")
    currency = money.currency(v, "price.currency_code", price.currency_code)
    values: dict[str, Any] = {"currency_code": currency, "effective_at": None}
    for kind in convert.TOKEN_KINDS:
        field = convert.price_field(kind)
        values[kind] = rules.bounded(v, f"price.{field}", getattr(price, field), rules.MAX_PRICE_MICROS, " micro-units")
    if price.HasField("effective_time"):
        effective = rules.timestamp(v, "price.effective_time", price.effective_time)
        if effective is not None and effective < now:
            v.add("price.effective_time", "must not be in the past (leave it unset for 'now')")
        values["effective_at"] = effective
    return values


async def upsert_model(deps: Deps, request: usage_pb2.UpsertModelRequest) -> usage_pb2.UpsertModelResponse:
    v = Violations()
    m = request.model
    model_id = rules.model_id(v, "model.id", m.id)
    rules.provider(v, "model.provider", m.provider, required=False)
    display_name = v.text("model.display_name", m.display_name, rules.MAX_DISPLAY_NAME_LENGTH)
    rules.bounded(v, "model.context_window_tokens", m.context_window_tokens, rules.MAX_CONTEXT_WINDOW_TOKENS)
    if m.status not in rules.STATUS_FROM_PROTO and m.status != usage_pb2.MODEL_STATUS_UNSPECIFIED:
        v.add("model.status", "is not a known ModelStatus")
    paths = _mask(v, list(request.update_mask.paths))
    if "status" in paths and m.status == usage_pb2.MODEL_STATUS_UNSPECIFIED:
        v.add("model.status", "must be ACTIVE or DEPRECATED when update_mask names it")
    if "provider" in paths and not m.provider:
        v.add("model.provider", "is required when update_mask names it")
    has_price = request.HasField("price")
    price = _price_values(v, request, datetime.datetime.now(datetime.UTC)) if has_price else None
    v.raise_if_any()
    if price is not None:
        money.check_supported("price.currency_code", price["currency_code"], deps.settings.ledger_currencies)
    fields = {
        "model_id": model_id,
        "provider": m.provider,
        "display_name": display_name,
        "context_window_tokens": m.context_window_tokens,
        "status": rules.STATUS_FROM_PROTO.get(m.status, "active"),
    }

    async def work(conn: Conn) -> usage_pb2.UpsertModelResponse:
        created = False
        row = await fetch_one(conn, "usage_lock_model", {"model_id": model_id})
        if row is None:
            if not m.provider:
                raise InvalidArgument([FieldViolation("model.provider", "is required to create a model")])
            row = await fetch_one(conn, "usage_insert_model", fields)
            created = row is not None
            if row is None:  # created concurrently: change it like any existing model
                row = await fetch_row(conn, "usage_lock_model", {"model_id": model_id})
        if not created and paths:
            await fetch_one(conn, "usage_update_model", {**fields, **mask_flags(paths, _CATALOG_PATHS)})
        added = None
        if price is not None:
            if row["currency_code"] is not None and row["currency_code"] != price["currency_code"]:
                raise FailedPrecondition(
                    f"the model's prices are in {row['currency_code']}; a new version must use it too",
                    reason=ErrorReason.ERROR_REASON_CURRENCY_MISMATCH,
                )
            added = await fetch_one(conn, "usage_insert_price", {"model_id": model_id, **price})
        await audit.record(
            conn,
            action="usage.UpsertModel",
            target_type="model",
            target_id=model_id,
            user_id=None,
            summary={
                "created": created,
                "fields": sorted(_CATALOG_PATHS) if created else sorted(paths),
                "price_id": str(added["price_id"]) if added else None,
            },
        )
        current = await fetch_row(conn, "usage_get_model", {"model_id": model_id})
        return usage_pb2.UpsertModelResponse(
            model=convert.model(current), created=created, price=convert.price(added) if added else None
        )

    return await deps.idempotent(request, usage_pb2.UpsertModelResponse, work)


async def get_model(deps: Deps, request: usage_pb2.GetModelRequest) -> usage_pb2.GetModelResponse:
    v = Violations()
    model_id = rules.model_id(v, "model_id", request.model_id)
    v.raise_if_any()
    row = await deps.transaction(
        lambda conn: fetch_one(conn, "usage_get_model", {"model_id": model_id}), acting=ACTING_FOR_NO_USER
    )
    if row is None:
        raise model_not_found()
    return usage_pb2.GetModelResponse(model=convert.model(row))


async def list_models(deps: Deps, request: usage_pb2.ListModelsRequest) -> usage_pb2.ListModelsResponse:
    v = Violations()
    provider = rules.provider_filter(v, "provider", request.provider)
    status = rules.status_filter(v, "status", request.status)
    if request.page_size < 0:
        v.add("page_size", "must not be negative")
    v.raise_if_any()
    limit = page_size(request.page_size)
    filters = {"provider": provider, "status": status}
    tokens = await deps.page_tokens()
    cursor = tokens.open(request.page_token, "ListModels", filters)
    rows = await deps.transaction(
        lambda conn: fetch_all(conn, "usage_list_models", {**filters, **keyset(cursor, "after_model_id", limit)}),
        acting=ACTING_FOR_NO_USER,
    )
    rows, next_token = tokens.page(rows, limit, "ListModels", filters, lambda last: [last["model_id"]])
    return usage_pb2.ListModelsResponse(models=[convert.model(r) for r in rows], next_page_token=next_token)


async def list_model_prices(deps: Deps, request: usage_pb2.ListModelPricesRequest) -> usage_pb2.ListModelPricesResponse:
    v = Violations()
    model_id = rules.model_id(v, "model_id", request.model_id)
    if request.page_size < 0:
        v.add("page_size", "must not be negative")
    v.raise_if_any()
    limit = page_size(request.page_size)
    filters = {"model_id": model_id}
    tokens = await deps.page_tokens()
    cursor = tokens.open(request.page_token, "ListModelPrices", filters)

    async def work(conn: Conn) -> list[dict[str, Any]]:
        if await fetch_one(conn, "usage_model_exists", {"model_id": model_id}) is None:
            raise model_not_found()
        return await fetch_all(
            conn,
            "usage_list_model_prices",
            {"model_id": model_id, **keyset(cursor, "before_effective_at", limit)},
        )

    rows = await deps.transaction(work, acting=ACTING_FOR_NO_USER)
    rows, next_token = tokens.page(
        rows, limit, "ListModelPrices", filters, lambda last: [last["effective_at"].isoformat()]
    )
    return usage_pb2.ListModelPricesResponse(prices=[convert.price(r) for r in rows], next_page_token=next_token)
