"""Files moved rather than new: a folder renamed (`docs` -> `docs-2024`) or moved below another,
then enqueued again. Its files are not uploaded again: a new file whose bytes (the content
hash its upload recorded) are those of an uploaded file of the same knowledge base that is
gone from its own path takes that file's row, and so its entry (`--delete-removed` semantics
for the old path, except that the entry stays: it moves).

Only a move is taken: the old path must name nothing now (a copy leaves it in place), and the
file's own name must be the same (MaiAgent has no rename, so a renamed file's entry would keep
a name that is no longer the file's: it is uploaded as a new file, and the old entry is
`--delete-removed`'s). The name shown in the knowledge base is kept as it was registered; with
a name that holds the folder (`--name folders`), it keeps the old folder until the file
changes: sending every byte again to correct a name is what a rename must not cost.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence

from .model import HostScope, ScanRow
from .replace import digest_at
from .store.engine import Engine
from .store.moves import MovesStore, Uploaded

log = logging.getLogger(__name__)


def _gone(path: bytes) -> bool:
    """The path names nothing now (an error other than "no such file" proves nothing)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def _basename(relpath: str) -> str:
    return relpath.rpartition("/")[2]


class Moves:
    """The moves of one enqueue: each uploaded file is stat'ed at most once, and taken by one
    new file at most."""

    def __init__(self, engine: Engine, scope: HostScope, kb_id: str) -> None:
        self._store = MovesStore(engine, scope)
        self._kb = kb_id
        self._gone: dict[int, bool] = {}
        self._taken: set[int] = set()

    async def adopt(self, batch: Sequence[ScanRow]) -> int:
        """Move the rows of the uploaded files this batch's new files are; how many moved.
        Runs before the batch is written, so a moved file is never queued as new (and never
        claimed by a run going on). Only the files no row holds are looked at, and only the
        uploaded files of their size and name are read and stat'ed: a re-enqueue of files
        already queued costs a lookup of their paths, and a batch of new files one lookup per
        (size, name), not a read of every uploaded file of their sizes (which grew with every
        file a run beside the walk uploaded)."""
        readable = [r for r in batch if r.skip is None]
        if not await self._store.any_of_sizes(self._kb, sorted({r.size for r in readable})):
            return 0  # no file of the batch can be a move: its paths need no lookup
        queued = await self._store.queued(self._kb, [r.path for r in readable])
        new = [r for r in readable if r.path not in queued]
        if not new:
            return 0
        wanted = sorted({(r.size, _basename(r.relpath)) for r in new})
        candidates = [
            old
            for old in await self._store.uploaded_like(self._kb, wanted)
            if old.id not in self._taken
        ]
        unknown = [old for old in candidates if old.id not in self._gone]
        self._gone.update(await asyncio.to_thread(lambda: {o.id: _gone(o.path) for o in unknown}))
        alike: dict[tuple[int, str], list[Uploaded]] = {}
        for old in candidates:
            if self._gone[old.id]:
                alike.setdefault((old.size, _basename(old.relpath)), []).append(old)
        moved = 0
        for row in new:
            olds = alike.get((row.size, _basename(row.relpath)), [])
            olds = [o for o in olds if o.id not in self._taken]
            if not olds:
                continue
            digest = await asyncio.to_thread(digest_at, row.path, row.size)
            same = [o for o in olds if o.content_hash == digest]
            if not same:
                continue
            old = next((o for o in same if o.relpath == row.relpath), same[0])
            if await self._store.move(old, row.path, row.relpath, row.mtime_ns):
                self._taken.add(old.id)
                moved += 1
                log.info("%s is %s moved: its entry kept", row.relpath, old.relpath)
        return moved
