"""What every store is written against: one engine per backend, owning the connection(s), the
transactions, the migrations and the clock.

A cold statement is written once, with `?` placeholders; the PostgreSQL engine numbers them
(`$1`, `$2`, ...). Where the two dialects spell a statement differently, the store writes both
as a `Pair`, side by side, and the engine picks its own.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import time
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .reach import Reach

T = TypeVar("T")


class Dialect(str, enum.Enum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class QueueError(Exception):
    """A database problem the user can act on; the message is one line that says what to do
    (and never holds a password)."""


class DatabaseFatal(QueueError):
    """A database problem no later try of this run gets past (the database out of reach past
    --db-timeout, its disk full): the run stops, every task of it, instead of waiting."""


@dataclass(frozen=True)
class Pair:
    """One statement whose two dialects differ, both spellings kept together."""

    sqlite: str
    postgresql: str

    @classmethod
    def of(cls, template: str, **parts: Pair) -> Pair:
        """A statement written once around the parts that differ: `{name}` in `template`
        takes each dialect's spelling of the part."""
        return cls(
            template.format(**{k: p.sqlite for k, p in parts.items()}),
            template.format(**{k: p.postgresql for k, p in parts.items()}),
        )


def in_array(column: str) -> Pair:
    """`column` is one of a list given as one parameter (`Engine.array`): a JSON array that
    SQLite reads with json_each, a PostgreSQL array."""
    return Pair(
        sqlite=f"{column} IN (SELECT value FROM json_each(?))",
        postgresql=f"{column} = ANY(?)",
    )


Sql = str | Pair


class Engine(abc.ABC):
    """One database, opened and migrated. Safe to share between the tasks of one event loop.

    Writes (`execute`, `executemany`) run in the calling task's transaction when it is inside
    one, else in a transaction of their own; reads never open one. A store that writes with
    `RETURNING` through `fetch*` opens `transaction()` around it."""

    dialect: Dialect
    # What a failed operation may raise while the engine stays usable (a lock held too long,
    # a disk full for a moment): a caller that can wait catches these and tries again later.
    errors: tuple[type[Exception], ...] = (QueueError,)
    # How long the database may be out of reach before an operation gives up (reach.py)
    reach: Reach

    @property
    def runs_folder(self) -> Path | None:
        """Where the runs of this database keep their liveness locks (liveness.py), or None
        when they share no folder (then only an expired lease frees a dead run's rows)."""
        return None

    def spelled(self, sql: Sql) -> str:
        """The statement as this dialect writes it."""
        return sql if isinstance(sql, str) else getattr(sql, self.dialect.value)

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """One write transaction. Opened again by the task already inside one, it is a
        savepoint: rolled back alone on error, never a deadlock. A cancelled task leaves the
        connection outside any transaction."""

    @abc.abstractmethod
    async def execute(self, sql: Sql, params: Sequence[Any] = ()) -> int:
        """Run one write; how many rows it changed."""

    @abc.abstractmethod
    async def executemany(self, sql: Sql, rows: Iterable[Sequence[Any]]) -> None:
        """Run one write per row, all in one transaction."""

    @abc.abstractmethod
    async def fetch(self, sql: Sql, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of a query."""

    @abc.abstractmethod
    def stream(
        self, sql: Sql, params: Sequence[Any] = (), chunk: int = 5000
    ) -> AsyncGenerator[tuple[Any, ...], None]:
        """The rows of a query, read `chunk` at a time: memory is the same for a million rows
        as for ten."""

    async def returning(self, sql: Sql, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one write with `RETURNING`; the rows it returns."""

        async def once() -> list[tuple[Any, ...]]:
            async with self.transaction():
                return await self.fetch(sql, params)

        return await self.reached(once)

    def inside_transaction(self) -> bool:
        """The calling task is inside a transaction of this engine."""
        return False

    async def reached(self, operation: Callable[[], Awaitable[T]]) -> T:
        """`operation()`, tried again while the database is out of reach for less than
        --db-timeout (reach.py). Inside a transaction it runs once: the transaction, not
        one of its statements, is what can be tried again."""
        if self.inside_transaction():
            return await operation()
        return await self.reach.run(operation)

    async def fetchrow(self, sql: Sql, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None

    async def fetchval(self, sql: Sql, params: Sequence[Any] = ()) -> Any:
        row = await self.fetchrow(sql, params)
        return None if row is None else row[0]

    def array(self, values: Sequence[Any]) -> Any:
        """A list as one parameter, for `in_array`."""
        return list(values)

    def to_db(self, t: float | None) -> float | None:
        """A time of this host's clock as the database's clock keeps it (the same on SQLite,
        whose times are the host's; on PostgreSQL, shifted by the measured difference). 0
        (due at once) stays 0."""
        return t

    def to_host(self, t: float | None) -> float | None:
        """A time the database keeps, as this host's clock reads it."""
        return t

    def now(self) -> float:
        """Now, as the database's clock keeps it: what a store writes for "now"."""
        return self.to_db(time.time()) or 0.0

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection(s); idempotent."""

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
