"""Validation of budget inputs: limits, periods, thresholds, names and scopes.

What only the database can tell (a time zone PostgreSQL knows, a model in the catalog, the user's
count of budgets, the user being live) is checked by the write's own SQL function
(db/functions/budgets.sql) and mapped by db/constraints.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from qdata.v1 import budget_pb2
from qdata_server.ledger import rules as ledger_rules
from qdata_server.validation import MODEL_ID, Violations

MAX_LIMIT_MICROS = 10**15
MAX_DISPLAY_NAME_LENGTH = 100
MAX_CALLER_LENGTH = 100
MAX_THRESHOLDS = 10
# The time zone names are checked by PostgreSQL (pg_timezone_names); this only bounds the text.
MAX_TIME_ZONE_LENGTH = 64
# At most this many budgets per user (TOO_MANY_BUDGETS), so a spend's check stays bounded.
MAX_BUDGETS_PER_USER = 20

PERIOD_TO_DB: dict[int, str] = {
    budget_pb2.BUDGET_PERIOD_DAILY: "daily",
    budget_pb2.BUDGET_PERIOD_WEEKLY: "weekly",
    budget_pb2.BUDGET_PERIOD_MONTHLY: "monthly",
    budget_pb2.BUDGET_PERIOD_LIFETIME: "lifetime",
}
PERIOD_FROM_DB: dict[str, budget_pb2.BudgetPeriod] = {
    "daily": budget_pb2.BUDGET_PERIOD_DAILY,
    "weekly": budget_pb2.BUDGET_PERIOD_WEEKLY,
    "monthly": budget_pb2.BUDGET_PERIOD_MONTHLY,
    "lifetime": budget_pb2.BUDGET_PERIOD_LIFETIME,
}
ENFORCEMENT_TO_DB: dict[int, str] = {
    budget_pb2.BUDGET_ENFORCEMENT_UNSPECIFIED: "hard",
    budget_pb2.BUDGET_ENFORCEMENT_HARD: "hard",
    budget_pb2.BUDGET_ENFORCEMENT_SOFT: "soft",
}
ENFORCEMENT_FROM_DB = {"hard": budget_pb2.BUDGET_ENFORCEMENT_HARD, "soft": budget_pb2.BUDGET_ENFORCEMENT_SOFT}

# UpdateBudget's update_mask whitelist: the mutable fields (the others are fixed at creation).
UPDATABLE_PATHS = frozenset({"display_name", "limit_micros", "enforcement", "alert_thresholds_percent"})


def limit(v: Violations, field: str, value: int) -> int:
    """1 to 10^15 micro-units."""
    if not 1 <= value <= MAX_LIMIT_MICROS:
        v.add(field, f"must be from 1 to {MAX_LIMIT_MICROS} micro-units (1 USD = 1,000,000)")
    return value


def period(v: Violations, field: str, value: int) -> str:
    """The period's database name; a violation for UNSPECIFIED or an unknown value."""
    name = PERIOD_TO_DB.get(value)
    if name is None:
        v.add(field, "is required: BUDGET_PERIOD_DAILY, WEEKLY, MONTHLY or LIFETIME")
        return ""
    return name


def enforcement(v: Violations, field: str, value: int) -> str:
    """'hard' (also for UNSPECIFIED) or 'soft'."""
    name = ENFORCEMENT_TO_DB.get(value)
    if name is None:
        v.add(field, "is not a known BudgetEnforcement")
        return "hard"
    return name


def thresholds(v: Violations, field: str, values: Sequence[int]) -> list[int]:
    """Each 1 to 100, distinct, at most 10; returned in ascending order."""
    if len(values) > MAX_THRESHOLDS:
        v.add(field, f"must have at most {MAX_THRESHOLDS} values (got {len(values)})")
    if any(not 1 <= t <= 100 for t in values):
        v.add(field, "each value must be from 1 to 100 (percent of the limit)")
    if len(set(values)) != len(values):
        v.add(field, "must not repeat a value")
    return sorted(values)


def display_name(v: Violations, field: str, value: str) -> str:
    return v.text(field, value, MAX_DISPLAY_NAME_LENGTH)


# Why a time zone name is refused (budgets/time_zones.py decides).
TIME_ZONE_UNKNOWN = "must be the name of a zone in PostgreSQL's tz database, exactly, e.g. Europe/Berlin"


def time_zone(v: Violations, field: str, value: str) -> str:
    """The zone's name (empty means UTC); whether PostgreSQL knows it: budgets/time_zones.py."""
    name = value or "UTC"
    v.text(field, name, MAX_TIME_ZONE_LENGTH)
    return name


def model_id(v: Violations, field: str, value: str) -> str | None:
    """None for every model; a catalog id's shape otherwise (its existence: the database's check)."""
    if not value:
        return None
    return v.matches(field, value, MODEL_ID)


def caller(v: Violations, field: str, value: str) -> str | None:
    """None for every caller; otherwise a token name of at most 100 characters."""
    if not value:
        return None
    v.text(field, value, MAX_CALLER_LENGTH)
    if not value.strip():
        v.add(field, "must not be blank (leave it empty for every caller)")
    return value


def currency(v: Violations, field: str, value: str) -> str:
    """A well-formed ISO 4217 code; empty means USD (check_supported tells whether it is enabled)."""
    return ledger_rules.currency(v, field, value)


def check_supported(field: str, code: str, enabled: tuple[str, ...]) -> None:
    """INVALID_ARGUMENT (reason UNSUPPORTED_CURRENCY) for a well-formed code that is not enabled."""
    ledger_rules.check_supported(field, code, enabled)
