"""What `status`, `export-report` and the run's summary read: counts per knowledge base, state,
host and error kind, the report's rows and totals, the deletions and the last verify's lists.
Reads only; the tables are written by the other stores and the job queue."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from ..model import (
    DeletionRow,
    DoneRow,
    FailedRow,
    PendingRow,
    ReportRow,
    SkippedRow,
    Tally,
    TallyGroup,
    VerificationItem,
)
from .engine import Engine, Pair

_REPORT_ROWS: dict[str, tuple[str, type[ReportRow]]] = {
    "done": (
        "SELECT kb_id, path, size, duration, file_id, filename, content_hash, tags,"
        " remote_status, remote_error FROM jobs WHERE state = 'done' ORDER BY id",
        DoneRow,
    ),
    "failed": (
        "SELECT kb_id, path, last_error, attempts, error_kind FROM jobs"
        " WHERE state = 'failed' ORDER BY id",
        FailedRow,
    ),
    "skipped": (
        "SELECT kb_id, path, last_error FROM jobs WHERE state = 'skipped' ORDER BY id",
        SkippedRow,
    ),
}

_PENDING_ROWS = """
SELECT kb_id, path, size, state, step, attempts, last_error, error_kind, next_attempt_at,
       unknown_since IS NOT NULL
FROM jobs WHERE state IN ('pending', 'running')
  AND (kb_id = ? OR CAST(? AS TEXT) IS NULL) ORDER BY id"""

# What a run would do (run --dry-run): the rows it would upload (replacing an old entry when
# one is superseded), relabel, or whose entries it would delete.
_PLAN_ROWS = """
SELECT j.path, j.size, j.state, j.step,
       EXISTS (SELECT 1 FROM superseded AS s WHERE s.job_id = j.id AND NOT s.kept),
       j.file_id IS NOT NULL
FROM jobs AS j WHERE j.state IN ('pending', 'running', 'removed')
  AND (j.kb_id = ? OR CAST(? AS TEXT) IS NULL) ORDER BY j.id"""

_REPORT_TOTALS = """
SELECT COUNT(*),
       COALESCE(SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END), 0),
       COALESCE(SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0),
       COALESCE(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0),
       COALESCE(SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END), 0),
       COALESCE(SUM(CASE WHEN state = 'skipped' THEN 1 ELSE 0 END), 0),
       AVG(CASE WHEN state = 'done' THEN duration END)
FROM jobs"""

# Grouped in the order of SQLite's index jobs_counts (migration 0024): one read of the index
# alone, its groups met in order (no sort). PostgreSQL reads the table once and hashes the
# groups (the estimate of their number stays small: one column of unknown spread).
_TALLY = """
SELECT kb_id, state, host, shared, remote_status, COUNT(*), COALESCE(SUM(size), 0) FROM jobs
GROUP BY kb_id, state, host, shared, remote_status"""

# The uploaded files with a content hash are the rows of the partial index jobs_content:
# SQLite's planner reads them through the claim index's state = 'done' instead, a lookup in
# the table for each done row (a million: 0.5 s of CPU against 0.1 s for the index).
_CONTENT_COUNTS = Pair.of(
    """
SELECT kb_id, 'hashed', COUNT(*) FROM jobs{hashed}
WHERE state = 'done' AND content_hash IS NOT NULL GROUP BY kb_id
UNION ALL
SELECT kb_id, CASE WHEN kept THEN 'old_versions_kept' ELSE 'superseded' END, COUNT(*)
FROM superseded GROUP BY 1, 2""",
    hashed=Pair(sqlite=" INDEXED BY jobs_content", postgresql=""),
)

_DELETION_ROWS = """
SELECT d.kb_id, d.entry_id, d.filename, d.reason, d.detail, d.command, d.deleted_at, j.path
FROM deletions AS d LEFT JOIN jobs AS j ON j.id = d.job_id
ORDER BY d.id"""

_LAST_VERIFICATIONS = """
SELECT id, kb_id, started_at, ended_at, counts FROM verifications
WHERE id IN (SELECT MAX(id) FROM verifications GROUP BY kb_id) ORDER BY kb_id"""

# Items in insertion order: SQLite's rowid, PostgreSQL's `item` identity (migration 0001).
_VERIFICATION_ITEMS = Pair(
    sqlite="""
SELECT j.path, i.file_id, i.filename, i.size, i.status, i.kept_id
FROM verification_items AS i LEFT JOIN jobs AS j ON j.id = i.job_id
WHERE i.verification_id = ? AND i.kind = ? ORDER BY i.rowid""",
    postgresql="""
SELECT j.path, i.file_id, i.filename, i.size, i.status, i.kept_id
FROM verification_items AS i LEFT JOIN jobs AS j ON j.id = i.job_id
WHERE i.verification_id = ? AND i.kind = ? ORDER BY i.item""",
)


class StatusStore:
    def __init__(self, engine: Engine) -> None:
        self._db = engine

    async def state_counts(self) -> dict[str, dict[str, tuple[int, int]]]:
        """{kb_id: {state: (files, bytes)}}; states without rows are absent."""
        rows = await self._db.fetch(
            "SELECT kb_id, state, COUNT(*), COALESCE(SUM(size), 0) FROM jobs"
            " GROUP BY kb_id, state ORDER BY kb_id, state"
        )
        result: dict[str, dict[str, tuple[int, int]]] = {}
        for kb, state, count, size in rows:
            result.setdefault(kb, {})[state] = (count, int(size))
        return result

    async def tally(self) -> Tally:
        """Every row counted per knowledge base, state, host, shared and entry status, in one
        read: what `status` and the end of a run show of the queue."""
        return Tally(
            [
                TallyGroup(kb, state, host, bool(shared), seen, n, int(size))
                for kb, state, host, shared, seen, n, size in await self._db.fetch(_TALLY)
            ]
        )

    async def content_counts(self) -> dict[str, dict[str, int]]:
        """{kb_id: {"hashed": done jobs with a content hash, "superseded": entries waiting to
        be deleted, "old_versions_kept": entries kept by --keep-old-versions}}; zeros absent."""
        counts: dict[str, dict[str, int]] = {}
        for kb, what, n in await self._db.fetch(_CONTENT_COUNTS):
            counts.setdefault(kb, {})[what] = n
        return counts

    async def error_kind_counts(self) -> dict[str, int]:
        """Failed rows per error kind ('unknown' for none)."""
        rows = await self._db.fetch(
            "SELECT error_kind, COUNT(*) FROM jobs WHERE state = 'failed' GROUP BY error_kind"
        )
        return {kind or "unknown": count for kind, count in rows}

    async def report_totals(self) -> dict[str, Any]:
        """total_files, successful_uploads, failed_uploads, pending, running, skipped,
        average_upload_time (of done rows, 3 decimals), knowledge_bases (sorted)."""
        row = await self._db.fetchrow(_REPORT_TOTALS)
        assert row is not None
        total, done, failed, pending, running, skipped, avg = row
        kbs = await self._db.fetch("SELECT DISTINCT kb_id FROM jobs ORDER BY kb_id")
        return {
            "total_files": total,
            "successful_uploads": int(done),
            "failed_uploads": int(failed),
            "pending": int(pending),
            "running": int(running),
            "skipped": int(skipped),
            "average_upload_time": round(avg or 0.0, 3),
            "knowledge_bases": sorted(kb for (kb,) in kbs),
        }

    async def report_rows(self, state: str, chunk: int = 5000) -> AsyncIterator[ReportRow]:
        """The rows of one report section ('done', 'failed', 'skipped') in id order,
        streamed `chunk` at a time (memory independent of the table's size)."""
        sql, shape = _REPORT_ROWS[state]
        async with contextlib.aclosing(self._db.stream(sql, chunk=chunk)) as rows:
            async for row in rows:
                yield shape(*row)

    async def pending_rows(self, kb_id: str | None, chunk: int = 5000) -> AsyncIterator[PendingRow]:
        """The files not uploaded yet (of `kb_id`; None: all), pending or running, in id
        order, streamed."""
        params = (kb_id, kb_id)
        async with contextlib.aclosing(self._db.stream(_PENDING_ROWS, params, chunk)) as rows:
            async for r in rows:
                kb, path, size, state, step, attempts, error, kind, due, doubt = r
                due = self._db.to_host(due) if due else None  # 0: due at once
                yield PendingRow(
                    kb, path, size, state, step, attempts, error, kind, due, bool(doubt)
                )

    async def plan_rows(
        self, kb_id: str | None, chunk: int = 5000
    ) -> AsyncIterator[tuple[bytes, int, str, str | None, bool, bool]]:
        """(path, size, state, step, replaces an entry, has an entry) of the rows a run would
        work on (of `kb_id`; None: all), in id order, streamed."""
        params = (kb_id, kb_id)
        async with contextlib.aclosing(self._db.stream(_PLAN_ROWS, params, chunk)) as rows:
            async for path, size, state, step, replaces, has_entry in rows:
                yield bytes(path), size, state, step, bool(replaces), bool(has_entry)

    async def deletion_rows(self, chunk: int = 5000) -> AsyncIterator[DeletionRow]:
        """Every recorded deletion, oldest first, with its job's local path, streamed."""
        async with contextlib.aclosing(self._db.stream(_DELETION_ROWS, chunk=chunk)) as rows:
            async for row in rows:
                yield DeletionRow(*row)

    async def last_verifications(self) -> list[dict[str, Any]]:
        """The newest verification per knowledge base, by kb_id: id, kb_id, started_at,
        ended_at, counts."""
        return [
            {
                "id": vid,
                "kb_id": kb,
                "started_at": self._db.to_host(s),
                "ended_at": self._db.to_host(e),
                "counts": json.loads(c),
            }
            for vid, kb, s, e, c in await self._db.fetch(_LAST_VERIFICATIONS)
        ]

    async def verification_items(
        self, verification_id: int, kind: str, limit: int = -1
    ) -> AsyncIterator[VerificationItem]:
        """Items of one kind in insertion order (`limit` < 0: all), with the local path of
        their job, streamed."""
        sql = self._db.spelled(_VERIFICATION_ITEMS)
        params: tuple[Any, ...] = (verification_id, kind)
        if limit >= 0:
            sql, params = sql + " LIMIT ?", (*params, limit)
        async with contextlib.aclosing(self._db.stream(sql, params)) as rows:
            async for row in rows:
                yield VerificationItem(*row)
