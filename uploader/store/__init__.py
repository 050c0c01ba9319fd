"""The database: one engine per backend and one store per concern.

The rule: **a feature = one store module + one migration pair.** A new table or statement
goes into the store module of its concern (a new module here for a new concern), holding
both dialects' SQL side by side, and its schema into a new numbered pair of files in
migrations/ (`NNNN_name.sqlite.sql` + `NNNN_name.postgresql.sql`, see migrations/__init__.py).
Nothing else in uploader writes SQL.

- `engine.Engine` - what a store is written against: `execute`, `executemany`, `fetch`,
  `fetchrow`, `fetchval`, `transaction()` (a savepoint when nested), `to_db`/`to_host` (the
  clock). Cold statements are written once with `?` placeholders; the PostgreSQL engine
  numbers them. Where the dialects differ, a `Pair(sqlite=..., postgresql=...)` keeps the two
  spellings together and the engine picks its own.
- `sqlite.SqliteEngine`, `postgres.PgEngine` - the two backends; neither imports the other.
- `migrations` - the one series of migration pairs.
- a store is a small class over an engine, built where it is needed:
  `FactsStore(q.engine).service_facts(...)` (`facts.py`: service facts and labels, the
  example to copy). Its contract tests run on both backends (tests/test_store_<concern>.py,
  fixture `store_engine`).
- the stores: `runs` (runs and scans), `listing` (the remote listing, adoption, verifications),
  `superseded` (old entries, removed files, deletions), `status` (status and report reads),
  `facts` (service facts and labels).
- the job queue's hot path (enqueue, claim, outcomes, write-ahead, leases, reclaim) and the
  commands that change job states keep hand-tuned statements per backend in uploader/queue/.
"""

from __future__ import annotations

from .engine import Dialect, Engine, Pair, QueueError

__all__ = ["Dialect", "Engine", "Pair", "QueueError", "open_engine"]


async def open_engine(target: str, *, create: bool = True) -> Engine:
    """The database at `target` (a SQLite path, or a `postgresql://` URL), opened and
    migrated; every way that can fail is a QueueError. The PostgreSQL driver is imported only
    for a URL, so SQLite users need none."""
    from ..queue.target import is_url

    if is_url(target):
        from .postgres import PgEngine

        return await PgEngine.open(target, create=create)
    from .sqlite import SqliteEngine

    return await SqliteEngine.open(target, create=create)
