"""Input checks shared by every service: collect all violations, then fail once.

    v = Violations()
    user_id = v.uuid("user_id", request.user_id)
    v.max_length("title", request.title, 200)
    v.raise_if_any()

A request with several bad fields gets one INVALID_ARGUMENT listing each of them.
"""

from __future__ import annotations

import uuid

from qdata_server.errors import FieldViolation, InvalidArgument


class Violations:
    """Accumulates field violations for one request."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)

    def uuid(self, field: str, value: str, *, required: bool = True) -> uuid.UUID | None:
        """Parses a canonical UUID; records a violation and returns None otherwise."""
        if not value:
            if required:
                self.add(field, "is required")
            return None
        if len(value) != 36:
            self.add(field, "must be a UUID such as 123e4567-e89b-12d3-a456-426614174000")
            return None
        try:
            return uuid.UUID(value)
        except ValueError:
            self.add(field, "must be a UUID such as 123e4567-e89b-12d3-a456-426614174000")
            return None

    def max_length(self, field: str, value: str, limit: int) -> None:
        if len(value) > limit:
            self.add(field, f"must be at most {limit} characters (got {len(value)})")

    def printable(self, field: str, value: str) -> None:
        """Rejects control characters (including NUL, which PostgreSQL text cannot hold)."""
        if any(ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 for ch in value):
            self.add(field, "must not contain control characters")


def require_uuid(field: str, value: str) -> uuid.UUID:
    """Parses one required UUID field or raises INVALID_ARGUMENT."""
    v = Violations()
    parsed = v.uuid(field, value)
    v.raise_if_any()
    assert parsed is not None
    return parsed


def mask_paths(field: str, paths: list[str], allowed: set[str], *, prefixes: tuple[str, ...] = ()) -> list[str]:
    """Checks a field mask against its whitelist; empty, unknown or repeated paths are invalid."""
    v = Violations()
    if not paths:
        v.add(field, f"must name at least one of: {', '.join(sorted(allowed))}")
    for path in paths:
        if path not in allowed and not path.startswith(prefixes):
            v.add(field, f"unknown or immutable path {path[:100]!r}; allowed: {', '.join(sorted(allowed))}")
    if len(set(paths)) != len(paths):
        v.add(field, "names a path twice")
    v.raise_if_any()
    return paths
