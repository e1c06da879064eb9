"""UsageService catalog and ratings: UpsertModel, GetModel, ListModels, ListModelPrices, RateModel,
ListModelRatings. Rejected requests are checked for their code, reason and fields, and for
leaving the database as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from qdata.v1 import usage_pb2, user_pb2
from tests.support.calls import create_user, expect_error, outcome, rid
from tests.support.database import sql, table_rows
from tests.support.server import TEST_SETTINGS, start_api, stop_api
from tests.support.usage import create_model, now, price

INVALID = grpc.StatusCode.INVALID_ARGUMENT
MODEL = "openai/gpt-4o-mini"


STATE_TABLES = ("models", "model_prices", "model_ratings", "model_rating_totals", "audit_events", "idempotency_keys")


async def state(api) -> dict[str, Any]:
    return await table_rows(api, *STATE_TABLES)


def upsert(model: dict[str, Any], paths: list[str] | None = None, **fields) -> usage_pb2.UpsertModelRequest:
    request = usage_pb2.UpsertModelRequest(request_id=rid(), model=usage_pb2.Model(**model), **fields)
    if paths is not None:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
    return request


async def test_upsert_creates_changes_and_versions_prices(api):
    created = await create_model(api, MODEL)
    assert created.created and created.model.status == usage_pb2.MODEL_STATUS_ACTIVE
    assert created.model.current_price == created.price and not created.model.HasField("next_price")
    assert created.price.currency_code == "USD" and created.price.input_micros_per_million_tokens == 150_000

    # Only the masked fields change; an empty mask with a price only adds the (scheduled) version.
    changed = await api.usage.UpsertModel(
        upsert(
            {"id": MODEL, "provider": "ignored", "display_name": "GPT-4o mini", "context_window_tokens": 128_000},
            ["display_name", "context_window_tokens"],
        )
    )
    assert not changed.created and not changed.HasField("price")
    assert (changed.model.provider, changed.model.display_name, changed.model.context_window_tokens) == (
        "openai",
        "GPT-4o mini",
        128_000,
    )
    later = now() + datetime.timedelta(days=30)
    request = upsert({"id": MODEL}, price=price(200_000, 800_000, effective=later))
    scheduled = await api.usage.UpsertModel(request)
    assert scheduled.model.next_price == scheduled.price and scheduled.model.current_price == created.price
    assert scheduled.model.display_name == "GPT-4o mini"
    assert await api.usage.UpsertModel(request) == scheduled  # replay
    assert len(await sql(api, "SELECT 1 FROM model_prices")) == 2
    deprecated = await api.usage.UpsertModel(
        upsert({"id": MODEL, "status": usage_pb2.MODEL_STATUS_DEPRECATED}, ["status"])
    )
    assert deprecated.model.status == usage_pb2.MODEL_STATUS_DEPRECATED

    prices = (await api.usage.ListModelPrices(usage_pb2.ListModelPricesRequest(model_id=MODEL))).prices
    assert [p.id for p in prices] == [scheduled.price.id, created.price.id]
    first = await api.usage.ListModelPrices(usage_pb2.ListModelPricesRequest(model_id=MODEL, page_size=1))
    second = await api.usage.ListModelPrices(
        usage_pb2.ListModelPricesRequest(model_id=MODEL, page_size=1, page_token=first.next_page_token)
    )
    assert [p.id for p in (*first.prices, *second.prices)] == [p.id for p in prices]
    assert not second.next_page_token
    got = (await api.usage.GetModel(usage_pb2.GetModelRequest(model_id=MODEL))).model
    assert got == deprecated.model
    audit = await sql(api, "SELECT action, target_id FROM audit_events WHERE action = 'usage.UpsertModel'")
    assert len(audit) == 4 and {a["target_id"] for a in audit} == {MODEL}


async def test_concurrent_upserts_create_a_model_once(api):
    requests = [upsert({"id": "x/racy", "provider": "x", "display_name": f"v{i}"}) for i in range(8)]
    answers = await asyncio.gather(*(api.usage.UpsertModel(r) for r in requests))
    assert sum(a.created for a in answers) == 1
    assert len(await sql(api, "SELECT 1 FROM models")) == 1


async def test_bad_catalog_requests_fail_precisely_and_change_nothing(database_url):
    api = await start_api(database_url, dataclasses.replace(TEST_SETTINGS, ledger_currencies=("EUR", "USD")))
    try:
        await create_model(api, MODEL)
        later = now() + datetime.timedelta(days=1)
        await api.usage.UpsertModel(upsert({"id": MODEL}, price=price(effective=later)))
        before = await state(api)
        cases = [
            (upsert({"id": ""}), ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"model.id"})),
            (upsert({"id": "has space", "provider": "x"}), ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"model.id"})),
            (upsert({"id": "new/model"}), ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"model.provider"})),
            (
                upsert({"id": "new/model", "provider": "Bad"}),
                ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"model.provider"}),
            ),
            (
                upsert({"id": MODEL, "display_name": "x" * 201, "context_window_tokens": -1}, ["display_name"]),
                ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"model.display_name", "model.context_window_tokens"}),
            ),
            (upsert({"id": MODEL}, ["price"]), ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"update_mask"})),
            (upsert({"id": MODEL}, ["status"]), ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"model.status"})),
            (upsert({"id": MODEL, "status": 9}), ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"model.status"})),
            (
                upsert({"id": MODEL}, price=price(effective=now() - datetime.timedelta(minutes=1))),
                ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"price.effective_time"}),
            ),
            (
                upsert({"id": MODEL}, price=price(input_=-1, output=10**12 + 1)),
                (
                    "INVALID_ARGUMENT",
                    "INVALID_ARGUMENT",
                    {"price.input_micros_per_million_tokens", "price.output_micros_per_million_tokens"},
                ),
            ),
            (
                upsert({"id": MODEL}, price=usage_pb2.ModelPrice(model_id="other/model")),
                ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"price.model_id"}),
            ),
            (
                upsert({"id": MODEL}, price=price(currency="usd")),
                ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"price.currency_code"}),
            ),
            (
                upsert({"id": MODEL}, price=price(currency="GBP")),
                ("INVALID_ARGUMENT", "UNSUPPORTED_CURRENCY", {"price.currency_code"}),
            ),
            (
                upsert({"id": MODEL}, price=price(currency="EUR", effective=later)),
                ("FAILED_PRECONDITION", "CURRENCY_MISMATCH", set()),
            ),
            # The effective_time of an existing version.
            (
                upsert({"id": MODEL}, price=price(input_=1, effective=later)),
                ("ALREADY_EXISTS", "PRICE_VERSION_EXISTS", set()),
            ),
        ]
        got = [await outcome(api.usage.UpsertModel(request)) for request, _ in cases]
        assert got == [expected for _, expected in cases]
        assert await state(api) == before
        for request in (usage_pb2.GetModelRequest(model_id="no/such"),):
            await expect_error(api.usage.GetModel(request), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
        await expect_error(
            api.usage.ListModelPrices(usage_pb2.ListModelPricesRequest(model_id="no/such")),
            grpc.StatusCode.NOT_FOUND,
            "MODEL_NOT_FOUND",
        )
    finally:
        await stop_api(api)


async def test_list_models_filters_and_pages_with_bound_tokens(api):
    for model_id in ("openai/gpt-4o", "openai/gpt-4o-mini", "anthropic/claude-3-5-haiku", "meta/llama-3.1-70b"):
        await create_model(api, model_id)
    await api.usage.UpsertModel(
        upsert({"id": "openai/gpt-4o", "status": usage_pb2.MODEL_STATUS_DEPRECATED}, ["status"])
    )
    everything = (await api.usage.ListModels(usage_pb2.ListModelsRequest())).models
    assert [m.id for m in everything] == sorted(m.id for m in everything) and len(everything) == 4
    assert all(m.HasField("current_price") for m in everything)
    openai = await api.usage.ListModels(usage_pb2.ListModelsRequest(provider="openai", page_size=1))
    rest = await api.usage.ListModels(
        usage_pb2.ListModelsRequest(provider="openai", page_size=1, page_token=openai.next_page_token)
    )
    assert [m.id for m in (*openai.models, *rest.models)] == ["openai/gpt-4o", "openai/gpt-4o-mini"]
    assert not rest.next_page_token
    active = await api.usage.ListModels(usage_pb2.ListModelsRequest(status=usage_pb2.MODEL_STATUS_ACTIVE))
    assert "openai/gpt-4o" not in [m.id for m in active.models] and len(active.models) == 3
    for request in (
        usage_pb2.ListModelsRequest(provider="meta", page_token=openai.next_page_token),
        usage_pb2.ListModelsRequest(page_size=-1),
        usage_pb2.ListModelsRequest(status=7),
        usage_pb2.ListModelsRequest(page_token="forged"),
    ):
        await expect_error(api.usage.ListModels(request), INVALID, "INVALID_ARGUMENT")


async def test_one_rating_per_user_and_model_replaced_by_rating_again(api):
    await create_model(api, MODEL)
    await create_model(api, "meta/llama-3.1-70b")
    users = [await create_user(api) for _ in range(5)]
    for i, user in enumerate(users):
        await api.usage.RateModel(
            usage_pb2.RateModelRequest(request_id=rid(), user_id=user.id, model_id=MODEL, stars=1 + i % 5)
        )
    request = usage_pb2.RateModelRequest(
        request_id=rid(), user_id=users[0].id, model_id=MODEL, stars=5, review="Fast.\nGood answers."
    )
    replaced = (await api.usage.RateModel(request)).rating
    assert replaced.stars == 5 and replaced.review == "Fast.\nGood answers."
    assert replaced.update_time.ToDatetime() > replaced.create_time.ToDatetime()
    assert (await api.usage.RateModel(request)).rating == replaced  # replay
    # Concurrent re-ratings of one user keep one rating and exact totals.
    await asyncio.gather(
        *(
            api.usage.RateModel(
                usage_pb2.RateModelRequest(request_id=rid(), user_id=users[1].id, model_id=MODEL, stars=s)
            )
            for s in (1, 2, 3, 4, 5, 4, 3)
        )
    )
    ratings = await sql(api, "SELECT stars FROM model_ratings WHERE model_id = %s", [MODEL])
    totals = (await sql(api, "SELECT * FROM model_rating_totals WHERE model_id = %s", [MODEL]))[0]
    assert totals["rating_count"] == len(ratings) == 5 and totals["stars_sum"] == sum(r["stars"] for r in ratings)
    stats = (await api.usage.GetModelStats(usage_pb2.GetModelStatsRequest(model_id=MODEL))).stats
    assert (stats.rating_count, stats.average_rating) == (5, totals["stars_sum"] / 5)

    listed = (await api.usage.ListModelRatings(usage_pb2.ListModelRatingsRequest(model_id=MODEL))).ratings
    assert [r.update_time.ToDatetime() for r in listed] == sorted(
        (r.update_time.ToDatetime() for r in listed), reverse=True
    )
    assert listed[0].user_id == users[1].id and len(listed) == 5
    paged, token = [], ""
    while True:
        page = await api.usage.ListModelRatings(
            usage_pb2.ListModelRatingsRequest(model_id=MODEL, page_size=2, page_token=token)
        )
        paged += page.ratings
        token = page.next_page_token
        if not token:
            break
    assert paged == list(listed)
    fives = await api.usage.ListModelRatings(usage_pb2.ListModelRatingsRequest(model_id=MODEL, stars=5))
    assert {r.stars for r in fives.ratings} == {5}
    one = await api.usage.ListModelRatings(usage_pb2.ListModelRatingsRequest(model_id=MODEL, user_id=users[0].id))
    assert [r.user_id for r in one.ratings] == [users[0].id]

    before = await state(api)
    for bad, expected in (
        (usage_pb2.RateModelRequest(user_id=users[0].id, model_id=MODEL, stars=0), ("INVALID_ARGUMENT", {"stars"})),
        (
            usage_pb2.RateModelRequest(user_id=users[0].id, model_id=MODEL, stars=6, review="x" * 2001),
            ("INVALID_ARGUMENT", {"stars", "review"}),
        ),
        (
            usage_pb2.RateModelRequest(user_id=users[0].id, model_id=MODEL, stars=3, review="bell\x07"),
            ("INVALID_ARGUMENT", {"review"}),
        ),
        (usage_pb2.RateModelRequest(user_id=rid(), model_id=MODEL, stars=3), ("USER_NOT_FOUND", set())),
        (usage_pb2.RateModelRequest(user_id=users[0].id, model_id="no/such", stars=3), ("MODEL_NOT_FOUND", set())),
    ):
        bad.request_id = rid()
        _, reason, fields = await outcome(api.usage.RateModel(bad))
        assert (reason, fields) == expected
    unfiltered = await api.usage.ListModelRatings(usage_pb2.ListModelRatingsRequest(model_id=MODEL, page_size=1))
    for bad in (
        usage_pb2.ListModelRatingsRequest(model_id=MODEL, stars=6),
        usage_pb2.ListModelRatingsRequest(model_id=MODEL, page_size=-1),
        usage_pb2.ListModelRatingsRequest(model_id=MODEL, stars=5, page_token=unfiltered.next_page_token),
    ):
        await expect_error(api.usage.ListModelRatings(bad), INVALID, "INVALID_ARGUMENT")
    assert await state(api) == before

    # A deleted user's ratings (their reviews are personal data) go, and the totals follow.
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=users[0].id))
    totals = (await sql(api, "SELECT * FROM model_rating_totals WHERE model_id = %s", [MODEL]))[0]
    assert totals["rating_count"] == 4
    remaining = await sql(api, "SELECT sum(stars)::int AS s FROM model_ratings WHERE model_id = %s", [MODEL])
    assert totals["stars_sum"] == remaining[0]["s"]


async def test_seed_adds_priced_models_usage_and_ratings_once(api):
    from qdata_server.seed import seed

    assert await seed(api.server.deps) == 3
    models = (await api.usage.ListModels(usage_pb2.ListModelsRequest())).models
    assert [m.id for m in models] == ["anthropic/claude-3-5-haiku", "meta/llama-3.1-70b", "openai/gpt-4o-mini"]
    assert all(m.current_price.currency_code == "USD" for m in models)
    before = await state(api)
    records = await sql(api, "SELECT billed, outcome FROM usage_records")
    assert len(records) == 6 and sum(r["billed"] for r in records) == 4
    assert await seed(api.server.deps, only_if_empty=False) == 3  # replays of the same request_ids
    assert await state(api) == before
    assert len(await sql(api, "SELECT 1 FROM usage_records")) == 6
