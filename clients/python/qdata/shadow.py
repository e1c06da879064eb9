"""Shadow mode: run an old in-process dictionary and qdata side by side before the cut-over.

A service that kept its data in a dictionary wraps it for the rollout week::

    from qdata.client import QdataClient
    from qdata.shadow import BalanceMirror, ShadowDict

    qdata = QdataClient("qdata:50051", token=billing_token)
    self.balances = ShadowDict(self.balances, BalanceMirror(qdata), name="billing.balances")

and leaves the rest of its code as it is. Then:

* **Writes go to both.** ``shadow[key] = value``, ``del shadow[key]`` (and ``update``, ``pop``,
  ``setdefault``, ...) change the old dictionary at once and hand the change to the mirror, which
  writes it to qdata (for balances: a Deposit or Charge of the difference).
* **Reads are served from the old dictionary**, the source of truth during the week, unchanged
  and without waiting for qdata. Each ``shadow[key]`` / ``shadow.get(key)`` also asks qdata for the
  same key, through the mirror, and compares the two answers.
* **Every disagreement is logged and counted**: one WARNING record on the ``qdata.shadow`` logger
  per disagreement, whose message is a JSON object (``event``, ``shadow``, ``key``, ``fields``:
  each differing field with its ``old`` and ``qdata`` values) and whose ``qdata_shadow``
  attribute is the same dictionary. A field value is logged as it is only when the mirror lists
  the field in ``public_fields``; any other value is logged as ``sha256:<12 hex digits>`` of its
  ``repr``, so secrets and personal data never reach the log while equal values still show as
  equal. Keys are logged as they are unless ``log_keys=False`` (then as digests too). A write or
  read that qdata refused is logged the same way (event ``write_failed`` / ``read_failed``, with
  the status code name and ErrorInfo reason, never the message). ``shadow.counts`` holds the
  totals: ``reads``, ``agreed``, ``disagreed``, ``writes``, ``write_failed``, ``read_failed``, and
  ``skipped``: reads not compared because ``max_pending_reads`` comparisons were already waiting
  (a slow or unreachable qdata never piles up memory behind the read path; writes are never
  skipped).

The calls to qdata run in one background thread, in the order the dictionary saw the changes, so
a dictionary access never waits for the network (an asyncio service's event loop is not blocked)
and a comparison always sees qdata after every earlier write. ``flush()`` waits until everything
handed over so far is done; ``close()`` flushes and stops the thread. A read compares the value
the dictionary held at the time of the read.

What the wrapper cannot see: a value changed in place (``shadow[key].append(x)`` mutates the
dictionary's list without telling anyone). Assign the changed value back (``shadow[key] = value``)
so the change reaches qdata. Iteration, ``len`` and ``in`` are answered from the old dictionary
and compare nothing, and neither does a read of a key the dictionary lacks (``get(key)`` giving
the default), so an entry only qdata holds goes unreported.

A mirror is a small object that knows one dictionary's shape (:class:`Mirror`).
:class:`BalanceMirror` covers the commonest one, ``{user_id: balance in currency units}``; others
take a dozen lines (see ``clients/python/README.md`` and ``docs/migration.md``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Protocol, TypeVar

from qdata.client import NotFound, QdataClient, QdataError
from qdata.v1 import ledger_pb2, user_pb2

__all__ = ["BalanceMirror", "Mirror", "ShadowDict", "micros_from_units"]

log = logging.getLogger("qdata.shadow")

K = TypeVar("K")
V = TypeVar("V")
K_contra = TypeVar("K_contra", contravariant=True)
V_contra = TypeVar("V_contra", contravariant=True)

MICROS_PER_UNIT = 1_000_000

Amount = float | int | Decimal
"""An amount in currency units as the old dictionaries held it."""


def micros_from_units(amount: float | int | str | Decimal) -> int:
    """An amount in currency units (the old float dollars) as integer micro-units, exactly.

    A float goes through its shortest ``repr`` (``0.1`` is 100,000 micros, not 99,999.99...), and
    what is left below a micro-unit (the drift of float sums, ``0.1 + 0.2``) is rounded half to
    even: ``micros_from_units(0.30000000000000004) == 300_000``.
    """
    value = Decimal(repr(amount)) if isinstance(amount, float) else Decimal(amount)
    return int((value * MICROS_PER_UNIT).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


class Mirror(Protocol[K_contra, V_contra]):
    """How one old dictionary's entries map to qdata. Its methods run on the shadow's thread.

    ``project`` and ``read`` return the same shape: the fields both sides hold, as a flat
    dictionary of comparable values (integers for money, not floats).
    """

    public_fields: frozenset[str]
    """Fields whose values may be logged as they are (e.g. a balance); others are digested."""

    def project(self, key: K_contra, value: V_contra) -> dict[str, object]:
        """The comparable fields of an old dictionary value."""
        ...

    def read(self, key: K_contra) -> dict[str, object] | None:
        """qdata's answer for key in the shape of ``project``; None if qdata holds nothing."""
        ...

    def write(self, key: K_contra, before: V_contra | None, after: V_contra, request_id: str) -> None:
        """Makes qdata hold after for key (before is the old dictionary's previous value, if any).

        request_id is fixed for this change; derive the ids of the calls it makes from it.
        """
        ...

    def delete(self, key: K_contra, before: V_contra, request_id: str) -> None:
        """Removes key from qdata (or does nothing where qdata keeps history)."""
        ...


_MISSING = object()


def _digest(value: object) -> str:
    return "sha256:" + hashlib.sha256(repr(value).encode()).hexdigest()[:12]


def _differences(old: Mapping[str, object], new: Mapping[str, object]) -> dict[str, tuple[object, object]]:
    return {
        field: (old.get(field), new.get(field))
        for field in sorted(set(old) | set(new))
        if old.get(field, _MISSING) != new.get(field, _MISSING)
    }


class ShadowDict(MutableMapping[K, V]):
    """The old dictionary, with every change copied to qdata and every read compared with it.

    Args:
        old: The service's dictionary; it stays the source of truth and is changed in place.
        mirror: How its entries map to qdata (:class:`Mirror`).
        name: What the log records call this dictionary, e.g. ``"billing.balances"``.
        log_keys: False logs keys as digests (for dictionaries keyed by emails or secrets).
        logger: Where disagreements go; ``logging.getLogger("qdata.shadow")`` by default.
        max_pending_reads: Comparisons waiting for qdata beyond this many are skipped (counted as
            ``skipped``), so a slow or unreachable qdata cannot pile up memory behind a busy read
            path. Writes are never skipped.
    """

    def __init__(
        self,
        old: MutableMapping[K, V],
        mirror: Mirror[K, V],
        *,
        name: str,
        log_keys: bool = True,
        logger: logging.Logger | None = None,
        max_pending_reads: int = 10_000,
    ) -> None:
        self.old = old
        self.mirror = mirror
        self.name = name
        self.counts: Counter[str] = Counter()
        self._log_keys = log_keys
        self._log = logger or log
        self._lock = threading.Lock()  # the counts and the pending reads
        self._order = threading.Lock()  # a change of the dictionary and its hand-over, together
        self._pending_reads = 0
        self._max_pending_reads = max_pending_reads
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"qdata-shadow-{name}")

    # -- the dictionary ----------------------------------------------------------------------------

    def __getitem__(self, key: K) -> V:
        with self._order:
            value = self.old[key]
            with self._lock:
                skip = self._pending_reads >= self._max_pending_reads
                if skip:
                    self.counts["skipped"] += 1
                else:
                    self._pending_reads += 1
            if not skip:
                self._executor.submit(self._compare, key, copy.deepcopy(value))
        return value

    def __setitem__(self, key: K, value: V) -> None:
        with self._order:
            before = self.old.get(key)
            self.old[key] = value
            self._executor.submit(self._write, key, copy.deepcopy(before), copy.deepcopy(value), str(uuid.uuid4()))

    def __delitem__(self, key: K) -> None:
        with self._order:
            before = self.old[key]
            del self.old[key]
            self._executor.submit(self._delete, key, copy.deepcopy(before), str(uuid.uuid4()))

    def __iter__(self) -> Iterator[K]:
        return iter(self.old)

    def __len__(self) -> int:
        return len(self.old)

    def __contains__(self, key: object) -> bool:
        return key in self.old

    def __repr__(self) -> str:
        return f"<ShadowDict {self.name} of {len(self.old)} entries>"

    # -- lifecycle ---------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Waits until every change and comparison handed over so far is done."""
        self._executor.submit(lambda: None).result(timeout)

    def close(self) -> None:
        """Finishes what was handed over and stops the background thread."""
        self._executor.shutdown(wait=True)

    # -- the background work -----------------------------------------------------------------------

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _key(self, key: K) -> object:
        return key if self._log_keys else _digest(key)

    def _value(self, field: str, value: object) -> object:
        return value if field in self.mirror.public_fields or value is None else _digest(value)

    def _report(self, event: str, key: K, **fields: object) -> None:
        record: dict[str, object] = {"event": event, "shadow": self.name, "key": self._key(key), **fields}
        self._log.warning(json.dumps(record, sort_keys=True, default=str), extra={"qdata_shadow": record})

    def _failed(self, event: str, key: K, exc: Exception) -> None:
        self._count(event)
        if isinstance(exc, QdataError):
            self._report(event, key, code=exc.code.name, reason=exc.reason)
        else:
            self._report(event, key, code="CLIENT", reason=type(exc).__name__)

    def _compare(self, key: K, value: V) -> None:
        try:
            self._compare_now(key, value)
        finally:
            with self._lock:
                self._pending_reads -= 1

    def _compare_now(self, key: K, value: V) -> None:
        self._count("reads")
        try:
            expected = self.mirror.project(key, value)
            actual = self.mirror.read(key)
        except Exception as exc:  # the old dictionary answered; a failed comparison must not break it
            self._failed("read_failed", key, exc)
            return
        if actual is None:
            self._count("disagreed")
            self._report("disagreement", key, missing_in_qdata=True, fields={})
            return
        differences = _differences(expected, actual)
        if not differences:
            self._count("agreed")
            return
        self._count("disagreed")
        shown = {f: {"old": self._value(f, o), "qdata": self._value(f, q)} for f, (o, q) in differences.items()}
        self._report("disagreement", key, missing_in_qdata=False, fields=shown)

    def _write(self, key: K, before: V | None, after: V, request_id: str) -> None:
        self._count("writes")
        try:
            self.mirror.write(key, before, after, request_id)
        except Exception as exc:
            self._failed("write_failed", key, exc)

    def _delete(self, key: K, before: V, request_id: str) -> None:
        self._count("writes")
        try:
            self.mirror.delete(key, before, request_id)
        except Exception as exc:
            self._failed("write_failed", key, exc)


class BalanceMirror:
    """``{user_id: balance}`` with balances in currency units (floats, ints or Decimals).

    A write deposits or charges the difference between the dictionary's previous and new value,
    in exact micro-units (:func:`micros_from_units`): a rise is a Deposit (source PAYMENT, with
    external_reference ``"shadow/<request_id>"``, since the dictionary knows no payment
    reference), a fall a Charge. A read compares the dictionary's value with qdata's posted
    balance (``balance_micros``). Deleting an entry changes nothing in qdata (the ledger keeps
    its history). Keys are qdata user ids; with ``by_username=True`` they are usernames, looked
    up with GetUser.
    """

    public_fields = frozenset({"balance_micros"})

    def __init__(
        self, client: QdataClient, *, currency_code: str = "USD", by_username: bool = False, description: str = ""
    ) -> None:
        self.client = client
        self.currency_code = currency_code
        self.by_username = by_username
        self.description = description or "shadow write"

    def _user_id(self, key: str) -> str:
        if not self.by_username:
            return key
        reply = self.client.users.GetUser(user_pb2.GetUserRequest(username=key))
        user_id: str = reply.user.id
        return user_id

    def project(self, key: str, value: Amount) -> dict[str, object]:
        return {"balance_micros": micros_from_units(value)}

    def read(self, key: str) -> dict[str, object] | None:
        try:
            user_id = self._user_id(key)
            reply = self.client.ledger.GetBalance(
                ledger_pb2.GetBalanceRequest(user_id=user_id, currency_code=self.currency_code)
            )
        except NotFound:
            return None
        posted: int = reply.balance.posted_micros
        return {"balance_micros": posted}

    def write(self, key: str, before: Amount | None, after: Amount, request_id: str) -> None:
        delta = micros_from_units(after) - micros_from_units(before or 0)
        if delta == 0:
            return
        user_id = self._user_id(key)
        if delta > 0:
            self.client.ledger.Deposit(
                ledger_pb2.DepositRequest(
                    request_id=request_id,
                    user_id=user_id,
                    amount_micros=delta,
                    currency_code=self.currency_code,
                    source=ledger_pb2.DEPOSIT_SOURCE_PAYMENT,
                    external_reference=f"shadow/{request_id}",
                    description=self.description,
                )
            )
        else:
            self.client.ledger.Charge(
                ledger_pb2.ChargeRequest(
                    request_id=request_id,
                    user_id=user_id,
                    amount_micros=-delta,
                    currency_code=self.currency_code,
                    description=self.description,
                    reference=f"shadow/{request_id}",
                )
            )

    def delete(self, key: str, before: Amount, request_id: str) -> None:
        return None
