"""Validation and normalization of account fields: email, username, display name, password."""

from __future__ import annotations

import re
import unicodedata

from email_validator import EmailNotValidError, validate_email

from qdata_server.config import Settings
from qdata_server.validation import Violations

MAX_EMAIL_LENGTH = 254
MAX_DISPLAY_NAME_LENGTH = 100
USERNAME_RULE = "must be 3 to 32 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit"
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{2,31}$")


def normalize_email(v: Violations, field: str, raw: str) -> str:
    """Trimmed, NFC, syntax-checked (email-validator) and lower-cased, so uniqueness ignores case."""
    value = unicodedata.normalize("NFC", raw.strip())
    if not value:
        v.add(field, "is required")
        return ""
    if len(value) > MAX_EMAIL_LENGTH:
        v.add(field, f"must be at most {MAX_EMAIL_LENGTH} characters")
        return ""
    try:
        normalized = validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        v.add(field, f"is not a valid email address: {exc}")
        return ""
    return normalized.lower()


def normalize_username(v: Violations, field: str, raw: str) -> str:
    value = raw.strip().lower()
    if not value:
        v.add(field, "is required")
    elif not _USERNAME.fullmatch(value):
        v.add(field, USERNAME_RULE)
    return value


def check_display_name(v: Violations, field: str, raw: str) -> str:
    return v.text(field, unicodedata.normalize("NFC", raw.strip()), MAX_DISPLAY_NAME_LENGTH)


def check_password(v: Violations, field: str, password: str, settings: Settings) -> None:
    """The configured policy, in UTF-8 bytes; the password is never echoed."""
    size = len(password.encode("utf-8"))
    if size < settings.password_min_length:
        v.add(field, f"must be at least {settings.password_min_length} bytes")
    elif size > settings.password_max_length:
        v.add(field, f"must be at most {settings.password_max_length} bytes")
    if "\x00" in password:
        v.add(field, "must not contain NUL characters")
