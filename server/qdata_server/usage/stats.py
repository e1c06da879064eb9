"""GetUserUsage, GetModelStats and ListTopModels: exact aggregates that stay fast.

Each read runs in one REPEATABLE READ snapshot and adds three sources (see windows.py and the
header of 0004_usage.sql): folded rollups for whole days and hours, the queued rows the folder
has not reached yet, and raw usage records for the window's edges that are not whole hours (or
days, for GetUserUsage). Every committed record is in exactly one of the rollups or the queue,
so sums and counts are exact whatever the folder's progress; the work depends on the window's
length in hours and days, not on how many records it holds.

Latency percentiles come from per-bucket counts of a logarithmic histogram (DDSketch's mapping,
buckets 5% wide): the reported value is within 2.5% of the exact nearest-rank percentile.
"""

from __future__ import annotations

import datetime
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from qdata.v1 import usage_pb2
from qdata_server.convert import same_named, timestamp
from qdata_server.db.connection import Conn, Row
from qdata_server.db.sql import fetch_all, fetch_one, fetch_row
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS, acting_for
from qdata_server.ledger import rules as money
from qdata_server.pagination import page_size
from qdata_server.usage import convert, rules, windows
from qdata_server.usage.catalog import model_not_found
from qdata_server.users.accounts import user_not_found
from qdata_server.validation import Violations

if TYPE_CHECKING:
    from qdata_server.deps import Deps

DEFAULT_TOP = 10
MAX_TOP = 100


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _add(into: dict[str, int], row: dict[str, Any]) -> None:
    for field in convert.TOTAL_COLUMNS:
        into[field] = into.get(field, 0) + row[field]


def _zero() -> dict[str, int]:
    return dict.fromkeys(convert.TOTAL_COLUMNS, 0)


async def get_user_usage(deps: Deps, request: usage_pb2.GetUserUsageRequest) -> usage_pb2.GetUserUsageResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    currency = money.currency(v, "currency_code", request.currency_code)
    span = None
    if not request.HasField("start_time"):
        v.add("start_time", "is required")
    else:
        start = rules.timestamp(v, "start_time", request.start_time)
        end = rules.timestamp(v, "end_time", request.end_time) if request.HasField("end_time") else _now()
        if start is not None and end is not None:
            span = rules.time_range(v, start, end)
    v.raise_if_any()
    assert user_id is not None and span is not None  # raise_if_any() passed
    money.check_supported("currency_code", currency, deps.settings.ledger_currencies)
    start, end = span
    segments = windows.split_days(start, end)

    async def work(conn: Conn) -> list[dict[str, Any]]:
        if await fetch_one(conn, "usage_user_state", {"user_id": user_id}) is None:
            raise user_not_found()
        return await fetch_all(
            conn, "usage_user_usage", {"user_id": user_id, "currency_code": currency, **segments.params()}
        )

    rows = await deps.transaction(work, snapshot=True, acting=acting_for(user_id))
    total = _zero()
    by_model: dict[str, dict[str, int]] = {}
    by_day: dict[datetime.datetime, dict[str, int]] = {}
    for row in rows:
        _add(total, row)
        _add(by_model.setdefault(row["model_id"], _zero()), row)
        _add(by_day.setdefault(row["day"], _zero()), row)
    models = sorted(by_model.items(), key=lambda item: (-item[1]["cost_micros"], item[0]))
    return usage_pb2.GetUserUsageResponse(
        totals=convert.totals(total),
        models=[usage_pb2.ModelUsage(model_id=m, totals=convert.totals(t)) for m, t in models],
        days=[
            usage_pb2.DailyUsage(day_start_time=timestamp(day), totals=convert.totals(by_day[day]))
            for day in sorted(by_day)
        ],
        currency_code=currency,
        start_time=timestamp(start),
        end_time=timestamp(end),
    )


async def get_model_stats(deps: Deps, request: usage_pb2.GetModelStatsRequest) -> usage_pb2.GetModelStatsResponse:
    v = Violations()
    model_id = rules.model_id(v, "model_id", request.model_id)
    span = rules.window(v, request, _now())
    v.raise_if_any()
    assert span is not None  # raise_if_any() passed
    start, end = span
    segments = windows.split(start, end)

    async def work(conn: Conn) -> tuple[Row, Row]:
        model = await fetch_one(conn, "usage_model_exists", {"model_id": model_id})
        if model is None:
            raise model_not_found()
        return model, await fetch_row(conn, "usage_model_stats", {"model_id": model_id, **segments.params()})

    # A model's statistics count every user's calls (unique users included): a cross-user path.
    model, row = await deps.transaction(work, snapshot=True, acting=ACTING_FOR_ALL_USERS)
    stats = usage_pb2.ModelStats(
        model_id=model_id,
        start_time=timestamp(start),
        end_time=timestamp(end),
        **same_named(row, ("request_count", "error_count", *convert.TOKEN_COLUMNS, "unique_users", "billed_micros")),
        error_rate=row["error_count"] / row["request_count"] if row["request_count"] else 0.0,
        total_tokens=convert.total_tokens(row),
        currency_code=model["currency_code"] or "",
        average_rating=row["stars_sum"] / row["rating_count"] if row["rating_count"] else 0.0,
        rating_count=row["rating_count"],
    )
    if row["latency_count"]:
        stats.latency_p50.CopyFrom(convert.duration(convert.bucket_value_nanos(row["p50_bucket"])))
        stats.latency_p95.CopyFrom(convert.duration(convert.bucket_value_nanos(row["p95_bucket"])))
    return usage_pb2.GetModelStatsResponse(stats=stats)


def _growth(current: int, previous: int) -> Fraction:
    return Fraction(current - previous, max(previous, 1))


async def list_top_models(deps: Deps, request: usage_pb2.ListTopModelsRequest) -> usage_pb2.ListTopModelsResponse:
    v = Violations()
    metric = request.metric
    if metric not in (
        usage_pb2.MODEL_METRIC_REQUESTS,
        usage_pb2.MODEL_METRIC_TOKENS,
        usage_pb2.MODEL_METRIC_SPEND,
        usage_pb2.MODEL_METRIC_RATING,
        usage_pb2.MODEL_METRIC_GROWTH,
    ):
        v.add("metric", "is required: REQUESTS, TOKENS, SPEND, RATING or GROWTH")
    span = rules.window(v, request, _now())
    provider = rules.provider_filter(v, "provider", request.provider)
    status = rules.status_filter(v, "status", request.status)
    currency = money.currency(v, "currency_code", request.currency_code)
    if request.min_request_count < 0:
        v.add("min_request_count", "must not be negative")
    if request.limit < 0:
        v.add("limit", "must not be negative")
    v.raise_if_any()
    assert span is not None  # raise_if_any() passed
    limit = page_size(request.limit, field="limit", default=DEFAULT_TOP, maximum=MAX_TOP)
    start, end = span
    current = windows.split(start, end)
    previous = windows.split(start - (end - start), start)
    filters = {"provider": provider, "status": status}

    async def work(conn: Conn) -> tuple[list[Row], list[Row], list[Row]]:
        models = await fetch_all(conn, "usage_ranking_models", filters)
        now_rows = await fetch_all(conn, "usage_model_activity", {**filters, **current.params()})
        before = await fetch_all(conn, "usage_model_activity", {**filters, **previous.params()})
        return models, now_rows, before

    # Rankings aggregate every user's calls: a cross-user path.
    models, now_rows, before = await deps.transaction(work, snapshot=True, acting=ACTING_FOR_ALL_USERS)
    activity = {r["model_id"]: r for r in now_rows}
    earlier = {r["model_id"]: r["request_count"] for r in before}
    ranked: list[tuple[tuple[Any, ...], usage_pb2.RankedModel]] = []
    for m in models:
        act = activity.get(m["model_id"], {"request_count": 0, "total_tokens": 0, "billed_micros": 0})
        calls, prior = act["request_count"], earlier.get(m["model_id"], 0)
        if calls < request.min_request_count:
            continue
        growth = _growth(calls, prior)
        entry = usage_pb2.RankedModel(
            model_id=m["model_id"],
            provider=m["provider"],
            display_name=m["display_name"],
            request_count=calls,
            total_tokens=act["total_tokens"],
            billed_micros=act["billed_micros"],
            currency_code=m["currency_code"] or "",
            average_rating=m["stars_sum"] / m["rating_count"] if m["rating_count"] else 0.0,
            rating_count=m["rating_count"],
            previous_request_count=prior,
            growth=float(growth),
        )
        # Best first: sort keys ascend, so values that rank higher are negated; model_id breaks ties.
        if metric == usage_pb2.MODEL_METRIC_REQUESTS and calls:
            ranked.append(((-calls, m["model_id"]), entry))
        elif metric == usage_pb2.MODEL_METRIC_TOKENS and calls:
            ranked.append(((-act["total_tokens"], m["model_id"]), entry))
        elif metric == usage_pb2.MODEL_METRIC_SPEND and calls and m["currency_code"] == currency:
            ranked.append(((-act["billed_micros"], m["model_id"]), entry))
        elif metric == usage_pb2.MODEL_METRIC_RATING and m["rating_count"]:
            average = Fraction(m["stars_sum"], m["rating_count"])
            ranked.append(((-average, -m["rating_count"], m["model_id"]), entry))
        elif metric == usage_pb2.MODEL_METRIC_GROWTH and (calls or prior):
            ranked.append(((-growth, m["model_id"]), entry))
    ranked.sort(key=lambda pair: pair[0])
    top = [entry for _, entry in ranked[:limit]]
    for position, entry in enumerate(top, start=1):
        entry.rank = position
    return usage_pb2.ListTopModelsResponse(models=top, start_time=timestamp(start), end_time=timestamp(end))
