"""UsageService statistics and rankings against a brute-force computation over the same records.

Records are spread over the last week (call_time may be up to 7 days old) across models, users,
outcomes, own-key calls and latencies, recorded by concurrent batches, with part of them folded
into the rollups and part still queued; GetUserUsage, GetModelStats and ListTopModels must equal
what the test computes from the records themselves, for windows that start and end anywhere
(raw edges, whole hours, whole days), before and after everything is folded. Latency
percentiles may differ from the exact nearest-rank values by the documented 2.5%.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import random
from collections import defaultdict
from fractions import Fraction

import grpc
from google.protobuf import duration_pb2

from qdata.v1 import usage_pb2
from tests.support.calls import expect_error, rid
from tests.support.database import sql
from tests.support.usage import ERROR, SUCCESS, fold, funded_user, ms, nearest_rank, now, ts

MODELS = {
    # model id: (provider, currency, input, output, cached, reasoning price per million)
    "openai/gpt-4o-mini": ("openai", "USD", 150_000, 600_000, 75_000, 600_000),
    "anthropic/claude-3-5-haiku": ("anthropic", "USD", 800_000, 4_000_000, 80_000, 4_000_000),
    "meta/llama-3.1-70b": ("meta", "USD", 880_000, 880_000, 880_000, 880_000),
    "mistral/mistral-large": ("mistral", "EUR", 2_000_000, 6_000_000, 200_000, 6_000_000),
}
TOLERANCE = Fraction(25, 1000)  # documented: within 2.5% of the exact nearest-rank value


@dataclasses.dataclass(frozen=True)
class Rec:
    user_id: str
    model_id: str
    at: datetime.datetime
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    error: bool
    latency_ns: int | None
    cost: int
    billed: bool

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.cached_input_tokens + self.output_tokens + self.reasoning_tokens

    @classmethod
    def of(cls, record: usage_pb2.UsageRecord) -> Rec:
        return cls(
            user_id=record.user_id,
            model_id=record.model_id,
            at=record.call_time.ToDatetime(datetime.UTC),
            input_tokens=record.input_tokens,
            cached_input_tokens=record.cached_input_tokens,
            output_tokens=record.output_tokens,
            reasoning_tokens=record.reasoning_tokens,
            error=record.outcome == ERROR,
            latency_ns=record.latency.ToNanoseconds() if record.HasField("latency") else None,
            cost=record.cost_micros,
            billed=record.billed,
        )


async def catalog(api) -> None:
    """The models, each with a price version in force since 8 days ago (set in SQL: the API only
    schedules prices ahead, and these records go back a week)."""
    for model_id, (provider, currency, *prices) in MODELS.items():
        await api.usage.UpsertModel(
            usage_pb2.UpsertModelRequest(
                request_id=rid(), model=usage_pb2.Model(id=model_id, provider=provider, display_name=model_id)
            )
        )
        await sql(
            api,
            "INSERT INTO model_prices (model_id, currency_code, input_micros_per_million, output_micros_per_million,"
            " cached_input_micros_per_million, reasoning_micros_per_million, effective_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, now() - interval '8 days')",
            [model_id, currency, *prices],
        )
        await sql(api, "UPDATE models SET currency_code = %s WHERE model_id = %s", [currency, model_id])


def random_requests(rng: random.Random, users: list[str], count: int) -> list[usage_pb2.RecordUsageRequest]:
    start = now() - datetime.timedelta(days=6, hours=23)
    span = (datetime.timedelta(days=6, hours=22)).total_seconds()
    models = list(MODELS)
    requests = []
    for _ in range(count):
        model = rng.choice(models[:3] if rng.random() < 0.85 else models)
        error = rng.random() < 0.12
        request = usage_pb2.RecordUsageRequest(
            request_id=rid(),
            # A few users make most calls, as in life.
            user_id=users[min(int(rng.expovariate(0.5)), len(users) - 1)],
            model_id=model,
            input_tokens=rng.randrange(0, 5000),
            cached_input_tokens=rng.choice([0, 0, rng.randrange(0, 3000)]),
            output_tokens=rng.randrange(0, 1500),
            reasoning_tokens=rng.choice([0, 0, 0, rng.randrange(0, 4000)]),
            outcome=ERROR if error else SUCCESS,
            error_code="http_500" if error else "",
            # Own-key calls for the EUR model: nobody holds EUR credits here.
            used_own_provider_key=model == "mistral/mistral-large" or rng.random() < 0.15,
            call_time=ts(start + datetime.timedelta(seconds=rng.uniform(0, span))),
        )
        if rng.random() < 0.9:
            request.latency.CopyFrom(ms(10 ** rng.uniform(1.5, 4.5)))
        requests.append(request)
    return requests


async def record_all(api, requests: list[usage_pb2.RecordUsageRequest]) -> list[Rec]:
    """Records through concurrent batches and single calls; every one must succeed."""
    batches = [requests[i : i + 60] for i in range(0, len(requests) - 20, 60)]
    singles = requests[sum(len(b) for b in batches) :]
    answers = await asyncio.gather(
        *(api.usage.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=b)) for b in batches),
        *(api.usage.RecordUsage(r) for r in singles),
    )
    records = []
    for answer in answers:
        if isinstance(answer, usage_pb2.RecordUsageBatchResponse):
            assert answer.failed_count == 0, [r.error_message for r in answer.results if r.error_code]
            records += [Rec.of(r.record) for r in answer.results]
        else:
            records.append(Rec.of(answer.record))
    return records


def within(records: list[Rec], start: datetime.datetime, end: datetime.datetime) -> list[Rec]:
    return [r for r in records if start <= r.at < end]


def totals(records: list[Rec]) -> dict[str, int]:
    return {
        "request_count": len(records),
        "error_count": sum(r.error for r in records),
        "input_tokens": sum(r.input_tokens for r in records),
        "cached_input_tokens": sum(r.cached_input_tokens for r in records),
        "output_tokens": sum(r.output_tokens for r in records),
        "reasoning_tokens": sum(r.reasoning_tokens for r in records),
        "total_tokens": sum(r.tokens for r in records),
        "cost_micros": sum(r.cost for r in records),
        "billed_micros": sum(r.cost for r in records if r.billed),
    }


def as_dict(t: usage_pb2.UsageTotals) -> dict[str, int]:
    return {field: getattr(t, field) for field in totals([])}


def close_enough(reported: duration_pb2.Duration, exact: int) -> bool:
    return abs(reported.ToNanoseconds() - exact) <= TOLERANCE * exact + 1


def time_of(t) -> datetime.datetime:
    return t.ToDatetime(datetime.UTC)


async def check_user_usage(api, records: list[Rec], user_id: str, start, end) -> None:
    response = await api.usage.GetUserUsage(
        usage_pb2.GetUserUsageRequest(user_id=user_id, start_time=ts(start), end_time=ts(end))
    )
    mine = [r for r in within(records, start, end) if r.user_id == user_id and MODELS[r.model_id][1] == "USD"]
    assert as_dict(response.totals) == totals(mine)
    by_model = defaultdict(list)
    by_day = defaultdict(list)
    for r in mine:
        by_model[r.model_id].append(r)
        by_day[r.at.replace(hour=0, minute=0, second=0, microsecond=0)].append(r)
    expected_models = sorted(by_model, key=lambda m: (-totals(by_model[m])["cost_micros"], m))
    assert [m.model_id for m in response.models] == expected_models
    assert [as_dict(m.totals) for m in response.models] == [totals(by_model[m]) for m in expected_models]
    assert [time_of(d.day_start_time) for d in response.days] == sorted(by_day)
    assert [as_dict(d.totals) for d in response.days] == [totals(by_day[d]) for d in sorted(by_day)]
    assert response.currency_code == "USD"


async def check_model_stats(api, records: list[Rec], model_id: str, ratings: dict, **window) -> None:
    stats = (await api.usage.GetModelStats(usage_pb2.GetModelStatsRequest(model_id=model_id, **window))).stats
    start, end = time_of(stats.start_time), time_of(stats.end_time)
    mine = [r for r in within(records, start, end) if r.model_id == model_id]
    expected = totals(mine)
    got = {f: getattr(stats, f) for f in expected if f != "cost_micros"}
    assert got == {f: v for f, v in expected.items() if f != "cost_micros"}, (model_id, window)
    assert stats.unique_users == len({r.user_id for r in mine})
    assert stats.error_rate == (expected["error_count"] / len(mine) if mine else 0.0)
    assert stats.currency_code == MODELS[model_id][1]
    latencies = [r.latency_ns for r in mine if not r.error and r.latency_ns is not None]
    if latencies:
        assert close_enough(stats.latency_p50, nearest_rank(latencies, 50)), (stats.latency_p50, latencies)
        assert close_enough(stats.latency_p95, nearest_rank(latencies, 95))
    else:
        assert not stats.HasField("latency_p50") and not stats.HasField("latency_p95")
    stars = ratings.get(model_id, [])
    assert stats.rating_count == len(stars)
    assert stats.average_rating == (sum(stars) / len(stars) if stars else 0.0)


def expected_ranking(records, ratings, metric, start, end, *, provider="", min_calls=0, currency="USD", limit=10):
    length = end - start
    rows = []
    for model_id, (model_provider, model_currency, *_) in MODELS.items():
        if provider and model_provider != provider:
            continue
        now_ = [r for r in within(records, start, end) if r.model_id == model_id]
        before = [r for r in within(records, start - length, start) if r.model_id == model_id]
        stars = ratings.get(model_id, [])
        calls = len(now_)
        if calls < min_calls:
            continue
        growth = Fraction(calls - len(before), max(len(before), 1))
        figures = (model_id, calls, sum(r.tokens for r in now_), sum(r.cost for r in now_ if r.billed), len(before))
        if metric == usage_pb2.MODEL_METRIC_REQUESTS and calls:
            rows.append(((-calls, model_id), figures))
        elif metric == usage_pb2.MODEL_METRIC_TOKENS and calls:
            rows.append(((-figures[2], model_id), figures))
        elif metric == usage_pb2.MODEL_METRIC_SPEND and calls and model_currency == currency:
            rows.append(((-figures[3], model_id), figures))
        elif metric == usage_pb2.MODEL_METRIC_RATING and stars:
            rows.append(((-Fraction(sum(stars), len(stars)), -len(stars), model_id), figures))
        elif metric == usage_pb2.MODEL_METRIC_GROWTH and (calls or before):
            rows.append(((-growth, model_id), figures))
    rows.sort()
    return [figures for _, figures in rows[:limit]]


async def check_ranking(api, records, ratings, metric, **request) -> list[str]:
    response = await api.usage.ListTopModels(usage_pb2.ListTopModelsRequest(metric=metric, **request))
    start, end = time_of(response.start_time), time_of(response.end_time)
    expected = expected_ranking(
        records,
        ratings,
        metric,
        start,
        end,
        provider=request.get("provider", ""),
        min_calls=request.get("min_request_count", 0),
        currency=request.get("currency_code", "") or "USD",
        limit=request.get("limit", 0) or 10,
    )
    got = [
        (m.model_id, m.request_count, m.total_tokens, m.billed_micros, m.previous_request_count)
        for m in response.models
    ]
    assert got == expected, (usage_pb2.ModelMetric.Name(metric), request)
    assert [m.rank for m in response.models] == list(range(1, len(got) + 1))
    for m in response.models:
        assert m.growth == float(Fraction(m.request_count - m.previous_request_count, max(m.previous_request_count, 1)))
        assert m.provider == MODELS[m.model_id][0] and m.currency_code == MODELS[m.model_id][1]
    return [m.model_id for m in response.models]


async def check_everything(api, records, users, ratings) -> None:
    t = now()
    day = datetime.timedelta(days=1)
    midnight = t.replace(hour=0, minute=0, second=0, microsecond=0)
    ranges = [
        (t - 7 * day, t),  # everything, raw edges at both ends
        (t - datetime.timedelta(days=5, hours=7, minutes=13), t - datetime.timedelta(days=1, hours=2, minutes=5)),
        (midnight - 4 * day, midnight - day),  # whole days only
        (t - datetime.timedelta(hours=30), t - datetime.timedelta(hours=29, minutes=20)),  # inside one hour
    ]
    for user_id in users[:4]:
        for start, end in ranges:
            await check_user_usage(api, records, user_id, start, end)
    for model_id in MODELS:
        for start, end in ranges:
            await check_model_stats(api, records, model_id, ratings, start_time=ts(start), end_time=ts(end))
        for hours in (24, 72, 7 * 24 - 1):
            window = duration_pb2.Duration(seconds=hours * 3600)
            await check_model_stats(api, records, model_id, ratings, window=window)
    three_days = duration_pb2.Duration(seconds=3 * 86400)
    for metric in (
        usage_pb2.MODEL_METRIC_REQUESTS,
        usage_pb2.MODEL_METRIC_TOKENS,
        usage_pb2.MODEL_METRIC_SPEND,
        usage_pb2.MODEL_METRIC_RATING,
        usage_pb2.MODEL_METRIC_GROWTH,
    ):
        await check_ranking(api, records, ratings, metric, window=three_days)
    await check_ranking(api, records, ratings, usage_pb2.MODEL_METRIC_REQUESTS, window=three_days, limit=2)
    await check_ranking(api, records, ratings, usage_pb2.MODEL_METRIC_TOKENS, window=three_days, provider="meta")
    await check_ranking(api, records, ratings, usage_pb2.MODEL_METRIC_SPEND, window=three_days, currency_code="EUR")
    await check_ranking(
        api, records, ratings, usage_pb2.MODEL_METRIC_GROWTH, start_time=ts(ranges[1][0]), end_time=ts(ranges[1][1])
    )
    busiest = await check_ranking(api, records, ratings, usage_pb2.MODEL_METRIC_REQUESTS, window=three_days)
    calls = len([r for r in within(records, t - 3 * day, t) if r.model_id == busiest[0]])
    await check_ranking(
        api, records, ratings, usage_pb2.MODEL_METRIC_RATING, window=three_days, min_request_count=calls
    )


async def test_statistics_and_rankings_match_a_brute_force_computation(unfolded_api):
    api = unfolded_api
    rng = random.Random(5)
    await catalog(api)
    users = [(await funded_user(api, 100_000_000)).id for _ in range(8)]
    requests = random_requests(rng, users, 420)
    # Half recorded and folded, then half recorded with a fold running in the middle of it.
    records = await record_all(api, requests[:210])
    assert await fold(api) == 210
    second = asyncio.ensure_future(record_all(api, requests[210:]))
    await asyncio.sleep(0.05)
    await fold(api)
    records += await second
    assert len(await sql(api, "SELECT 1 FROM usage_rollup_queue")) > 0

    ratings: dict[str, list[int]] = defaultdict(list)
    for i, user_id in enumerate(users):
        for model_id in list(MODELS)[: 1 + i % 3]:
            stars = 1 + (i * 7 + len(model_id)) % 5
            await api.usage.RateModel(
                usage_pb2.RateModelRequest(request_id=rid(), user_id=user_id, model_id=model_id, stars=stars)
            )
            ratings[model_id].append(stars)

    await check_everything(api, records, users, ratings)
    assert await fold(api) > 0
    assert not await sql(api, "SELECT 1 FROM usage_rollup_queue")
    await check_everything(api, records, users, ratings)


async def test_windows_and_ranking_requests_are_validated(api):
    await catalog(api)
    bad = [
        usage_pb2.GetModelStatsRequest(model_id="openai/gpt-4o-mini", window=duration_pb2.Duration(seconds=59)),
        usage_pb2.GetModelStatsRequest(
            model_id="openai/gpt-4o-mini", window=duration_pb2.Duration(seconds=367 * 86400)
        ),
        usage_pb2.GetModelStatsRequest(
            model_id="openai/gpt-4o-mini", window=duration_pb2.Duration(seconds=3600), start_time=ts(now())
        ),
        usage_pb2.GetModelStatsRequest(model_id="openai/gpt-4o-mini", end_time=ts(now())),
        usage_pb2.GetModelStatsRequest(
            model_id="openai/gpt-4o-mini", start_time=ts(now()), end_time=ts(now() - datetime.timedelta(hours=1))
        ),
        usage_pb2.GetModelStatsRequest(
            model_id="openai/gpt-4o-mini",
            start_time=ts(now() - datetime.timedelta(days=400)),
            end_time=ts(now()),
        ),
    ]
    for request in bad:
        await expect_error(api.usage.GetModelStats(request), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    await expect_error(
        api.usage.GetModelStats(usage_pb2.GetModelStatsRequest(model_id="no/such")),
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
    )
    for request in (
        usage_pb2.ListTopModelsRequest(),
        usage_pb2.ListTopModelsRequest(metric=usage_pb2.MODEL_METRIC_REQUESTS, limit=-1),
        usage_pb2.ListTopModelsRequest(metric=usage_pb2.MODEL_METRIC_REQUESTS, min_request_count=-1),
        usage_pb2.ListTopModelsRequest(metric=usage_pb2.MODEL_METRIC_REQUESTS, provider="Not A Provider"),
    ):
        await expect_error(api.usage.ListTopModels(request), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    user = await funded_user(api, 0)
    for request, reason in (
        (usage_pb2.GetUserUsageRequest(user_id=user.id), "INVALID_ARGUMENT"),
        (
            usage_pb2.GetUserUsageRequest(user_id=user.id, start_time=ts(now()), currency_code="EUR"),
            "UNSUPPORTED_CURRENCY",
        ),
        (
            usage_pb2.GetUserUsageRequest(user_id=user.id, start_time=ts(now() + datetime.timedelta(hours=1))),
            "INVALID_ARGUMENT",
        ),
    ):
        await expect_error(api.usage.GetUserUsage(request), grpc.StatusCode.INVALID_ARGUMENT, reason)
    await expect_error(
        api.usage.GetUserUsage(
            usage_pb2.GetUserUsageRequest(user_id=rid(), start_time=ts(now() - datetime.timedelta(days=1)))
        ),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )
    # An empty window answers zeros; the default window is the last 24 hours.
    stats = (await api.usage.GetModelStats(usage_pb2.GetModelStatsRequest(model_id="openai/gpt-4o-mini"))).stats
    assert stats.request_count == 0 and stats.error_rate == 0.0 and not stats.HasField("latency_p50")
    assert time_of(stats.end_time) - time_of(stats.start_time) == datetime.timedelta(hours=24)
