"""Reading the knowledge base back: the listing kept in the remote_files table, refreshed
incrementally, and the lookups that decide whether a doubtful register took effect."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiosqlite

from . import queue
from .client import MaiAgentClient

log = logging.getLogger("uploader.reconcile")

# How far the service's clock may lag ours; entries this much older than a listing's start
# are looked for again by the next refresh.
CLOCK_SKEW = 5.0
PAGE_SIZE = 100


@dataclass
class _Coverage:
    started: float  # when the last refresh began (our clock)
    floor: float  # every entry created between floor and started - CLOCK_SKEW is stored


class RemoteIndex:
    """The listing is newest first, so a refresh reads only the pages created since the
    oldest doubt it must settle, and stops where the previous refresh began."""

    def __init__(self, conn: aiosqlite.Connection, client: MaiAgentClient) -> None:
        self._conn = conn
        self._client = client
        self._lock = asyncio.Lock()
        self._coverage: dict[str, _Coverage] = {}
        self.taken: set[str] = set()  # knowledge-file ids some job of this process owns

    async def refresh(self, kb_id: str, floor: float, needed_after: float) -> None:
        """Make sure every entry created since `floor` is stored, as seen by a listing that
        began after `needed_after`."""
        async with self._lock:
            cov = self._coverage.get(kb_id)
            if cov and cov.started >= needed_after and cov.floor <= floor:
                return
            started = time.time()
            stop_at = floor - CLOCK_SKEW
            contiguous = cov is not None and cov.floor <= stop_at
            if cov is not None and contiguous:
                stop_at = max(stop_at, cov.started - CLOCK_SKEW)
            await self._read_newest(kb_id, stop_at, started)
            new_floor = min(cov.floor, stop_at) if cov is not None and contiguous else stop_at
            self._coverage[kb_id] = _Coverage(started, new_floor)

    async def _read_newest(self, kb_id: str, stop_at: float, seen_at: float) -> None:
        page = 1
        while True:
            data = await self._client.list_files(kb_id, page, PAGE_SIZE)
            results = data.get("results") or []
            if results:
                await queue.upsert_remote(self._conn, kb_id, results, seen_at)
            oldest = (results[-1].get("createdAt") or 0) / 1000.0 if results else 0.0
            if not data.get("next") or not results or oldest < stop_at:
                return
            page += 1

    async def adopt(self, job: queue.Job, filename: str) -> str | None:
        """The entry a doubtful register of `job` created, if the listing shows one."""
        since = job.unknown_since or job.started_at
        await self.refresh(job.kb_id, since, job.started_at)
        for file_id in await queue.adoptable(
            self._conn, job.kb_id, filename, job.size, since - CLOCK_SKEW
        ):
            if file_id not in self.taken:
                self.taken.add(file_id)
                return file_id
        return None
