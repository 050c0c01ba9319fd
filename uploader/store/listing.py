"""The knowledge base's listing as last read (`remote_files`), what it shows of our jobs, and
the verifications made from it: the lookups that settle a doubtful register (adoption by key),
and what verify, dedupe and the tag check read and record. Tables: `remote_files` (migrations
0001, 0003, 0011), `verifications` and `verification_items` (0001, 0002), the remote_status of
`jobs`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..model import (
    DuplicateItem,
    Entry,
    KeyOwner,
    Listed,
    ListedRow,
    RemoteStatus,
    TagMismatch,
)
from .engine import Engine, Pair, in_array

# SQLite's `IS NOT` is PostgreSQL's `IS DISTINCT FROM` (NULLs compared as values).
_DIFFERS = Pair(sqlite="IS NOT", postgresql="IS DISTINCT FROM")

# An entry a doubtful register of this key made: the key decides where the listing shows one
# (a URL-shaped `file` ends with "/" + key). A listing without `file` leaves name, size and
# time since the doubt; entries already some job's are out, and RemoteIndex keeps out the
# entries of registers of that name still in flight (`since` infinite then).
_ADOPTABLE = Pair.of(
    """
SELECT r.id FROM remote_files AS r
WHERE r.kb_id = ?
  AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.file_id = r.id)
  AND CASE WHEN r.file_key IS NOT NULL
      THEN r.file_key = ? OR {suffix} = '/' || ?
      ELSE r.filename = ? AND r.created_at >= ? AND (r.size IS NULL OR r.size = ?)
      END
ORDER BY r.created_at, r.id""",
    suffix=Pair(
        sqlite="substr(r.file_key, -length(CAST(? AS TEXT)) - 1)",
        postgresql="right(r.file_key, length(CAST(? AS TEXT)) + 1)",
    ),
)

_STORE_LISTED = """
INSERT INTO remote_files (kb_id, id, filename, size, status, created_at, seen_at, file_key,
                          tags)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (kb_id, id) DO UPDATE SET filename = excluded.filename, size = excluded.size,
    status = excluded.status, created_at = excluded.created_at, seen_at = excluded.seen_at,
    file_key = excluded.file_key, tags = excluded.tags"""

# Done jobs that asked for labels or metadata, whose entry the listing begun at `since`
# showed with others ...
_TAG_MISMATCHES = """
FROM jobs AS j JOIN remote_files AS r ON r.kb_id = j.kb_id AND r.id = j.file_id
WHERE j.kb_id = ? AND j.state = 'done' AND j.tags IS NOT NULL AND r.seen_at >= ?
  AND r.tags IS NOT NULL AND r.tags <> j.tags"""

# ... and what their entries carry is what was applied, so an enqueue asking again sends it.
_TAGS_SEEN = Pair.of(
    """
UPDATE jobs SET tags_applied = r.tags FROM remote_files AS r
WHERE r.kb_id = jobs.kb_id AND r.id = jobs.file_id AND jobs.kb_id = ?
  AND jobs.state = 'done' AND jobs.tags IS NOT NULL AND r.seen_at >= ?
  AND r.tags IS NOT NULL AND r.tags <> jobs.tags AND jobs.tags_applied {differs} r.tags""",
    differs=_DIFFERS,
)

_MATCH_REMOTE = Pair.of(
    """
UPDATE jobs SET remote_status = m.status
FROM (
    SELECT j.id AS id,
           CASE WHEN r.id IS NULL THEN 'missing' ELSE COALESCE(r.status, 'unknown') END AS status
    FROM jobs AS j LEFT JOIN remote_files AS r
         ON r.kb_id = j.kb_id AND r.id = j.file_id AND r.seen_at >= ?
    WHERE j.kb_id = ? AND j.state = 'done' AND j.file_id IS NOT NULL
) AS m
WHERE jobs.id = m.id AND jobs.remote_status {differs} m.status""",
    differs=_DIFFERS,
)

_UNSEEN_JOB_ENTRIES = """
SELECT j.file_id FROM jobs AS j WHERE j.kb_id = ? AND j.state = 'done'
  AND j.file_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM remote_files AS r
      WHERE r.kb_id = j.kb_id AND r.id = j.file_id AND r.seen_at >= ?)
ORDER BY j.id"""

# Entries sharing a filename with another entry of the listing; a job's entry takes the job's
# size when the listing gives none. Ordered so that each group is oldest first.
_DUPLICATE_CANDIDATES = """
SELECT r.id, r.filename, COALESCE(r.size, j.size), r.status, r.created_at, j.id
FROM remote_files AS r
LEFT JOIN jobs AS j ON j.file_id = r.id AND j.kb_id = r.kb_id
WHERE r.kb_id = ? AND r.seen_at >= ? AND r.filename IN (
    SELECT filename FROM remote_files WHERE kb_id = ? AND seen_at >= ?
    GROUP BY filename HAVING COUNT(*) > 1)
ORDER BY r.filename, r.created_at, r.id"""

# Listed entries no job points to, `ours` (surplus copies of our files) left out.
_EXTRA_WHERE = Pair.of(
    """
FROM remote_files AS r
WHERE r.kb_id = ? AND r.seen_at >= ?
  AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.file_id = r.id AND j.kb_id = r.kb_id)
  AND NOT {ours}""",
    ours=in_array("r.id"),
)

_UNOWNED_KEYED = """
SELECT r.id, r.filename, r.size, r.status, r.created_at, r.file_key
FROM remote_files AS r
WHERE r.kb_id = ? AND r.seen_at >= ? AND r.file_key IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.file_id = r.id AND j.kb_id = r.kb_id)
ORDER BY r.created_at, r.id"""

# One pass over the jobs of the knowledge base whatever the number of keys (s3_key has no
# index: the hot path would pay for it on every upload).
_KEY_OWNERS = Pair.of(
    """
SELECT s3_key, id, state, file_id FROM jobs
WHERE kb_id = ? AND {keys}
ORDER BY id""",
    keys=in_array("s3_key"),
)

_ITEM_COLUMNS = "verification_id, kind, job_id, file_id, filename, size, status, kept_id"

_RECORD_EXTRA = Pair(
    sqlite=f"INSERT INTO verification_items ({_ITEM_COLUMNS})"
    f" SELECT ?, 'extra', NULL, r.id, r.filename, r.size, r.status, NULL {_EXTRA_WHERE.sqlite}",
    postgresql=f"INSERT INTO verification_items ({_ITEM_COLUMNS})"
    " SELECT CAST(? AS bigint), 'extra', NULL, r.id, r.filename, r.size, r.status, NULL"
    f" {_EXTRA_WHERE.postgresql}",
)

# The few bad rows straight from their partial index, not every done job of the KB (SQLite's
# planner is told so).
_RECORD_BAD = Pair.of(
    f"""
INSERT INTO verification_items ({_ITEM_COLUMNS})
SELECT ?, remote_status, id, file_id, filename, size,
       CASE remote_status WHEN 'failed' THEN 'failed' END, NULL
FROM jobs{{indexed}}
WHERE kb_id = ? AND remote_status IN ('failed', 'missing') AND state = 'done'""",
    indexed=Pair(sqlite=" INDEXED BY jobs_remote_bad", postgresql=""),
)

_RECORD_ITEM = f"INSERT INTO verification_items ({_ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


class ListingStore:
    """Each stored entry keeps the time of the listing that saw it (`seen_at`), and a listing
    is known by the time it began (`since`): by the database's clock, as every host keeps
    its times there. Hosts share the table; one whose clock is off stored its entries as seen
    minutes before or after the others' listings, and a verify forgot the entries it had just
    listed, or kept gone ones as seen."""

    def __init__(self, engine: Engine) -> None:
        self._db = engine

    def _on_db(self, t: float) -> float:
        """A time of this host's clock (a listing's start) as the database keeps it."""
        return self._db.to_db(t) or t

    # --- the listing -----------------------------------------------------------------------

    async def store_listed(self, rows: Sequence[ListedRow]) -> None:
        """One transaction: upsert listed entries by (kb_id, id); an entry listed twice is
        stored as last seen."""
        last = {(r.kb_id, r.id): r for r in rows}
        if last:
            on_db = {seen: self._on_db(seen) for seen in {r.seen_at for r in last.values()}}
            stored = [r._replace(seen_at=on_db[r.seen_at]) for r in last.values()]
            await self._db.executemany(_STORE_LISTED, stored)

    async def any_remote_known(self, kb_id: str, ids: Sequence[str]) -> bool:
        """Whether an earlier listing stored one of these entry ids."""
        found = await self._db.fetchval(
            Pair.of(
                "SELECT 1 FROM remote_files WHERE kb_id = ? AND {ids} LIMIT 1", ids=in_array("id")
            ),
            (kb_id, self._db.array(ids)),
        )
        return found is not None

    async def forget_unseen(self, kb_id: str, since: float) -> None:
        """Delete stored entries of `kb_id` not seen by the listing begun at `since`."""
        await self._db.execute(
            "DELETE FROM remote_files WHERE kb_id = ? AND seen_at < ?", (kb_id, self._on_db(since))
        )

    async def forget_remote(self, kb_id: str, ids: Sequence[str]) -> None:
        """Delete these stored entries (they were deleted from the knowledge base)."""
        if ids:
            await self._db.executemany(
                "DELETE FROM remote_files WHERE kb_id = ? AND id = ?", [(kb_id, i) for i in ids]
            )

    async def remote_status_counts(self, kb_id: str, since: float) -> dict[str, int]:
        """Entries of the listing begun at `since` per status ('unknown' for none)."""
        rows = await self._db.fetch(
            "SELECT COALESCE(status, 'unknown'), COUNT(*) FROM remote_files"
            " WHERE kb_id = ? AND seen_at >= ? GROUP BY 1",
            (kb_id, self._on_db(since)),
        )
        return {status: n for status, n in rows}

    # --- adoption of a doubtful register -----------------------------------------------------

    async def adoptable(
        self, kb_id: str, job_id: int, filename: str, size: int, since: float, s3_key: str
    ) -> list[str]:
        """Listed entries a doubtful register of job `job_id`'s key may have created, not
        already some job's entry, oldest first. Where the listing shows an entry's key, only
        the key decides (equal, or a path ending with "/" + key); an entry listed without a
        key matches by filename, created at or after `since` and size (when listed)."""
        rows = await self._db.fetch(
            _ADOPTABLE, (kb_id, s3_key, s3_key, s3_key, filename, since, size)
        )
        return [r[0] for r in rows]

    async def key_owners(self, kb_id: str, keys: Sequence[str]) -> list[KeyOwner]:
        """The jobs of `kb_id` whose recorded S3 key is one of `keys` (exact equality)."""
        if not keys:
            return []
        rows = await self._db.fetch(_KEY_OWNERS, (kb_id, self._db.array(keys)))
        return [KeyOwner(*r) for r in rows]

    async def unowned_keyed(self, kb_id: str, since: float) -> list[Listed]:
        """Entries of the listing begun at `since` that no job points to and whose S3 key the
        listing showed, ordered by created_at, then id: the candidates for provable copies."""
        return [
            Listed(*r) for r in await self._db.fetch(_UNOWNED_KEYED, (kb_id, self._on_db(since)))
        ]

    # --- what the listing shows of our jobs --------------------------------------------------

    async def match_remote(self, kb_id: str, since: float) -> None:
        """One transaction: each done job with a file_id takes its entry's status in the
        listing begun at `since` ('unknown' when none given), or 'missing'; rows whose
        status does not change are not written."""
        await self._db.execute(_MATCH_REMOTE, (self._on_db(since), kb_id))

    async def set_remote_status(self, statuses: Sequence[RemoteStatus]) -> None:
        """One transaction: the remote status reading an entry back showed."""
        if statuses:
            await self._db.executemany("UPDATE jobs SET remote_status = ? WHERE id = ?", statuses)

    async def unseen_job_entries(self, kb_id: str, since: float) -> list[str]:
        """file_ids of done jobs the listing begun at `since` did not show."""
        return [
            r[0] for r in await self._db.fetch(_UNSEEN_JOB_ENTRIES, (kb_id, self._on_db(since)))
        ]

    async def job_remote_counts(self, kb_id: str) -> dict[str, int]:
        """Done jobs per remote status ('unknown' for none)."""
        rows = await self._db.fetch(
            "SELECT COALESCE(remote_status, 'unknown'), COUNT(*) FROM jobs"
            " WHERE kb_id = ? AND state = 'done' GROUP BY 1",
            (kb_id,),
        )
        return {status: n for status, n in rows}

    async def not_uploaded_count(self, kb_id: str) -> int:
        """Jobs pending, running or failed."""
        return int(
            await self._db.fetchval(
                "SELECT COUNT(*) FROM jobs WHERE kb_id = ?"
                " AND state IN ('pending', 'running', 'failed')",
                (kb_id,),
            )
        )

    async def record_tag_mismatches(
        self, kb_id: str, since: float, limit: int
    ) -> tuple[int, list[TagMismatch]]:
        """Done jobs that asked for labels or metadata (`tags`) whose entry, in the listing
        begun at `since`, showed other ones (entries listed without them are not compared):
        what the entry showed becomes the job's `tags_applied` (so an enqueue asking the
        same again sends update-metadata); how many, and the first `limit` in id order."""
        since = self._on_db(since)
        await self._db.execute(_TAGS_SEEN, (kb_id, since))
        count = await self._db.fetchval("SELECT COUNT(*)" + _TAG_MISMATCHES, (kb_id, since))
        rows = await self._db.fetch(
            "SELECT j.relpath, j.file_id, j.tags, r.tags"
            + _TAG_MISMATCHES
            + " ORDER BY j.id LIMIT ?",
            (kb_id, since, limit),
        )
        return int(count), [TagMismatch(*row) for row in rows]

    # --- verify and dedupe -------------------------------------------------------------------

    async def duplicate_candidates(self, kb_id: str, since: float) -> list[Entry]:
        """Entries of the listing begun at `since` whose filename is not unique, with the job
        pointing to each (its size when the listing gives none), ordered by filename, then
        created_at, then id."""
        since = self._on_db(since)
        rows = await self._db.fetch(_DUPLICATE_CANDIDATES, (kb_id, since, kb_id, since))
        return [Entry(*r) for r in rows]

    async def extra_count(self, kb_id: str, since: float, ours: Sequence[str]) -> int:
        """Entries of that listing no job points to, `ours` left out."""
        sql = Pair.of("SELECT COUNT(*) {where}", where=_EXTRA_WHERE)
        params = (kb_id, self._on_db(since), self._db.array(ours))
        return int(await self._db.fetchval(sql, params))

    async def record_verification(
        self,
        kb_id: str,
        since: float,
        counts: dict[str, Any],
        duplicates: Sequence[DuplicateItem],
        ours: Sequence[str],
        superseded: Sequence[DuplicateItem] = (),
    ) -> int:
        """One transaction: a verification row (counts kept as history) and its items:
        the done jobs whose remote status is failed or missing, the extra entries (as
        `extra_count`), `duplicates` and `superseded` (kept_id: the entry replacing it); the
        previous verify of `kb_id` loses its items. Returns the verification id."""
        since = self._on_db(since)
        async with self._db.transaction():
            [(vid,)] = await self._db.returning(
                "INSERT INTO verifications (kb_id, started_at, ended_at, counts)"
                " VALUES (?, ?, ?, ?) RETURNING id",
                (kb_id, since, self._db.now(), json.dumps(counts)),
            )
            await self._db.execute(
                "DELETE FROM verification_items WHERE verification_id IN"
                " (SELECT id FROM verifications WHERE kb_id = ? AND id <> ?)",
                (kb_id, vid),
            )
            await self._db.execute(_RECORD_BAD, (vid, kb_id))
            await self._db.execute(_RECORD_EXTRA, (vid, kb_id, since, self._db.array(ours)))
            items = [(vid, "duplicate", *d) for d in duplicates]
            items += [(vid, "superseded", *s) for s in superseded]
            if items:
                await self._db.executemany(_RECORD_ITEM, items)
        return int(vid)
