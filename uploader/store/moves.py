"""Files moved from another path (a folder renamed, `docs` -> `docs-2024`): the uploaded files a
new file may be (same size, a recorded content hash), and the move of a row to its new path,
keeping its entry. The file system side (is the old path gone, are the bytes the same) is
uploader/moves.py's."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

from ..model import HostScope
from .engine import Dialect, Engine, Pair


class Uploaded(NamedTuple):
    """A done job a new file of its size may be a move of."""

    id: int
    path: bytes
    relpath: str
    size: int
    content_hash: str


# The wanted (size, own name) pairs joined to the uploaded files: one JSON array of pairs on
# SQLite, two arrays on PostgreSQL. The name (the last part of relpath) is spelled exactly as
# migration 0025's index spells it, and the index is named: SQLite refuses the statement
# rather than read every uploaded file of the size.
_WANTED = Pair(
    sqlite="""json_each(?) AS w CROSS JOIN jobs AS j INDEXED BY jobs_done_name
  ON j.size = json_extract(w.value, '$[0]')
  AND substr(j.relpath, length(rtrim(j.relpath, replace(j.relpath, '/', ''))) + 1)
    = json_extract(w.value, '$[1]')""",
    postgresql="""unnest(?::bigint[], ?::text[]) AS w (size, name) JOIN jobs AS j
  ON j.size = w.size AND regexp_replace(j.relpath, '^.*/', '') = w.name""",
)

_LIKE = Pair.of(
    """
SELECT j.id, j.path, j.relpath, j.size, j.content_hash FROM {wanted}
WHERE j.kb_id = ? AND j.state = 'done' AND j.content_hash IS NOT NULL
  AND j.file_id IS NOT NULL AND (j.shared OR j.host IN ('', ?) OR ?)
ORDER BY j.id""",
    wanted=_WANTED,
)

# Whether any is: most batches of a walk are of a folder never uploaded before. On SQLite one
# probe per size of 0025's index, named: left to itself the planner walked every uploaded file
# (by jobs_content's hash, later jobs_claim's state) until one was of a size asked, all of them
# where none is (69 ms a batch with 200,000 files uploaded).
_ANY_OF_SIZES = Pair(
    sqlite="""
SELECT 1 FROM json_each(?) AS w CROSS JOIN jobs AS j INDEXED BY jobs_done_name ON j.size = w.value
WHERE j.kb_id = ? AND j.state = 'done' AND j.content_hash IS NOT NULL
  AND j.file_id IS NOT NULL AND (j.shared OR j.host IN ('', ?) OR ?)
LIMIT 1""",
    postgresql="""
SELECT 1 FROM jobs AS j
WHERE j.size = ANY(?) AND j.kb_id = ? AND j.state = 'done' AND j.content_hash IS NOT NULL
  AND j.file_id IS NOT NULL AND (j.shared OR j.host IN ('', ?) OR ?)
LIMIT 1""",
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

    async def uploaded_like(self, kb_id: str, wanted: Sequence[tuple[int, str]]) -> list[Uploaded]:
        """The uploaded files of the knowledge base whose bytes are known and whose (size, own
        name) is one of `wanted`, each pair once (rows of this scope only), by id: one probe of
        an index per pair, however many files of those sizes were uploaded."""
        if not wanted:
            return []
        pairs: tuple[object, ...]
        if self._db.dialect is Dialect.SQLITE:
            pairs = (json.dumps([list(w) for w in wanted]),)
        else:
            pairs = ([size for size, _name in wanted], [name for _size, name in wanted])
        params = (*pairs, kb_id, self._scope.host, self._scope.shared)
        rows = await self._db.fetch(_LIKE, params)
        return [Uploaded(r[0], bytes(r[1]), r[2], r[3], r[4]) for r in rows]

    async def any_of_sizes(self, kb_id: str, sizes: Sequence[int]) -> bool:
        """Whether the knowledge base has an uploaded file of one of these sizes whose bytes
        are known (rows of this scope only): one probe of an index."""
        if not sizes:
            return False
        params = (self._db.array(list(sizes)), kb_id, self._scope.host, self._scope.shared)
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
