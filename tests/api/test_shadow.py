"""Shadow mode over a real server: the old dictionary answers, qdata is written and compared.

The shadow's calls run on its own thread with the blocking client, while the in-process server
runs on the test's event loop; the tests wait for them with `await asyncio.to_thread(flush)`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from qdata.client import QdataClient
from qdata.shadow import BalanceMirror, ShadowDict
from qdata.v1 import ledger_pb2, usage_pb2
from tests.support.calls import create_user
from tests.support.server import Api


@pytest.fixture
def client(api: Api) -> Iterator[QdataClient]:
    with QdataClient(api.address, default_timeout=10) as qdata:
        yield qdata


def shadow_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [r.qdata_shadow for r in caplog.records if r.name == "qdata.shadow"]  # type: ignore[attr-defined]


async def posted(api: Api, user_id: str) -> int:
    reply = await api.ledger.GetBalance(ledger_pb2.GetBalanceRequest(user_id=user_id))
    return reply.balance.posted_micros


async def settle(shadow: ShadowDict[str, float]) -> None:
    await asyncio.to_thread(shadow.flush, 30)


async def test_writes_reach_qdata_in_exact_micros_and_agreement_logs_nothing(api, client, caplog):
    caplog.set_level(logging.DEBUG, logger="qdata.shadow")
    user = await create_user(api, "shadow-agree")
    old: dict[str, float] = {}
    balances = ShadowDict(old, BalanceMirror(client), name="billing.balances")
    try:
        balances[user.id] = 10.10  # a top-up: Deposit 10,100,000 micros
        balances[user.id] -= 0.1 + 0.2  # float drift: 9.799999999999999, i.e. a Charge of 300,000
        assert balances[user.id] == old[user.id] == 10.10 - (0.1 + 0.2)
        await settle(balances)
    finally:
        await asyncio.to_thread(balances.close)
    assert await posted(api, user.id) == 9_800_000
    assert shadow_records(caplog) == []
    assert balances.counts == {"writes": 2, "reads": 2, "agreed": 2}


async def test_a_change_made_behind_the_wrappers_back_is_logged_with_what_differed(api, client, caplog):
    caplog.set_level(logging.DEBUG, logger="qdata.shadow")
    user = await create_user(api, "shadow-planted")
    balances = ShadowDict({}, BalanceMirror(client), name="billing.balances")
    try:
        balances[user.id] = 12.5
        await settle(balances)
        # Someone credits qdata directly: the dictionary no longer tells the same story.
        await api.ledger.Deposit(
            ledger_pb2.DepositRequest(
                request_id="behind-the-back",
                user_id=user.id,
                amount_micros=1_000_001,
                source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION,
            )
        )
        assert balances[user.id] == 12.5  # still served from the old dictionary
        await settle(balances)
    finally:
        await asyncio.to_thread(balances.close)
    assert shadow_records(caplog) == [
        {
            "event": "disagreement",
            "shadow": "billing.balances",
            "key": user.id,
            "missing_in_qdata": False,
            "fields": {"balance_micros": {"old": 12_500_000, "qdata": 13_500_001}},
        }
    ]
    assert balances.counts == {"writes": 1, "reads": 1, "disagreed": 1}


async def test_a_refused_write_and_an_unknown_key_are_logged_without_breaking_the_dictionary(api, client, caplog):
    caplog.set_level(logging.DEBUG, logger="qdata.shadow")
    user = await create_user(api, "shadow-refused")
    # The dictionary held 5.00 before the wrapper (not imported): qdata holds nothing to charge.
    old = {user.id: 5.0, "00000000-0000-4000-8000-000000000000": 1.0}
    balances = ShadowDict(old, BalanceMirror(client), name="billing.balances", log_keys=False)
    try:
        balances[user.id] = 4.0
        assert old[user.id] == 4.0
        assert balances["00000000-0000-4000-8000-000000000000"] == 1.0
        await settle(balances)
    finally:
        await asyncio.to_thread(balances.close)
    records = shadow_records(caplog)
    assert [(r["event"], r.get("code"), r.get("reason"), r.get("missing_in_qdata")) for r in records] == [
        ("write_failed", "FAILED_PRECONDITION", "INSUFFICIENT_FUNDS", None),
        ("disagreement", None, None, True),
    ]
    # log_keys=False: keys appear only as digests.
    assert all(str(r["key"]).startswith("sha256:") for r in records)
    assert user.id not in caplog.text
    assert await posted(api, user.id) == 0
    assert balances.counts == {"writes": 1, "write_failed": 1, "reads": 1, "disagreed": 1}


def readme_mirror() -> type:
    """The RatingMirror of clients/python/README.md's Shadow mode section, as written there."""
    readme = (Path(__file__).resolve().parents[2] / "clients" / "python" / "README.md").read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", readme, re.DOTALL) if "class RatingMirror" in b]
    namespace: dict[str, object] = {}
    exec(compile(block, "clients/python/README.md", "exec"), namespace)
    return namespace["RatingMirror"]  # type: ignore[return-value]


async def test_the_readmes_custom_mirror_works_as_written(api, client, caplog):
    caplog.set_level(logging.DEBUG, logger="qdata.shadow")
    user = await create_user(api, "shadow-rater")
    await api.usage.UpsertModel(
        usage_pb2.UpsertModelRequest(request_id="m", model=usage_pb2.Model(id="acme/m1", provider="acme"))
    )
    ratings = ShadowDict({}, readme_mirror()(client), name="recommendations.ratings")
    try:
        ratings[(user.id, "acme/m1")] = 4
        assert ratings[(user.id, "acme/m1")] == 4
        await settle(ratings)
        assert shadow_records(caplog) == []
        await api.usage.RateModel(
            usage_pb2.RateModelRequest(request_id="behind", user_id=user.id, model_id="acme/m1", stars=2)
        )
        assert ratings[(user.id, "acme/m1")] == 4
        await settle(ratings)
    finally:
        await asyncio.to_thread(ratings.close)
    [record] = shadow_records(caplog)
    assert record["fields"] == {"stars": {"old": 4, "qdata": 2}}
    assert ratings.counts == {"writes": 1, "reads": 2, "agreed": 1, "disagreed": 1}
