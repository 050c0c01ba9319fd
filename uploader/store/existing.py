"""Entries a knowledge base holds before this database first uploads to it: whether it ever
did, the files about to be uploaded, and the adoption of an entry by a file (`run
--adopt-existing`), so that a second database (another working folder, a lost `uploader.db`,
the reference script's uploads) does not upload a folder twice. Table: `jobs`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from .engine import Engine

# A row that has been uploaded, or may have been (a key committed, a register in doubt).
_EVER_UPLOADED = """
SELECT 1 FROM jobs WHERE kb_id = ?
  AND (file_id IS NOT NULL OR s3_key IS NOT NULL OR unknown_since IS NOT NULL)
LIMIT 1"""

_NEVER_SENT = """
SELECT id, path, relpath, display_name, size, tags FROM jobs
WHERE kb_id = ? AND state = 'pending' AND file_id IS NULL AND s3_key IS NULL
  AND unknown_since IS NULL
ORDER BY id"""

# The file is done with the entry, or (`relabel`: its job asks for labels or metadata the entry
# does not show) pending at step 'metadata', which sends update-metadata only. Only a row never
# sent, and an entry no job has.
_ADOPT = """
UPDATE jobs SET file_id = ?, filename = ?, remote_status = ?, tags_applied = ?, state = ?,
       step = ?, finished_at = ?, attempts = 0, next_attempt_at = 0, last_error = NULL,
       error_kind = NULL, started_at = NULL, duration = NULL
WHERE id = ? AND state = 'pending' AND file_id IS NULL AND s3_key IS NULL
  AND unknown_since IS NULL
  AND NOT EXISTS (SELECT 1 FROM jobs AS o WHERE o.kb_id = jobs.kb_id AND o.file_id = ?)"""


@dataclass(frozen=True)
class NeverSent:
    """A pending file of which nothing was ever sent."""

    job_id: int
    path: bytes
    relpath: str
    display_name: str | None  # a manifest's name shown
    size: int
    tags: str | None  # the labels and metadata its entry is to carry (uploader.tags)


@dataclass(frozen=True)
class Adoption:
    """A file done with an entry of the knowledge base, as its listing showed the entry."""

    job_id: int
    entry_id: str
    filename: str
    status: str | None
    tags: str | None  # uploader.tags' encoding of the entry's labels and metadata
    relabel: bool  # the job asks for labels or metadata the entry does not show


class ExistingStore:
    def __init__(self, engine: Engine) -> None:
        self._db = engine

    async def ever_uploaded(self, kb_id: str) -> bool:
        """Whether this database has uploaded (or may have) a file to `kb_id`."""
        return await self._db.fetchval(_EVER_UPLOADED, (kb_id,)) is not None

    async def never_sent(self, kb_id: str) -> AsyncIterator[NeverSent]:
        """The pending files of `kb_id` nothing of which was sent yet, oldest first."""
        async for r in self._db.stream(_NEVER_SENT, (kb_id,)):
            yield NeverSent(r[0], bytes(r[1]), r[2], r[3], r[4], r[5])

    async def adopt(self, adoptions: Sequence[Adoption]) -> int:
        """Each file done with its entry (pending for the labels the entry lacks); how many
        were, in one transaction."""
        now = self._db.now()
        adopted = 0
        async with self._db.transaction():
            for a in adoptions:
                state, step = ("pending", "metadata") if a.relabel else ("done", "registered")
                params = (a.entry_id, a.filename, a.status, a.tags, state, step)
                finished = None if a.relabel else now
                adopted += await self._db.execute(_ADOPT, (*params, finished, a.job_id, a.entry_id))
        return adopted
