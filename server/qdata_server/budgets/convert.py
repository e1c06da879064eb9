"""Budget rows to qdata.v1 messages."""

from __future__ import annotations

from typing import Any

from qdata.v1 import budget_pb2
from qdata_server.budgets import rules
from qdata_server.convert import same_named, timestamp


def usage(row: dict[str, Any]) -> budget_pb2.BudgetUsage:
    """The current period's consumption (period bounds unset for a lifetime budget)."""
    spent = row["spent_micros"] or 0
    held = row["held_micros"] or 0
    return budget_pb2.BudgetUsage(
        period_start=timestamp(row["period_start"]),
        period_end=timestamp(row["period_end"]),
        spent_micros=spent,
        held_micros=held,
        remaining_micros=max(0, row["limit_micros"] - spent - held),
    )


def budget(row: dict[str, Any]) -> budget_pb2.Budget:
    """A budget row with its usage columns (queries/budgets.sql's answer shape)."""
    return budget_pb2.Budget(
        id=str(row["budget_id"]),
        user_id=str(row["user_id"]),
        period=rules.PERIOD_FROM_DB[row["period"]],
        model_id=row["model_id"] or "",
        caller=row["caller"] or "",
        enforcement=rules.ENFORCEMENT_FROM_DB[row["enforcement"]],
        alert_thresholds_percent=row["alert_thresholds_percent"],
        current_period=usage(row),
        create_time=timestamp(row["created_at"]),
        update_time=timestamp(row["updated_at"]),
        **same_named(row, "display_name currency_code limit_micros time_zone"),
    )


def alert(row: dict[str, Any]) -> budget_pb2.BudgetAlert:
    return budget_pb2.BudgetAlert(
        id=str(row["alert_id"]),
        user_id=str(row["user_id"]),
        budget_id=str(row["budget_id"]),
        period_start=timestamp(row["period_start"]),
        period_end=timestamp(row["period_end"]),
        create_time=timestamp(row["created_at"]),
        **same_named(row, "threshold_percent limit_micros consumed_micros currency_code"),
    )
