"""Files moved from another path (a folder renamed, `docs` -> `docs-2024`): the uploaded files a
new file may be (same size, a recorded content hash), and the move of a row to its new path,
keeping its entry. The file system side (is the old path gone, are the bytes the same) is
uploader/moves.py's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ..model import HostScope
from .engine import Engine, Pair, in_array


class Uploaded(NamedTuple):
    """A done job a new file of its size may be a move of."""

    id: int
    path: bytes
    relpath: str
    size: int
    content_hash: str


_OF_SIZES = Pair.of(
    """
SELECT id, path, relpath, size, content_hash FROM jobs
WHERE kb_id = ? AND {sizes} AND state = 'done' AND content_hash IS NOT NULL
  AND file_id IS NOT NULL AND (shared OR host IN ('', ?) OR ?)
ORDER BY id""",
    sizes=in_array("size"),
)

# Whether any is: most batches of a walk are of a folder never uploaded before.
_ANY_OF_SIZES = Pair.of(
    """
SELECT 1 FROM jobs
WHERE kb_id = ? AND {sizes} AND state = 'done' AND content_hash IS NOT NULL
  AND file_id IS NOT NULL AND (shared OR host IN ('', ?) OR ?)
LIMIT 1""",
    sizes=in_array("size"),
)

_CHUNK = 500  # paths per lookup (bound variables)

# The row takes the new path only while it is still the uploaded file at the old one and no
# row holds the new path (an enqueue of it since).
_MOVE = """
UPDATE jobs SET path = ?, relpath = ?, mtime_ns = ?, enqueued_at = ?
WHERE id = ? AND path = ? AND state = 'done'
  AND NOT EXISTS (SELECT 1 FROM jobs AS o WHERE o.kb_id = jobs.kb_id AND o.path = ?)"""


class MovesStore:
    def __init__(self, engine: Engine, scope: HostScope) -> None:
        self._db = engine
        self._scope = scope

    async def uploaded_of_sizes(self, kb_id: str, sizes: Sequence[int]) -> list[Uploaded]:
        """The uploaded files of the knowledge base, of these sizes, whose bytes are known
        (rows of this scope only), by id."""
        if not sizes:
            return []
        params = (kb_id, self._db.array(list(sizes)), self._scope.host, self._scope.shared)
        rows = await self._db.fetch(_OF_SIZES, params)
        return [Uploaded(r[0], bytes(r[1]), r[2], r[3], r[4]) for r in rows]

    async def any_of_sizes(self, kb_id: str, sizes: Sequence[int]) -> bool:
        """Whether the knowledge base has an uploaded file of one of these sizes whose bytes
        are known (rows of this scope only): one probe of an index."""
        if not sizes:
            return False
        params = (kb_id, self._db.array(list(sizes)), self._scope.host, self._scope.shared)
        return await self._db.fetchval(_ANY_OF_SIZES, params) is not None

    async def queued(self, kb_id: str, paths: Sequence[bytes]) -> set[bytes]:
        """Which of these paths a row of the knowledge base holds (any host's)."""
        found: set[bytes] = set()
        for start in range(0, len(paths), _CHUNK):
            chunk = paths[start : start + _CHUNK]
            sql = (
                f"SELECT path FROM jobs WHERE kb_id = ? AND path IN ({','.join('?' * len(chunk))})"
            )
            found.update(bytes(r[0]) for r in await self._db.fetch(sql, (kb_id, *chunk)))
        return found

    async def move(self, old: Uploaded, path: bytes, relpath: str, mtime_ns: int) -> bool:
        """The row of `old` now names the file at `path`, its entry kept; False when the row
        changed meanwhile (nothing done)."""
        changed = await self._db.execute(
            _MOVE, (path, relpath, mtime_ns, self._db.now(), old.id, old.path, path)
        )
        return changed == 1
