"""The bank test, in the style of Jepsen's: many concurrent clients move money between a few hot
accounts and many cold ones through every mutating LedgerService RPC, over real gRPC against real
PostgreSQL, while others read balances. The test keeps its own model of every successful
operation's effect; afterwards the ledger must agree with the model to the micro-unit, money must
be conserved, no balance may ever have gone (or been read) negative, and VerifyLedger must find
nothing.

Business rejections (INSUFFICIENT_FUNDS, a hold already resolved or expired, a refund above its
original) are expected under this load and simply have no effect; any other failure (INTERNAL,
UNKNOWN, ABORTED from contention the server should have retried, ...) fails the test.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
from typing import Any

import grpc

from qdata.v1 import ledger_pb2
from tests.support.calls import error_info
from tests.support.database import pool_drained, sql
from tests.support.ledger import (
    ACTIVE,
    CAPTURED,
    USD,
    age_holds,
    assert_balanced,
    assert_ledger_clean,
    capture_request,
    charge_request,
    count,
    deposit_request,
    get_hold,
    hold_request,
    new_user,
    refund_request,
    release_request,
    transfer_request,
    ttl,
)
from tests.support.server import serving

HOT_USERS = 6
COLD_USERS = 20
WRITERS = 24
OPERATIONS_PER_WRITER = 40
READERS = 4
CALL_TIMEOUT = 30.0
EXPECTED_REJECTIONS = {
    "INSUFFICIENT_FUNDS",
    "HOLD_ALREADY_CAPTURED",
    "HOLD_ALREADY_RELEASED",
    "HOLD_EXPIRED",
    "REFUND_EXCEEDS_ORIGINAL",
}


@dataclasses.dataclass
class Hold:
    user_id: str
    hold_id: str
    amount: int
    captured: int = 0  # what our successful capture took, if any


@dataclasses.dataclass
class Bank:
    """The test's model of the ledger: the sum of every successful operation's effect."""

    api: Any
    rng: random.Random
    hot: list[str]
    cold: list[str]
    posted: dict[str, int] = dataclasses.field(default_factory=dict)
    payments: int = 0
    promotions: int = 0
    charges: int = 0
    captures: int = 0
    refunds: int = 0
    transactions: int = 0
    holds: list[Hold] = dataclasses.field(default_factory=list)  # every hold created
    open_holds: list[Hold] = dataclasses.field(default_factory=list)  # not yet resolved by us
    refundable: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)  # user, tx, amount
    done: list[tuple[Any, Any, Any]] = dataclasses.field(default_factory=list)  # for replays
    rejections: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    problems: list[str] = dataclasses.field(default_factory=list)
    reads: int = 0
    replays: int = 0

    @property
    def users(self) -> list[str]:
        return self.hot + self.cold

    def amount(self, most: int = 30 * USD) -> int:
        return self.rng.randint(1, most)

    def someone(self) -> str:
        return self.rng.choice(self.hot) if self.rng.random() < 0.6 else self.rng.choice(self.cold)

    async def attempt(self, method, request) -> Any:
        """The response of a successful call; None for an expected rejection; records any other."""
        try:
            response = await method(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            try:
                reason = error_info(error).reason
            except AssertionError:
                reason = "(no ErrorInfo)"
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason in EXPECTED_REJECTIONS:
                self.rejections[reason] += 1
            else:
                self.problems.append(
                    f"{type(request).__name__}({request}) -> {error.code().name} {reason}: {error.details()}"
                )
            return None
        if getattr(response, "transaction", None) is not None and response.HasField("transaction"):
            assert_balanced(response.transaction)
            self.transactions += 1
        self.done.append((method, request, response))
        return response

    # ---- operations (each applies its effect to the model only when it succeeded) ----

    async def deposit(self) -> None:
        user_id, amount = self.someone(), self.amount(20 * USD)
        promotion = self.rng.random() < 0.2
        fields = {"source": ledger_pb2.DEPOSIT_SOURCE_PROMOTION, "external_reference": ""} if promotion else {}
        if await self.attempt(self.api.ledger.Deposit, deposit_request(user_id, amount, **fields)):
            self.posted[user_id] += amount
            if promotion:
                self.promotions += amount
            else:
                self.payments += amount

    async def charge(self) -> None:
        user_id, amount = self.someone(), self.amount()
        response = await self.attempt(self.api.ledger.Charge, charge_request(user_id, amount))
        if response:
            self.posted[user_id] -= amount
            self.charges += amount
            self.refundable.append((user_id, response.transaction.id, amount))

    async def transfer(self) -> None:
        if self.rng.random() < 0.7:  # mostly among the hot accounts, in both directions
            sender, receiver = self.rng.sample(self.hot, 2)
        else:
            sender, receiver = self.rng.sample(self.users, 2)
        amount = self.amount()
        if await self.attempt(self.api.ledger.Transfer, transfer_request(sender, receiver, amount)):
            self.posted[sender] -= amount
            self.posted[receiver] += amount

    async def create_hold(self) -> None:
        user_id, amount = self.someone(), self.amount(20 * USD)
        lifetime = {"ttl": ttl(1)} if self.rng.random() < 0.25 else {}  # some expire during the run
        response = await self.attempt(self.api.ledger.CreateHold, hold_request(user_id, amount, **lifetime))
        if response:
            hold = Hold(user_id, response.hold.id, amount)
            self.holds.append(hold)
            self.open_holds.append(hold)

    async def capture(self) -> None:
        if not self.open_holds:
            return await self.create_hold()
        hold = self.rng.choice(self.open_holds)  # possibly one another task is resolving right now
        amount = self.rng.randint(1, hold.amount)
        response = await self.attempt(self.api.ledger.CaptureHold, capture_request(hold.user_id, hold.hold_id, amount))
        if response:
            hold.captured = amount
            self.posted[hold.user_id] -= amount
            self.captures += amount
            self.refundable.append((hold.user_id, response.transaction.id, amount))
            self.open_holds.remove(hold)

    async def release(self) -> None:
        if not self.open_holds:
            return await self.create_hold()
        hold = self.rng.choice(self.open_holds)
        if await self.attempt(self.api.ledger.ReleaseHold, release_request(hold.user_id, hold.hold_id)):
            self.open_holds.remove(hold)

    async def refund(self) -> None:
        if not self.refundable:
            return await self.charge()
        user_id, original_id, original = self.rng.choice(self.refundable)
        amount = self.rng.randint(1, original)  # sometimes more than what is left
        if await self.attempt(self.api.ledger.Refund, refund_request(user_id, original_id, amount)):
            self.posted[user_id] += amount
            self.refunds += amount

    async def replay(self) -> None:
        """Repeats an earlier successful request: the same response, no second effect."""
        if not self.done:
            return
        method, request, first = self.rng.choice(self.done)
        try:
            again = await method(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            self.problems.append(f"replay of {type(request).__name__} -> {error.code().name}: {error.details()}")
            return
        self.replays += 1
        if again != first:
            self.problems.append(f"replay of {type(request).__name__} answered {again} instead of {first}")

    async def read(self) -> None:
        user_id = self.rng.choice(self.users)
        request = ledger_pb2.GetBalanceRequest(user_id=user_id)
        try:
            b = (await self.api.ledger.GetBalance(request, timeout=CALL_TIMEOUT)).balance
        except grpc.aio.AioRpcError as error:
            self.problems.append(f"GetBalance({user_id}) -> {error.code().name}: {error.details()}")
            return
        self.reads += 1
        if not (
            b.posted_micros >= 0
            and b.held_micros >= 0
            and b.available_micros >= 0
            and b.available_micros == b.posted_micros - b.held_micros
        ):
            self.problems.append(f"inconsistent read {b}")


OPERATIONS = [
    (Bank.deposit, 10),
    (Bank.charge, 16),
    (Bank.transfer, 30),
    (Bank.create_hold, 12),
    (Bank.capture, 8),
    (Bank.release, 6),
    (Bank.refund, 8),
    (Bank.replay, 4),
    (Bank.read, 6),
]


async def writer(bank: Bank) -> None:
    operations, weights = zip(*OPERATIONS, strict=True)
    for _ in range(OPERATIONS_PER_WRITER):
        await bank.rng.choices(operations, weights)[0](bank)


async def reader(bank: Bank, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await bank.read()


async def test_concurrent_money_movements_conserve_money(database_url):
    seed = random.randrange(2**32)
    async with serving(database_url, pool_max_size=16, hold_sweep_seconds=0.5) as api:
        hot = [await new_user(api) for _ in range(HOT_USERS)]
        cold = [await new_user(api) for _ in range(COLD_USERS)]
        bank = Bank(api=api, rng=random.Random(seed), hot=hot, cold=cold)
        bank.posted = dict.fromkeys(bank.users, 0)
        # Funding, itself concurrent: hot accounts get more, in several deposits each.
        funding = [(u, 100 * USD) for u in hot for _ in range(3)] + [(u, 15 * USD) for u in cold]
        responses = await asyncio.gather(*(api.ledger.Deposit(deposit_request(u, a)) for u, a in funding))
        for (user_id, amount), response in zip(funding, responses, strict=True):
            assert response.transaction.amount_micros == amount
            bank.posted[user_id] += amount
            bank.payments += amount
            bank.transactions += 1

        stop = asyncio.Event()
        readers = [asyncio.create_task(reader(bank, stop)) for _ in range(READERS)]
        try:
            await asyncio.gather(*(writer(bank) for _ in range(WRITERS)))
        finally:
            stop.set()
            await asyncio.gather(*readers)

        context = f"seed {seed}; rejections {dict(bank.rejections)}; problems:\n" + "\n".join(bank.problems[:20])
        assert bank.problems == [], context
        # The run did exercise contention: successes and rejections of several kinds.
        assert bank.rejections["INSUFFICIENT_FUNDS"] > 0, context
        assert bank.captures > 0 and bank.refunds > 0 and bank.replays > 0 and bank.reads > 0, context

        # Let the last 1-second holds expire, so no hold changes state while the checks read.
        await age_holds(api, 1.1)
        # Every user's balance is exactly what the successful operations add up to.
        held_by_user: dict[str, int] = collections.defaultdict(int)
        for hold in bank.holds:
            state = await get_hold(api, hold.user_id, hold.hold_id)
            if state.status == ACTIVE:
                held_by_user[hold.user_id] += hold.amount
            assert (state.status == CAPTURED) == (hold.captured > 0), (seed, state, hold)
            assert state.captured_micros == hold.captured, (seed, state, hold)
        total = 0
        for user_id in bank.users:
            b = (await api.ledger.GetBalance(ledger_pb2.GetBalanceRequest(user_id=user_id))).balance
            assert b.posted_micros == bank.posted[user_id], (seed, user_id, b, bank.posted[user_id])
            assert b.held_micros == held_by_user[user_id], (seed, b.held_micros, held_by_user[user_id])
            assert 0 <= b.held_micros <= b.posted_micros, (seed, b)
            assert b.available_micros == b.posted_micros - b.held_micros, (seed, b)
            total += b.posted_micros
        # Money is conserved: what users hold is what came in minus what went out.
        assert total == bank.payments + bank.promotions - bank.charges - bank.captures + bank.refunds, seed

        # The database agrees: one row per successful operation, no phantom effects.
        assert await count(api, "ledger_transactions") == bank.transactions, seed
        assert await count(api, "ledger_holds") == len(bank.holds), seed
        assert (
            await sql(api, "SELECT * FROM ledger_accounts WHERE held_micros > posted_micros OR posted_micros < 0") == []
        )
        system = {
            row["system_account"]: row["total"]
            for row in await sql(
                api,
                "SELECT system_account, sum(amount_micros)::bigint AS total FROM ledger_postings"
                " WHERE system_account IS NOT NULL GROUP BY system_account",
            )
        }
        assert system == {
            "payments_received": -bank.payments,
            "promotions": -bank.promotions,
            "revenue": bank.charges + bank.captures,
            "refunds": -bank.refunds,
        }, seed
        await assert_ledger_clean(api)


async def test_calls_cut_off_by_deadline_or_cancellation_apply_whole_or_not_at_all(api):
    """A call the client gives up on either committed entirely or left nothing; retrying it with
    the same request_id then completes it exactly once, and every connection returns to the pool."""
    rng = random.Random()
    user_id, friend = await new_user(api, 100 * USD), await new_user(api)
    hold_owner = await new_user(api, 100 * USD)
    holds = [await api.ledger.CreateHold(hold_request(hold_owner, 2 * USD)) for _ in range(10)]
    pairs = [(api.ledger.Charge, charge_request(user_id, USD)) for _ in range(20)]
    pairs += [(api.ledger.Transfer, transfer_request(user_id, friend, USD)) for _ in range(20)]
    pairs += [(api.ledger.CaptureHold, capture_request(hold_owner, h.hold.id, USD)) for h in holds]
    calls = [method(request, timeout=rng.uniform(0.001, 0.3)) for method, request in pairs]
    cancelled = calls[::7]
    tasks = [asyncio.ensure_future(call) for call in calls]
    await asyncio.sleep(0.005)
    for call in cancelled:
        call.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    # UNAVAILABLE: a call whose deadline came too near while it waited for a pooled connection.
    allowed = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            assert isinstance(result, grpc.aio.AioRpcError) and result.code() in allowed, result

    # Retried with the same request_ids: each completes once; earlier successes replay verbatim.
    for (method, request), first in zip(pairs, results, strict=True):
        again = await method(request, timeout=CALL_TIMEOUT)
        if not isinstance(first, BaseException):
            assert again == first
    assert (
        await api.ledger.GetBalance(ledger_pb2.GetBalanceRequest(user_id=user_id))
    ).balance.posted_micros == 60 * USD
    assert (await api.ledger.GetBalance(ledger_pb2.GetBalanceRequest(user_id=friend))).balance.posted_micros == 20 * USD
    b = (await api.ledger.GetBalance(ledger_pb2.GetBalanceRequest(user_id=hold_owner))).balance
    assert (b.posted_micros, b.held_micros) == (90 * USD, 0)
    assert await count(api, "ledger_transactions") == 2 + len(pairs)  # + the two fundings

    pool = api.server.pool
    await pool_drained(pool)
    await assert_ledger_clean(api)
