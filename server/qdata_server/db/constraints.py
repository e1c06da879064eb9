"""Constraint names to domain errors: how the database's own checks reach callers.

The transaction runner looks up `diag.constraint_name` of an integrity error here (never the
message text). A constraint that is not listed is an invariant the server should have kept
itself, so its violation is a bug and surfaces as INTERNAL.
"""

from __future__ import annotations

from collections.abc import Callable

from qdata_server.errors import AlreadyExists, QdataError

CONSTRAINT_ERRORS: dict[str, Callable[[], QdataError]] = {
    "users_email_key": lambda: AlreadyExists("a user with this email already exists", reason="EMAIL_TAKEN"),
    "users_username_key": lambda: AlreadyExists("a user with this username already exists", reason="USERNAME_TAKEN"),
}


def error_for(constraint_name: str | None) -> QdataError | None:
    """The domain error for a violated constraint, or None if it is not a caller's mistake."""
    factory = CONSTRAINT_ERRORS.get(constraint_name or "")
    return factory() if factory else None
