"""Turns at SQLite's write lock, so that an enqueue's walk does not starve a run beside it.

SQLite's write lock is not fair. A writer that finds it taken sleeps in its busy handler, a
little longer at each try (up to 100 ms a sleep), and a writer that commits and begins again
at once takes the lock back before a sleeper wakes. An enqueue of a big folder does just that,
batch after batch: a run started beside it waited for the lock 71% of the walk's time (bench
case 12), and made 60-110 files/s where it makes 170.

So writers say when they write, through a file lock beside the database (`<db>.scans/writers`,
`flock`): every write transaction holds it shared from before its BEGIN until its COMMIT,
waiting included. Before each of its batches a bulk writer (the enqueue) waits until nobody
holds it (an exclusive lock taken and let go at once): a run that wants the write lock then
has it after the batch in progress, and the walk goes on once the run has committed. The run
waits at most one batch, the walk at most a transaction of each writer; and while others
write, the walk's transactions are short (`sqlite_jobs.CROWDED_ROWS`).

Bounded on both sides, since the turns are a courtesy and never correctness (SQLite's own
lock still orders every write): a bulk writer waits for its turn at most BULK_WAIT (runs
whose transactions overlap could otherwise keep it out for ever), then writes as before; the
shared lock is never waited for (only a bulk writer's momentary test holds the exclusive
one). Where there are no such locks (Windows, a share without them, a database that cannot
be written), writers do not take turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from .. import osfiles

log = logging.getLogger("uploader.queue")

NAME = "writers"  # in `<db>.scans/`, the folder of enqueue announcements (never queued)
BULK_WAIT = 1.0  # the longest a bulk writer waits for the others before each batch
POLL = 0.001  # how often a waiting bulk writer looks again
CROWDED_FOR = 1.0  # seconds after another writer was seen that a bulk writer keeps it short
_SHARED_TRIES = 3  # a bulk writer's test holds the exclusive lock for a system call only


def _try(fd: int, exclusive: bool) -> bool:
    """Take the lock without waiting: False when another open file holds it."""
    if sys.platform == "win32":
        return False
    import fcntl

    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


class Turns:
    """The writers' file lock of one database, for one engine: `writing()` around each of
    its write transactions, `wait_for_writers()` before each bulk one. Two descriptors, so
    that this process's own transaction in progress makes its bulk test wait instead of
    converting its shared lock (flock locks belong to the open file)."""

    def __init__(self, shared_fd: int, test_fd: int) -> None:
        self._shared = shared_fd
        self._test = test_fd
        self._seen = -math.inf  # when another writer was last seen (monotonic)

    @classmethod
    def beside(cls, db_path: str) -> Turns | None:
        """The turns of the SQLite file at `db_path`, or None where there are none."""
        if sys.platform == "win32" or db_path == ":memory:":
            return None
        path = Path(db_path + ".scans") / NAME
        fds: list[int] = []
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            for _ in range(2):
                fds.append(osfiles.open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o600))
            if _try(fds[0], exclusive=False):
                _unlock(fds[0])
        except OSError as exc:
            log.debug("writers take no turns at %s: %s", path, exc)
            for fd in fds:
                os.close(fd)
            return None
        return cls(fds[0], fds[1])

    def close(self) -> None:
        for fd in (self._shared, self._test):
            with contextlib.suppress(OSError):
                os.close(fd)

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """A write transaction, from before its BEGIN to after its COMMIT: a bulk writer
        waits while it lasts."""
        held = False
        for _ in range(_SHARED_TRIES):
            with contextlib.suppress(OSError):
                held = _try(self._shared, exclusive=False)
            if held:
                break
            await asyncio.sleep(0)
        try:
            yield
        finally:
            if held:
                with contextlib.suppress(OSError):
                    _unlock(self._shared)

    async def wait_for_writers(self) -> bool:
        """Before a bulk transaction: until no other transaction is in progress or waiting
        (at most BULK_WAIT). Whether other writers are about (one was seen in the last
        CROWDED_FOR seconds): the bulk writer then writes in short transactions."""
        deadline = time.monotonic() + BULK_WAIT
        while True:
            try:
                free = _try(self._test, exclusive=True)
            except OSError:
                break
            if free:
                with contextlib.suppress(OSError):
                    _unlock(self._test)
                break
            self._seen = time.monotonic()
            if self._seen >= deadline:
                break
            await asyncio.sleep(POLL)
        return time.monotonic() - self._seen < CROWDED_FOR
