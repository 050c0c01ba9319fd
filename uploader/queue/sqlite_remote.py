"""The SQLite statements of retry-failed --remote: done jobs whose entry failed or is gone,
back to pending (the listing itself is uploader/store/listing.py).

A mixin of `SqliteQueue`, which owns `_conn`, `transaction()` and `_fetchval()`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..model import (
    RemoteRetryCandidate,
    RequeueItem,
)
from .states import BACK_TO_PENDING, FORGET_UPLOAD

if TYPE_CHECKING:
    from .sqlite import SqliteBase
else:
    SqliteBase = object


_REQUEUE_REMOTE = f"""
UPDATE jobs SET {BACK_TO_PENDING}, {FORGET_UPLOAD}
WHERE id = ? AND state = 'done' AND file_id IS ?"""


class RemoteMixin(SqliteBase):
    """The remote listing and verifications."""

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
