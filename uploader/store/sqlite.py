"""The SQLite engine: one object owns the connection, its lock and its transactions.

Connections are autocommit (`isolation_level=None`); each write is one explicit
`BEGIN IMMEDIATE` transaction, so a writer waits for the lock up front (busy timeout)
instead of failing half-way when a deferred read transaction turns into a write. Times are
this host's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiosqlite

from ..i18n import _
from ..liveness import runs_dir
from ..retrying import Growth, Retry, retrying
from .engine import Dialect, Engine, QueueError, Sql
from .migrations import has_statements, latest, series
from .reach import DEFAULT_TIMEOUT, Reach
from .space import disk_full, is_full
from .sqlite_file import FileIdentity, io_lost, is_io_error, unreadable
from .turns import Turns

log = logging.getLogger("uploader.queue")

BUSY_TIMEOUT_MS = 5000
CACHE_KIB = 32 * 1024
# after the busy timeout (another process holds the write lock), six more tries: 4.2 s more
LOCKED = Retry(tries=7, first=0.2, growth=Growth.LINEAR)


def _locked(exc: Exception) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def _said(_exc: Exception, retry: int) -> None:
    log.warning("database is locked by another process; retrying (%d)", retry)


T = TypeVar("T")
# What runs inside the database thread with the raw connection (`SqliteEngine.atomically`).
Body = Callable[[sqlite3.Connection], T]


def _whole(conn: sqlite3.Connection, body: Body[T]) -> T:
    """BEGIN IMMEDIATE, `body`, COMMIT, in the database thread; rolled back there on error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = body(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _savepoint(conn: sqlite3.Connection, body: Body[T]) -> T:
    """`body` in a savepoint of the transaction already open, in the database thread."""
    conn.execute("SAVEPOINT uploader_atomically")
    try:
        result = body(conn)
    except BaseException:
        conn.execute("ROLLBACK TO uploader_atomically")
        conn.execute("RELEASE uploader_atomically")
        raise
    conn.execute("RELEASE uploader_atomically")
    return result


def _create_private(path: str) -> None:
    """The database holds file paths and history: readable by its owner only."""
    if path == ":memory:" or os.path.exists(path):
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise QueueError(
            _("cannot create database {path}: folder {folder} does not exist").format(
                path=path, folder=folder
            )
        )
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        if is_full(exc, path):
            raise disk_full(path) from None
        raise QueueError(
            _("cannot create database {path}: {why}").format(path=path, why=exc.strerror)
        ) from None


def _read_only(exc: sqlite3.DatabaseError) -> bool:
    """A write refused because the file, its folder (where the -wal and -shm files go) or
    the share it is on cannot be written."""
    text = str(exc)
    return "readonly" in text or "read-only" in text or "unable to open" in text


def _damaged(exc: BaseException) -> bool:
    return "not a database" in str(exc) or "malformed" in str(exc)


def stopping(path: str, exc: BaseException) -> QueueError | None:
    """What `exc` is when the database's surroundings, not its rows, are at fault: its disk
    full (space.py), or its file unreadable: an I/O error, or damage where the file cannot be
    read at all (a disk failing under SQLite reads as a malformed image; the file is intact
    once the disk is back, so never 'move it aside')."""
    if is_full(exc, path):
        return disk_full(path)
    if is_io_error(exc):
        return io_lost(path, exc)
    failing = unreadable(path) if _damaged(exc) else None
    return None if failing is None else io_lost(path, failing)


def explain(path: str, exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if _damaged(exc):
        return _(
            "{path} is not a usable uploader database ({why}); move it aside and run "
            "`uploader enqueue DIR` again to start a new one"
        ).format(path=path, why=text)
    if "readonly" in text:
        return _(
            "database {path} is read-only (its file, its folder or the share it is on): this "
            "command writes to it; status and export-report only read"
        ).format(path=path)
    if "locked" in text or "busy" in text:
        return _(
            "database {path} is locked by another process; try again when it has finished"
        ).format(path=path)
    return _("database {path}: {why}").format(path=path, why=text)


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements (executescript would commit our transaction)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""
    if has_statements(buffer):
        # a programming error, not shown
        raise sqlite3.DatabaseError(f"incomplete statement in migration: {buffer[:60]!r}")


async def _finished(work: Awaitable[T]) -> tuple[T, bool]:
    """`work` let finish in the database thread whatever happens to the calling task: its
    result, and whether a cancel came meanwhile (for the caller to raise once it is safe)."""
    future = asyncio.ensure_future(work)
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
    return future.result(), cancelled


async def _to_completion(conn: aiosqlite.Connection, sql: str) -> None:
    """BEGIN, COMMIT and ROLLBACK run in the database thread whatever happens to our task;
    a cancel is let through only once the statement is over (rolling back a BEGIN it
    interrupted), so the connection is never left inside a transaction nobody owns."""
    _, cancelled = await _finished(conn.execute(sql))
    if cancelled:
        if sql.startswith("BEGIN") and conn.in_transaction:
            await _to_completion(conn, "ROLLBACK")
        raise asyncio.CancelledError


class SqliteEngine(Engine):
    """One SQLite file (WAL, owner-only), migrated by `PRAGMA user_version`."""

    dialect = Dialect.SQLITE
    errors = (QueueError, sqlite3.Error)

    def __init__(
        self, conn: aiosqlite.Connection, path: str, db_timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._conn = conn
        self.path = path
        self.reach = Reach(db_timeout)
        self._file = FileIdentity(path)
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None  # the task inside the transaction
        self._savepoints = 0
        self._closed = False
        self._turns: Turns | None = None  # writers' turns at the write lock (turns.py)

    @classmethod
    async def open(
        cls, path: str, *, create: bool = True, db_timeout: float = DEFAULT_TIMEOUT
    ) -> SqliteEngine:
        """Open (and migrate) the database, turning every way it can fail into QueueError;
        before changing a byte, refuse a file that is not ours."""
        if os.path.isdir(path):
            raise QueueError(_("database path {path} is a folder, not a file").format(path=path))
        if not create and not os.path.exists(path):
            raise QueueError(
                _("no database at {path}: run `uploader enqueue DIR` first (or pass --db)").format(
                    path=path
                )
            )
        _create_private(path)
        try:
            conn = await _connect(path)
        except sqlite3.Error as exc:
            raise QueueError(
                _("cannot open database {path}: {why}").format(path=path, why=exc)
            ) from None
        engine = cls(conn, path, db_timeout)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await engine._check_version()
            mode = await engine.fetchval("PRAGMA journal_mode = WAL")
            if mode != "wal":
                log.warning("database %s: journal mode %s, not WAL", path, mode)
            await conn.execute("PRAGMA synchronous = NORMAL")
            # The default 2 MB page cache is outgrown at ~10,000 rows, after which every claim
            # and completion reads its index pages back through system calls.
            await conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            await conn.execute("PRAGMA foreign_keys = ON")
            await engine._migrate()
            engine._turns = Turns.beside(path)
        except sqlite3.DatabaseError as exc:
            if _read_only(exc) and not is_full(exc, path):
                return await cls._open_read_only(conn, path)
            await conn.close()
            raise stopping(path, exc) or QueueError(explain(path, exc)) from None
        except BaseException:
            await conn.close()
            raise
        return engine

    @classmethod
    async def _open_read_only(cls, first: aiosqlite.Connection, path: str) -> SqliteEngine:
        """The database opened for reading only (status, export-report): without the WAL
        index file when its folder cannot hold one (immutable: nobody can write it either).
        A schema this version would migrate cannot be, and is refused in one line."""
        await first.close()
        uri = Path(os.path.abspath(path)).as_uri()
        for query in ("?mode=ro", "?mode=ro&immutable=1"):
            conn = await _connect(uri + query, uri=True)
            engine = cls(conn, path)
            try:
                await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                current = await engine.fetchval("PRAGMA user_version")
            except sqlite3.OperationalError:
                await conn.close()
                continue
            if current < latest():
                await conn.close()
                raise QueueError(
                    _(
                        "database {path} is read-only and of an older version (schema "
                        "{schema}, this version needs {known}): open it once where it can be "
                        "written"
                    ).format(path=path, schema=current, known=latest())
                )
            log.info("database %s is read-only: opened for reading", path)
            return engine
        raise QueueError(
            _("cannot open database {path}: read-only, and unreadable").format(path=path)
        )

    @property
    def runs_folder(self) -> Path | None:
        """Run locks live beside the database file (see liveness.py)."""
        return runs_dir(self.path)

    @property
    def connection(self) -> aiosqlite.Connection:
        """The connection, for the job queue's hand-tuned statements (and tests and benchmarks
        that prepare rows by hand)."""
        return self._conn

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._turns is not None:
                self._turns.close()
            await self._conn.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Damage found later than the opening (a page corrupted mid-file) is the same
        one-line QueueError as at the opening, never a traceback."""
        await self.close()
        if isinstance(exc, sqlite3.DatabaseError):
            raise stopping(self.path, exc) or QueueError(explain(self.path, exc)) from None

    # --- transactions ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction; the tasks sharing the connection take turns (their statements
        would otherwise interleave inside each other's transactions). Opened again by the
        task already inside one, it is a savepoint (which waiting for our own lock would
        deadlock): rolled back alone on error, its work committed with the outer one."""
        task = asyncio.current_task()
        if task is not None and self._holder is task:
            async with self._savepoint():
                yield self._conn
            return
        async with self._lock, self._writing(), self._begin_immediate():
            self._holder = task
            try:
                yield self._conn
            finally:
                self._holder = None

    def inside_transaction(self) -> bool:
        return self._inside()

    async def wait_for_writers(self) -> bool:
        """Before a bulk writer's transaction (an enqueue's batch): the other writers first,
        a run's claims and outcomes among them; whether others are about (turns.py)."""
        if self._turns is None or self._inside():
            return False
        return await self._turns.wait_for_writers()

    def _writing(self) -> contextlib.AbstractAsyncContextManager[None]:
        """This write transaction's turn (turns.py): a bulk writer waits while it lasts."""
        return self._turns.writing() if self._turns is not None else contextlib.nullcontext()

    def _inside(self) -> bool:
        task = asyncio.current_task()
        return task is not None and self._holder is task

    @contextlib.asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[None]:
        self._savepoints += 1
        name = f"uploader_{self._savepoints}"
        try:
            await _to_completion(self._conn, f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                await _to_completion(self._conn, f"ROLLBACK TO {name}")
                await _to_completion(self._conn, f"RELEASE {name}")
                raise
            await _to_completion(self._conn, f"RELEASE {name}")
        finally:
            self._savepoints -= 1

    @contextlib.asynccontextmanager
    async def _begin_immediate(self) -> AsyncIterator[None]:
        """Wait while the database file is away from its path (sqlite_file.py: up to
        --db-timeout), then out another process's lock (busy timeout, then a few retries),
        then say so."""
        conn = self._conn
        await self._waited_out(lambda: _to_completion(conn, "BEGIN IMMEDIATE"))
        try:
            yield
        except BaseException as exc:
            await self._rolled_back(exc)
            raise
        try:
            await _to_completion(conn, "COMMIT")
        except sqlite3.Error as exc:
            await self._rolled_back(exc)
            raise

    async def _waited_out(self, begin: Callable[[], Awaitable[T]]) -> T:
        """`begin` (what takes the write lock) once the database file is at its path again,
        another process's lock waited out; beyond that, said as such."""
        if not self._file.in_place():
            await self.reach.run(self._file.check)
        try:
            return await retrying(begin, LOCKED, _locked, _said)
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
            raise _locked_out() from None

    async def _rolled_back(self, exc: BaseException) -> None:
        """The transaction `exc` broke, rolled back (unless SQLite did so itself, as it does
        after some errors); a full disk is said as such (space.py), never as one more error
        to wait out; a file that cannot be read or written any more is out of reach."""
        stop = stopping(self.path, exc)
        try:
            if self._conn.in_transaction:
                await _to_completion(self._conn, "ROLLBACK")
        except sqlite3.Error:
            if stop is None:
                raise  # a ROLLBACK that fails on a disk that has failed is no news
        if stop is not None:
            raise stop from None

    async def atomically(self, body: Body[T]) -> T:
        """`body(connection)` as one write transaction, from BEGIN IMMEDIATE to COMMIT in a
        single hop to the database thread (a savepoint of the caller's transaction when it is
        inside one). For the run's hot path (claims, write-aheads, outcomes): each hop costs
        about 60 µs of CPU (a thread switch, a wake-up of the loop), and `transaction()`
        takes one per statement plus two. `body` runs in that thread: sqlite3 calls on the
        connection it is given, nothing of the event loop. As with `transaction()`, tasks take
        turns, a file away from its path and another process's lock are waited out, a full
        disk or a lost file is said as such, and a cancelled task hears of it once the
        transaction is over (committed or rolled back), never half-way."""
        if self._inside():
            return await self._hop(_savepoint, body)
        async with self._lock, self._writing():
            try:
                return await self._waited_out(lambda: self._hop(_whole, body))
            except sqlite3.Error as exc:
                # where the ROLLBACK failed too, what broke the transaction is its context
                broke = exc.__context__ if exc.__context__ is not None else exc
                stop = stopping(self.path, exc) or stopping(self.path, broke)
                if stop is not None:
                    raise stop from None
                raise

    async def _hop(self, run: Callable[[sqlite3.Connection, Body[T]], T], body: Body[T]) -> T:
        """`run(connection, body)` in the database thread, let finish whatever happens to the
        calling task (its cancel is raised once it is over)."""
        # aiosqlite's own way of running a call in its thread, on its own sqlite3 connection
        result, cancelled = await _finished(self._conn._execute(run, self._conn._conn, body))
        if cancelled:
            raise asyncio.CancelledError
        return result

    # --- statements ------------------------------------------------------------------------

    async def execute(self, sql: Sql, params: Sequence[Any] = ()) -> int:
        if not self._inside():
            async with self.transaction():
                return await self.execute(sql, params)
        async with self._conn.execute(self.spelled(sql), params) as cur:
            return cur.rowcount

    async def executemany(self, sql: Sql, rows: Iterable[Sequence[Any]]) -> None:
        async with self.transaction() if not self._inside() else contextlib.nullcontext():
            await self._conn.executemany(self.spelled(sql), rows)

    async def fetch(self, sql: Sql, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows = await self._conn.execute_fetchall(self.spelled(sql), params)
        return [tuple(r) for r in rows]

    async def stream(
        self, sql: Sql, params: Sequence[Any] = (), chunk: int = 5000
    ) -> AsyncGenerator[tuple[Any, ...], None]:
        async with self._conn.execute(self.spelled(sql), params) as cur:
            while rows := await cur.fetchmany(chunk):
                for row in rows:
                    yield tuple(row)

    def array(self, values: Sequence[Any]) -> Any:
        return json.dumps(list(values))

    # --- migrations ------------------------------------------------------------------------

    async def _check_version(self) -> None:
        """Refuse a database from a newer uploader or another program."""
        current = await self.fetchval("PRAGMA user_version")
        newest = latest()
        if current > newest:
            raise QueueError(
                _(
                    "{path} was made by a newer version of uploader (schema {schema}, this "
                    "version knows {known}); upgrade uploader to use it"
                ).format(path=self.path, schema=current, known=newest)
            )
        if current == 0 and await self.fetchval("SELECT COUNT(*) FROM sqlite_master"):
            raise QueueError(
                _("{path} is a SQLite database of another program, not an uploader queue").format(
                    path=self.path
                )
            )

    async def _migrate(self) -> None:
        """Apply the missing migrations in one transaction. A database with none missing is
        not written: opening it takes no write lock, so a status or a run opens at once beside
        another process's long write. The version is read again inside the transaction, so two
        processes opening a new database at once do not both create the tables."""
        if await self.fetchval("PRAGMA user_version") >= latest():
            return
        async with self.transaction() as conn:
            current = await self.fetchval("PRAGMA user_version")
            for migration in series():
                if migration.number > current:
                    for statement in _statements(migration.sqlite):
                        await conn.execute(statement)
                    await conn.execute(f"PRAGMA user_version = {migration.number}")


def _locked_out() -> QueueError:
    return QueueError(
        _(
            "the database is locked by another process beyond the busy timeout; "
            "try again when it has finished"
        )
    )


async def _connect(path: str, uri: bool = False) -> aiosqlite.Connection:
    """aiosqlite's connect, never abandoned half-way: cancelled (Ctrl+C at start-up), it is let
    finish and closed, since its thread would otherwise answer a loop that is gone (a
    'RuntimeError: Event loop is closed' traceback after the one-line message)."""
    connecting = asyncio.ensure_future(aiosqlite.connect(path, isolation_level=None, uri=uri))
    try:
        return await asyncio.shield(connecting)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await (await connecting).close()
        raise
