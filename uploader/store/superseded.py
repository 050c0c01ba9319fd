"""Entries to delete and the record of what was deleted: a changed file's old entry
(superseded, until `run` has registered the new version and deleted the old one, or kept by
--keep-old-versions), the jobs of files gone from their folder (`removed`, their entries
superseded), and every deletion of an entry, whatever made it. Tables: `superseded`
(migration 0014), `deletions` (0013), the `removed` state of `jobs` (0016).

The superseded record of a job about to be registered again (`record_superseded`) is written
by the job queue, under its lease."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from ..model import (
    Deletion,
    HostScope,
    QueuedFile,
    Superseded,
    SupersededEntry,
    SupersedeFailure,
)
from .engine import Engine, Pair, in_array

_NOT_POINTED_AT = (
    "NOT EXISTS (SELECT 1 FROM jobs AS o WHERE o.file_id = s.entry_id AND o.kb_id = s.kb_id)"
)

_DUE = f"""
SELECT s.kb_id, s.entry_id, s.job_id, s.filename, j.file_id
FROM superseded AS s JOIN jobs AS j ON j.id = s.job_id
WHERE NOT s.kept AND (s.kb_id = ? OR CAST(? AS TEXT) IS NULL) AND {_NOT_POINTED_AT}
  AND (j.state = 'removed' OR (j.state = 'done' AND j.file_id IS NOT NULL
                               AND j.file_id <> s.entry_id))
ORDER BY s.superseded_at, s.entry_id"""

_LISTED = f"""
SELECT s.entry_id, s.job_id, r.filename, r.size, r.status, j.file_id, s.kept
FROM superseded AS s
JOIN remote_files AS r ON r.kb_id = s.kb_id AND r.id = s.entry_id AND r.seen_at >= ?
LEFT JOIN jobs AS j ON j.id = s.job_id
WHERE s.kb_id = ? AND {_NOT_POINTED_AT}
ORDER BY s.superseded_at, s.entry_id"""

# The byte prefix of a path: SQLite compares blobs with substr, PostgreSQL's substring needs
# the parameter typed as bytea.
_QUEUED_UNDER = Pair.of(
    """
SELECT id, path, relpath, file_id IS NOT NULL FROM jobs
WHERE kb_id = ? AND {prefix}
  AND state NOT IN ('running', 'removed') AND (shared OR host IN ('', ?) OR ?)
ORDER BY path""",
    prefix=Pair(
        sqlite="substr(path, 1, length(?)) = ?",
        postgresql="substring(path from 1 for length(CAST(? AS bytea))) = CAST(? AS bytea)",
    ),
)

_REMOVE_ENTRIES = Pair.of(
    """
INSERT INTO superseded (kb_id, entry_id, job_id, filename, s3_key, superseded_at)
SELECT kb_id, file_id, id, filename, s3_key, ? FROM jobs
WHERE {ids} AND file_id IS NOT NULL AND state NOT IN ('running', 'removed')
ON CONFLICT (kb_id, entry_id) DO NOTHING""",
    ids=in_array("id"),
)

_MARK_REMOVED = Pair.of(
    """
UPDATE jobs SET state = 'removed', file_id = NULL, remote_status = NULL, step = NULL,
       s3_key = NULL, unknown_since = NULL, content_hash = NULL, next_attempt_at = 0,
       last_error = 'the file is gone from its folder', error_kind = NULL, finished_at = ?
WHERE {ids} AND state NOT IN ('running', 'removed')""",
    ids=in_array("id"),
)

# enqueue --checksum: an uploaded row goes back to pending for a comparison of its file's bytes
# with the uploaded ones (step 'recheck', as a file whose mtime moved). Only a row with the
# content hash of its upload can be compared.
_RECHECK = Pair.of(
    """
UPDATE jobs SET state = 'pending', attempts = 0, next_attempt_at = 0, step = 'recheck',
       enqueued_at = ?, last_error = NULL, error_kind = NULL, started_at = NULL,
       finished_at = NULL, duration = NULL
WHERE {ids} AND state = 'done' AND content_hash IS NOT NULL AND file_id IS NOT NULL""",
    ids=in_array("id"),
)

# The deleted entries of one knowledge base leave the record in one statement, which names
# those it took out: two runs at once delete the same entries, and only the run that takes an
# entry out records (and counts) its deletion.
_TAKE = Pair.of(
    "DELETE FROM superseded WHERE kb_id = ? AND {entries} RETURNING entry_id",
    entries=in_array("entry_id"),
)

_RECORD_DELETION = """
INSERT INTO deletions (kb_id, entry_id, filename, reason, detail, command, deleted_at, job_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""


class SupersededStore:
    def __init__(self, engine: Engine) -> None:
        self._db = engine

    async def superseded_due(self, kb_id: str | None) -> list[Superseded]:
        """Superseded entries, not kept, whose job is done again with another entry (or is
        removed) and that no job points to: the ones `run` may delete now. Oldest first."""
        return [Superseded(*r) for r in await self._db.fetch(_DUE, (kb_id, kb_id))]

    async def superseded_listed(self, kb_id: str, since: float) -> list[SupersededEntry]:
        """Superseded entries (kept or not) that the listing begun at `since` shows and no
        job points to, oldest first."""
        rows = await self._db.fetch(_LISTED, (self._db.to_db(since), kb_id))
        return [SupersededEntry(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows]

    async def settle_superseded(
        self, deleted: Sequence[Deletion], failed: Sequence[SupersedeFailure]
    ) -> list[Deletion]:
        """One transaction: the `deleted` entries leave the superseded record and the stored
        listing and join the deletions; each `failed` one counts an attempt and its error.
        Returns the deletions recorded here: two runs at once find the same entries due and
        both delete them, and only the one that takes an entry out of the record records (and
        counts) its deletion, so that the runs' counts add up to what was deleted."""
        by_kb: dict[str, list[str]] = {}
        for d in deleted:
            by_kb.setdefault(d.kb_id, []).append(d.entry_id)
        taken: set[tuple[str, str]] = set()
        async with self._db.transaction():
            for kb_id, entries in by_kb.items():
                rows = await self._db.fetch(_TAKE, (kb_id, self._db.array(entries)))
                taken.update((kb_id, entry_id) for (entry_id,) in rows)
            mine = [d for d in deleted if (d.kb_id, d.entry_id) in taken]
            if deleted:
                await self._db.executemany(
                    "DELETE FROM remote_files WHERE kb_id = ? AND id = ?",
                    [(d.kb_id, d.entry_id) for d in deleted],
                )
            if mine:
                await self._db.executemany(_RECORD_DELETION, mine)
            if failed:
                await self._db.executemany(
                    "UPDATE superseded SET attempts = attempts + 1, last_error = ?"
                    " WHERE kb_id = ? AND entry_id = ?",
                    [(f.error, f.kb_id, f.entry_id) for f in failed],
                )
        return mine

    async def keep_superseded(self, entries: Sequence[Superseded]) -> None:
        """One transaction: mark these kept (run --keep-old-versions): never due again."""
        if entries:
            await self._db.executemany(
                "UPDATE superseded SET kept = TRUE WHERE kb_id = ? AND entry_id = ?",
                [(e.kb_id, e.entry_id) for e in entries],
            )

    async def record_deletions(self, deletions: Sequence[Deletion]) -> None:
        """One transaction: append these to the record of deleted entries, in their order."""
        if deletions:
            await self._db.executemany(_RECORD_DELETION, deletions)

    # --- files gone from their folder ------------------------------------------------------

    async def queued_under(
        self, kb_id: str, prefix: bytes, scope: HostScope
    ) -> AsyncIterator[QueuedFile]:
        """`scope`'s jobs of `kb_id` whose path starts with `prefix`, neither running nor
        removed, in path order, streamed."""
        params = (kb_id, prefix, prefix, scope.host, scope.shared)
        async with contextlib.aclosing(self._db.stream(_QUEUED_UNDER, params)) as rows:
            async for row in rows:
                yield QueuedFile(row[0], bytes(row[1]), row[2], bool(row[3]))

    async def mark_removed(self, job_ids: Sequence[int]) -> int:
        """One transaction: these jobs (unless running or removed) become `removed`; the
        entry of each that has one goes to the superseded record, for `run` to delete.
        Returns how many were marked."""
        ids, now = self._db.array(job_ids), self._db.now()
        async with self._db.transaction():
            await self._db.execute(_REMOVE_ENTRIES, (now, ids))
            return await self._db.execute(_MARK_REMOVED, (now, ids))

    async def mark_recheck(self, job_ids: Sequence[int]) -> int:
        """One transaction: these jobs, if done with an entry and its content hash, go back
        to pending to have their bytes compared with the uploaded ones. Returns how many."""
        if not job_ids:
            return 0
        return await self._db.execute(_RECHECK, (self._db.now(), self._db.array(job_ids)))
