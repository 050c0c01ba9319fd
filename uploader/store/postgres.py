"""The PostgreSQL engine: a connection pool, transactions per task, the migrations under an
advisory lock, and the two clocks.

Clocks. Every time the database decides with is its own `now()`: when a row is due, when a
lease expires, when a run started. Hosts keep working in their own clock (the pool, the
attempt and reconcile compare `time.time()` with the times the stores give them), so the
stores translate with `to_host` and `to_db`: times read are shifted into the host's clock by
the measured difference between the two clocks, times written are shifted back. A host whose
clock is ten minutes off therefore neither reclaims rows whose lease has not expired nor sees
its own leases expire early: only the database's clock is ever compared with a lease.

Every driver error becomes a one-line QueueError that shows the URL without its password; a
lost connection (a restart, a failover, a backend terminated) is a DatabaseLost, whose
operation is tried again while the database is out of reach for less than --db-timeout
(reach.py). A connection that broke is closed, never handed to the next operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from ..i18n import _
from ..liveness import server_runs_dir
from ..queue.target import HIDDEN, password_of, redact
from .engine import Dialect, Engine, QueueError, Sql
from .migrations import LEGACY_POSTGRESQL, has_statements, latest, series
from .reach import DEFAULT_TIMEOUT, DatabaseLost, Reach
from .space import server_disk_full

log = logging.getLogger("uploader.queue")

POOL_SIZE = 4
CONNECT_TIMEOUT = 15.0
# pg_advisory_xact_lock key of the migrations ("uploader" in ASCII): one process migrates.
MIGRATION_LOCK = 0x75706C6F61646572
VERSION_TABLE = "uploader_migrations"
# The version table of PostgreSQL's own series, before the two series were joined.
LEGACY_VERSION_TABLE = "uploader_schema"
# What the legacy table says once mapped: an uploader of that time reads "made by a newer
# version of uploader" instead of mistaking the tables for another program's.
LEGACY_REFUSAL = 9999
# A new measurement of the clocks' difference replaces the old one only beyond this: times
# read, shifted and written back stay exactly what they were.
SKEW_TOLERANCE = 0.5
NOW = "extract(epoch from now())::float8"

DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    asyncio.TimeoutError,
)
# A connection that broke or cannot be made, or a server shutting down or starting: the
# operation is tried again (a protocol left half-way by a dropped connection shows as an
# InternalClientError on the next use of that connection).
LOST_ERRORS = (
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    OSError,
    asyncio.TimeoutError,
)


def reason(exc: BaseException) -> str:
    """One line of what went wrong, without the driver's class names."""
    text = str(exc).strip().splitlines()
    return text[0] if text and text[0] else type(exc).__name__


def scrub(text: str, password: str | None) -> str:
    """A message that quotes the URL it failed with must still not show its password."""
    return text.replace(password, HIDDEN) if password else text


def status_count(status: str) -> int:
    """The row count of a command tag such as 'UPDATE 3' or 'INSERT 0 3'."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


@functools.lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """`?` placeholders as `$1`, `$2`, ... (a `?` inside a quoted literal or identifier, or
    a comment, is left alone)."""
    out: list[str] = []
    n = 0
    quote: str | None = None
    i = 0
    while i < len(sql):
        c = sql[i]
        if quote is not None:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = len(sql) if end < 0 else end
            out.append(sql[i:end])
            i = end
            continue
        elif c == "?":
            n += 1
            out.append(f"${n}")
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A connection goes back to the pool as it is (asyncpg still rolls back a transaction
    left open): no store sets session state (no SET, LISTEN, session advisory lock or cursor
    outside a transaction), so asyncpg's default reset, four statements in one more round
    trip at every release, only doubled the round trips of claims and completions."""


class PgEngine(Engine):
    """One PostgreSQL database (or the schema its URL's search_path names)."""

    dialect = Dialect.POSTGRESQL

    def __init__(
        self, pool: asyncpg.Pool, target: str, db_timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.pool = pool
        self.reach = Reach(db_timeout)
        self.shown = redact(target)
        self._password = password_of(target)
        self._held: dict[asyncio.Task[Any], asyncpg.Connection] = {}
        self._skew = 0.0  # the database's clock minus ours, in seconds
        self._closed = False

    @classmethod
    async def open(
        cls, target: str, *, create: bool = True, db_timeout: float = DEFAULT_TIMEOUT
    ) -> PgEngine:
        """Connect, check the schema's version and migrate. A database out of reach later is
        waited for up to `db_timeout` seconds (reach.py)."""
        shown = redact(target)
        # the pool keeps its floor of connections itself and logs each failed reconnection
        # with a traceback; the one line the run says is reach.py's
        logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
        try:
            pool = await asyncpg.create_pool(
                target,
                min_size=1,
                max_size=POOL_SIZE,
                timeout=CONNECT_TIMEOUT,
                server_settings={"application_name": "uploader"},
                reset=_keep_session,
            )
        except (*DRIVER_ERRORS, ValueError) as exc:
            raise QueueError(
                scrub(
                    _("cannot connect to database {db}: {why}").format(db=shown, why=reason(exc)),
                    password_of(target),
                )
            ) from None
        engine = cls(pool, target, db_timeout)
        try:
            await engine._migrate(create)
            async with engine.connection() as conn:
                await engine.sync_clock(conn, force=True)
        except BaseException:
            await engine.close()
            raise
        return engine

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(*DRIVER_ERRORS):
                await asyncio.wait_for(self.pool.close(), timeout=10)

    @property
    def runs_folder(self) -> Path | None:
        """This machine's runs on this database keep their liveness locks in the user's state
        folder (liveness.py): a run that died or gave up (the database out of reach) is known
        dead at once by the next run here, which closes its record and takes its rows back
        instead of waiting for their lease."""
        return server_runs_dir(self.shown)

    def explain(self, exc: BaseException) -> str:
        if isinstance(exc, asyncpg.PostgresError):
            text = _("database {path}: {why}").format(path=self.shown, why=reason(exc))
        else:
            text = _("lost the connection to database {db}: {why}").format(
                db=self.shown, why=reason(exc)
            )
        return scrub(text, self._password)

    @contextlib.asynccontextmanager
    async def translated(self) -> AsyncIterator[None]:
        try:
            yield
        except asyncpg.DiskFullError as exc:
            # no later try gets past it: the command stops (exit 6), not one more error
            raise server_disk_full(self.shown, scrub(reason(exc), self._password)) from None
        except LOST_ERRORS as exc:
            raise DatabaseLost(self.explain(exc)) from None
        except DRIVER_ERRORS as exc:
            raise QueueError(self.explain(exc)) from None

    def inside_transaction(self) -> bool:
        return asyncio.current_task() in self._held

    # --- connections and transactions ------------------------------------------------------

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """The task's transaction's connection when it is inside one, else one of the pool."""
        held = self._held.get(asyncio.current_task())  # type: ignore[arg-type]
        async with self.translated():
            if held is not None:
                yield held
                return
            async with self.pool.acquire() as conn:
                try:
                    yield conn
                except (*LOST_ERRORS, DatabaseLost):
                    conn.terminate()
                    raise

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """One transaction on one pooled connection; the same task opening another inside
        it gets a savepoint on that connection (asyncpg nests them so)."""
        task = asyncio.current_task()
        assert task is not None
        held = self._held.get(task)
        if held is not None:
            async with self.translated(), held.transaction():
                yield held
            return
        async with self.connection() as conn, conn.transaction():
            self._held[task] = conn
            try:
                yield conn
            finally:
                del self._held[task]

    # --- statements ------------------------------------------------------------------------

    async def execute(self, sql: Sql, params: Sequence[Any] = ()) -> int:
        async def once() -> int:
            async with self.connection() as conn:
                return status_count(await conn.execute(numbered(self.spelled(sql)), *params))

        return await self.reached(once)

    async def executemany(self, sql: Sql, rows: Iterable[Sequence[Any]]) -> None:
        listed = list(rows)

        async def once() -> None:
            async with self.transaction() as conn:
                await conn.executemany(numbered(self.spelled(sql)), listed)

        await self.reached(once)

    async def fetch(self, sql: Sql, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async def once() -> list[asyncpg.Record]:
            async with self.connection() as conn:
                return await conn.fetch(numbered(self.spelled(sql)), *params)  # type: ignore[no-any-return]

        return [tuple(r) for r in await self.reached(once)]

    async def stream(
        self, sql: Sql, params: Sequence[Any] = (), chunk: int = 5000
    ) -> AsyncGenerator[tuple[Any, ...], None]:
        """Through a server-side cursor, in a read-only transaction of its own connection."""
        async with self.connection() as conn, conn.transaction(readonly=True):
            async for row in conn.cursor(numbered(self.spelled(sql)), *params, prefetch=chunk):
                yield tuple(row)

    # --- the two clocks ----------------------------------------------------------------------

    async def sync_clock(self, conn: asyncpg.Connection, force: bool = False) -> None:
        before = time.time()
        db_now = await conn.fetchval("SELECT extract(epoch from clock_timestamp())::float8")
        skew = db_now - (before + time.time()) / 2
        if force or abs(skew - self._skew) > SKEW_TOLERANCE:
            if abs(skew) > 5:
                log.info("this host's clock is %.1f s off the database's", -skew)
            self._skew = skew

    def to_host(self, t: float | None) -> float | None:
        return None if t is None else t - self._skew

    def to_db(self, t: float | None) -> float | None:
        return t + self._skew if t else t

    # --- migrations ------------------------------------------------------------------------

    async def _migrate(self, create: bool) -> None:
        """Apply the missing migrations in one transaction under an advisory lock, so that
        processes starting at once against an empty database apply them once."""
        newest = latest()
        async with self.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            if await conn.fetchval("SELECT to_regclass($1) IS NULL", VERSION_TABLE):
                await self._create_version_table(conn, create)
            applied = {r[0] for r in await conn.fetch(f"SELECT version FROM {VERSION_TABLE}")}
            current = max(applied, default=0)
            if current > newest:
                raise QueueError(
                    _(
                        "database {path} was made by a newer version of uploader (schema {schema}, "
                        "this version knows {known}); upgrade uploader to use it"
                    ).format(path=self.shown, schema=current, known=newest)
                )
            # Each missing one, even below the newest applied: a database of PostgreSQL's own
            # series may miss a number that its mapping put below others.
            for migration in series():
                if migration.number not in applied:
                    if has_statements(migration.postgresql):
                        await conn.execute(migration.postgresql)
                    await conn.execute(
                        f"INSERT INTO {VERSION_TABLE} VALUES ($1, {NOW})", migration.number
                    )
                    log.info("database %s: migration %04d applied", self.shown, migration.number)

    async def _create_version_table(self, conn: asyncpg.Connection, create: bool) -> None:
        """The version table of a new database, or of one that PostgreSQL's own series made
        (mapped once onto the joined series)."""
        legacy = not await conn.fetchval("SELECT to_regclass($1) IS NULL", LEGACY_VERSION_TABLE)
        if not legacy:
            if not create:
                raise QueueError(
                    _(
                        "no uploader queue in database {db}: run `uploader enqueue DIR` first "
                        "(or check --db)"
                    ).format(db=self.shown)
                )
            if await conn.fetchval("SELECT to_regclass('jobs') IS NOT NULL"):
                raise QueueError(
                    _(
                        "database {db} has a jobs table that uploader did not make: give "
                        "uploader its own database (or schema)"
                    ).format(db=self.shown)
                )
        await conn.execute(
            f"CREATE TABLE {VERSION_TABLE} (version integer PRIMARY KEY,"
            " applied_at double precision NOT NULL)"
        )
        if not legacy:
            return
        old = await conn.fetch(f"SELECT version, applied_at FROM {LEGACY_VERSION_TABLE}")
        if any(r[0] not in LEGACY_POSTGRESQL for r in old):
            newest = max(r[0] for r in old)
            raise QueueError(
                _(
                    "database {path} was made by a newer version of uploader (schema {schema}, "
                    "this version knows {known}); upgrade uploader to use it"
                ).format(path=self.shown, schema=newest, known=max(LEGACY_POSTGRESQL))
            )
        mapped = {new: at for number, at in old for new in LEGACY_POSTGRESQL[number]}
        await conn.executemany(
            f"INSERT INTO {VERSION_TABLE} VALUES ($1, $2)", sorted(mapped.items())
        )
        await conn.execute(f"DELETE FROM {LEGACY_VERSION_TABLE}")
        await conn.execute(f"INSERT INTO {LEGACY_VERSION_TABLE} VALUES ($1, {NOW})", LEGACY_REFUSAL)
        log.info("database %s: schema versions mapped onto the joined series", self.shown)
