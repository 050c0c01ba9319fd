"""The SQLite job queue over one `SqliteEngine` (uploader/store/sqlite.py), which owns the
connection, its lock, its transactions and the migrations. Its statements: `sqlite_jobs` (the
hot path, retry-failed, forget) and `sqlite_remote` (retry-failed --remote).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

from ..model import HostScope
from ..store.engine import Engine
from ..store.reach import DEFAULT_TIMEOUT
from ..store.sqlite import SqliteEngine
from .base import Queue
from .sqlite_jobs import JobsMixin
from .sqlite_remote import RemoteMixin


class SqliteBase:
    """The engine's connection and transactions, as the statement mixins use them."""

    scope: HostScope  # the Queue's (base.py), which every statement mixin reads

    def __init__(self, engine: SqliteEngine) -> None:
        self._engine = engine
        self._conn = engine.connection
        self._path = engine.path

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def runs_folder(self) -> Path | None:
        return self._engine.runs_folder

    @property
    def connection(self) -> aiosqlite.Connection:
        """The raw connection, for tests and benchmarks that prepare rows by hand."""
        return self._conn

    def transaction(self) -> Any:
        return self._engine.transaction()

    async def _fetchval(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        async with self._conn.execute(sql, params) as cur:
            row = await cur.fetchone()
        return None if row is None else row[0]


class SqliteQueue(JobsMixin, RemoteMixin, SqliteBase, Queue):
    """The queue in one SQLite file."""

    errors = SqliteEngine.errors

    @classmethod
    async def open(
        cls, path: str, *, create: bool = True, db_timeout: float = DEFAULT_TIMEOUT
    ) -> SqliteQueue:
        return cls(await SqliteEngine.open(path, create=create, db_timeout=db_timeout))

    async def close(self) -> None:
        await self._engine.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._engine.__aexit__(exc_type, exc, tb)
