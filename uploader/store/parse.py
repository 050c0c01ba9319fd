"""The parse state of each uploaded file's entry (issue 26): its last seen status and when,
why its parsing failed, since when it has been parsing (a file initial/processing long after
is stuck), and whether it was queued with `enqueue --any-type`. Columns of `jobs` (migration
0021); `remote_status` itself is set by the listing's match (queue/)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from .engine import Engine, Pair

UNSETTLED = ("initial", "processing")


class ParseRow(NamedTuple):
    """A done job's entry as last seen."""

    job_id: int
    kb_id: str
    path: bytes
    relpath: str
    file_id: str
    status: str | None
    reason: str | None
    seen_at: float | None
    since: float | None  # when its parsing (last) began: a reparse, else the register


_SEEN = """
UPDATE jobs SET remote_seen_at = ?,
       remote_error = CASE WHEN remote_status = 'failed' THEN remote_error END
WHERE kb_id = ? AND state = 'done' AND file_id IS NOT NULL"""

_ROWS = """
SELECT id, kb_id, path, relpath, file_id, remote_status, remote_error, remote_seen_at,
       COALESCE(parse_since, finished_at)
FROM jobs WHERE state = 'done' AND file_id IS NOT NULL"""

_REPARSING = """
UPDATE jobs SET remote_status = 'initial', remote_error = NULL, parse_since = ?,
       remote_seen_at = ?
WHERE id = ? AND state = 'done' AND file_id = ?"""

_ANY_TYPE = Pair(
    sqlite="UPDATE jobs SET any_type = 1 WHERE kb_id = ? AND path = ? AND NOT any_type",
    postgresql="UPDATE jobs SET any_type = true WHERE kb_id = ? AND path = ? AND NOT any_type",
)


class ParseStore:
    def __init__(self, engine: Engine) -> None:
        self._db = engine

    async def seen(self, kb_id: str, at: float) -> None:
        """A full listing begun `at` (this host's clock) has just set the remote status of
        every done job of `kb_id`: that is when each was seen; a reason outlives only a
        failure."""
        await self._db.execute(_SEEN, (self._db.to_db(at), kb_id))

    async def rows(
        self,
        kb_id: str | None = None,
        statuses: Sequence[str] = (),
        job_ids: Sequence[int] = (),
    ) -> list[ParseRow]:
        """Done jobs' parse state (of `kb_id`; with one of `statuses`; among `job_ids`),
        oldest job first."""
        sql = _ROWS
        params: list[object] = []
        if kb_id is not None:
            sql += " AND kb_id = ?"
            params.append(kb_id)
        if statuses:
            sql += f" AND remote_status IN ({', '.join('?' * len(statuses))})"
            params.extend(statuses)
        if job_ids:
            sql += f" AND id IN ({', '.join('?' * len(job_ids))})"
            params.extend(job_ids)
        found = await self._db.fetch(sql + " ORDER BY id", params)
        to_host = self._db.to_host
        return [
            ParseRow(i, kb, bytes(p), rel, f, s, r, to_host(seen), to_host(since))
            for i, kb, p, rel, f, s, r, seen, since in found
        ]

    async def set_reasons(self, reasons: Sequence[tuple[int, str]]) -> None:
        """(job id, reason) of entries whose parsing failed."""
        await self._db.executemany(
            "UPDATE jobs SET remote_error = ? WHERE id = ?", [(r, i) for i, r in reasons]
        )

    async def reparsing(self, entries: Sequence[tuple[int, str]], at: float) -> None:
        """(job id, entry id) whose entry was asked to parse again `at`: parsing anew from
        then (initial, no reason), the same entry."""
        when = self._db.to_db(at)
        await self._db.executemany(_REPARSING, [(when, when, j, f) for j, f in entries])

    async def mark_any_type(self, kb_id: str, paths: Sequence[bytes]) -> None:
        """These files were queued with --any-type: a run sends them whatever their type."""
        await self._db.executemany(_ANY_TYPE, [(kb_id, p) for p in paths])

    async def any_type(self, job_id: int) -> bool:
        """Whether the job was queued with --any-type."""
        return bool(await self._db.fetchval("SELECT any_type FROM jobs WHERE id = ?", (job_id,)))
