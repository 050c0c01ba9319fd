"""The one migration series (migrations/, uploader/store/migrations.py): every number a pair,
and the databases made before the two series were joined upgraded in place.

The databases "made by today's code" are built here as the uploader of that time built them:
its migration files, frozen in tests/fixtures/legacy_migrations/ (SQLite's and PostgreSQL's
own numbering), applied by its rules (SQLite: `PRAGMA user_version`; PostgreSQL: the
`uploader_schema` table). The frozen copies are held to the series byte for byte, so the
join is proven a renaming, and an upgraded database must end with the schema of a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.helpers import ROOT, async_test, invoke
from tests.pg_server import PgServer
from uploader.model import HostScope, ScanRow
from uploader.queue import QueueError, open_queue
from uploader.store.migrations import LEGACY_POSTGRESQL, has_statements, series
from uploader.store.postgres import LEGACY_REFUSAL, LEGACY_VERSION_TABLE, VERSION_TABLE

LEGACY = ROOT / "tests" / "fixtures" / "legacy_migrations"
KB = "kb-legacy"
HOST = "host-legacy"
OWNER = f"{HOST}:1:" + "a" * 32


def _legacy(dialect: str) -> list[tuple[int, Path]]:
    return sorted((int(p.name[:4]), p) for p in (LEGACY / dialect).glob("*.sql"))


def test_every_number_is_a_pair_of_files() -> None:
    names = {p.name for p in (ROOT / "migrations").glob("*.sql")}
    for name in names:
        assert re.fullmatch(r"\d{4}_\w+\.(sqlite|postgresql)\.sql", name), name
        stem = name.rsplit(".", 2)[0]
        assert {f"{stem}.sqlite.sql", f"{stem}.postgresql.sql"} <= names, name
    assert len(series()) * 2 == len(names)


def test_the_join_renamed_the_old_files_and_added_only_comments() -> None:
    by_number = {m.number: m for m in series()}
    legacy_max = max(n for news in LEGACY_POSTGRESQL.values() for n in news)
    covered: set[tuple[int, str]] = set()
    for number, path in _legacy("sqlite"):
        assert by_number[number].sqlite == path.read_text(encoding="utf-8"), path.name
        covered.add((number, "sqlite"))
    for number, path in _legacy("postgresql"):
        new = LEGACY_POSTGRESQL[number][0]
        assert by_number[new].postgresql == path.read_text(encoding="utf-8"), path.name
        covered.add((new, "postgresql"))
    for m in series():
        if m.number <= legacy_max:
            for dialect in ("sqlite", "postgresql"):
                if (m.number, dialect) not in covered:
                    assert not has_statements(getattr(m, dialect)), (m.number, dialect)


# --- SQLite ----------------------------------------------------------------------------------


def _sqlite_schema(db: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()


def _migrate_sqlite(conn: sqlite3.Connection, steps: Iterable[tuple[int, str]]) -> None:
    """Each (number, script) applied and its number set as user_version, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    for number, script in steps:
        for statement in _split(script):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute("COMMIT")


def _build_legacy_sqlite(db: Path) -> None:
    """As the uploader before the join: each file whose number is above user_version."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        _migrate_sqlite(conn, ((n, p.read_text(encoding="utf-8")) for n, p in _legacy("sqlite")))
        conn.execute(
            "INSERT INTO jobs (kb_id, path, relpath, size, mtime_ns, state, enqueued_at, host)"
            " VALUES (?, ?, 'old.txt', 3, 1, 'pending', 1.0, ?)",
            (KB, b"/legacy/old.txt", HOST),
        )


def _split(script: str) -> list[str]:
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer)
            buffer = ""
    return statements


@async_test
async def test_a_sqlite_database_of_the_old_series_upgrades_in_place(tmp_path: Path) -> None:
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    _build_legacy_sqlite(old)
    scope = HostScope(HOST)
    async with await open_queue(str(old), scope=scope) as q:
        await q.enqueue_batch(KB, [ScanRow(b"/legacy/new.txt", "new.txt", 4, 2)])
        claimed = await q.claim(OWNER, 10, 60.0)
        assert sorted(j.relpath for j in claimed) == ["new.txt", "old.txt"]
    async with await open_queue(str(new)):
        pass
    assert _sqlite_schema(old) == _sqlite_schema(new)
    with contextlib.closing(sqlite3.connect(old)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == series()[-1].number


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def old_and_new(pg_server: PgServer) -> tuple[str, str]:
    """Two empty schemas: one for a database of the old series, one for a new database."""
    return pg_server.fresh_queue_url(), pg_server.fresh_queue_url()


async def _migrate_pg(
    conn: asyncpg.Connection, table: str, steps: Iterable[tuple[int, str]]
) -> None:
    """The version table `table` made, each (number, script) applied and its number recorded
    there, in one transaction."""
    async with conn.transaction():
        await conn.execute(
            f"CREATE TABLE {table} (version integer PRIMARY KEY,"
            " applied_at double precision NOT NULL)"
        )
        for number, script in steps:
            if has_statements(script):
                await conn.execute(script)
            await conn.execute(f"INSERT INTO {table} VALUES ($1, 0)", number)


async def _build_legacy_pg(url: str, leave_out: frozenset[int] = frozenset()) -> None:
    """As the uploader before the join: PostgreSQL's own files, numbered in `uploader_schema`."""
    conn = await asyncpg.connect(url)
    try:
        steps = [
            (number, path.read_text(encoding="utf-8"))
            for number, path in _legacy("postgresql")
            if number not in leave_out
        ]
        await _migrate_pg(conn, LEGACY_VERSION_TABLE, steps)
        await conn.execute(
            "INSERT INTO jobs (kb_id, path, relpath, size, mtime_ns, state, enqueued_at, host)"
            " VALUES ($1, $2, 'old.txt', 3, 1, 'pending', 1.0, $3)",
            KB,
            b"/legacy/old.txt",
            HOST,
        )
    finally:
        await conn.close()


async def _pg_schema(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Tables, columns, indexes, constraints, storage options and row types of the URL's
    schema, with the schema's name taken out; the version tables left out."""
    conn = await asyncpg.connect(url)
    versions = (VERSION_TABLE, LEGACY_VERSION_TABLE)
    try:
        schema = await conn.fetchval("SELECT current_schema()")
        queries = {
            "columns": "SELECT table_name, column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND NOT (table_name = ANY($1::text[]))",
            "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = current_schema() AND NOT (tablename = ANY($1::text[]))",
            "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE connamespace = current_schema()::regnamespace"
            " AND NOT (conrelid::regclass::text = ANY($1::text[]))",
            "options": "SELECT relname, reloptions FROM pg_class"
            " WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r'"
            " AND NOT (relname = ANY($1::text[]))",
            "types": "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)"
            " FROM pg_class AS c JOIN pg_attribute AS a ON a.attrelid = c.oid"
            " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'c'"
            " AND a.attnum > 0 AND $1::text[] IS NOT NULL",
        }
        found = {}
        for name, sql in queries.items():
            rows = await conn.fetch(sql, list(versions))
            found[name] = sorted(tuple(str(v).replace(f"{schema}.", "") for v in r) for r in rows)
        return found
    finally:
        await conn.close()


@async_test
async def test_a_postgresql_database_of_the_old_series_upgrades_in_place(
    old_and_new: tuple[str, str],
) -> None:
    old, new = old_and_new
    await _build_legacy_pg(old)
    async with await open_queue(old, create=False, scope=HostScope(HOST)) as q:
        await q.enqueue_batch(KB, [ScanRow(b"/legacy/new.txt", "new.txt", 4, 2)])
        claimed = await q.claim(OWNER, 10, 60.0)
        assert sorted(j.relpath for j in claimed) == ["new.txt", "old.txt"]
    async with await open_queue(new):
        pass
    assert await _pg_schema(old) == await _pg_schema(new)
    conn = await asyncpg.connect(old)
    try:
        applied = [r[0] for r in await conn.fetch(f"SELECT version FROM {VERSION_TABLE}")]
        legacy = [r[0] for r in await conn.fetch(f"SELECT version FROM {LEGACY_VERSION_TABLE}")]
    finally:
        await conn.close()
    assert sorted(applied) == [m.number for m in series()]
    assert legacy == [LEGACY_REFUSAL]  # an uploader of the old series says "newer version"


@async_test
async def test_a_postgresql_database_missing_old_migrations_gets_them(
    old_and_new: tuple[str, str],
) -> None:
    """The mapping is per number: an old database that never applied PostgreSQL's 0015 and
    0016 (now 0005 and 0012, below numbers it has) gets exactly those."""
    old, new = old_and_new
    await _build_legacy_pg(old, leave_out=frozenset({15, 16}))
    async with await open_queue(old):
        pass
    async with await open_queue(new):
        pass
    assert await _pg_schema(old) == await _pg_schema(new)


@async_test
async def test_an_old_series_number_this_version_does_not_know_is_refused(pg_url: str) -> None:
    old = pg_url
    await _build_legacy_pg(old)
    conn = await asyncpg.connect(old)
    try:
        await conn.execute(f"INSERT INTO {LEGACY_VERSION_TABLE} VALUES (17, 0)")
    finally:
        await conn.close()
    with pytest.raises(QueueError, match="newer version of uploader"):
        await open_queue(old)


# --- a database made before a migration ------------------------------------------------------

SAVED_JOBS = 20  # 0020_saved_jobs: `uploader sync` saves its jobs there


def _build_sqlite_before(db: Path, number: int) -> None:
    """A database of the joined series as an uploader without migration `number` made it,
    holding an uploaded file and a queued one."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        _migrate_sqlite(conn, ((m.number, m.sqlite) for m in series() if m.number < number))
        conn.execute(
            "INSERT INTO jobs (kb_id, path, relpath, size, mtime_ns, state, enqueued_at, host,"
            " file_id) VALUES (?, ?, 'up.txt', 3, 1, 'done', 1.0, ?, 'entry-1')",
            (KB, b"/legacy/up.txt", HOST),
        )
        conn.execute(
            "INSERT INTO jobs (kb_id, path, relpath, size, mtime_ns, state, enqueued_at, host)"
            " VALUES (?, ?, 'queued.txt', 4, 1, 'pending', 1.0, ?)",
            (KB, b"/legacy/queued.txt", HOST),
        )


async def _build_pg_before(url: str, number: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        steps = [(m.number, m.postgresql) for m in series() if m.number < number]
        await _migrate_pg(conn, VERSION_TABLE, steps)
        for relpath, state, file_id in (
            ("up.txt", "done", "entry-1"),
            ("queued.txt", "pending", None),
        ):
            await conn.execute(
                "INSERT INTO jobs (kb_id, path, relpath, size, mtime_ns, state, enqueued_at, host,"
                " file_id) VALUES ($1, $2, $3, 3, 1, $4, 1.0, $5, $6)",
                KB,
                b"/legacy/" + relpath.encode(),
                relpath,
                state,
                HOST,
                file_id,
            )
    finally:
        await conn.close()


def _opened_by_the_cli(db: Any, folder: Path) -> None:
    """A database made before 0020, used by today's commands: its rows are kept, and `sync`
    saves a job in the table the migration adds."""
    before = invoke(db, "jobs")
    status = invoke(db, "status", "--json")
    folder.mkdir()
    enqueued = invoke(db, "enqueue", str(folder), "--kb", KB)

    assert before.exit_code == 0 and "no saved job" in before.stdout, before.output
    assert status.exit_code == 0, status.output
    states = json.loads(status.stdout)["knowledge_bases"][KB]
    assert (states["done"]["files"], states["pending"]["files"]) == (1, 1), states
    assert enqueued.exit_code == 0, enqueued.output


def test_a_sqlite_database_made_before_saved_jobs_opens_with_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "before.db"
    _build_sqlite_before(db, SAVED_JOBS)

    _opened_by_the_cli(db, tmp_path / "empty")

    with contextlib.closing(sqlite3.connect(db)) as conn:
        kept = conn.execute("SELECT relpath, state, file_id FROM jobs ORDER BY id").fetchall()
        assert conn.execute("SELECT COUNT(*) FROM saved_jobs").fetchone()[0] == 0
        assert conn.execute("PRAGMA user_version").fetchone()[0] == series()[-1].number
    assert kept == [("up.txt", "done", "entry-1"), ("queued.txt", "pending", None)]


def test_a_postgresql_database_made_before_saved_jobs_opens_with_its_rows(
    tmp_path: Path, pg_url: str
) -> None:
    asyncio.run(_build_pg_before(pg_url, SAVED_JOBS))

    _opened_by_the_cli(pg_url, tmp_path / "empty")

    async def read() -> tuple[list[tuple[object, ...]], int, list[int]]:
        conn = await asyncpg.connect(pg_url)
        try:
            kept = await conn.fetch("SELECT relpath, state, file_id FROM jobs ORDER BY id")
            saved = await conn.fetchval("SELECT COUNT(*) FROM saved_jobs")
            applied = await conn.fetch(f"SELECT version FROM {VERSION_TABLE} ORDER BY version")
        finally:
            await conn.close()
        return [tuple(r) for r in kept], saved, [r[0] for r in applied]

    kept, saved, applied = asyncio.run(read())
    assert kept == [("up.txt", "done", "entry-1"), ("queued.txt", "pending", None)]
    assert saved == 0
    assert applied == [m.number for m in series()]


def test_an_up_to_date_sqlite_database_opens_while_another_connection_writes(
    tmp_path: Path,
) -> None:
    """Opening a database with nothing to migrate takes no write lock: a status, or a second
    run, opens at once beside a long write (an enqueue's transaction) instead of waiting for
    it. The lock is held until the open is over, or 4 s at most (SQLite's busy timeout is 5 s:
    the open that waits for the lock then gets it)."""
    db = str(tmp_path / "queue.db")

    async def opened() -> None:
        async with await open_queue(db):
            pass

    asyncio.run(opened())  # made and migrated
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    over = threading.Event()

    def hold() -> None:
        over.wait(4)
        holder.execute("COMMIT")

    releaser = threading.Thread(target=hold)
    releaser.start()
    try:
        asyncio.run(opened())
        held_throughout = holder.in_transaction
    finally:
        over.set()
        releaser.join()
        holder.close()
    assert held_throughout, "the open waited for the other connection's write lock"
