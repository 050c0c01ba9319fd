"""The JSON report: the reference script's keys, written row by row from the database.

A million-row report is streamed to a temporary file beside the target and renamed into
place, so memory stays flat and a full disk leaves no half-written report behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import IO, Any, cast

from . import osfiles, tags
from .i18n import _
from .model import DeletionRow, DoneRow, FailedRow, SkippedRow, VerificationItem
from .queue import Queue, anchor, is_url, redact
from .scan import display
from .store.runs import RunsStore
from .store.status import StatusStore


def _default_folder(db_path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(anchor(db_path))), "reports")


def default_path(db_path: str) -> str:
    """The reference script's name, to the second; a run and an `export-report` (or two syncs)
    can end in the same second, and a report never replaces another one: `_2`, `_3`… then."""
    stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    folder = _default_folder(db_path)
    path = os.path.join(folder, f"upload_report_{stamp}.json")
    n = 1
    while os.path.lexists(path):
        n += 1
        path = os.path.join(folder, f"upload_report_{stamp}_{n}.json")
    return path


def _success(row: DoneRow) -> dict[str, Any]:
    kb, path, size, duration, file_id, filename, content_hash, asked, parsed, why = row
    success = {
        "file_path": display(path),
        "file_size": size,
        "upload_time": round(duration or 0.0, 3),
        "knowledge_base_id": kb,
        "knowledge_file_id": file_id,
        "filename": filename,
        "content_hash": content_hash,
        "parse_status": parsed,
        "parse_error": why,
    }
    if asked is not None:  # the labels and metadata enqueue asked its entry to carry
        labels, metadata = tags.decode(asked)
        success.update(labels=list(labels), metadata=metadata)
    return success


def _failure(row: FailedRow) -> dict[str, Any]:
    kb, path, error, attempts, kind = row
    return {
        "file_path": display(path),
        "error": error,
        "retry_count": max(attempts - 1, 0),
        "error_kind": kind,
        "knowledge_base_id": kb,
    }


def _skipped(row: SkippedRow) -> dict[str, Any]:
    kb, path, reason = row
    return {"file_path": display(path), "reason": reason, "knowledge_base_id": kb}


SECTIONS: list[tuple[str, str, Callable[[Any], dict[str, Any]]]] = [
    ("successful_files", "done", _success),
    ("failed_files", "failed", _failure),
    ("skipped_files", "skipped", _skipped),
]


async def _write_list(
    out: IO[str], rows: AsyncIterator[Any], shape: Callable[[Any], dict[str, Any]]
) -> None:
    """Stream `rows` as a JSON list. A failed write (a closed pipe, a full disk) closes the
    rows' generator at once, while the database is still open: left to the event loop's
    shutdown, it would be closed after the connection and complain on stderr."""
    first = True
    out.write("[")
    async with contextlib.aclosing(cast(AsyncGenerator[Any, None], rows)):
        async for row in rows:
            out.write("\n    " if first else ",\n    ")
            out.write(json.dumps(shape(row), ensure_ascii=False))
            first = False
    out.write("]" if first else "\n  ]")


def iso(ts: float | None) -> str | None:
    """A stored epoch time as ISO 8601 in UTC (`2026-12-03T09:41:07+00:00`), what JSON readers
    parse without knowing the epoch; None stays None."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


def with_iso_times(record: dict[str, Any]) -> dict[str, Any]:
    """A run or verification record with its started_at/ended_at as ISO 8601."""
    return {**record, "started_at": iso(record["started_at"]), "ended_at": iso(record["ended_at"])}


async def write(q: Queue, out: IO[str], db_path: str) -> dict[str, Any]:
    """Write the whole report to `out`; returns its summary for the command's one-line answer."""
    summary = await StatusStore(q.engine).report_totals()
    head = {
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "database": redact(db_path) if is_url(db_path) else os.path.abspath(db_path),
        "summary": summary,
    }
    out.write("{\n")
    for key, value in head.items():
        out.write(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n")
    for key, state, shape in SECTIONS:
        out.write(f"  {json.dumps(key)}: ")
        await _write_list(out, StatusStore(q.engine).report_rows(state), shape)
        out.write(",\n")
    out.write('  "integrity": ')
    await _write_integrity(q, out)
    out.write(',\n  "deletions": ')
    await _write_list(out, StatusStore(q.engine).deletion_rows(), _deletion)
    out.write(",\n")
    runs = [with_iso_times(run) for run in await RunsStore(q.engine).runs()]
    out.write(f'  "runs": {json.dumps(runs, ensure_ascii=False)}\n}}\n')
    return summary


def _deletion(row: DeletionRow) -> dict[str, Any]:
    """An entry this database deleted: which, why, when, by which command, and the local
    file it was (a copy of) when a job owned it."""
    kb, entry_id, filename, reason, detail, command, deleted_at, path = row
    return {
        "knowledge_base_id": kb,
        "knowledge_file_id": entry_id,
        "filename": filename,
        "reason": reason,
        "detail": detail,
        "command": command,
        "deleted_at": dt.datetime.fromtimestamp(deleted_at, dt.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "file_path": display(path) if path else None,
    }


def _job_entry(row: VerificationItem) -> dict[str, Any]:
    path, file_id, filename, _size, _status, _kept = row
    return {
        "file_path": display(path) if path else None,
        "knowledge_file_id": file_id,
        "filename": filename,
    }


def _entry(row: VerificationItem) -> dict[str, Any]:
    _path, file_id, filename, size, status, _kept = row
    return {"knowledge_file_id": file_id, "filename": filename, "size": size, "status": status}


def _duplicate(row: VerificationItem) -> dict[str, Any]:
    """A surplus copy; `file_path` is the local file of the entry kept, when a job owns it."""
    path, file_id, filename, size, status, kept = row
    return {
        "knowledge_file_id": file_id,
        "filename": filename,
        "size": size,
        "status": status,
        "copy_of": kept,
        "file_path": display(path) if path else None,
    }


def _superseded(row: VerificationItem) -> dict[str, Any]:
    """An old version of a changed file still present; `file_path` is that file."""
    path, file_id, filename, size, status, replaced_by = row
    return {
        "knowledge_file_id": file_id,
        "filename": filename,
        "size": size,
        "status": status,
        "replaced_by": replaced_by,
        "file_path": display(path) if path else None,
    }


INTEGRITY_LISTS: list[tuple[str, str, Callable[[Any], dict[str, Any]]]] = [
    ("missing_files", "missing", _job_entry),
    ("remotely_failed_files", "failed", _job_entry),
    ("duplicate_entries", "duplicate", _duplicate),
    ("superseded_entries", "superseded", _superseded),
    ("extra_entries", "extra", _entry),
]


async def _write_integrity(q: Queue, out: IO[str]) -> None:
    """The last verify of each knowledge base, {} when none has run; its lists are streamed
    from the rows it recorded, so they describe the knowledge base as that verify saw it."""
    verifications = await StatusStore(q.engine).last_verifications()
    out.write("{")
    for n, v in enumerate(verifications):
        out.write(f"{',' if n else ''}\n    {json.dumps(v['kb_id'], ensure_ascii=False)}: {{\n")
        shown = with_iso_times(v)
        for key in ("started_at", "ended_at", "counts"):
            out.write(f"      {json.dumps(key)}: {json.dumps(shown[key], ensure_ascii=False)},\n")
        for i, (key, kind, shape) in enumerate(INTEGRITY_LISTS):
            out.write(f"      {json.dumps(key)}: ")
            await _write_list(out, StatusStore(q.engine).verification_items(v["id"], kind), shape)
            out.write(",\n" if i + 1 < len(INTEGRITY_LISTS) else "\n")
        out.write("    }")
    out.write("\n  }" if verifications else "}")


async def export(q: Queue, db_path: str, target: str) -> dict[str, Any]:
    """Write the report to `target` ('-' is stdout) atomically, readable by the owner only."""
    if target == "-":
        return await write(q, sys.stdout, db_path)
    _ensure_folder(os.path.dirname(os.path.abspath(target)), db_path)
    partial = f"{target}.partial"
    fd = osfiles.open_file(partial, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", buffering=1 << 20) as out:
            summary = await write(q, out, db_path)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return summary


def _ensure_folder(folder: str, db_path: str) -> None:
    """Create only the default reports folder: a missing folder in an explicit path is more
    likely a typo than a wish for a new tree of folders."""
    if folder == _default_folder(db_path):
        os.makedirs(folder, mode=0o700, exist_ok=True)
    elif not os.path.lexists(folder):
        raise FileNotFoundError(errno.ENOENT, _("folder {path} does not exist").format(path=folder))
