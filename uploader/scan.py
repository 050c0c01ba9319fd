"""Walking the folder: which files to queue, streamed in batches so a million never sit in memory.

Paths are handled as bytes end to end: a file name that is not valid UTF-8 is still a file
the user wants uploaded, and bytes are the only lossless form of it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from . import queue
from .queue import EnqueueCounts, ScanRow

CLUTTER = frozenset({b"thumbs.db", b"desktop.ini", b"ehthumbs.db"})
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'500M' -> bytes. Units are binary like rclone's (k = KiB, M = MiB, G = GiB)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"invalid size {text!r}: use a number with an optional k, M, G or T")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def display(path: bytes) -> str:
    """A path as text: undecodable bytes shown as \\xNN escapes, never an exception."""
    return path.decode("utf-8", "backslashreplace")


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """rclone-style glob: `*` stays in one folder, `**` crosses folders, `{a,b}` alternates;
    a pattern with a leading `/` is anchored at the enqueued folder, otherwise it may match
    at any depth."""
    anchored = pattern.startswith("/")
    body = pattern.lstrip("/")
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if body.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "{":
            end = body.find("}", i)
            if end < 0:
                out.append(re.escape(c))
            else:
                alts = body[i + 1 : end].split(",")
                out.append("(?:" + "|".join(_glob_regex("/" + a).pattern[1:-2] for a in alts) + ")")
                i = end + 1
                continue
        elif c == "[":
            end = body.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                out.append(fnmatch.translate(body[i : end + 1])[4:-3])
                i = end + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    prefix = "^" if anchored else "^(?:.*/)?"
    return re.compile(prefix + "".join(out) + r"\Z", re.DOTALL)


@dataclass
class Filters:
    """--include / --exclude on the relative path: excludes win, includes (if any) must match."""

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    max_size: int | None = None
    _inc: list[re.Pattern[str]] = field(init=False, repr=False)
    _exc: list[re.Pattern[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._inc = [_glob_regex(p) for p in self.include]
        self._exc = [_glob_regex(p) for p in self.exclude]

    def wanted(self, relpath: str) -> bool:
        if any(p.match(relpath) for p in self._exc):
            return False
        return not self._inc or any(p.match(relpath) for p in self._inc)


def matcher(patterns: Sequence[str]):  # type: ignore[no-untyped-def]
    """A predicate on relative paths for `retry-failed --match`, same glob rules as enqueue."""
    regexes = [_glob_regex(p) for p in patterns]
    return lambda relpath: any(r.match(relpath) for r in regexes)


def is_ignored_name(name: bytes) -> bool:
    """Hidden entries and operating-system clutter never reach the queue."""
    return name.startswith(b".") or name.startswith(b"~$") or name.lower() in CLUTTER


@dataclass
class ScanStats:
    ignored: int = 0
    unreadable_folders: list[str] = field(default_factory=list)


def walk(
    root: bytes, filters: Filters, follow_symlinks: bool, stats: ScanStats
) -> Iterator[ScanRow]:
    """Depth-first walk with an explicit stack (a tree 200 levels deep needs no recursion),
    streaming each folder's entries (a folder of a million files is never listed in memory).
    With --follow-symlinks a folder already visited (by device and inode) is never entered
    twice, so link loops end."""
    root = os.path.realpath(root)
    root_stat = os.stat(root)
    seen = {(root_stat.st_dev, root_stat.st_ino)}
    stack = [root]
    prefix = len(root.rstrip(b"/")) + 1
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if is_ignored_name(entry.name):
                        stats.ignored += 1
                        continue
                    st = _stat(entry, follow_symlinks)
                    if st is not None and stat.S_ISDIR(st.st_mode):
                        if (st.st_dev, st.st_ino) not in seen:
                            seen.add((st.st_dev, st.st_ino))
                            stack.append(entry.path)
                        continue
                    row = _row(entry, st, prefix, filters)
                    if row is None:
                        stats.ignored += 1
                    else:
                        yield row
        except OSError as exc:
            stats.unreadable_folders.append(f"{display(folder)}: {exc.strerror}")


def _stat(entry: os.DirEntry[bytes], follow: bool) -> os.stat_result | None:
    try:
        if not follow and entry.is_symlink():
            return None
        return entry.stat(follow_symlinks=follow)
    except OSError:
        return None


def _row(
    entry: os.DirEntry[bytes], st: os.stat_result | None, prefix: int, filters: Filters
) -> ScanRow | None:
    """The queue row for a regular file the filters want; None for everything else."""
    if st is None or not stat.S_ISREG(st.st_mode):
        return None
    rel = entry.path[prefix:]
    if not filters.wanted(os.fsdecode(rel)):
        return None
    skip = None
    if filters.max_size is not None and st.st_size > filters.max_size:
        skip = f"larger than --max-size ({st.st_size} > {filters.max_size} bytes)"
    elif not os.access(entry.path, os.R_OK):
        skip = "unreadable: permission denied"
    return ScanRow(entry.path, display(rel), st.st_size, st.st_mtime_ns, skip)


def batches(rows: Iterator[ScanRow], size: int) -> Iterator[list[ScanRow]]:
    batch: list[ScanRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def enqueue(
    q: queue.Queue,
    root: str,
    kb_id: str,
    filters: Filters,
    follow_symlinks: bool,
    batch_size: int = 2000,
) -> tuple[EnqueueCounts, ScanStats]:
    """Walk `root` into the queue, one transaction per batch; safe to run again. The walk
    runs in a thread so the next batch is scanned while the database writes this one."""
    stats = ScanStats()
    counts = EnqueueCounts()
    chunks = batches(walk(os.fsencode(root), filters, follow_symlinks, stats), batch_size)
    writing: asyncio.Task[EnqueueCounts] | None = None
    while True:
        batch = await asyncio.to_thread(next, chunks, None)
        if writing is not None:
            counts.add(await writing)
        if batch is None:
            return counts, stats
        writing = asyncio.create_task(q.enqueue_batch(kb_id, batch))
