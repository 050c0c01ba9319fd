"""The queue: one object that owns the database (see `base.Queue` for the contract).

`open_queue(target)` picks the backend from the target: a path is a SQLite file;
`postgresql://` or `postgres://` is PostgreSQL (imported only then, so SQLite users need no
driver).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ..model import EnqueueCounts, HostScope, Job, Outcome, ScanRow
from ..store.engine import DatabaseFatal
from ..store.reach import DEFAULT_TIMEOUT, DatabaseUnreachable
from ..store.space import DiskFull
from .base import Queue, QueueError
from .target import anchor, is_url, redact

__all__ = [
    "DatabaseFatal",
    "DatabaseUnreachable",
    "DiskFull",
    "EnqueueCounts",
    "HostScope",
    "Job",
    "Outcome",
    "Queue",
    "QueueError",
    "ScanRow",
    "anchor",
    "is_url",
    "open_queue",
    "opened",
    "redact",
]


async def open_queue(
    target: str,
    *,
    create: bool = True,
    scope: HostScope | None = None,
    db_timeout: float = DEFAULT_TIMEOUT,
) -> Queue:
    """The queue at `target`, opened and migrated; every way that can fail is a QueueError.
    `create=False` refuses a target that holds no queue yet. `scope` says which host this
    process is (default: this machine's host name, nothing shared). A database out of reach
    later is waited for up to `db_timeout` seconds (store/reach.py)."""
    q: Queue
    if is_url(target):
        from .postgres import PgQueue

        q = await PgQueue.open(target, create=create, db_timeout=db_timeout)
    else:
        from .sqlite import SqliteQueue

        q = await SqliteQueue.open(target, create=create, db_timeout=db_timeout)
    if scope is not None:
        q.scope = scope
    return q


@contextlib.asynccontextmanager
async def opened(
    target: str,
    *,
    create: bool = True,
    scope: HostScope | None = None,
    db_timeout: float = DEFAULT_TIMEOUT,
) -> AsyncIterator[Queue]:
    """The queue for one command, closed at the end."""
    async with await open_queue(target, create=create, scope=scope, db_timeout=db_timeout) as q:
        yield q
