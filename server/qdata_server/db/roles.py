"""The database roles: the schema's owner and the serving role (see 0007_service_role_row_security.sql).

The server serves as a login role that is a member of the group role qdata_service; migrations
and operator commands run as the owner. A database administrator creates the login role once
(`CREATE ROLE qdata_app LOGIN PASSWORD '...' IN ROLE qdata_service`); the embedded default and
the tests do it here, through a role allowed to create roles.
"""

from __future__ import annotations

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import make_conninfo

SERVICE_GROUP = "qdata_service"


def ensure_service_login(owner_conninfo: str, login: str, *, password: str | None = None) -> str:
    """Creates (when missing) qdata_service and the login role `login` in it; returns its conninfo.

    The returned connection string is owner_conninfo with the user (and password) replaced.
    """
    with psycopg.connect(owner_conninfo, autocommit=True) as conn:
        for role, create in (
            (SERVICE_GROUP, sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(SERVICE_GROUP))),
            (
                login,
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                    sql.Identifier(login), sql.Literal(password), sql.Identifier(SERVICE_GROUP)
                ),
            ),
        ):
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                continue
            try:
                conn.execute(create)
            except pg_errors.DuplicateObject:
                pass  # created meanwhile by another process
        member = conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (login, SERVICE_GROUP)).fetchone()
        if not (member and member[0]):
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(SERVICE_GROUP), sql.Identifier(login)))
    return make_conninfo(owner_conninfo, user=login, password=password or "")
