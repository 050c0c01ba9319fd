"""The SQLite statements of the remote listing (remote_files) and of verifications: the
lookups a doubtful register is settled by, and verify, dedupe and retry-failed --remote.

A mixin of `SqliteQueue`, which owns `_conn`, `transaction()` and `_fetchval()`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..model import (
    DuplicateItem,
    Entry,
    KeyOwner,
    Listed,
    ListedRow,
    RemoteRetryCandidate,
    RemoteStatus,
    RequeueItem,
    TagMismatch,
)
from .sqlite_jobs import BACK_TO_PENDING, FORGET_UPLOAD

if TYPE_CHECKING:
    from .sqlite import SqliteBase
else:
    SqliteBase = object

# --- remote files (the knowledge base's listing) ---------------------------------------------


# An entry a doubtful register of this key made: the key decides where the listing shows one
# (a URL-shaped `file` ends with it). A listing without `file` leaves name, size and time
# since the doubt; entries already some job's are out, and RemoteIndex keeps out the entries
# of registers of that name still in flight (`since` infinite then).
_ADOPTABLE = """
SELECT r.id FROM remote_files AS r
WHERE r.kb_id = :kb
  AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.file_id = r.id)
  AND CASE WHEN r.file_key IS NOT NULL
      THEN r.file_key = :s3_key OR substr(r.file_key, -length(:s3_key) - 1) = '/' || :s3_key
      ELSE r.filename = :filename AND r.created_at >= :since AND (r.size IS NULL OR r.size = :size)
      END
ORDER BY r.created_at, r.id"""


_STORE_LISTED = """
INSERT INTO remote_files (kb_id, id, filename, size, status, created_at, seen_at, file_key,
                          tags)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (kb_id, id) DO UPDATE SET filename = excluded.filename, size = excluded.size,
    status = excluded.status, created_at = excluded.created_at, seen_at = excluded.seen_at,
    file_key = excluded.file_key, tags = excluded.tags"""

# Done jobs that asked for labels or metadata, whose entry the listing begun at :since
# showed with others.
_TAG_MISMATCHES = """
FROM jobs AS j JOIN remote_files AS r ON r.kb_id = j.kb_id AND r.id = j.file_id
WHERE j.kb_id = :kb AND j.state = 'done' AND j.tags IS NOT NULL AND r.seen_at >= :since
  AND r.tags IS NOT NULL AND r.tags != j.tags"""

# ... and what their entries carry is what was applied, so an enqueue asking again sends it.
_TAGS_SEEN = """
UPDATE jobs SET tags_applied = r.tags FROM remote_files AS r
WHERE r.kb_id = jobs.kb_id AND r.id = jobs.file_id AND jobs.kb_id = :kb
  AND jobs.state = 'done' AND jobs.tags IS NOT NULL AND r.seen_at >= :since
  AND r.tags IS NOT NULL AND r.tags != jobs.tags AND jobs.tags_applied IS NOT r.tags"""


_MATCH_REMOTE = """
UPDATE jobs SET remote_status = m.status
FROM (
    SELECT j.id AS id,
           CASE WHEN r.id IS NULL THEN 'missing' ELSE COALESCE(r.status, 'unknown') END AS status
    FROM jobs AS j LEFT JOIN remote_files AS r
         ON r.kb_id = j.kb_id AND r.id = j.file_id AND r.seen_at >= :since
    WHERE j.kb_id = :kb AND j.state = 'done' AND j.file_id IS NOT NULL
) AS m
WHERE jobs.id = m.id AND jobs.remote_status IS NOT m.status"""


_DUPLICATE_CANDIDATES = """
SELECT r.id, r.filename, COALESCE(r.size, j.size), r.status, r.created_at, j.id
FROM remote_files AS r
LEFT JOIN jobs AS j ON j.file_id = r.id AND j.kb_id = r.kb_id
WHERE r.kb_id = :kb AND r.seen_at >= :since AND r.filename IN (
    SELECT filename FROM remote_files WHERE kb_id = :kb AND seen_at >= :since
    GROUP BY filename HAVING COUNT(*) > 1)
ORDER BY r.filename, r.created_at, r.id"""


_EXTRA_WHERE = """
FROM remote_files AS r
WHERE r.kb_id = :kb AND r.seen_at >= :since
  AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.file_id = r.id AND j.kb_id = r.kb_id)
  AND r.id NOT IN (SELECT value FROM json_each(:ours))"""


_UNOWNED_KEYED = """
SELECT r.id, r.filename, r.size, r.status, r.created_at, r.file_key
FROM remote_files AS r
WHERE r.kb_id = :kb AND r.seen_at >= :since AND r.file_key IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.file_id = r.id AND j.kb_id = r.kb_id)
ORDER BY r.created_at, r.id"""

# One pass over the jobs of the knowledge base whatever the number of keys (s3_key has no
# index: the hot path would pay for it on every upload).
_KEY_OWNERS = """
SELECT s3_key, id, state, file_id FROM jobs
WHERE kb_id = :kb AND s3_key IN (SELECT value FROM json_each(:keys))
ORDER BY id"""


_ITEM_COLUMNS = "verification_id, kind, job_id, file_id, filename, size, status, kept_id"

_RECORD_EXTRA = f"""
INSERT INTO verification_items ({_ITEM_COLUMNS})
SELECT :vid, 'extra', NULL, r.id, r.filename, r.size, r.status, NULL {_EXTRA_WHERE}"""

# The few bad rows straight from their partial index, not every done job of the KB.
_RECORD_BAD = f"""
INSERT INTO verification_items ({_ITEM_COLUMNS})
SELECT :vid, remote_status, id, file_id, filename, size,
       CASE remote_status WHEN 'failed' THEN 'failed' END, NULL
FROM jobs INDEXED BY jobs_remote_bad
WHERE kb_id = :kb AND remote_status IN ('failed', 'missing') AND state = 'done'"""


_REQUEUE_REMOTE = f"""
UPDATE jobs SET {BACK_TO_PENDING}, {FORGET_UPLOAD}
WHERE id = ? AND state = 'done' AND file_id IS ?"""


class RemoteMixin(SqliteBase):
    """The remote listing and verifications."""

    async def any_remote_known(self, kb_id: str, ids: Sequence[str]) -> bool:
        """Whether an earlier listing already stored one of these entries."""
        marks = ",".join("?" * len(ids))
        found = await self._fetchval(
            f"SELECT 1 FROM remote_files WHERE kb_id = ? AND id IN ({marks}) LIMIT 1",
            [kb_id, *ids],
        )
        return found is not None

    async def adoptable(
        self, kb_id: str, job_id: int, filename: str, size: int, since: float, s3_key: str
    ) -> list[str]:
        rows = await self._conn.execute_fetchall(
            _ADOPTABLE,
            {
                "kb": kb_id,
                "filename": filename,
                "size": size,
                "since": since,
                "s3_key": s3_key,
            },
        )
        return [r[0] for r in rows]

    async def store_listed(self, rows: Sequence[ListedRow]) -> None:
        """Store one page of a full listing; tuples, not dicts: a verify stores every entry."""
        async with self.transaction():
            await self._conn.executemany(_STORE_LISTED, rows)

    async def record_tag_mismatches(
        self, kb_id: str, since: float, limit: int
    ) -> tuple[int, list[TagMismatch]]:
        params = {"kb": kb_id, "since": since}
        async with self.transaction():
            await self._conn.execute(_TAGS_SEEN, params)
        count = await self._fetchval("SELECT COUNT(*)" + _TAG_MISMATCHES, params)
        rows = await self._conn.execute_fetchall(
            "SELECT j.relpath, j.file_id, j.tags, r.tags"
            + _TAG_MISMATCHES
            + " ORDER BY j.id LIMIT :limit",
            {**params, "limit": limit},
        )
        return count, [TagMismatch(*row) for row in rows]

    async def forget_unseen(self, kb_id: str, since: float) -> None:
        """After a complete listing, entries it did not show are gone from the knowledge base."""
        async with self.transaction():
            await self._conn.execute(
                "DELETE FROM remote_files WHERE kb_id = ? AND seen_at < ?", (kb_id, since)
            )

    async def forget_remote(self, kb_id: str, ids: Sequence[str]) -> None:
        async with self.transaction():
            await self._conn.executemany(
                "DELETE FROM remote_files WHERE kb_id = ? AND id = ?", [(kb_id, i) for i in ids]
            )

    async def unseen_job_entries(self, kb_id: str, since: float) -> list[str]:
        """Entries of done jobs that the listing begun at `since` did not show."""
        rows = await self._conn.execute_fetchall(
            "SELECT j.file_id FROM jobs AS j WHERE j.kb_id = :kb AND j.state = 'done'"
            " AND j.file_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM remote_files AS r"
            " WHERE r.kb_id = j.kb_id AND r.id = j.file_id AND r.seen_at >= :since)",
            {"kb": kb_id, "since": since},
        )
        return [r[0] for r in rows]

    async def match_remote(self, kb_id: str, since: float) -> None:
        """Each done job takes the status of its entry in the listing begun at `since`, or
        'missing'; one statement, and only rows whose status changed are written."""
        async with self.transaction():
            await self._conn.execute(_MATCH_REMOTE, {"kb": kb_id, "since": since})

    async def remote_status_counts(self, kb_id: str, since: float) -> dict[str, int]:
        """Entries per parse status in the listing begun at `since` (the whole knowledge base)."""
        rows = await self._conn.execute_fetchall(
            "SELECT COALESCE(status, 'unknown'), COUNT(*) FROM remote_files"
            " WHERE kb_id = ? AND seen_at >= ? GROUP BY 1",
            (kb_id, since),
        )
        return {status: n for status, n in rows}

    async def job_remote_counts(self, kb_id: str) -> dict[str, int]:
        """This database's uploaded files per remote status ('missing' included)."""
        rows = await self._conn.execute_fetchall(
            "SELECT COALESCE(remote_status, 'unknown'), COUNT(*) FROM jobs"
            " WHERE kb_id = ? AND state = 'done' GROUP BY 1",
            (kb_id,),
        )
        return {status: n for status, n in rows}

    async def not_uploaded_count(self, kb_id: str) -> int:
        return await self._fetchval(
            "SELECT COUNT(*) FROM jobs WHERE kb_id = ?"
            " AND state IN ('pending', 'running', 'failed')",
            (kb_id,),
        )

    # Entries sharing a filename with another entry of the listing; a job's entry takes the job's
    # size when the listing gives none. Ordered so that each group is oldest first.
    async def duplicate_candidates(self, kb_id: str, since: float) -> list[Entry]:
        """Entries whose name is not unique, each name's group oldest first."""
        rows = await self._conn.execute_fetchall(
            _DUPLICATE_CANDIDATES, {"kb": kb_id, "since": since}
        )
        return [Entry(*r) for r in rows]

    async def extra_count(self, kb_id: str, since: float, ours: Sequence[str]) -> int:
        """Listed entries no job points to, leaving out `ours` (surplus copies of our files)."""
        params = {"kb": kb_id, "since": since, "ours": json.dumps(list(ours))}
        return await self._fetchval(f"SELECT COUNT(*) {_EXTRA_WHERE}", params)

    async def unowned_keyed(self, kb_id: str, since: float) -> list[Listed]:
        rows = await self._conn.execute_fetchall(_UNOWNED_KEYED, {"kb": kb_id, "since": since})
        return [Listed(*r) for r in rows]

    async def key_owners(self, kb_id: str, keys: Sequence[str]) -> list[KeyOwner]:
        if not keys:
            return []
        rows = await self._conn.execute_fetchall(
            _KEY_OWNERS, {"kb": kb_id, "keys": json.dumps(list(keys))}
        )
        return [KeyOwner(*r) for r in rows]

    async def record_verification(
        self,
        kb_id: str,
        since: float,
        counts: dict[str, Any],
        duplicates: Sequence[DuplicateItem],
        ours: Sequence[str],
        superseded: Sequence[DuplicateItem] = (),
    ) -> int:
        """Store a verify's counts and its lists, from the listing begun at `since`; the previous
        verify of this knowledge base gives up its lists (its counts stay, as history)."""
        async with self.transaction():
            cur = await self._conn.execute(
                "INSERT INTO verifications (kb_id, started_at, ended_at, counts)"
                " VALUES (?, ?, ?, ?)",
                (kb_id, since, time.time(), json.dumps(counts)),
            )
            vid = int(cur.lastrowid or 0)
            await self._conn.execute(
                "DELETE FROM verification_items WHERE verification_id IN"
                " (SELECT id FROM verifications WHERE kb_id = ? AND id != ?)",
                (kb_id, vid),
            )
            params = {"vid": vid, "kb": kb_id, "since": since, "ours": json.dumps(list(ours))}
            await self._conn.execute(_RECORD_BAD, params)
            await self._conn.execute(_RECORD_EXTRA, params)
            await self._conn.executemany(
                f"INSERT INTO verification_items ({_ITEM_COLUMNS})"
                " VALUES (?, 'duplicate', ?, ?, ?, ?, ?, ?)",
                [(vid, *item) for item in duplicates],
            )
            await self._conn.executemany(
                f"INSERT INTO verification_items ({_ITEM_COLUMNS})"
                " VALUES (?, 'superseded', ?, ?, ?, ?, ?, ?)",
                [(vid, *item) for item in superseded],
            )
        return vid

    async def remote_retry_candidates(
        self, kb_id: str | None, match: Callable[[str], bool] | None
    ) -> list[RemoteRetryCandidate]:
        """Done jobs whose entry failed or is gone."""
        await self._conn.create_function(
            "uploader_match", 1, match or (lambda _: True), deterministic=True
        )
        rows = await self._conn.execute_fetchall(
            "SELECT id, kb_id, file_id, remote_status, filename"
            " FROM jobs INDEXED BY jobs_remote_bad"
            " WHERE remote_status IN ('failed', 'missing') AND state = 'done'"
            " AND (:kb IS NULL OR kb_id = :kb) AND uploader_match(relpath) ORDER BY id",
            {"kb": kb_id},
        )
        return [RemoteRetryCandidate(*r) for r in rows]

    async def requeue_remote(self, jobs: Sequence[RequeueItem]) -> int:
        """Jobs whose entry is gone go back to pending for a fresh upload;
        a job whose entry changed meanwhile (another command re-uploaded it) is left alone."""
        async with self.transaction():
            await self._conn.executemany(
                "DELETE FROM remote_files WHERE kb_id = ? AND id = ?",
                [(kb, fid) for _job, kb, fid in jobs if fid is not None],
            )
            cur = await self._conn.executemany(
                _REQUEUE_REMOTE, [(job, fid) for job, _kb, fid in jobs]
            )
        return cur.rowcount

    async def set_remote_status(self, statuses: Sequence[RemoteStatus]) -> None:
        """What reading each entry back showed."""
        async with self.transaction():
            await self._conn.executemany("UPDATE jobs SET remote_status = ? WHERE id = ?", statuses)
