"""Database rows to qdata.v1 messages for users and preferences."""

from __future__ import annotations

import datetime
from typing import Any

from qdata.v1 import user_pb2

# timestamp is re-exported: the users modules call convert.timestamp.
from qdata_server.convert import same_named
from qdata_server.convert import timestamp as timestamp
from qdata_server.users import passwords

STATUS_TO_PROTO = {
    "active": user_pb2.USER_STATUS_ACTIVE,
    "disabled": user_pb2.USER_STATUS_DISABLED,
    "deleted": user_pb2.USER_STATUS_DELETED,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}
# Keyed by passwords.scheme_of(), which is None for no hash (the .get below answers UNSPECIFIED).
SCHEME_TO_PROTO: dict[str | None, user_pb2.PasswordScheme] = {
    passwords.SCHEME_BCRYPT: user_pb2.PASSWORD_SCHEME_BCRYPT,
    passwords.SCHEME_WERKZEUG: user_pb2.PASSWORD_SCHEME_LEGACY_WERKZEUG,
    passwords.SCHEME_DJANGO: user_pb2.PASSWORD_SCHEME_LEGACY_DJANGO,
}
THEME_TO_PROTO = {
    "": user_pb2.THEME_UNSPECIFIED,
    "system": user_pb2.THEME_SYSTEM,
    "light": user_pb2.THEME_LIGHT,
    "dark": user_pb2.THEME_DARK,
}
THEME_FROM_PROTO = {v: k for k, v in THEME_TO_PROTO.items()}


def user(row: dict[str, Any]) -> user_pb2.User:
    """A User message from a users row; never carries the password hash."""
    locked = row["locked_until"]
    if locked is not None and locked <= datetime.datetime.now(datetime.UTC):
        locked = None
    return user_pb2.User(
        id=str(row["user_id"]),
        email=row["email"] or "",
        username=row["username"] or "",
        display_name=row["display_name"],
        status=STATUS_TO_PROTO[row["status"]],
        password_scheme=SCHEME_TO_PROTO.get(
            passwords.scheme_of(row["password_hash"]), user_pb2.PASSWORD_SCHEME_UNSPECIFIED
        ),
        last_login_time=timestamp(row["last_login_at"]),
        locked_until_time=timestamp(locked),
        create_time=timestamp(row["created_at"]),
        update_time=timestamp(row["updated_at"]),
        delete_time=timestamp(row["deleted_at"]),
    )


def preferences(user_id: str, row: dict[str, Any] | None) -> user_pb2.Preferences:
    """Preferences from a user_preferences row, or the defaults when the user has none."""
    if row is None:
        return user_pb2.Preferences(user_id=user_id)
    return user_pb2.Preferences(
        user_id=user_id,
        theme=THEME_TO_PROTO[row["theme"]],
        **same_named(row, "default_model_id language extra"),
        update_time=timestamp(row["updated_at"]),
    )
