"""Saved sync jobs: what `uploader sync DIR --kb KB ...` was asked the first time (folder,
knowledge base, filters, labels, metadata, manifest, parser, name mode, delete policy), so
that `uploader sync DIR` and `uploader sync` repeat it with the same options: a weekly
`enqueue DIR --kb KB` that forgot the first time's filters and labels let excluded files back
in and left new files without the labels that decide who may see them. Table: `saved_jobs`
(migration 0020)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .engine import Engine

_SAVE = """
INSERT INTO saved_jobs (folder, kb_id, options, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (folder, kb_id) DO UPDATE SET options = excluded.options,
    updated_at = excluded.updated_at"""

_COLUMNS = "SELECT id, folder, kb_id, options, created_at, updated_at FROM saved_jobs"


@dataclass(frozen=True)
class SavedJob:
    id: int
    folder: bytes  # the folder's real path, as the walk names it
    kb_id: str
    options: dict[str, Any]  # enqueue's and the job's own options, by parameter name
    created_at: float
    updated_at: float


class SavedJobsStore:
    def __init__(self, engine: Engine) -> None:
        self._db = engine

    async def save(self, folder: bytes, kb_id: str, options: dict[str, Any]) -> None:
        """The job of (`folder`, `kb_id`) asks `options` from now on (made if new)."""
        now = self._db.now()
        text = json.dumps(options, sort_keys=True, ensure_ascii=False)
        await self._db.execute(_SAVE, (folder, kb_id, text, now, now))

    async def jobs(self, folder: bytes | None = None) -> list[SavedJob]:
        """The saved jobs (of `folder`), oldest first."""
        if folder is None:
            rows = await self._db.fetch(_COLUMNS + " ORDER BY id")
        else:
            rows = await self._db.fetch(_COLUMNS + " WHERE folder = ? ORDER BY id", (folder,))
        return [
            SavedJob(
                r[0],
                bytes(r[1]),
                r[2],
                json.loads(r[3]),
                self._db.to_host(r[4]) or 0.0,
                self._db.to_host(r[5]) or 0.0,
            )
            for r in rows
        ]

    async def remove(self, job_id: int) -> bool:
        """Forget saved job `job_id` (its files stay queued and uploaded); whether it was."""
        return await self._db.execute("DELETE FROM saved_jobs WHERE id = ?", (job_id,)) > 0
