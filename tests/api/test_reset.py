"""The per-test reset of the module-wide database (tests/support/database.py's FreshState).

The first test writes through every service and behind the API's back (a usage partition for a
month the migrations did not create, a changed server secret); the next one, on the same server,
must find the database exactly as the migrations left it. The tests run in file order.
"""

from __future__ import annotations

from google.protobuf import field_mask_pb2

from qdata.v1 import chat_pb2, user_pb2
from qdata_server import audit_chain
from tests.support.calls import create_user, rid
from tests.support.chat import append, create_session
from tests.support.database import rows, scalar, sql
from tests.support.ledger import USD, create_hold, deposit
from tests.support.server import Api
from tests.support.usage import create_model, usage

FRESH = {
    "tables": """
        SELECT n.nspname AS schema, c.relname AS name FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND n.nspname IN ('public', 'usage_partitions') ORDER BY 1, 2
    """,
    "migrations": "SELECT * FROM schema_migrations ORDER BY 1",
    "secrets": "SELECT name, secret FROM server_secrets ORDER BY name",
    "chain_heads": "SELECT chain_shard, last_seq, last_hash FROM audit_chain_heads ORDER BY chain_shard",
}
# Every table the API writes to: empty in a freshly migrated database.
WRITTEN = (
    "users",
    "user_preferences",
    "audit_events",
    "idempotency_keys",
    "ledger_accounts",
    "ledger_transactions",
    "ledger_postings",
    "ledger_holds",
    "ledger_positions",
    "chat_sessions",
    "chat_messages",
    "models",
    "model_prices",
    "usage_records",
    "usage_rollup_queue",
)

seen: dict[str, object] = {}


async def test_a_test_writes_everywhere(api: Api, template_url: str) -> None:
    assert await rows(api, FRESH) == await rows(template_url, FRESH)  # a fresh module database too
    user = await create_user(api)
    await deposit(api, user.id, 10 * USD)
    await create_hold(api, user.id, USD)
    session = await create_session(api, user.id, title="remembered")
    await append(api, session, "hello")
    await create_model(api)
    await api.usage.RecordUsage(usage(user.id))
    await api.users.UpdateUser(
        user_pb2.UpdateUserRequest(
            request_id=rid(),
            user=user_pb2.User(id=user.id, display_name="Changed"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    await api.users.UpdatePreferences(
        user_pb2.UpdatePreferencesRequest(
            request_id=rid(),
            preferences=user_pb2.Preferences(user_id=user.id, language="de"),
            update_mask=field_mask_pb2.FieldMask(paths=["language"]),
        )
    )
    await api.chat.ListSessions(chat_pb2.ListSessionsRequest(user_id=user.id, page_size=1))
    for table in WRITTEN:
        assert await scalar(api, f"SELECT count(*) FROM {table}") > 0, table
    # Behind the API's back: a partition for a month long gone, and another page token key.
    await sql(api, "SELECT usage_create_partition(timestamptz '2001-01-01')")
    await sql(api, "UPDATE server_secrets SET secret = sha256(secret)")
    assert (await rows(api, FRESH)) != (await rows(template_url, FRESH))
    seen["user_id"] = user.id


async def test_the_next_test_sees_a_freshly_migrated_database(api: Api, template_url: str) -> None:
    assert seen, "runs after test_a_test_writes_everywhere"
    for table in WRITTEN:
        assert await scalar(api, f"SELECT count(*) FROM {table}") == 0, table
    assert await rows(api, FRESH) == await rows(template_url, FRESH)
    assert (await audit_chain.verify(api.database_url)).ok
    # The API agrees: the user is gone, and the next one starts the audit trail again.
    found = await api.users.ListUsers(user_pb2.ListUsersRequest())
    assert list(found.users) == []
    await create_user(api)
    assert await scalar(api, "SELECT min(audit_event_id) FROM audit_events") == 1
    assert (await audit_chain.verify(api.database_url)).ok
