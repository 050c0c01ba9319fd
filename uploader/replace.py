"""Replace, never accumulate: the entry a changed file's new version supersedes is deleted
once that new version is registered, never before (there is no moment with neither).

`enqueue` of a changed file that was uploaded moves its entry into the queue's `superseded`
record instead of forgetting it; this module is what `run` does with that record at its end:
every superseded entry whose job is done again with another entry, and that no job points to,
is deleted and the deletion recorded. A delete that fails (a 409 while the entry is still
processed, a 5xx) stays in the record with its error and is tried again by the next run; so
is one a crash cut short. `run --keep-old-versions` keeps them instead (the old behaviour),
marked kept so that `verify` still knows them for what they are.

A file whose mtime moved but not its size (a copy without -t, a checkout) is queued for a
recheck instead: `same_content` hashes it and, when the bytes are the ones uploaded (the
content hash the upload computed while streaming: `content.py`), its job is done again with
its entry.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from . import osfiles, paths
from .client import MaiAgentClient
from .content import new_digest
from .errors import ApiError
from .guard import Judge, Refusal
from .model import (
    Deletion,
    DeletionReason,
    Job,
    QueuedFile,
    Superseded,
    SupersedeFailure,
)
from .queue import Queue
from .reconcile import delete_entry, each
from .store.superseded import SupersededStore

log = logging.getLogger("uploader.run")

COMMAND = "run"
CHUNK = 1 << 20  # a recheck's reads


@dataclass
class Replaced:
    """What a run did with the superseded entries it found due."""

    superseded: int = 0  # deleted: old versions of changed files
    removed: int = 0  # deleted: entries of files `enqueue --delete-removed` found gone
    kept: int = 0
    errors: list[str] = field(default_factory=list)  # not deleted this time: the next run retries
    fatal: ApiError | None = None  # the service refused the key or the knowledge base

    @property
    def deleted(self) -> int:
        """Every entry deleted, whatever the reason (the run's record counts them together)."""
        return self.superseded + self.removed


async def drain(
    q: Queue, client: MaiAgentClient, kb_id: str | None, *, keep_old_versions: bool
) -> Replaced:
    """Delete (or, with `keep_old_versions`, keep) every superseded entry that is due."""
    due = await SupersededStore(q.engine).superseded_due(kb_id)
    result = Replaced()
    if not due:
        return result
    if keep_old_versions:
        await SupersededStore(q.engine).keep_superseded(due)
        result.kept = len(due)
        return result
    deleted: list[Deletion] = []
    failed: list[SupersedeFailure] = []

    async def one(row: Superseded) -> None:
        try:
            gone, status = await delete_entry(client, row.kb_id, row.entry_id)
        except ApiError as err:
            if err.fatal:
                raise
            failed.append(SupersedeFailure(row.kb_id, row.entry_id, str(err)))
            return
        if not gone:
            failed.append(SupersedeFailure(row.kb_id, row.entry_id, f"still {status}"))
            return
        if row.replaced_by is None:
            reason, detail = DeletionReason.REMOVED, "its file is gone (enqueue --delete-removed)"
        else:
            reason, detail = DeletionReason.SUPERSEDED, f"replaced by {row.replaced_by}"
        deleted.append(
            Deletion(
                row.kb_id,
                row.entry_id,
                row.filename,
                reason,
                detail,
                COMMAND,
                time.time(),
                row.job_id,
            )
        )

    try:
        await each(due, one)
    except ApiError as err:
        result.fatal = err
    finally:
        deleted = await SupersededStore(q.engine).settle_superseded(deleted, failed)
    result.removed = sum(1 for d in deleted if d.reason == DeletionReason.REMOVED)
    result.superseded = len(deleted) - result.removed
    result.errors = [f"{f.entry_id}: {f.error}" for f in failed]
    for error in result.errors:
        log.info("superseded entry not deleted yet (the next run tries again): %s", error)
    return result


def _digest(path: bytes, size: int) -> str | None:
    """The content hash of the regular file at `path` if it still has `size` bytes (else None), read
    without following a symbolic link, as an upload would read it."""
    try:
        fd = osfiles.open_nofollow(path, os.O_RDONLY | osfiles.NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return None
        digest = new_digest()
        while chunk := file.read(CHUNK):
            digest.update(chunk)
        after = os.fstat(fd)
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        return None  # written to while read: not the bytes uploaded, whatever they are
    return digest.hexdigest()


def digest_at(path: bytes, size: int) -> str | None:
    """The content hash of the file at `path` if it is a regular file of `size` bytes (else
    None), read as an upload reads it: what a move is recognised by (uploader/moves.py)."""
    return _digest(path, size)


async def file_digest(job: Job) -> str | None:
    """The content hash of a job's file as it is now (None: gone, not regular, or not its
    size)."""
    return await asyncio.to_thread(_digest, job.path, job.size)


async def same_content(job: Job) -> bool:
    """Whether the file of a job queued for a recheck (its mtime moved, not its size) still
    holds the bytes behind its entry: one read of the file, no request."""
    if job.content_hash is None:
        return False
    digest = await asyncio.to_thread(_digest, job.path, job.size)
    same = digest == job.content_hash
    log.info("%s: mtime changed, %s", job.relpath, "same bytes" if same else "new bytes")
    return same


# --- enqueue DIR --delete-removed -----------------------------------------------------------

STAT_BATCH = 2000


@dataclass
class Removed:
    """The queued files of a folder that are gone: marked `removed` (or, in a dry run, what
    would be), their relative paths in path order; and how many were left as they are because
    the walk could not prove them gone."""

    relpaths: list[str] = field(default_factory=list)
    marked: int = 0
    left: int = 0
    deleting: int = 0  # of them, files with an entry: marking them deletes that entry
    uploaded: int = 0  # the folder's queued files with an entry, gone or not
    refused: Refusal | None = None  # the mass-deletion guard's verdict: nothing was marked


# lstat's answers that prove a path names nothing: no such entry, or a file where a folder
# of its path was. Any other error (EACCES, EIO, ESTALE, ...) says nothing about the file.
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR})


def _is_gone(path: bytes) -> bool | None:
    """True when the path names nothing, False when it names something (a dangling link
    counts as there: the scan decides what a link is, this only asks whether the file
    vanished), None when lstat cannot tell."""
    try:
        os.lstat(path)
    except OSError as exc:
        return True if exc.errno in _ABSENT else None
    return False


def _under(path: bytes, folders: frozenset[bytes], root: bytes) -> bool:
    """Whether one of `folders` is `path`'s folder or one above it, up to `root`."""
    folder = os.path.dirname(path)
    while len(folder) >= len(root):
        if folder in folders:
            return True
        above = os.path.dirname(folder)
        if above == folder:
            break
        folder = above
    return False


def _sort(
    files: list[QueuedFile], unread: frozenset[bytes], root: bytes
) -> tuple[list[QueuedFile], int]:
    """The files proven gone, and how many could not be judged: below a folder the walk could
    not read (never looked at: their folder may come back whole), or lstat cannot tell."""
    gone: list[QueuedFile] = []
    left = 0
    for f in files:
        verdict = None if unread and _under(f.path, unread, root) else _is_gone(f.path)
        if verdict is None:
            left += 1
        elif verdict:
            gone.append(f)
    return gone, left


async def _batches(
    q: Queue, kb_id: str, prefix: bytes, *, uploaded_only: bool = False
) -> AsyncIterator[list[QueuedFile]]:
    """The queued files under `prefix` (only those uploaded, if asked), STAT_BATCH at a time:
    each batch is lstat'ed in one thread hop, never the whole folder's list held at once."""
    batch: list[QueuedFile] = []
    async for queued in SupersededStore(q.engine).queued_under(kb_id, prefix, q.scope):
        if queued.uploaded or not uploaded_only:
            batch.append(queued)
            if len(batch) >= STAT_BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _unguarded(_deleting: int, _uploaded: int) -> Refusal | None:
    return None


async def removed_files(
    q: Queue,
    kb_id: str,
    root: str,
    unread: Sequence[bytes],
    *,
    dry_run: bool,
    guard: Judge = _unguarded,
) -> Removed:
    """The queued files under `root` whose file no longer exists: marked `removed` unless
    `dry_run` or the `guard` refuses the deletions that would follow (then none is marked:
    `refused` says why), so that the next run deletes their entries. A file is gone only when proven
    so: lstat says no such path, and no folder of its path up to `root` is among `unread`
    (the folders the walk could not read). One lstat per queued file, in a thread, a batch
    at a time. A queued file the filters now leave out is judged the same way: the filters
    say what to queue, not what vanished."""
    real_root = paths.canonical(os.fsencode(root))
    prefix = os.path.join(real_root, b"")
    folders = frozenset(unread)  # as the walk named them, as it named the files it queued
    result = Removed()
    gone: list[int] = []
    async for batch in _batches(q, kb_id, prefix):
        result.uploaded += sum(f.uploaded for f in batch)
        proven, left = await asyncio.to_thread(_sort, batch, folders, real_root)
        for f in proven:
            gone.append(f.job_id)
            result.relpaths.append(f.relpath)
            result.deleting += f.uploaded
        result.left += left
    result.refused = guard(result.deleting, result.uploaded)
    if gone and not dry_run and result.refused is None:
        result.marked = await SupersededStore(q.engine).mark_removed(gone)
    return result


# --- enqueue DIR --checksum -----------------------------------------------------------------


async def recheck_all(q: Queue, kb_id: str, root: str) -> int:
    """`enqueue --checksum`: every uploaded file under `root` that is still a regular file
    goes back to pending for a recheck, as a file whose mtime moved does: the run compares its
    bytes with the uploaded ones (one read, no request) and uploads only the files that differ,
    their old entries superseded once the new ones are registered. Size and mtime miss an edit
    that kept both; this does not. A file gone is left alone (--delete-removed's to judge).
    Returns how many were queued."""
    prefix = os.path.join(paths.canonical(os.fsencode(root)), b"")
    there: list[int] = []
    async for batch in _batches(q, kb_id, prefix, uploaded_only=True):
        there.extend(await asyncio.to_thread(_regular_files, batch))
    return await SupersededStore(q.engine).mark_recheck(there)


def _regular_files(batch: Sequence[QueuedFile]) -> list[int]:
    found = []
    for f in batch:
        try:
            if stat.S_ISREG(os.lstat(f.path).st_mode):
                found.append(f.job_id)
        except OSError:
            continue
    return found
