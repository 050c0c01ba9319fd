"""The queue: one object that owns the database (see `base.Queue` for the contract).

`open_queue(target)` picks the backend from the target: a path is a SQLite file;
`postgresql://` or `postgres://` is PostgreSQL (imported only then, so SQLite users need no
driver).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ..model import EnqueueCounts, Job, Outcome, ScanRow
from .base import Queue, QueueError
from .target import anchor, is_url, redact

__all__ = [
    "EnqueueCounts",
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


async def open_queue(target: str, *, create: bool = True) -> Queue:
    """The queue at `target`, opened and migrated; every way that can fail is a QueueError.
    `create=False` refuses a target that holds no queue yet."""
    if is_url(target):
        from .postgres import PgQueue

        return await PgQueue.open(target, create=create)
    from .sqlite import SqliteQueue

    return await SqliteQueue.open(target, create=create)


@contextlib.asynccontextmanager
async def opened(target: str, *, create: bool = True) -> AsyncIterator[Queue]:
    """The queue for one command, closed at the end."""
    async with await open_queue(target, create=create) as q:
        yield q
