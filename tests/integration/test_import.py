"""`qdata-server import`: a generated dump of 1,000 users of the old services, bad records included.

The dump is imported once with a failure injected mid-way, then to completion, then again after
the idempotency records are purged (a re-run a week later): the second complete run creates
nothing (every table's row count unchanged), every bad record is reported with its path and
nothing of its user is written, and the reconciliation is exact with VerifyLedger clean.
"""

from __future__ import annotations

import base64
import decimal
import hashlib
import io
import json
import os
import random
import re
import time
from typing import Any

import pytest
from psycopg import sql as pgsql

from qdata.v1 import chat_pb2, ledger_pb2, user_pb2
from qdata_server.importer import dump as import_dump
from qdata_server.importer.run import Report, run_import
from tests.support.database import scalar, sql
from tests.support.usage import create_model

USERS = 1000
MODEL = "openai/gpt-4o-mini"
KEY_RING = "1:" + base64.b64encode(os.urandom(32)).decode()
SALT = "wZ3kQ9xYp2Lm7Rt1"
LEGACY_HASH = "pbkdf2:sha256:1000${}${}".format(
    SALT, hashlib.pbkdf2_hmac("sha256", b"old-password", SALT.encode(), 1000).hex()
)


class Interrupted(Exception):
    """Stands for the import process dying mid-way."""


def good_user(n: int, rng: random.Random) -> dict[str, Any]:
    """User n of the old dictionaries: a float-dollar balance, history, chats, ratings, preferences."""
    cents = rng.randrange(0, 500_000)
    user: dict[str, Any] = {
        "key": f"legacy-{n:05d}",
        "email": f"user{n}@old.example.com",
        "username": f"user{n}",
        "display_name": f"User {n}",
        "password_hash": LEGACY_HASH,
        # Dollars as the old services printed them: up to 6 decimals.
        "balance": f"__NUM__{cents // 100}.{cents % 100:02d}{rng.choice(['', '5', '0042'])}",
        "transactions": [
            {"id": f"t{n}-{i}", "type": "deposit", "amount": f"__NUM__{rng.randrange(1, 100)}.25"}
            for i in range(rng.randrange(0, 3))
        ],
        "chat_sessions": [
            {
                "id": f"s{n}-{i}",
                "title": f"Chat {i}",
                "model_id": MODEL,
                "messages": [
                    {"role": "user" if j % 2 == 0 else "assistant", "content": f"message {j} of {n}"}
                    for j in range(rng.randrange(1, 6))
                ],
            }
            for i in range(rng.randrange(0, 3))
        ],
        "ratings": [{"model_id": MODEL, "stars": rng.randrange(1, 6), "review": "fine"}] if n % 3 == 0 else [],
    }
    if n % 4 == 0:
        user["preferences"] = {"language": "en", "theme": "dark", "extra": {"chat.stream": "true"}}
    if n % 10 == 0:
        user["api_keys"] = [{"id": f"k{n}", "provider": "openai", "label": "main", "secret": f"sk-old-{n:08d}-secret"}]
    if n == 7:
        # One long conversation: more messages than one AppendMessages takes.
        user["chat_sessions"] = [
            {
                "id": "long",
                "title": "Long",
                "model_id": MODEL,
                "messages": [{"role": "user", "content": f"m{j}"} for j in range(250)],
            }
        ]
    return user


# Bad records planted in the dump: user number -> (how it is spoiled, the path the report must name).
def spoil(n: int, user: dict[str, Any]) -> str | None:
    kind = n % 100
    if n < 100 or kind not in BAD:
        return None
    return BAD[kind](user)


def _balance(user: dict[str, Any]) -> str:
    user["balance"] = "__NUM__1.0000001"
    return "$.balance"


def _email(user: dict[str, Any]) -> str:
    user["email"] = "not an email"
    return "$.email"


def _hash(user: dict[str, Any]) -> str:
    user["password_hash"] = "md5$nope"
    return "$.password_hash"


def _role(user: dict[str, Any]) -> str:
    user["chat_sessions"] = [{"id": "x", "messages": [{"role": "user", "content": "a"}, {"role": "robot"}]}]
    return "$.chat_sessions[0].messages[1]"


def _stars(user: dict[str, Any]) -> str:
    user["ratings"] = [{"model_id": MODEL, "stars": 9}]
    return "$.ratings[0].stars"


def _model(user: dict[str, Any]) -> str:
    user["ratings"] = [{"model_id": "nobody/unknown-model", "stars": 3}]
    return "$.ratings[0].model_id"


def _theme(user: dict[str, Any]) -> str:
    user["preferences"] = {"theme": "purple"}
    return "$.preferences.theme"


def _negative(user: dict[str, Any]) -> str:
    user["balance"] = "__NUM__-3.5"
    return "$.balance"


def _secret(user: dict[str, Any]) -> str:
    user["api_keys"] = [{"id": "k", "provider": "openai", "secret": ""}]
    return "$.api_keys[0].secret"


def _duplicate(user: dict[str, Any]) -> str:
    user["email"] = "user101@old.example.com"  # user 101's
    return "$.email"


BAD = {
    11: _balance,
    22: _email,
    33: _hash,
    44: _role,
    55: _stars,
    66: _model,
    77: _theme,
    88: _negative,
    99: _secret,
    35: _duplicate,
}


def generate() -> tuple[str, dict[str, str], dict[str, dict[str, Any]]]:
    """The dump's text, the expected problems (line -> path), and the valid users by key."""
    rng = random.Random(15)
    lines: list[str] = []
    expected: dict[int, str] = {}
    valid: dict[str, dict[str, Any]] = {}
    for n in range(USERS):
        user = good_user(n, rng)
        path = spoil(n, user)
        # Numbers go into the JSON text as written (json.dumps of a float would already round).
        lines.append(_numbers(json.dumps(user)))
        if path is None:
            valid[user["key"]] = user
        else:
            expected[n + 1] = path
    lines.insert(500, "{not json")
    expected = {(line if line <= 500 else line + 1): path for line, path in expected.items()}
    expected[501] = "$"
    return "\n".join(lines) + "\n", {str(k): v for k, v in expected.items()}, valid


def _numbers(text: str) -> str:
    return re.sub(r'"__NUM__(-?[0-9.]+)"', r"\1", text)


def micros(text: str) -> int:
    return int(decimal.Decimal(text.removeprefix("__NUM__")) * 1_000_000)


async def table_counts(url: str) -> dict[str, int]:
    tables = await sql(
        url,
        "SELECT schemaname, relname FROM pg_stat_user_tables WHERE schemaname IN ('public') ORDER BY relname",
    )
    counts = {}
    for t in tables:
        name = pgsql.Identifier(t["schemaname"], t["relname"])
        counts[t["relname"]] = await scalar(url, pgsql.SQL("SELECT count(*) FROM {}").format(name))
    return counts


@pytest.fixture
async def vault_api(api_with):
    api = await api_with(key_ring=KEY_RING)
    await create_model(api, MODEL)
    return api


def check_problems(report: Report, expected: dict[str, str]) -> None:
    found: dict[str, set[str]] = {}
    for p in report.problems:
        found.setdefault(str(p.line), set()).add(p.path)
    assert set(found) == set(expected), sorted(set(found) ^ set(expected))
    for line, path in expected.items():
        assert path in found[line], (line, path, found[line])


async def test_import_of_1000_users_interrupted_resumed_and_run_again_creates_nothing(vault_api, capsys):
    api = vault_api
    deps = api.server.deps
    text, expected, valid = generate()
    before = await table_counts(api.database_url)

    # A dry run validates and writes nothing.
    dry = await run_import(deps, io.StringIO(text), dry_run=True)
    check_problems(dry, expected)
    assert dry.valid_users == len(valid) and dry.bad_users == len(expected)
    assert await table_counts(api.database_url) == before

    # Run 1 dies after 1,500 steps.
    steps = 0

    def interrupt(plan, step) -> None:
        nonlocal steps
        steps += 1
        if steps == 1500:
            raise Interrupted

    with pytest.raises(ExceptionGroup) as died:
        await run_import(deps, io.StringIO(text), after_step=interrupt)
    assert died.group_contains(Interrupted)
    complete = await scalar(api.database_url, "SELECT count(*) FROM import_log WHERE step = 'complete'")
    assert 0 < complete < len(valid)

    # Run 2 resumes and completes.
    started = time.monotonic()
    second = await run_import(deps, io.StringIO(text))
    elapsed = time.monotonic() - started
    check_problems(second, expected)
    assert second.steps_skipped >= 1500 - 4  # the interrupted steps' work of the other workers may be lost
    assert second.steps_run > 0
    assert second.ok, [u for u in second.failed][:3]
    assert len(second.users) == len(valid)
    for outcome in second.users:
        old = valid[outcome.key]
        assert outcome.balance_micros == outcome.old_balance_micros == micros(str(old["balance"]))
        assert outcome.messages == sum(len(s["messages"]) for s in old["chat_sessions"])
        assert outcome.ratings == len(old["ratings"])
    assert second.ledger_discrepancies == 0
    print(
        f"\nimport of {len(valid)} users: {second.records} records, resumed run {elapsed:.2f} s "
        f"({second.records_per_second:.0f} records/s over the users it imported anything of)"
    )
    after = await table_counts(api.database_url)

    # No partial user: nothing of a refused user exists.
    bad_emails = [f"user{n}@old.example.com" for n in range(100, USERS) if (n % 100) in BAD and (n % 100) != 35]
    assert await scalar(api.database_url, "SELECT count(*) FROM users WHERE email = ANY (%s)", [bad_emails]) == 0
    assert after["users"] - before["users"] == len(valid)
    # Opening balances are their own kind, from their own system account: no deposit, no revenue.
    kinds = await sql(api.database_url, "SELECT kind, count(*) AS n FROM ledger_transactions GROUP BY kind")
    assert {k["kind"] for k in kinds} == {"opening_balance"}
    assert (
        await scalar(
            api.database_url,
            "SELECT count(*) FROM ledger_postings"
            " WHERE system_account IS NOT NULL AND system_account <> 'opening_balances'",
        )
        == 0
    )

    # Run 3, a week later: the idempotency records are purged; it creates nothing.
    await sql(api.database_url, "DELETE FROM idempotency_keys")
    purged = await table_counts(api.database_url)
    third = await run_import(deps, io.StringIO(text))
    assert third.steps_run == 0 and third.ok
    assert await table_counts(api.database_url) == purged
    assert purged == {**after, "idempotency_keys": 0}

    # Through the API: a user of the old services logs in with the old password and sees it all.
    key = "legacy-00007"
    user_id = str(import_dump.derived_id("user", key))
    login = await api.users.Authenticate(user_pb2.AuthenticateRequest(login="user7", password="old-password"))
    assert login.outcome == user_pb2.AUTHENTICATE_OUTCOME_SUCCESS and login.user.id == user_id
    listed = await api.ledger.ListTransactions(ledger_pb2.ListTransactionsRequest(user_id=user_id))
    if micros(str(valid[key]["balance"])):
        assert [t.kind for t in listed.transactions] == [ledger_pb2.TRANSACTION_KIND_OPENING_BALANCE]
    sessions = await api.chat.ListSessions(chat_pb2.ListSessionsRequest(user_id=user_id))
    assert [s.message_count for s in sessions.sessions] == [250]
    keyed = str(import_dump.derived_id("user", "legacy-00010"))
    keys = await api.users.ListApiKeys(user_pb2.ListApiKeysRequest(user_id=keyed))
    revealed = await api.users.RevealApiKey(user_pb2.RevealApiKeyRequest(user_id=keyed, api_key_id=keys.api_keys[0].id))
    assert revealed.secret == "sk-old-00000010-secret"
    # The legacy record is kept, never its secret.
    assert await scalar(api.database_url, "SELECT count(*) FROM import_log WHERE legacy::text LIKE '%%sk-old-%%'") == 0
    # import_log is never deleted, so it keeps no personal data that DeleteUser must erase: no
    # email, username or message text in its legacy records or stored answers.
    for needle in ("@old.example.com", "user7", "User 7", "Chat 0", "message 0 of"):
        assert (
            await scalar(
                api.database_url,
                "SELECT count(*) FROM import_log WHERE legacy::text LIKE %(n)s OR position(%(b)s IN response) > 0",
                {"n": f"%{needle}%", "b": needle.encode()},
            )
            == 0
        ), needle


def test_dollars_convert_exactly_to_micros():
    parse = lambda text: json.loads(text, parse_float=decimal.Decimal)  # noqa: E731
    assert import_dump.to_micros(parse("0.1")) == 100_000
    assert import_dump.to_micros(parse("12.345678")) == 12_345_678
    assert import_dump.to_micros(parse("1e-6")) == 1
    assert import_dump.to_micros(parse("3")) == 3_000_000
    assert import_dump.to_micros(parse("2.500000000")) == 2_500_000  # trailing zeros are exact
    for bad in ("1.0000001", "true", '"5"', "NaN"):
        with pytest.raises(ValueError):
            import_dump.to_micros(parse(bad))


async def test_hostile_records_are_reported_with_their_paths_not_raised():
    """Wrong JSON types anywhere are bad records with a path, never an exception; a violation the
    domain code finds in message 130 of a long session names message 130."""
    long = [{"role": "user", "content": f"m{j}"} for j in range(150)]
    long[130] = {"role": "user", "content": "m130", "input_tokens": -5}
    records = [
        {"key": "a", "status": ["active"], "email": "a@x.example.com", "username": "a1", "password_hash": LEGACY_HASH},
        {
            "key": "b",
            "email": "b@x.example.com",
            "username": "b1",
            "password_hash": LEGACY_HASH,
            "preferences": {"theme": ["dark"]},
        },
        {
            "key": "c",
            "email": "c@x.example.com",
            "username": "c1",
            "password_hash": LEGACY_HASH,
            "chat_sessions": [{"id": "s", "tags": [1, 2], "messages": [{"role": {"x": 1}}]}],
        },
        {
            "key": "d",
            "email": "d@x.example.com",
            "username": "d1",
            "password_hash": LEGACY_HASH,
            "balance": "__NUM__1e400",
        },
        {"email": "e@x.example.com"},
        {
            "key": "f",
            "email": "f@x.example.com",
            "username": "f1",
            "password_hash": LEGACY_HASH,
            "chat_sessions": [{"id": "s", "messages": long}],
        },
        {
            "key": "g",
            "email": "g@x.example.com",
            "username": "g1",
            "password_hash": LEGACY_HASH,
            "currency": 840,
            "balance": "__NUM__1.5",
        },
        {"key": "h", "email": "h@x.example.com", "username": "h1", "password_hash": LEGACY_HASH, "surprise": 1},
        ["not", "an", "object"],
    ]
    text = "\n".join(_numbers(json.dumps(r)) for r in records)
    from qdata_server.config import Settings

    parsed = await import_dump.parse(io.StringIO(text), settings=Settings(), key_ring=None, known_models=set())
    paths = {(p.line, p.path) for p in parsed.problems}
    assert (1, "$.status") in paths
    assert (2, "$.preferences.theme") in paths
    assert (3, "$.chat_sessions[0].messages[0]") in paths
    assert (4, "$.balance") in paths
    assert (5, "$.key") in paths
    assert (6, "$.chat_sessions[0].messages[130].input_tokens") in paths
    assert (7, "$.currency") in paths  # 840 is no currency code
    assert (8, "$.surprise") in paths
    assert (9, "$") in paths
    assert parsed.plans == [] and parsed.bad_users == len(records)


def test_the_import_command_reports_and_a_second_run_creates_nothing(database_url, tmp_path):
    """The real command, as an operator runs it: exit statuses, the report, a second run."""
    from tests.integration.test_operator_commands import run_command
    from tests.support.server import serving_url

    rng = random.Random(3)
    users = [good_user(n, rng) for n in range(1, 6)]
    for user in users:
        user["ratings"] = []  # the fresh database has no catalog
    users[2]["email"] = "not an email"
    dump = tmp_path / "dump.jsonl"
    dump.write_text("\n".join(_numbers(json.dumps(u)) for u in users) + "\n")
    env = {"DATABASE_URL": serving_url(database_url), "QDATA_KEY_RING": KEY_RING, "QDATA_BCRYPT_COST": "4"}

    dry = run_command(["import", str(dump), "--dry-run"], env, tmp_path)
    assert dry.returncode == 1, dry.stderr
    assert "bad record: line 3: $.email:" in dry.stdout and "dry run: nothing written" in dry.stdout

    first = run_command(["import", str(dump)], env, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "read 5 user line(s): 4 valid, 1 refused" in first.stdout
    assert "VerifyLedger: clean" in first.stdout
    assert "import reconciled exactly: 4 of 4 user(s) exact" in first.stdout
    assert first.stdout.count("\n  ok legacy-") == 4

    second = run_command(["import", str(dump)], env, tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "steps: 0 run," in second.stdout

    missing = run_command(["import", str(tmp_path / "nope.jsonl")], env, tmp_path)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


async def test_an_import_killed_mid_way_resumes_and_reconciles_exactly(fresh_api, tmp_path):
    """The command is killed (SIGKILL) once 100 users are complete; the re-run finishes the rest."""
    import asyncio
    import signal
    import sys

    from tests.support.server import serving_url

    await create_model(fresh_api, MODEL)
    text, expected, valid = generate()
    dump = tmp_path / "dump.jsonl"
    dump.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QDATA_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=serving_url(fresh_api.database_url),
        QDATA_KEY_RING=KEY_RING,
        QDATA_EMBEDDED_DATA_DIR=str(tmp_path / "embedded"),
    )
    complete = "SELECT count(*) FROM import_log WHERE step = 'complete'"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qdata_server",
        "import",
        str(dump),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        while await scalar(fresh_api.database_url, complete) < 100:
            assert process.returncode is None, "the import ended before it could be interrupted"
            await asyncio.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    killed_at = await scalar(fresh_api.database_url, complete)
    assert 100 <= killed_at < len(valid)

    rerun = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qdata_server",
        "import",
        str(dump),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await rerun.communicate()
    stdout, stderr = out.decode(), err.decode()
    assert rerun.returncode == 0, stdout[-2000:] + stderr[-2000:]
    assert f"import reconciled exactly: {len(valid)} of {len(valid)} user(s) exact" in stdout
    assert "VerifyLedger: clean" in stdout
    assert len([line for line in stdout.splitlines() if line.startswith("bad record: ")]) >= len(expected)
    assert await scalar(fresh_api.database_url, complete) == len(valid)
    # Each user exactly once, each opening balance exactly once.
    assert await scalar(fresh_api.database_url, "SELECT count(*) FROM users") == len(valid)
    balances = sum(1 for user in valid.values() if micros(str(user["balance"])))
    assert await scalar(fresh_api.database_url, "SELECT count(*) FROM ledger_transactions") == balances
