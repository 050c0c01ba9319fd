"""The JSON report: the reference script's keys, written row by row from the database.

A million-row report is streamed to a temporary file beside the target and renamed into
place, so memory stays flat and a full disk leaves no half-written report behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from typing import IO, Any

import aiosqlite

from . import queue
from .scan import display


def default_path(db_path: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    folder = os.path.join(os.path.dirname(os.path.abspath(db_path)), "reports")
    return os.path.join(folder, f"upload_report_{stamp}.json")


def _success(row: tuple[Any, ...]) -> dict[str, Any]:
    kb, path, size, duration, file_id, filename = row
    return {
        "file_path": display(path),
        "file_size": size,
        "upload_time": round(duration or 0.0, 3),
        "knowledge_base_id": kb,
        "knowledge_file_id": file_id,
        "filename": filename,
    }


def _failure(row: tuple[Any, ...]) -> dict[str, Any]:
    kb, path, error, attempts, kind = row
    return {
        "file_path": display(path),
        "error": error,
        "retry_count": max(attempts - 1, 0),
        "error_kind": kind,
        "knowledge_base_id": kb,
    }


def _skipped(row: tuple[Any, ...]) -> dict[str, Any]:
    kb, path, reason = row
    return {"file_path": display(path), "reason": reason, "knowledge_base_id": kb}


SECTIONS: list[tuple[str, str, Callable[[tuple[Any, ...]], dict[str, Any]]]] = [
    ("successful_files", "done", _success),
    ("failed_files", "failed", _failure),
    ("skipped_files", "skipped", _skipped),
]


async def _write_list(out: IO[str], rows: AsyncIterator[tuple[Any, ...]], shape) -> None:  # type: ignore[no-untyped-def]
    first = True
    out.write("[")
    async for row in rows:
        out.write("\n    " if first else ",\n    ")
        out.write(json.dumps(shape(row), ensure_ascii=False))
        first = False
    out.write("]" if first else "\n  ]")


async def write(conn: aiosqlite.Connection, out: IO[str], db_path: str) -> dict[str, Any]:
    """Write the whole report to `out`; returns its summary for the command's one-line answer."""
    summary = await queue.report_totals(conn)
    head = {
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "database": os.path.abspath(db_path),
        "summary": summary,
    }
    out.write("{\n")
    for key, value in head.items():
        out.write(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n")
    for key, state, shape in SECTIONS:
        out.write(f"  {json.dumps(key)}: ")
        await _write_list(out, queue.report_rows(conn, state), shape)
        out.write(",\n")
    runs = await queue.runs(conn)
    out.write(f'  "runs": {json.dumps(runs, ensure_ascii=False)}\n}}\n')
    return summary


async def export(conn: aiosqlite.Connection, db_path: str, target: str) -> dict[str, Any]:
    """Write the report to `target` ('-' is stdout) atomically, readable by the owner only."""
    if target == "-":
        return await write(conn, sys.stdout, db_path)
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    partial = f"{target}.partial"
    fd = os.open(partial, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", buffering=1 << 20) as out:
            summary = await write(conn, out, db_path)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return summary
