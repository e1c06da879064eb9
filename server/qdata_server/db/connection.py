"""The types of the database handles the server passes around.

Every pooled connection returns rows as dicts (db/pool.py sets psycopg's dict_row), so a
connection is `Conn` (psycopg.AsyncConnection[DictRow]) and a row is `Row` (dict[str, Any]);
`Pool` is the pool of such connections.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import psycopg
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

Row: TypeAlias = DictRow
Conn: TypeAlias = psycopg.AsyncConnection[DictRow]
Pool: TypeAlias = AsyncConnectionPool[Conn]
# Parameters of a named SQL block: %(name)s placeholders by name.
Params: TypeAlias = Mapping[str, Any]
