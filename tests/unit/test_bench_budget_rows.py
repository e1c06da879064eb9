"""The bench table's budget rows (issue 16): their keys, their budgets, their summary and README lines.

No server runs here: the rows' summary and rendering are checked on hand-made rounds, the budgets
they create on the messages bench.table builds.
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

import pytest

from bench import readme, table
from bench.__main__ import _row_keys
from qdata.v1 import budget_pb2

BUDGET_KEYS = ["charge_budgets_1", "charge_budgets_3", "usage_budgets_1", "usage_budgets_3"]


def _run(name: str, value: float, server_ms: float) -> dict[str, Any]:
    return {
        "name": name,
        "value": value,
        "rpcs": value * 10,
        "raw": {"seconds": 10.0},
        "generator": "grpc.aio, 2 processes x 8 in flight",
        "cpu_ms_per_call": {"server": server_ms, "postgres": 2 * server_ms, "load_generator": 0.4},
    }


def _rounds() -> list[dict[str, Any]]:
    # Per round: the budgets' value, then the no-budget reference's.
    values = {
        "charge_budgets_1": ((450, 500), (400, 500)),
        "charge_budgets_3": ((400, 500), (300, 500)),
        "usage_budgets_1": ((360, 400), (380, 400)),
        "usage_budgets_3": ((300, 400), (200, 400)),
    }
    rounds = []
    for number in range(2):
        pairs = {}
        for key, per_round in values.items():
            got, ref = per_round[number]
            spec = next(s for s in table.ROWS if s["key"] == key)
            pairs[key] = {"qdata": _run(spec["qdata"], got, 1.5), "ref": _run(spec["ref"], ref, 1.0)}
        singles = {"generator_ceiling": _run("generator_ceiling", 3000, 0.3)}
        rounds.append({"round": number + 1, "pairs": pairs, "singles": singles})
    return rounds


def test_rows_accepts_the_budget_keys_and_measures_each_against_its_no_budget_set() -> None:
    assert _row_keys(",".join(BUDGET_KEYS)) == BUDGET_KEYS
    rows = table.selected_rows(BUDGET_KEYS)
    assert [r["key"] for r in rows] == BUDGET_KEYS
    assert {r["ref"] for r in rows} == {"charge_budgets_0", "usage_budgets_0"}
    assert table.singles_for(rows) == ("generator_ceiling",)
    with pytest.raises(argparse.ArgumentTypeError):
        _row_keys("charge_budgets_2")


def test_every_budget_measurement_has_its_own_set_and_a_label() -> None:
    measured = {m for r in table.ROWS if r["key"] in BUDGET_KEYS for m in (r["qdata"], r["ref"])}
    assert measured == set(table.BUDGET_SETS)
    assert all(name in table.LABELS for name in measured)
    assert [table.BUDGET_SETS[r["qdata"]][1] for r in table.selected_rows(BUDGET_KEYS)] == [1, 3, 1, 3]


@pytest.mark.parametrize(("model", "lifetime_model"), [("", ""), (table.USAGE_MODEL, table.USAGE_MODEL)])
def test_the_budgets_apply_to_every_call_and_never_refuse_one(model: str, lifetime_model: str) -> None:
    assert table._budgets_for(0, model) == []
    (daily,) = table._budgets_for(1, model)
    assert (daily.period, daily.model_id, daily.caller) == (budget_pb2.BUDGET_PERIOD_DAILY, "", "")
    budgets = table._budgets_for(3, model)
    assert [b.period for b in budgets] == [
        budget_pb2.BUDGET_PERIOD_DAILY,
        budget_pb2.BUDGET_PERIOD_MONTHLY,
        budget_pb2.BUDGET_PERIOD_LIFETIME,
    ]
    # The monthly one is scoped to the caller the bench's servers record (every call is anonymous).
    assert [b.caller for b in budgets] == ["", "anonymous", ""]
    assert [b.model_id for b in budgets] == ["", "", lifetime_model]
    for b in budgets:
        assert b.enforcement == budget_pb2.BUDGET_ENFORCEMENT_HARD
        assert list(b.alert_thresholds_percent) == [50, 80, 100]
        assert b.currency_code == "USD" and b.time_zone == "UTC"
        # Far above the 1,000 USD each bench account is funded with.
        assert b.limit_micros >= 1000 * 1_000_000_000


def test_summary_gives_each_budget_row_its_per_round_ratios_and_their_median() -> None:
    rows = table.selected_rows(BUDGET_KEYS)
    summary = table.summarize(_rounds(), rows)
    got = summary["rows"]
    assert got["charge_budgets_1"]["ratio_per_round"] == [0.9, 0.8]
    assert got["charge_budgets_3"]["ratio_per_round"] == [0.8, 0.6]
    assert got["usage_budgets_3"]["ratio"] == pytest.approx(0.625)
    assert got["charge_budgets_1"]["ref_value"] == 500
    assert got["usage_budgets_1"]["qdata_value"] == 370
    # CPU per call of every measurement, the shared no-budget ones included.
    assert set(summary["cpu_ms_per_call"]) == set(table.BUDGET_SETS) | {"generator_ceiling"}
    assert summary["cpu_ms_per_call"]["charge_budgets_3"]["postgres"] == 3.0
    assert set(summary["generator_load"]) == set(table.BUDGET_SETS)


def test_readme_renders_the_budget_rows_and_says_when_a_file_has_none() -> None:
    summary = table.summarize(_rounds(), table.selected_rows(BUDGET_KEYS))
    lines = readme.render_budgets(summary["rows"], {"budget_accounts": 200})
    text = "\n".join(lines)
    assert "its own 200 accounts" in text
    assert "| Charge (generator) | 3 | 350 tps | 500 tps | **0.70** [0.80, 0.60] |" in lines
    usage = "| RecordUsage one per call (generator) | 1 | 370 records/s | 400 records/s | **0.93** [0.90, 0.95] |"
    assert usage in lines
    older = readme.render_budgets({"charge_cold": {}}, {})
    assert len(older) == 2 and "not in this results file" in older[1]


def test_the_check_after_the_run_flags_a_budget_without_spend_unless_its_period_began_during_the_run() -> None:
    from google.protobuf import timestamp_pb2

    since = datetime.datetime(2026, 12, 1, 23, 55, tzinfo=datetime.UTC)

    def budget(budget_id: str, spent: int, start: datetime.datetime | None) -> Any:
        usage = budget_pb2.BudgetUsage(spent_micros=spent)
        if start is not None:
            usage.period_start.CopyFrom(timestamp_pb2.Timestamp(seconds=int(start.timestamp())))
        return budget_pb2.Budget(id=budget_id, current_period=usage)

    before = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
    after = datetime.datetime(2026, 12, 2, tzinfo=datetime.UTC)
    budgets = [
        budget("spent", 5, before),
        budget("idle", 0, before),
        budget("idle-lifetime", 0, None),
        budget("new-day", 0, after),
    ]
    assert table._idle_budgets(budgets, since) == ["idle", "idle-lifetime"]
