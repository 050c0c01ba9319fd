"""What the knowledge base made of the uploads: waiting until they are parsed (`run
--wait-parsed`, and `sync`), the reasons of parse failures, stuck files, and repair in place
(`retry-failed --remote`: batch-reparse first, delete-and-upload only what fails again).

A file is *registered* once its register answered; the user wants it *parsed*. MaiAgent has
no webhook for file status: polling the listing is the only way to learn the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .client import MaiAgentClient
from .errors import ApiError
from .queue import Queue
from .reconcile import (
    DELETING,
    UNSETTLED,
    ReadProgress,
    RemoteRetry,
    _call,
    list_and_match,
    retry_remote,
)
from .store.parse import ParseRow, ParseStore

log = logging.getLogger("uploader.parsing")

PARSE_TIMEOUT = 3600.0  # --parse-timeout: how long a run waits for its files to be parsed
STUCK_AFTER = 1800.0  # --stuck-after: initial/processing this long after it began: stuck
REPAIR_TIMEOUT = 600.0  # how long retry-failed --remote waits for the reparse outcome
REPARSE_BATCH = 100  # entries per batch-reparse call
WAIT_FIRST = 0.25
WAIT_MAX = 15.0


@dataclass
class Notes:
    """What the service lacks, each said once per command (the CLI prints them)."""

    said: list[str] = field(default_factory=list)

    def add(self, note: str) -> None:
        if note not in self.said:
            self.said.append(note)
            log.info("%s", note)


NO_REASON_CALL = (
    "the service does not offer latest-failed-reason/: a parse failure's reason is its "
    "status message"
)
NO_REPARSE_CALL = (
    "the service does not offer batch-reparse/: failed entries are deleted and their files "
    "uploaded again"
)


async def read_reasons(q: Queue, client: MaiAgentClient, kb_id: str, notes: Notes) -> None:
    """The reason of every failed entry of `kb_id` that has none yet: the service's
    latest-failed-reason where it offers it, else the entry's status message."""
    store = ParseStore(q.engine)
    rows = [r for r in await store.rows(kb_id, ("failed",)) if r.reason is None]
    offered = NO_REASON_CALL not in notes.said
    reasons: list[tuple[int, str]] = []
    for row in rows:
        reason = None
        if offered:
            offered, reason = await _call(client.latest_failed_reason, kb_id, row.file_id)
            if not offered:
                notes.add(NO_REASON_CALL)
        if reason is None:
            entry = await _call(client.get_file, kb_id, row.file_id)
            reason = entry.status_message if entry is not None else None
        if reason:
            reasons.append((row.job_id, reason))
    await store.set_reasons(reasons)


async def look(
    q: Queue,
    client: MaiAgentClient,
    kb_id: str,
    notes: Notes,
    progress: ReadProgress | None = None,
) -> list[ParseRow]:
    """List `kb_id`, keep what each done job's entry shows and when, read the reasons of new
    failures; every done job's parse state."""
    await list_and_match(q, client, kb_id, progress)
    await read_reasons(q, client, kb_id, notes)
    return await ParseStore(q.engine).rows(kb_id)


@dataclass
class Parsed:
    """Where the files of some knowledge bases stand after waiting for their parsing."""

    done: int = 0
    failed: list[ParseRow] = field(default_factory=list)
    waiting: list[ParseRow] = field(default_factory=list)  # initial/processing, not stuck yet
    stuck: list[ParseRow] = field(default_factory=list)
    deleting: int = 0
    missing: int = 0
    other: int = 0  # a status the service invented
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return not (self.failed or self.waiting or self.stuck or self.missing or self.other)


def is_stuck(row: ParseRow, stuck_after: float, now: float) -> bool:
    return row.status in UNSETTLED and row.since is not None and now - row.since >= stuck_after


def sort_out(rows: Sequence[ParseRow], stuck_after: float, now: float) -> Parsed:
    parsed = Parsed()
    for row in rows:
        if row.status == "done":
            parsed.done += 1
        elif row.status == "failed":
            parsed.failed.append(row)
        elif is_stuck(row, stuck_after, now):
            parsed.stuck.append(row)
        elif row.status in UNSETTLED:
            parsed.waiting.append(row)
        elif row.status == DELETING:
            parsed.deleting += 1
        elif row.status == "missing":
            parsed.missing += 1
        else:
            parsed.other += 1
    return parsed


async def wait_parsed(
    q: Queue,
    client: MaiAgentClient,
    kb_ids: Sequence[str],
    *,
    timeout: float = PARSE_TIMEOUT,
    stuck_after: float = STUCK_AFTER,
    job_ids: Sequence[int] | None = None,
    notes: Notes | None = None,
    progress: ReadProgress | None = None,
) -> Parsed:
    """Poll the listings of `kb_ids` until no file (of `job_ids`, when given) is initial or
    processing short of `stuck_after`, or `timeout` passes; where each file stands then. The
    reusable part of `run --wait-parsed` (and `sync`)."""
    notes = notes if notes is not None else Notes()
    wanted = None if job_ids is None else set(job_ids)
    deadline = time.monotonic() + timeout
    delay = WAIT_FIRST
    while True:
        rows: list[ParseRow] = []
        for kb_id in kb_ids:
            seen = await look(q, client, kb_id, notes, progress)
            rows += [r for r in seen if wanted is None or r.job_id in wanted]
        parsed = sort_out(rows, stuck_after, time.time())
        left = deadline - time.monotonic()
        if not parsed.waiting and not parsed.deleting:
            return parsed
        if left <= 0:
            parsed.timed_out = True
            return parsed
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 1.5, WAIT_MAX)


@dataclass
class Repair:
    """What `retry-failed --remote` did: reparsed in place, parsed since, failed again (then
    deleted and queued again, with the missing ones), still parsing, and the rest of the
    remote retry."""

    reparsed: int = 0
    recovered: int = 0
    failed_again: int = 0
    still_parsing: int = 0
    retry: RemoteRetry = field(default_factory=RemoteRetry)
    notes: Notes = field(default_factory=Notes)


async def repair(
    q: Queue,
    client: MaiAgentClient,
    kb_ids: Sequence[str],
    match: Callable[[str], bool] | None = None,
    *,
    parser: str | None = None,
    stuck_after: float = STUCK_AFTER,
    timeout: float = REPAIR_TIMEOUT,
) -> Repair:
    """Failed and stuck entries (as last seen) are asked to parse again in place
    (batch-reparse, `parser` when given), in batches; once their outcome is known, those that
    failed again, the missing ones, and all of them where the service has no reparse, are
    deleted and queued for upload (`reconcile.retry_remote`)."""
    result = Repair()
    store = ParseStore(q.engine)
    now = time.time()
    asked: list[int] = []
    for kb_id in kb_ids:
        rows = [
            r
            for r in await store.rows(kb_id)
            if (r.status == "failed" or is_stuck(r, stuck_after, now))
            and (match is None or match(r.relpath))
        ]
        done = await _reparse(client, kb_id, rows, parser, result.notes)
        await store.reparsing([(r.job_id, r.file_id) for r in done], time.time())
        asked += [r.job_id for r in done]
    result.reparsed = len(asked)
    if asked:
        parsed = await wait_parsed(
            q,
            client,
            kb_ids,
            timeout=timeout,
            stuck_after=stuck_after,
            job_ids=asked,
            notes=result.notes,
        )
        result.recovered = parsed.done
        result.failed_again = len(parsed.failed)
        result.still_parsing = len(parsed.waiting) + len(parsed.stuck)
    for kb_id in kb_ids:
        part = await retry_remote(q, client, kb_id, match)
        result.retry.requeued += part.requeued
        result.retry.deleted += part.deleted
        result.retry.busy += part.busy
        result.retry.recovered += part.recovered
        result.retry.errors += part.errors
    return result


async def _reparse(
    client: MaiAgentClient,
    kb_id: str,
    rows: Sequence[ParseRow],
    parser: str | None,
    notes: Notes,
) -> list[ParseRow]:
    """Ask for each batch to be parsed again; the rows asked (none where the service has no
    such call: they are left failed, for the delete-and-upload)."""
    asked: list[ParseRow] = []
    if NO_REPARSE_CALL in notes.said:
        return asked
    for start in range(0, len(rows), REPARSE_BATCH):
        batch = rows[start : start + REPARSE_BATCH]
        try:
            offered = await _call(client.batch_reparse, kb_id, [(r.file_id, parser) for r in batch])
        except ApiError as err:
            if err.fatal:
                raise
            log.warning("batch reparse failed (%s): those entries are uploaded again", err)
            continue
        if not offered:
            notes.add(NO_REPARSE_CALL)
            break
        asked += batch
    return asked
