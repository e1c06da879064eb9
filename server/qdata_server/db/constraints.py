"""Constraint names to domain errors: how the database's own checks reach callers.

The transaction runner looks up `diag.constraint_name` of an integrity error here (never the
message text). Business rules enforced in SQL (the ledger's functions) raise through
`ledger_reject`, which names a pseudo-constraint and passes one value in DETAIL (an id or an
amount, never personal data). A constraint that is not listed is an invariant the server should
have kept itself, so its violation is a bug and surfaces as INTERNAL.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    QdataError,
    RequestRemembered,
)


def _budget_metadata(detail: str) -> dict[str, str]:
    """The metadata of a budget_exceeded rejection from its DETAIL (empty if it has none)."""
    try:
        parsed = json.loads(detail) if detail else {}
    except ValueError:
        return {}
    return {str(key): str(value) for key, value in parsed.items()} if isinstance(parsed, dict) else {}


# Each factory gets the DETAIL of the error ("" if none).
CONSTRAINT_ERRORS: dict[str, Callable[[str], QdataError]] = {
    "users_email_key": lambda _: AlreadyExists(
        "a user with this email already exists", reason=ErrorReason.ERROR_REASON_EMAIL_TAKEN
    ),
    "users_username_key": lambda _: AlreadyExists(
        "a user with this username already exists", reason=ErrorReason.ERROR_REASON_USERNAME_TAKEN
    ),
    # A write for a user that is gone: a chat session (db/migrations/0002_chat.sql) or an API key
    # (0005_api_keys.sql), whose writers lock the user first, so these only fire if a row vanished
    # anyway; the ledger's and usage's functions (0003_ledger.sql, 0004_usage.sql) check it themselves.
    **dict.fromkeys(
        ("chat_sessions_user_fkey", "user_api_keys_user_fkey", "ledger_user_not_found", "usage_user_not_found"),
        lambda _: NotFound("user not found", reason=ErrorReason.ERROR_REASON_USER_NOT_FOUND),
    ),
    # Chat (db/migrations/0002_chat.sql): the server locks the session first.
    "chat_messages_session_fkey": lambda _: NotFound(
        "session not found", reason=ErrorReason.ERROR_REASON_SESSION_NOT_FOUND
    ),
    # Ledger (db/migrations/0003_ledger.sql).
    "ledger_transactions_external_reference_key": lambda detail: AlreadyExists(
        "a deposit with this external_reference already exists",
        reason=ErrorReason.ERROR_REASON_EXTERNAL_REFERENCE_EXISTS,
        metadata={"transaction_id": detail} if detail else {},
    ),
    "ledger_balance_limit_exceeded": lambda _: FailedPrecondition(
        "the posted balance would exceed 10^18 micro-units", reason=ErrorReason.ERROR_REASON_BALANCE_LIMIT_EXCEEDED
    ),
    "ledger_insufficient_funds": lambda detail: FailedPrecondition(
        "the available balance is lower than the amount",
        reason=ErrorReason.ERROR_REASON_INSUFFICIENT_FUNDS,
        metadata={"available_micros": detail} if detail else {},
    ),
    "ledger_transaction_not_found": lambda _: NotFound(
        "transaction not found", reason=ErrorReason.ERROR_REASON_TRANSACTION_NOT_FOUND
    ),
    "ledger_transaction_not_refundable": lambda detail: FailedPrecondition(
        f"only CHARGE and HOLD_CAPTURE transactions can be refunded, not {detail.upper() or 'this one'}",
        reason=ErrorReason.ERROR_REASON_TRANSACTION_NOT_REFUNDABLE,
    ),
    "ledger_refund_exceeds_original": lambda detail: FailedPrecondition(
        "refunds would exceed the original amount",
        reason=ErrorReason.ERROR_REASON_REFUND_EXCEEDS_ORIGINAL,
        metadata={"refundable_micros": detail} if detail else {},
    ),
    "ledger_hold_not_found": lambda _: NotFound("hold not found", reason=ErrorReason.ERROR_REASON_HOLD_NOT_FOUND),
    "ledger_hold_already_captured": lambda _: FailedPrecondition(
        "the hold was already captured", reason=ErrorReason.ERROR_REASON_HOLD_ALREADY_CAPTURED
    ),
    "ledger_hold_already_released": lambda _: FailedPrecondition(
        "the hold was already released", reason=ErrorReason.ERROR_REASON_HOLD_ALREADY_RELEASED
    ),
    "ledger_hold_expired": lambda _: FailedPrecondition(
        "the hold has expired", reason=ErrorReason.ERROR_REASON_HOLD_EXPIRED
    ),
    "ledger_capture_exceeds_hold": lambda detail: InvalidArgument(
        [FieldViolation("amount_micros", f"must not exceed the hold's amount ({detail} micro-units)")],
        reason=ErrorReason.ERROR_REASON_CAPTURE_EXCEEDS_HOLD,
    ),
    # A money-moving request the ledger already carries the key of (0009_ledger_request_keys.sql):
    # a late replay caught by the functions' check, or one that lost a race on a key's unique index.
    # The idempotency layer answers it from the ledger rows.
    **dict.fromkeys(
        (
            "ledger_request_remembered",
            "ledger_transactions_request_key",
            "ledger_holds_request_key",
            "ledger_holds_release_request_key",
        ),
        lambda _: RequestRemembered(),
    ),
    # Usage (db/migrations/0004_usage.sql).
    "usage_model_not_found": lambda _: NotFound("model not found", reason=ErrorReason.ERROR_REASON_MODEL_NOT_FOUND),
    "usage_session_not_found": lambda _: NotFound(
        "chat session not found", reason=ErrorReason.ERROR_REASON_SESSION_NOT_FOUND
    ),
    "usage_model_not_priced": lambda _: FailedPrecondition(
        "the model has no price version in force at call_time", reason=ErrorReason.ERROR_REASON_MODEL_NOT_PRICED
    ),
    "usage_currency_mismatch": lambda detail: FailedPrecondition(
        f"the hold is in {detail or 'another currency'}, not in the currency of the model's price",
        reason=ErrorReason.ERROR_REASON_CURRENCY_MISMATCH,
    ),
    # Budgets (db/functions/budget_enforcement.sql): DETAIL is a JSON object of strings, the
    # ErrorInfo metadata of BUDGET_EXCEEDED (error_reason.proto).
    "budget_exceeded": lambda detail: FailedPrecondition(
        "the call would exceed a budget's limit",
        reason=ErrorReason.ERROR_REASON_BUDGET_EXCEEDED,
        metadata=_budget_metadata(detail),
    ),
    "model_prices_model_effective_key": lambda _: AlreadyExists(
        "the model already has a price version with this effective_time",
        reason=ErrorReason.ERROR_REASON_PRICE_VERSION_EXISTS,
    ),
    # BudgetService's writes (db/functions/budgets.sql, through ledger_reject).
    "budget_not_found": lambda _: NotFound("budget not found", reason=ErrorReason.ERROR_REASON_BUDGET_NOT_FOUND),
    "budget_too_many": lambda detail: FailedPrecondition(
        f"the user already has the maximum number of budgets ({detail or 20})",
        reason=ErrorReason.ERROR_REASON_TOO_MANY_BUDGETS,
    ),
    "budget_model_not_found": lambda _: NotFound(
        "model not found",
        reason=ErrorReason.ERROR_REASON_MODEL_NOT_FOUND,
        violations=[FieldViolation("budget.model_id", "names no model in the catalog")],
    ),
}


def error_for(constraint_name: str | None, detail: str | None = None) -> QdataError | None:
    """The domain error for a violated constraint, or None if it is not a caller's mistake."""
    factory = CONSTRAINT_ERRORS.get(constraint_name or "")
    return factory(detail or "") if factory else None
