"""Sample data so a newcomer can explore the API at once (`make run` loads it on first start).

Every record goes through the same domain functions as an RPC, with fixed request_ids, so seeding
twice changes nothing and the audit trail shows where the data came from.
"""

from __future__ import annotations

import logging

from google.protobuf import field_mask_pb2

from qdata.v1 import ledger_pb2, user_pb2
from qdata_server import callctx
from qdata_server.db.sql import fetch_one
from qdata_server.ledger import operations as ledger
from qdata_server.users import accounts, preferences

log = logging.getLogger("qdata.seed")

# Documented in README: every sample user logs in with this password.
SAMPLE_PASSWORD = "marketplace-demo"
SAMPLE_USERS = (
    ("alice@example.com", "alice", "Alice Example"),
    ("bob@example.com", "bob", "Bob Example"),
    ("carol@example.com", "carol", "Carol Example"),
)


async def seed(deps, *, only_if_empty: bool = True) -> int:
    """Loads the sample users, their welcome credits and Alice's preferences; returns the user count."""
    if only_if_empty:
        row = await deps.transaction(lambda conn: fetch_one(conn, "count_users"))
        if row["n"]:
            return 0
    token = callctx.bind(callctx.CallContext(method="seed", actor="seed"))
    try:
        created = 0
        for email, username, name in SAMPLE_USERS:
            request = user_pb2.CreateUserRequest(
                request_id=f"seed-user-{username}",
                email=email,
                username=username,
                display_name=name,
                password=SAMPLE_PASSWORD,
            )
            response = await accounts.create_user(deps, request)
            created += 1
            # Every sample user starts with 25 USD of promotional credits.
            await ledger.deposit(
                deps,
                ledger_pb2.DepositRequest(
                    request_id=f"seed-credits-{username}",
                    user_id=response.user.id,
                    amount_micros=25_000_000,
                    source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION,
                    description="Welcome credits",
                ),
            )
            if username == "alice":
                await preferences.update_preferences(
                    deps,
                    user_pb2.UpdatePreferencesRequest(
                        request_id="seed-preferences-alice",
                        preferences=user_pb2.Preferences(
                            user_id=response.user.id,
                            default_model_id="openai/gpt-4o-mini",
                            language="en",
                            theme=user_pb2.THEME_DARK,
                            extra={"chat.stream": "true"},
                        ),
                        update_mask=field_mask_pb2.FieldMask(paths=["default_model_id", "language", "theme", "extra"]),
                    ),
                )
        log.info("seeded sample data", extra={"users": created})
        return created
    finally:
        callctx.unbind(token)
