"""Shadow mode without a server: exact money conversion, and what a disagreement may log."""

from __future__ import annotations

import logging
import threading
from decimal import Decimal

import pytest

from qdata.shadow import ShadowDict, micros_from_units


@pytest.mark.parametrize(
    ("amount", "micros"),
    [
        (0.1, 100_000),
        (0.1 + 0.2, 300_000),  # 0.30000000000000004: the drift is below a micro-unit
        (10.10 - (0.1 + 0.2), 9_800_000),
        (19.99, 19_990_000),
        (2.01, 2_010_000),  # int(2.01 * 1_000_000) would be 2,009,999
        (25, 25_000_000),
        ("0.0000005", 0),  # half a micro rounds to even
        ("0.0000015", 2),
        (Decimal("1234567.891011"), 1_234_567_891_011),
        (-2.5, -2_500_000),
    ],
)
def test_units_become_exact_micros(amount, micros):
    assert micros_from_units(amount) == micros


class ProfileMirror:
    """A stand-in for qdata that holds profiles in a dictionary of its own."""

    public_fields = frozenset({"plan"})

    def __init__(self) -> None:
        self.held: dict[str, dict[str, object]] = {}

    def project(self, key: str, value: dict[str, object]) -> dict[str, object]:
        return dict(value)

    def read(self, key: str) -> dict[str, object] | None:
        return dict(self.held[key]) if key in self.held else None

    def write(self, key: str, before: dict[str, object] | None, after: dict[str, object], request_id: str) -> None:
        self.held[key] = dict(after)

    def delete(self, key: str, before: dict[str, object], request_id: str) -> None:
        del self.held[key]


def test_only_public_fields_are_logged_as_they_are(caplog):
    caplog.set_level(logging.WARNING, logger="qdata.shadow")
    mirror = ProfileMirror()
    profiles = ShadowDict({}, mirror, name="auth.profiles")
    profiles["u1"] = {"plan": "free", "api_key": "sk-live-0123456789", "email": "ada@example.com"}
    profiles.flush()
    mirror.held["u1"].update(plan="pro", api_key="sk-live-9876543210")
    assert profiles["u1"]["plan"] == "free"
    profiles.close()
    [record] = [r for r in caplog.records if r.name == "qdata.shadow"]
    fields = record.qdata_shadow["fields"]
    assert set(fields) == {"api_key", "plan"}  # the email agrees and is not mentioned
    assert fields["plan"] == {"old": "free", "qdata": "pro"}
    old, new = fields["api_key"]["old"], fields["api_key"]["qdata"]
    assert old.startswith("sha256:") and new.startswith("sha256:") and old != new
    assert "sk-live" not in caplog.text


def test_deletes_reach_the_mirror_and_a_missing_entry_is_a_disagreement(caplog):
    caplog.set_level(logging.WARNING, logger="qdata.shadow")
    mirror = ProfileMirror()
    profiles = ShadowDict({"u2": {"plan": "free"}}, mirror, name="auth.profiles")
    profiles["u1"] = {"plan": "free"}
    del profiles["u1"]
    assert profiles.get("u2") == {"plan": "free"}  # held before the wrapper: qdata lacks it
    profiles.close()
    assert mirror.held == {}
    assert [r.qdata_shadow["missing_in_qdata"] for r in caplog.records if r.name == "qdata.shadow"] == [True]
    assert profiles.counts == {"writes": 2, "reads": 1, "disagreed": 1}


def test_reads_beyond_the_pending_limit_are_skipped_and_writes_never_are():
    gate = threading.Event()

    class SlowMirror(ProfileMirror):
        def read(self, key: str) -> dict[str, object] | None:
            gate.wait(10)
            return super().read(key)

    mirror = SlowMirror()
    profiles = ShadowDict({}, mirror, name="auth.profiles", max_pending_reads=2)
    profiles["u1"] = {"plan": "free"}
    for _ in range(5):
        assert profiles["u1"] == {"plan": "free"}  # answered at once while qdata is stuck
    profiles["u1"] = {"plan": "pro"}
    gate.set()
    profiles.close()
    assert mirror.held == {"u1": {"plan": "pro"}}
    assert profiles.counts == {"writes": 2, "reads": 2, "agreed": 2, "skipped": 3}
