"""Runs and scans: each run's record (options, counts, exit code, why it stopped) and the
enqueues walking a folder right now (so that a run started meanwhile keeps claiming until the
walk ends). Tables: `runs` (migrations 0001, 0017) and `scans` (0018). Times are the
database's clock (`Engine.now`), read back in this host's."""

from __future__ import annotations

import json
from typing import Any

from ..model import HostScope
from .engine import Engine

_RUN_COLUMNS = "SELECT id, started_at, ended_at, options, counts, exit_code FROM runs"


class RunsStore:
    def __init__(self, engine: Engine) -> None:
        self._db = engine

    # --- runs ------------------------------------------------------------------------------

    async def start_run(self, owner: str, options: dict[str, Any]) -> int:
        """Record a run's start and options (never a secret); its id."""
        rows = await self._db.returning(
            "INSERT INTO runs (started_at, owner, options) VALUES (?, ?, ?) RETURNING id",
            (self._db.now(), owner, json.dumps(options, sort_keys=True)),
        )
        return int(rows[0][0])

    async def end_run(self, run_id: int, counts: dict[str, Any], exit_code: int | None) -> None:
        """Record a run's end, its counts and exit code (None: unknown, its process died)."""
        await self._db.execute(
            "UPDATE runs SET ended_at = ?, counts = ?, exit_code = ? WHERE id = ?",
            (self._db.now(), json.dumps(counts, sort_keys=True), exit_code, run_id),
        )

    async def open_runs(self) -> list[tuple[int, str]]:
        """(id, owner) of the runs not ended: running now, or dead before they could say so."""
        rows = await self._db.fetch("SELECT id, owner FROM runs WHERE ended_at IS NULL ORDER BY id")
        return [(r[0], r[1]) for r in rows]

    async def runs(self, last: int | None = None) -> list[dict[str, Any]]:
        """Runs oldest first (or the `last` N, oldest first): id, started_at, ended_at,
        options, counts (None until ended), exit_code."""
        if last is None:
            rows = await self._db.fetch(_RUN_COLUMNS + " ORDER BY id")
        else:
            rows = await self._db.fetch(_RUN_COLUMNS + " ORDER BY id DESC LIMIT ?", (last,))
            rows.reverse()
        return [
            {
                "id": run_id,
                "started_at": self._db.to_host(started),
                "ended_at": self._db.to_host(ended),
                "options": json.loads(options),
                "counts": json.loads(counts) if counts else None,
                "exit_code": code,
            }
            for run_id, started, ended, options, counts, code in rows
        ]

    async def last_attempt(self) -> int:
        """The id of the latest attempt recorded (0: none): what `done_by_others` counts after."""
        return int(await self._db.fetchval("SELECT COALESCE(MAX(id), 0) FROM attempts") or 0)

    async def done_by_others(
        self, run_id: int, after: int, kb_id: str | None, scope: HostScope
    ) -> int:
        """Files of `kb_id` (every knowledge base with None) that run `run_id` could have
        taken and another run uploaded, in the attempts recorded after `after`: two runs on
        one queue share its files, and each tells its user who did the rest. Counted by
        attempt ids, not times, so no two hosts' clocks are compared."""
        return int(
            await self._db.fetchval(
                "SELECT COUNT(DISTINCT a.job_id) FROM attempts a JOIN jobs j ON j.id = a.job_id"
                " WHERE a.id > ? AND a.outcome = 'done' AND a.run_id <> ? AND j.state = 'done'"
                " AND (j.kb_id = ? OR CAST(? AS TEXT) IS NULL)"
                " AND (j.shared OR j.host IN ('', ?) OR ?)",
                (after, run_id, kb_id, kb_id, scope.host, scope.shared),
            )
            or 0
        )

    async def set_run_fatal(self, run_id: int, reason: str) -> None:
        """The one line saying why run `run_id` stopped (a refused key, a service out of
        reach), kept so that `status` shows it after the terminal is gone."""
        await self._db.execute("UPDATE runs SET fatal = ? WHERE id = ?", (reason, run_id))

    async def run_fatal(self, run_id: int) -> str | None:
        """Why run `run_id` stopped, or None when it was not stopped by a fatal error."""
        return await self._db.fetchval("SELECT fatal FROM runs WHERE id = ?", (run_id,))

    # --- scans in progress -----------------------------------------------------------------

    async def start_scan(self, owner: str, kb_id: str) -> int:
        """Record an enqueue walking into `kb_id` (owner host:pid:token); returns its id."""
        now = self._db.now()
        rows = await self._db.returning(
            "INSERT INTO scans (owner, kb_id, started_at, seen_at) VALUES (?, ?, ?, ?)"
            " RETURNING id",
            (owner, kb_id, now, now),
        )
        return int(rows[0][0])

    async def touch_scan(self, scan_id: int) -> None:
        """The scan is alive: renew its seen_at."""
        await self._db.execute(
            "UPDATE scans SET seen_at = ? WHERE id = ?", (self._db.now(), scan_id)
        )

    async def end_scan(self, scan_id: int) -> None:
        """The scan has ended (its rows are committed): forget it."""
        await self._db.execute("DELETE FROM scans WHERE id = ?", (scan_id,))

    async def scans(self, kb_id: str | None) -> list[tuple[str, float]]:
        """Scans in progress into `kb_id` (any with None): (owner, seconds since last seen, by
        the database's clock)."""
        rows = await self._db.fetch(
            "SELECT owner, seen_at FROM scans WHERE kb_id = ? OR CAST(? AS TEXT) IS NULL"
            " ORDER BY id",
            (kb_id, kb_id),
        )
        now = self._db.now()
        return [(owner, now - seen) for owner, seen in rows]
