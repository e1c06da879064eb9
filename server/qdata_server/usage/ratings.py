"""RateModel and ListModelRatings: one rating per user and model, re-rating replaces it.

A model's rating count and star sum (model_rating_totals) change in the rating's transaction,
after the totals row is locked, so GetModelStats and ListTopModels read them in O(1) and they
stay exact under concurrent ratings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qdata.v1 import usage_pb2
from qdata_server import audit
from qdata_server.db.connection import Conn
from qdata_server.db.sql import fetch_all, fetch_one, fetch_row
from qdata_server.db.transactions import ACTING_FOR_ALL_USERS
from qdata_server.pagination import keyset, page_size
from qdata_server.usage import convert, rules
from qdata_server.usage.catalog import model_not_found
from qdata_server.users.accounts import user_not_found
from qdata_server.validation import Violations

if TYPE_CHECKING:
    from qdata_server.deps import Deps


async def rate_model(deps: Deps, request: usage_pb2.RateModelRequest) -> usage_pb2.RateModelResponse:
    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    model_id = rules.model_id(v, "model_id", request.model_id)
    if not 1 <= request.stars <= 5:
        v.add("stars", "must be between 1 and 5")
    review = rules.review(v, "review", request.review)
    v.raise_if_any()

    async def work(conn: Conn) -> usage_pb2.RateModelResponse:
        user = await fetch_one(conn, "usage_user_state", {"user_id": user_id})
        if user is None or user["status"] == "deleted":
            raise user_not_found()
        if await fetch_one(conn, "usage_model_exists", {"model_id": model_id}) is None:
            raise model_not_found()
        await fetch_one(conn, "usage_lock_rating_totals", {"model_id": model_id})
        row = await fetch_row(
            conn,
            "usage_upsert_rating",
            {"user_id": user_id, "model_id": model_id, "stars": request.stars, "review": review},
        )
        await audit.record(
            conn,
            action="usage.RateModel",
            target_type="model_rating",
            target_id=f"{user_id}/{model_id}",
            user_id=user_id,
            summary={"model_id": model_id, "stars": request.stars, "review_length": len(review)},
        )
        return usage_pb2.RateModelResponse(rating=convert.rating(row))

    return await deps.idempotent(request, usage_pb2.RateModelResponse, work, user_id=user_id)


async def list_model_ratings(
    deps: Deps, request: usage_pb2.ListModelRatingsRequest
) -> usage_pb2.ListModelRatingsResponse:
    v = Violations()
    model_id = rules.model_id(v, "model_id", request.model_id)
    user_id = v.uuid("user_id", request.user_id, required=False)
    if not 0 <= request.stars <= 5:
        v.add("stars", "must be between 0 (all) and 5")
    if request.page_size < 0:
        v.add("page_size", "must not be negative")
    v.raise_if_any()
    limit = page_size(request.page_size)
    filters = {"model_id": model_id, "stars": request.stars or None, "user_id": str(user_id) if user_id else None}
    tokens = await deps.page_tokens()
    cursor = tokens.open(request.page_token, "ListModelRatings", filters)

    async def work(conn: Conn) -> list[dict[str, Any]]:
        if await fetch_one(conn, "usage_model_exists", {"model_id": model_id}) is None:
            raise model_not_found()
        # The filters the page token is bound to, the user's id as a UUID.
        params = {**filters, "user_id": user_id, **keyset(cursor, "after_updated_at after_user_id", limit)}
        return await fetch_all(conn, "usage_list_model_ratings", params)

    # A model's ratings come from every user: a cross-user path.
    rows = await deps.transaction(work, acting=ACTING_FOR_ALL_USERS)
    rows, next_token = tokens.page(
        rows, limit, "ListModelRatings", filters, lambda last: [last["updated_at"].isoformat(), str(last["user_id"])]
    )
    return usage_pb2.ListModelRatingsResponse(ratings=[convert.rating(r) for r in rows], next_page_token=next_token)
