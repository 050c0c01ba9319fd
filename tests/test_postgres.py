"""What only the PostgreSQL backend has: its migrations under concurrent starts, its version
rule, connection errors without the password, leases decided by the database's clock
whatever the host's clock says, and one round trip per claim and per completion. (The shared
contract is tests/test_queue_contract.py.)"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from tests.helpers import async_test
from tests.pg_server import PASSWORD, PgServer
from uploader.model import ListedRow, Outcome, OutcomeKind, ScanRow
from uploader.queue import QueueError, open_queue, redact
from uploader.store.listing import ListingStore
from uploader.store.migrations import series
from uploader.store.postgres import VERSION_TABLE
from uploader.store.status import StatusStore

KB = "kb-pg"
OWNER = "host-a:1:" + "a" * 32


async def _fetch(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


@async_test
async def test_processes_starting_at_once_migrate_once(pg_url: str) -> None:
    queues = await asyncio.gather(*(open_queue(pg_url) for _ in range(6)))
    for q in queues:
        await q.close()
    versions = await _fetch(pg_url, f"SELECT version FROM {VERSION_TABLE} ORDER BY version")
    # every migration once (numbers are reserved ahead, so there may be gaps)
    assert [r[0] for r in versions] == [m.number for m in series()]


@async_test
async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    async with await open_queue(pg_url):
        pass
    await _fetch(pg_url, f"INSERT INTO {VERSION_TABLE} VALUES (999, 0)")
    with pytest.raises(QueueError, match=r"newer version of uploader \(schema 999"):
        await open_queue(pg_url)


@async_test
async def test_another_programs_jobs_table_is_refused(pg_url: str) -> None:
    await _fetch(pg_url, "CREATE TABLE jobs (id int)")
    with pytest.raises(QueueError, match="jobs table that uploader did not make"):
        await open_queue(pg_url)


@async_test
async def test_a_command_that_needs_a_queue_does_not_make_one(pg_url: str) -> None:
    with pytest.raises(QueueError, match="no uploader queue in database"):
        await open_queue(pg_url, create=False)
    assert await _fetch(pg_url, f"SELECT to_regclass('{VERSION_TABLE}') IS NULL") == [(True,)]


@async_test
async def test_connection_errors_never_show_the_password(pg_server: PgServer) -> None:
    wrong = pg_server.url("postgres", password="not-the-" + PASSWORD)
    with pytest.raises(QueueError) as refused:
        await open_queue(wrong)
    message = str(refused.value)
    assert "password authentication failed" in message
    assert PASSWORD not in message and "***" in message and "\n" not in message
    with pytest.raises(QueueError) as missing:
        await open_queue(pg_server.url("no_such_database"))
    assert "no_such_database" in str(missing.value) and PASSWORD not in str(missing.value)


@async_test
async def test_an_unreachable_server_is_one_line(pg_server: PgServer) -> None:
    closed_port = f"postgresql://u:{PASSWORD}@127.0.0.1:1/db"
    with pytest.raises(QueueError) as refused:
        await open_queue(closed_port)
    assert str(refused.value).startswith("cannot connect to database postgresql://u:***@")
    assert PASSWORD not in str(refused.value)


def test_redact_hides_passwords_in_user_part_and_query() -> None:
    assert redact("postgresql://me:s3cr%40t@db:5432/q") == "postgresql://me:***@db:5432/q"
    assert redact("postgres://db/q?user=me&password=x&sslmode=require") == (
        "postgres://db/q?user=me&password=***&sslmode=require"
    )
    assert redact("postgresql://me@db/q") == "postgresql://me@db/q"
    assert redact("/tmp/uploader.db") == "/tmp/uploader.db"


@pytest.mark.parametrize("skew", [600.0, -600.0])
@async_test
async def test_leases_follow_the_database_clock_not_the_hosts(
    pg_url: str, skew: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host ten minutes ahead must not take back a live lease; ten minutes behind, its own
    short lease must still expire on time. The host sees every time in its own clock."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew)
    async with await open_queue(pg_url) as q:
        await q.enqueue_batch(KB, [ScanRow(f"/d/{n}".encode(), n, 1, 1) for n in "abc"])
        [long] = await q.claim(OWNER, 1, 60.0, KB)
        assert abs(long.started_at - time.time()) < 5  # in this host's clock
        [owner] = await q.lease_owners()
        assert abs(owner.expires - (time.time() + 60)) < 5
        assert await q.reclaim([]) == 0
        short = await q.claim("host-b:2:" + "b" * 32, 2, 1.0, KB)
        assert len(short) == 2
        await asyncio.sleep(1.5)
        assert await q.reclaim([]) == 2  # expired by the database's clock
        assert sorted(await q.renew_leases(OWNER, 60.0)) == [long.id]


@async_test
async def test_what_a_host_whose_clock_is_off_listed_is_kept_by_the_databases_clock(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hosts store what their listings read in one table, each row with the time of the
    listing that saw it. A host ten minutes behind stored its rows ten minutes "old": a verify
    on another host, ending, forgot an entry that host had just listed (after the verify
    began) as one no longer there, and that host's doubt, its listing read, found nothing and
    registered the file again."""
    real = time.time
    shift = {"now": -600.0}
    monkeypatch.setattr(time, "time", lambda: real() + shift["now"])
    async with await open_queue(pg_url) as behind:
        shift["now"] = 0.0
        async with await open_queue(pg_url) as right:
            verify = ListingStore(right.engine)
            began = time.time()
            await verify.store_listed([ListedRow(KB, "e1", "a", 1, None, 0.0, began, "k/a")])
            shift["now"] = -600.0
            run = ListingStore(behind.engine)
            await run.store_listed([ListedRow(KB, "e2", "b", 1, None, 0.0, time.time(), "k/b")])
            shift["now"] = 0.0
            await verify.forget_unseen(KB, began)
            assert await verify.any_remote_known(KB, ["e2"])
            assert await verify.remote_status_counts(KB, began) == {"unknown": 2}


@async_test
async def test_a_claim_and_its_completion_are_one_statement_each(pg_url: str) -> None:
    """What the connection sends for a claim and for a batch's outcomes: the one statement
    and nothing after it. The queue keeps no session state, so nothing has to be reset
    before the pool hands the connection to the next caller (asyncpg's default reset was
    four more statements and a round trip after each, twice the round trips per batch)."""
    async with await open_queue(pg_url) as q:
        await q.enqueue_batch(KB, [ScanRow(f"/d/{n}".encode(), n, 1, 1) for n in "abcd"])
        sent: list[str] = []
        async with q.transaction() as conn:  # the pool's one connection so far
            conn.add_query_logger(lambda logged: sent.append(logged.query))
        for _ in range(2):  # the first round also has asyncpg's one-off type look-ups
            sent.clear()
            jobs = await q.claim(OWNER, 2, 60.0, KB)
            ended = time.time()
            await q.record_outcomes(OWNER, [Outcome(j, OutcomeKind.DONE, ended) for j in jobs])
        assert [query.split(None, 1)[0] for query in sent] == ["UPDATE", "WITH"]
        assert await StatusStore(q.engine).state_counts() == {KB: {"done": (4, 4)}}
        # a transaction that failed is rolled back before the connection is used again
        with pytest.raises(QueueError):
            async with q.transaction() as conn:
                await conn.execute("DELETE FROM jobs")
                await conn.execute("SELECT 1/0")
        async with q.transaction() as conn:
            assert await conn.fetchval("SELECT count(*) FROM jobs") == 4
