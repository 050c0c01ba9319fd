"""A register's deadline is its sender's: the write-ahead's time plus the --timeout of the run
that sent it, kept on the row. A run that takes the row over (another host, a later run) with a
shorter --timeout must wait for that deadline, not its own, before the listing's silence
counts: else it registers the file again while the first register may still land."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import KB, enqueue, make_files, run_args, spawn
from uploader.localserver import MaiAgentServer

FILES = 10
EFFECT = 5.0  # seconds after its request a register takes effect (a slow commit)
IN_DOUBT = "SELECT count(*) FROM jobs WHERE unknown_since IS NOT NULL AND state = 'running'"


def scalar(db: str, sql: str) -> int:
    """One number read around the program, from either backend."""
    if "://" not in db:
        with closing(sqlite3.connect(db)) as conn:
            return int(conn.execute(sql).fetchone()[0])

    async def fetch() -> int:
        conn = await asyncpg.connect(db)
        try:
            return int(await conn.fetchval(sql))
        finally:
            await conn.close()

    return asyncio.run(fetch())


def wait_for(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.posix_only("kills a child process with a POSIX signal")
@pytest.mark.parametrize("dialect", ["examples"], indirect=True)  # docs: a duplicate key is refused
@pytest.mark.parametrize(("backend", "skew"), [("sqlite", 0.0), ("postgresql", 600.0)])
def test_a_run_with_a_shorter_timeout_waits_for_the_senders_deadline(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    maiagent_factory: Callable[..., MaiAgentServer],
    backend: str,
    skew: float,
) -> None:
    """A run with --timeout 6 sends its registers, which the service commits 5 s later, and
    dies (on PostgreSQL its clock is also ten minutes ahead). The next run, with --timeout 1,
    takes its rows at once: by its own timeout it would take the listing's silence 3 s after
    the sends as proof and register every file again, one second before the first registers
    land. It waits until the sender's deadline has passed, finds their entries, adopts them."""
    server = maiagent_factory(register_effect_delay=EFFECT)
    data = tmp_path / "data"
    make_files(data, FILES)
    db = str(tmp_path / "queue.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    enqueue(db, data)  # type: ignore[arg-type]
    boot = f"import time; _t = time.time; time.time = lambda: _t() + {skew!r}; " if skew else ""
    lease = ("--lease", "3", "--workers", str(FILES))

    sender = spawn(db, *run_args(server, "--timeout", "6", *lease), boot=boot)
    wait_for(lambda: scalar(db, IN_DOUBT) == FILES)
    sent = time.monotonic()  # every register is on its way, none has landed yet
    sender.send_signal(signal.SIGKILL)
    sender.communicate(timeout=30)
    server.faults.register_effect_delay = 0.0  # the service is quick again

    later = spawn(db, *run_args(server, "--timeout", "1", *lease))
    _out, err = later.communicate(timeout=120)

    assert later.returncode == 0, err.decode()
    time.sleep(max(0.0, sent + EFFECT + 0.5 - time.monotonic()))  # the first registers landed
    keys = Counter(r["key"] for r in server.records(KB))
    assert len(keys) == FILES and max(keys.values()) == 1, keys.most_common(3)
    assert scalar(db, "SELECT count(*) FROM jobs WHERE state = 'done'") == FILES
