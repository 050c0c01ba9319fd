"""The knowledge base's listing as the run reads it to settle doubtful registers: pages that
shift while read, a listing truly out of order, a host whose clock is off the service's, a
listing without keys where many files share a name, and a count that lies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from tests.helpers import (
    API_KEY,
    KB,
    child_env,
    command,
    enqueue,
    invoke,
    make_files,
    rows,
    run_args,
)
from uploader.localserver import DIALECTS, MaiAgentServer
from uploader.model import Job, Step
from uploader.queue import open_queue
from uploader.reconcile import Adoption, RemoteIndex, open_client

BOTH = pytest.mark.parametrize("dialect", DIALECTS, indirect=True)
DISORDER = "does not list newest first"


def logs_of(tmp_path: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((tmp_path / "logs").glob("*.log")))


def assert_each_once_by_content(
    server: MaiAgentServer, root: Path, relpaths: Sequence[str]
) -> None:
    """Every file's bytes are in exactly one entry of the knowledge base, and no entry of
    ours holds bytes of no file."""
    wanted = {(root / rel).read_bytes() for rel in relpaths}
    held = Counter(
        server.content(r["key"])
        for r in server.records(KB)
        if not r["filename"].startswith(("existing-", "shift-"))
    )
    assert {c: n for c, n in held.items() if n > 1} == {}
    assert set(held) == wanted


@contextlib.asynccontextmanager
async def remote_index(db: Path, server: MaiAgentServer) -> AsyncIterator[RemoteIndex]:
    """The run's index of the knowledge base over a queue at `db`, once a first listing has
    made the service's clock known."""
    async with await open_queue(str(db)) as q, open_client(server.base_url, API_KEY) as client:
        await client.list_files(KB, 1, 1)
        yield RemoteIndex(q, client)


def upload_with(
    tmp_path: Path, server: MaiAgentServer, relpaths_count: int, *extra: str
) -> tuple[Path, list[str]]:
    relpaths = make_files(tmp_path / "data", relpaths_count)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    result = invoke(db, *run_args(server, *extra))
    assert result.exit_code == 0, result.output
    return db, relpaths


@BOTH
def test_pages_that_shift_while_read_are_no_evidence_of_disorder(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """Others (and this run) add entries at the top while a refresh reads page after page:
    page 2 then begins with entries page 1 showed. Those are no evidence that the knowledge
    base does not list newest first, and the refresh stops early as usual."""
    server = maiagent_factory(lost_register_rate=0.1, seed=3, list_shift=30, page_size_max=100)
    server.fill(KB, 1000)
    server.reset_stats()

    db, relpaths = upload_with(tmp_path, server, 200)

    assert DISORDER not in logs_of(tmp_path)
    assert_each_once_by_content(server, tmp_path / "data", relpaths)
    stats = server.stats()
    assert stats["register_lost"] >= 5  # the knob did lose answers
    assert stats["list"] <= 3 * stats["register_lost"] + 10


@BOTH
def test_a_listing_truly_out_of_order_settles_waiting_doubts_together(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """Where the listing is not newest first a doubt is settled only by reading it whole;
    one such read settles every doubt waiting for it, and they are not read one per doubt."""
    server = maiagent_factory(
        lost_register_rate=0.15, seed=5, list_order="random", page_size_max=100, latency=0.01
    )
    server.fill(KB, 2000)
    server.reset_stats()

    db, relpaths = upload_with(tmp_path, server, 200, "--workers", "2")

    assert_each_once_by_content(server, tmp_path / "data", relpaths)
    stats = server.stats()
    lost = stats["register_lost"]
    assert lost >= 15
    whole = stats["list"] / (2200 / 100)  # listing calls in units of a whole read
    assert whole <= lost / 6


SHIFTED_CLOCK = """\
import os
import time

_shift = float(os.environ["UPLOADER_TEST_CLOCK_SHIFT"])
_real = time.time
time.time = lambda: _real() + _shift
"""


@BOTH
@pytest.mark.parametrize("shift", [600.0, -600.0])
def test_a_host_clock_off_the_service_by_minutes_still_uploads_each_file_once(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer], shift: float
) -> None:
    """This host's clock is ten minutes off the service's (a PC off NTP, a VM resumed from a
    snapshot): the windows that compare our clock with the service's createdAt are corrected
    by the offset its answers' Date headers show, and a refresh does not stop at page 1
    while the entry of a lost answer sits further down."""
    server = maiagent_factory(lost_register_rate=0.1, seed=11, page_size_max=10)
    relpaths = make_files(tmp_path / "data", 150)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SHIFTED_CLOCK)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env = child_env({"PYTHONPATH": path, "UPLOADER_TEST_CLOCK_SHIFT": str(shift)})

    ran = subprocess.run(
        command(db, *run_args(server)),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert ran.returncode == 0, ran.stderr
    assert_each_once_by_content(server, tmp_path / "data", relpaths)
    assert server.stats()["register_lost"] >= 5
    assert {r["state"] for r in rows(db)} == {"done"}
    assert "this host's clock is" in logs_of(tmp_path)


@BOTH
def test_a_refresh_does_not_stop_at_entries_another_run_stored(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """Two runs on one queue (hosts sharing a PostgreSQL queue, or two runs of one SQLite
    file) store what their listings read in the same table. A run's refresh stops where its
    own previous one began, not at an entry another run stored: that run read only down to
    its own, newer doubt, and below its block lies the entry of ours that landed after our
    last refresh (a slow commit of a register another run sent: we waited for its deadline).
    It was taken for a register that did not happen and sent again."""
    server = maiagent_factory(page_size_max=100)
    doubt = time.time() - 1
    ours = Job(1, KB, b"/data/a.txt", "a.txt", 5, 0, 2, Step.UPLOADED, "k/a", doubt, "a.txt", doubt)
    db = tmp_path / "queue.db"

    async def scenario() -> tuple[str | None, str]:
        async with remote_index(db, server) as index, remote_index(db, server) as other:
            assert await index.adopt(ours, "a.txt") == Adoption(None, covered=True)
            landed = server.add_entry(KB, "a.txt", 5, key="k/a")  # the slow commit
            server.fill(KB, 250)  # others' registers meanwhile: page 1 holds none of ours
            later = time.time() + 10  # the other run's doubt, newer than ours by far
            theirs = Job(
                2, KB, b"/data/b.txt", "b.txt", 5, 0, 2, Step.UPLOADED, "k/b", later,
                "b.txt", later,
            )  # fmt: skip
            await other.adopt(theirs, "b.txt")  # stores page 1 only
            ours.started_at = time.time()  # a listing begun now is needed
            return (await index.adopt(ours, "a.txt")).file_id, landed["id"]

    found, entry = asyncio.run(scenario())
    assert found == entry


@BOTH
def test_a_listing_whose_count_is_absurd_ends_where_its_pages_end(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """A count of 10^12 (a bug or a stale cache in front of the service) is believed only as
    far as the pages bear it out: the first page past the end ends the listing, instead of
    requests for every page the count implies."""
    server = maiagent_factory()
    db, _ = upload_with(tmp_path, server, 120)
    server.faults.list_count = 10**12
    server.reset_stats()

    result = subprocess.run(
        command(db, "verify", "--base-url", server.base_url),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 1
    assert server.stats()["list"] <= 40


@BOTH
def test_a_listing_without_keys_settles_doubts_of_a_name_many_files_share(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """`report.pdf` in 150 folders, a listing that shows no S3 key, 15% lost answers: a doubt
    is settled by name, size and time (never while a register of that name is in flight), not
    dropped into a second register; where the service refuses a key twice (docs), its
    duplicate-key answer proves the entry exists and the file ends done, not failed."""
    server = maiagent_factory(lost_register_rate=0.15, seed=2, drop_fields="file")
    relpaths = []
    for i in range(150):
        folder = tmp_path / "data" / f"dept{i:03d}"
        folder.mkdir(parents=True)
        (folder / "report.pdf").write_bytes(f"report {i}\n".encode())
        relpaths.append(f"dept{i:03d}/report.pdf")
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")

    ran = invoke(db, *run_args(server, "--name", "basename"))

    assert ran.exit_code == 0, ran.output
    assert server.stats()["register_lost"] >= 10
    assert_each_once_by_content(server, tmp_path / "data", relpaths)
    assert {r["state"] for r in rows(db)} == {"done"}
    assert len({r["file_id"] for r in rows(db)}) == len(relpaths)


@BOTH
def test_the_runs_last_look_for_second_entries_reads_down_to_its_first_doubt(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """Others made 2,000 entries after the run began and a minute before its first doubt: the
    run's last look for second entries of one upload (which only a register in doubt can
    have made) reads a listing begun now down to that doubt, one page here, not down to the
    run's start, which is every entry others made meanwhile (21 pages)."""
    server = maiagent_factory(page_size_max=100)
    began = time.time() - 120
    server.fill(KB, 2000, age=60)
    doubt = time.time() - 1
    job = Job(
        1, KB, b"/data/a.txt", "a.txt", 5, 0, 2, Step.UPLOADED, "k/a.txt", doubt, "a.txt", doubt
    )

    async def scenario() -> int:
        async with remote_index(tmp_path / "queue.db", server) as index:
            adoption = await index.adopt(job, "a.txt")
            assert adoption == Adoption(None, covered=True)
            server.reset_stats()
            await index.recheck(KB, began)
            return server.stats()["list"]

    assert asyncio.run(scenario()) == 1


@BOTH
def test_a_refresh_stops_only_at_an_entry_an_earlier_listing_stored(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """Others add 30 entries at the top between two page reads, so page 2 begins with entries
    page 1 showed: they were stored by this very listing, and are no sign that the last
    refresh read on from there. A doubt whose entry sits 250 entries down, below what page 2
    reaches, is found (it was taken for a register that did not happen: sent again)."""
    server = maiagent_factory(page_size_max=100, list_shift=30)
    doubt = time.time() - 1
    first = Job(
        1, KB, b"/data/a.txt", "a.txt", 5, 0, 2, Step.UPLOADED, "k/a", doubt, "a.txt", doubt
    )

    async def scenario() -> tuple[str | None, str]:
        async with remote_index(tmp_path / "queue.db", server) as index:
            assert (await index.adopt(first, "a.txt")).file_id is None
            since = time.time()
            server.fill(KB, 1)
            ours = server.records(KB)[-1]
            server.fill(KB, 250)
            job = Job(
                2, KB, b"/data/b.txt", "b.txt", ours["size"], 0, 2, Step.UPLOADED,
                ours["key"], since, ours["filename"], time.time(),
            )  # fmt: skip
            return (await index.adopt(job, ours["filename"])).file_id, ours["id"]

    found, entry = asyncio.run(scenario())
    assert found == entry
