"""Sample catalog, usage and ratings for the seeded users (called by qdata_server.seed).

Everything goes through the same domain functions as the RPCs, with fixed request_ids, so a
second run replays instead of adding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qdata.v1 import usage_pb2, user_pb2
from qdata_server.convert import duration
from qdata_server.usage import catalog, convert, ratings, recording
from qdata_server.users import accounts

if TYPE_CHECKING:
    from qdata_server.deps import Deps

# model id, provider, display name, context window, micro-units per million tokens of each of
# convert.TOKEN_KINDS (input, output, cached input, reasoning).
SAMPLE_MODELS = (
    ("openai/gpt-4o-mini", "openai", "GPT-4o mini", 128_000, (150_000, 600_000, 75_000, 600_000)),
    ("anthropic/claude-3-5-haiku", "anthropic", "Claude 3.5 Haiku", 200_000, (800_000, 4_000_000, 80_000, 4_000_000)),
    ("meta/llama-3.1-70b", "meta", "Llama 3.1 70B Instruct", 128_000, (880_000, 880_000, 880_000, 880_000)),
)
# user, model, input, output, latency in ms, outcome, own key
SAMPLE_CALLS = (
    ("alice", "openai/gpt-4o-mini", 1_234, 410, 820, usage_pb2.USAGE_OUTCOME_SUCCESS, False),
    ("alice", "openai/gpt-4o-mini", 2_050, 380, 760, usage_pb2.USAGE_OUTCOME_SUCCESS, False),
    ("alice", "anthropic/claude-3-5-haiku", 3_100, 900, 1_900, usage_pb2.USAGE_OUTCOME_SUCCESS, False),
    ("bob", "meta/llama-3.1-70b", 5_400, 1_200, 2_600, usage_pb2.USAGE_OUTCOME_SUCCESS, False),
    ("bob", "meta/llama-3.1-70b", 600, 0, 30_000, usage_pb2.USAGE_OUTCOME_ERROR, False),
    ("carol", "anthropic/claude-3-5-haiku", 800, 250, 1_100, usage_pb2.USAGE_OUTCOME_SUCCESS, True),
)
SAMPLE_RATINGS = (
    ("alice", "openai/gpt-4o-mini", 5, "Fast and cheap for everyday questions."),
    ("bob", "meta/llama-3.1-70b", 3, ""),
    ("carol", "anthropic/claude-3-5-haiku", 4, "Good at summaries."),
)


async def seed(deps: Deps) -> None:
    """Adds the sample models with their prices, a few calls of the sample users and ratings."""
    for model_id, provider, name, window, prices in SAMPLE_MODELS:
        priced: dict[str, Any] = {convert.price_field(k): p for k, p in zip(convert.TOKEN_KINDS, prices, strict=True)}
        await catalog.upsert_model(
            deps,
            usage_pb2.UpsertModelRequest(
                request_id=f"seed-model-{model_id}",
                model=usage_pb2.Model(id=model_id, provider=provider, display_name=name, context_window_tokens=window),
                price=usage_pb2.ModelPrice(currency_code="USD", **priced),
            ),
        )
    ids = {}
    for username in {call[0] for call in SAMPLE_CALLS}:
        user = await accounts.get_user(deps, user_pb2.GetUserRequest(username=username))
        ids[username] = user.user.id
    for number, (username, model_id, inp, out, latency_ms, outcome, own_key) in enumerate(SAMPLE_CALLS, start=1):
        await recording.record_usage(
            deps,
            usage_pb2.RecordUsageRequest(
                request_id=f"seed-usage-{number}",
                user_id=ids[username],
                model_id=model_id,
                input_tokens=inp,
                output_tokens=out,
                latency=duration(latency_ms * 1_000_000),
                outcome=outcome,
                error_code="http_504" if outcome == usage_pb2.USAGE_OUTCOME_ERROR else "",
                used_own_provider_key=own_key,
            ),
        )
    for username, model_id, stars, review in SAMPLE_RATINGS:
        await ratings.rate_model(
            deps,
            usage_pb2.RateModelRequest(
                request_id=f"seed-rating-{username}-{model_id}",
                user_id=ids[username],
                model_id=model_id,
                stars=stars,
                review=review,
            ),
        )
