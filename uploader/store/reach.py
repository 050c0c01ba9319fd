"""A database out of reach for a while (a restart, a failover, connections dropped by a DBA or
a pooler, a share that vanishes for a moment) is waited for, not taken for a broken run: an
operation whose connection was lost is tried again, with backoff, until the database has been
out of reach for `--db-timeout` seconds in a row. Past that the run stops in one line (exit 4).

One `Reach` per engine: "out of reach since" is the database's, not one operation's, so the
tasks failing together (the claims, the writer, the lease keeper) give up together, and once
it gave up every later operation gets one try (the rows given back and the run's record closed
if the database is back by then; else at once the same one line).

Retrying an operation whose COMMIT may have landed before the connection broke is safe for
the statements this is used for: each is one transaction and matches rows by their state and
lease owner, so its second run finds its work done (a claim whose answer was lost leaves rows
leased to this run that it never heard of: the pool gives those back when it ends).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..i18n import _
from .engine import DatabaseFatal, QueueError

log = logging.getLogger("uploader.queue")

T = TypeVar("T")

DEFAULT_TIMEOUT = 60.0
FIRST_WAIT = 0.1
LONGEST_WAIT = 2.0


class DatabaseLost(QueueError):
    """The connection to the database broke or cannot be made: tried again (`Reach`)."""


class DatabaseUnreachable(DatabaseFatal):
    """The database stayed out of reach for --db-timeout seconds: the command stops (exit 4)."""


class Reach:
    """When the database was last reachable, and how long it may be out of reach."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self._lost_since: float | None = None
        self._gave_up = False

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """`operation()`'s result, called again after each DatabaseLost until the database
        has been out of reach for `timeout` seconds; then DatabaseUnreachable."""
        wait = FIRST_WAIT
        while True:
            try:
                result = await operation()
            except DatabaseLost as exc:
                self._lost(exc)
                await asyncio.sleep(wait)
                wait = min(wait * 2, LONGEST_WAIT)
                continue
            self._back()
            return result

    def _lost(self, exc: DatabaseLost) -> None:
        now = time.monotonic()
        if self._lost_since is None:
            self._lost_since = now
            log.warning("%s; trying again for up to %.0f s (--db-timeout)", exc, self.timeout)
        if self._gave_up or now - self._lost_since >= self.timeout:
            self._gave_up = True
            raise DatabaseUnreachable(
                _("{error} (out of reach for more than {seconds} s, --db-timeout)").format(
                    error=exc, seconds=f"{self.timeout:.0f}"
                )
            ) from None

    def _back(self) -> None:
        if self._lost_since is not None:
            log.warning(
                "the database is reachable again after %.1f s", time.monotonic() - self._lost_since
            )
        self._lost_since = None
        self._gave_up = False
