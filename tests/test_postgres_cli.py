"""The same commands on PostgreSQL, with several "hosts" (processes with different --host-id)
draining one queue on the session's real server: exactly once under lost answers, a host
SIGKILLed mid-run, rows of a host's own folders left to it, clocks ten minutes off, and
status / verify / dedupe / retry-failed / export-report."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.helpers import (
    KB,
    invoke,
    make_files,
    one_line_error,
    run_args,
    service,
    spawn,
)
from tests.pg_server import PASSWORD
from uploader.localserver import DIALECTS, MaiAgentServer
from uploader.model import JobState

LEASE = "3"
BAD_REMOTE = "SELECT count(*) FROM jobs WHERE remote_status = 'failed'"


def pg_rows(url: str, sql: str = "SELECT * FROM jobs ORDER BY id") -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(url)
        try:
            return [dict(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def enqueue(url: str, folder: Path, host: str, *extra: str) -> str:
    result = invoke(url, "--host-id", host, "enqueue", str(folder), "--kb", KB, *extra)  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    return result.output


def host_run(
    url: str, server: MaiAgentServer, host: str, *extra: str, skew: float = 0.0, cwd: Path
) -> subprocess.Popen[str]:
    """`uploader run` as host `host` in a process of its own, in `cwd` (its logs/ go there);
    with `skew`, that process's clock (time.time) runs that many seconds off."""
    boot = f"import time; _t = time.time; time.time = lambda: _t() + {skew!r}; " if skew else ""
    args = run_args(server, "--lease", LEASE, *extra)
    return spawn(url, "--host-id", host, *args, boot=boot, text=True, cwd=cwd)


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def assert_exactly_once(server: MaiAgentServer, url: str, relpaths: Sequence[str]) -> None:
    entries = server.entries(KB)
    assert sorted(e["filename"] for e in entries) == sorted(relpaths)
    by_name = {e["filename"]: e for e in entries}
    jobs = pg_rows(url)
    assert Counter(j["state"] for j in jobs) == {"done": len(relpaths)}
    wrong = [j["relpath"] for j in jobs if j["file_id"] != by_name[j["relpath"]]["id"]]
    assert wrong == []


def wait_for(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def held_by(url: str, host: str) -> set[int]:
    """Ids of the rows `host` holds now."""
    sql = f"SELECT id FROM jobs WHERE state = 'running' AND lease_owner LIKE '{host}:%'"
    return {r["id"] for r in pg_rows(url, sql)}


def lost_jobs(url: str) -> list[int]:
    """The job of every attempt taken back from a dead or expired owner."""
    return sorted(
        r["job_id"] for r in pg_rows(url, "SELECT job_id FROM attempts WHERE outcome = 'lost'")
    )


def kill_while_holding(url: str, proc: subprocess.Popen[str], host: str) -> set[int]:
    """SIGKILL `proc` once it holds rows; the rows it left running."""
    wait_for(lambda: bool(held_by(url, host)))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return held_by(url, host)


@pytest.mark.slow
def test_three_hosts_on_shared_storage_upload_every_file_once(
    tmp_path: Path, pg_url: str, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(latency=0.01, lost_register_rate=0.05, seed=15)
    relpaths = make_files(tmp_path / "nas", 1200)
    enqueue(pg_url, tmp_path / "nas", "host-a", "--shared")

    procs = [host_run(pg_url, server, f"host-{h}", cwd=tmp_path) for h in "abc"]
    results = [finish(p) for p in procs]

    assert [code for code, _ in results] == [0, 0, 0], results
    assert_exactly_once(server, pg_url, relpaths)
    runs = pg_rows(pg_url, "SELECT owner, counts FROM runs ORDER BY id")
    uploaded = {r["owner"].split(":")[0]: json.loads(r["counts"])["uploaded"] for r in runs}
    assert sum(uploaded.values()) == 1200 and set(uploaded) == {"host-a", "host-b", "host-c"}
    adopted = sum(json.loads(r["counts"])["adopted"] for r in runs)
    assert adopted >= 20  # the knob did lose answers (about 60), and their entries were adopted
    assert PASSWORD not in "".join(out for _, out in results)


@pytest.mark.posix_only("kills or suspends a child process with POSIX signals")
@pytest.mark.slow
def test_a_host_killed_mid_run_leaves_its_rows_to_the_others_after_its_lease(
    tmp_path: Path, pg_url: str, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(latency=0.02, lost_register_rate=0.05, seed=16)
    # enough files that the others are still busy when the dead host's lease (3 s) expires:
    # at 600 they could finish first and rightly leave its rows held (a race, not a bug)
    relpaths = make_files(tmp_path / "nas", 1500)
    enqueue(pg_url, tmp_path / "nas", "host-a", "--shared")

    doomed = host_run(pg_url, server, "host-k", cwd=tmp_path)
    others = [host_run(pg_url, server, f"host-{h}", cwd=tmp_path) for h in "ab"]
    left = kill_while_holding(pg_url, doomed, "host-k")

    assert left, "killed while holding rows"
    assert [finish(p)[0] for p in others] == [0, 0]
    assert_exactly_once(server, pg_url, relpaths)
    # its rows, and only its, were taken back (the pid shortcut is for one host id only)
    assert lost_jobs(pg_url) == sorted(left)


def test_a_hosts_own_folders_are_never_claimed_by_another_host(
    tmp_path: Path, pg_url: str, maiagent: MaiAgentServer
) -> None:
    relpaths = make_files(tmp_path / "local", 20)
    enqueue(pg_url, tmp_path / "local", "host-a")

    other = host_run(pg_url, maiagent, "host-b", cwd=tmp_path)
    code, output = finish(other)

    # nothing of its own, and host-a's rows taken by no run: said, and not exit 0 (issue 23)
    assert code == 2, output
    assert "20 pending files were queued by host host-a (20)" in output
    assert maiagent.entries(KB) == []
    assert Counter(j["state"] for j in pg_rows(pg_url)) == {"pending": 20}
    status = invoke(pg_url, "--host-id", "host-b", "status")  # type: ignore[arg-type]
    assert "host-a" in status.output and "pending 20" in status.output

    own = host_run(pg_url, maiagent, "host-a", cwd=tmp_path)
    assert finish(own)[0] == 0
    assert_exactly_once(maiagent, pg_url, relpaths)


@pytest.mark.posix_only("kills or suspends a child process with POSIX signals")
@pytest.mark.slow
def test_hosts_with_clocks_ten_minutes_off_neither_steal_nor_keep_rows(
    tmp_path: Path, pg_url: str, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """Ahead: it would take live leases as expired; behind: its leases would be born
    expired. A host ten minutes ahead that dies would keep its rows ten minutes if its clock
    set the lease: the others finish them after the lease instead."""
    server = maiagent_factory(latency=0.02, seed=17)
    relpaths = make_files(tmp_path / "nas", 1500)  # busy past the dead host's lease, as above
    enqueue(pg_url, tmp_path / "nas", "host-a", "--shared")

    doomed = host_run(pg_url, server, "host-ahead-dies", skew=600, cwd=tmp_path)
    left = kill_while_holding(pg_url, doomed, "host-ahead-dies")
    ahead = host_run(pg_url, server, "host-ahead", skew=600, cwd=tmp_path)
    behind = host_run(pg_url, server, "host-behind", skew=-600, cwd=tmp_path)
    results = [finish(ahead, 120), finish(behind, 120)]

    assert [code for code, _ in results] == [0, 0], results
    assert_exactly_once(server, pg_url, relpaths)
    # the dead host's rows were taken back after its lease, not ten minutes later (the runs
    # ended), and no live host's row was taken as expired
    assert left and lost_jobs(pg_url) == sorted(left)


@pytest.mark.parametrize("dialect", DIALECTS, indirect=True)
def test_hosts_ten_minutes_off_with_lost_answers_upload_each_file_once_by_content(
    tmp_path: Path, pg_url: str, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """Issue 23's clock test on a shared queue: hosts 10 minutes ahead and behind (of the
    service and of the database) beside one whose clock is right, 5% of register answers lost,
    pages of 10. A doubt is settled by the listing read far enough by the service's offset
    (page 1 alone would hide the entry), its settle time by the database's clock translated to
    each host's: no second register of a landed one, no failed [duplicate_key]."""
    server = maiagent_factory(lost_register_rate=0.05, seed=23, page_size_max=10)
    relpaths = make_files(tmp_path / "nas", 240)
    enqueue(pg_url, tmp_path / "nas", "host-a", "--shared")

    hosts = {"host-ahead": 600.0, "host-behind": -600.0, "host-right": 0.0}
    procs = [host_run(pg_url, server, h, skew=skew, cwd=tmp_path) for h, skew in hosts.items()]
    results = [finish(p) for p in procs]

    assert [code for code, _ in results] == [0, 0, 0], results
    assert_exactly_once(server, pg_url, relpaths)
    for entry in server.entries(KB):
        assert (
            server.entry_content(entry["id"]) == (tmp_path / "nas" / entry["filename"]).read_bytes()
        )
    assert server.stats()["register_lost"] >= 5  # the knob did lose answers
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert logs.count("off the service's") >= 2  # the two hosts that are off said so


def test_status_verify_dedupe_retry_and_report_work_on_postgresql(
    tmp_path: Path,
    pg_url: str,
    maiagent_factory: Callable[..., MaiAgentServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a server's logs/ and reports/ go to the current folder
    server = maiagent_factory(parse_failure_rate=0.2, seed=18)
    relpaths = make_files(tmp_path / "data", 40)
    enqueue(pg_url, tmp_path / "data", "host-a")
    ran = invoke(pg_url, "--host-id", "host-a", *run_args(server))  # type: ignore[arg-type]
    assert ran.exit_code == 0, ran.output
    assert PASSWORD not in ran.output and "report: " in ran.output  # the report it wrote

    status = invoke(pg_url, "--host-id", "host-a", "status", "--json")  # type: ignore[arg-type]
    data = json.loads(status.stdout)
    assert data["knowledge_bases"][KB]["done"]["files"] == 40
    assert data["hosts"] == {"host-a": {**{state.value: 0 for state in JobState}, "done": 40}}

    verify = invoke(pg_url, "verify", "--wait", *service(server))  # type: ignore[arg-type]
    [(failed,)] = [tuple(r.values()) for r in pg_rows(pg_url, BAD_REMOTE)]
    assert failed > 0 and verify.exit_code == 1, verify.output
    [first] = [j for j in pg_rows(pg_url) if j["relpath"] == relpaths[0]]
    copy = server.add_entry(KB, relpaths[0], first["size"], key=first["s3_key"])["id"]
    deduped = invoke(pg_url, "dedupe", "--yes", *service(server))  # type: ignore[arg-type]
    assert deduped.exit_code == 0, deduped.output
    assert "deleted 1 entries" in deduped.output
    assert copy not in {e["id"] for e in server.entries(KB)}
    again = server.add_entry(KB, relpaths[0], first["size"], key=first["s3_key"])["id"]
    assert invoke(pg_url, "verify", *service(server)).exit_code == 1  # type: ignore[arg-type]
    assert again not in {e["id"] for e in server.entries(KB)}  # verify's safety net

    server.faults.parse_failure_rate = 0.0
    retried = invoke(pg_url, "retry-failed", "--remote", *service(server))  # type: ignore[arg-type]
    assert retried.exit_code == 0, retried.output
    # repaired in place by batch-reparse (issue 26): no upload, the entries keep their ids
    assert f"{failed} entries parsed again in place" in retried.output
    assert f"{failed} parsed now, 0 failed again" in retried.output
    again = invoke(pg_url, "--host-id", "host-a", *run_args(server))  # type: ignore[arg-type]
    assert again.exit_code == 0, again.output
    final = invoke(pg_url, "verify", "--wait", *service(server))  # type: ignore[arg-type]
    assert final.exit_code == 0, final.output

    report = tmp_path / "report.json"
    exported = invoke(pg_url, "export-report", "-o", str(report))  # type: ignore[arg-type]
    assert exported.exit_code == 0, exported.output
    body = report.read_text()
    assert PASSWORD not in body
    parsed = json.loads(body)
    assert parsed["summary"]["successful_uploads"] == 40
    assert len(parsed["successful_files"]) == 40
    assert parsed["database"].startswith("postgresql://uploader:***@")
    logs = list((tmp_path / "logs").glob("upload_log_*.log"))
    assert len(logs) >= 1 and all(PASSWORD not in p.read_text() for p in logs)
    written_by_runs = set((tmp_path / "reports").iterdir())
    assert all(PASSWORD not in p.read_text() for p in written_by_runs)
    default = invoke(pg_url, "export-report")  # type: ignore[arg-type]
    # beside the run's own report (the same name when written in the same second)
    assert default.exit_code == 0 and len(list((tmp_path / "reports").iterdir())) in (1, 2)


def test_a_database_that_cannot_be_reached_or_holds_no_queue_is_one_line_without_password(
    pg_url: str,
) -> None:
    unreachable = f"postgresql://uploader:{PASSWORD}@127.0.0.1:1/queue"
    for url, expected in ((unreachable, "cannot connect"), (pg_url, "no uploader queue")):
        result = invoke(url, "status")  # type: ignore[arg-type]
        line = one_line_error(result)
        assert expected in line and PASSWORD not in result.output and "***" in line
