"""Exactly once against an adversary (issue 10): same-named files with lost answers and kill -9,
registers that land after the timeout, a run suspended past its lease, two runs in separate
pid namespaces behind one hostname, `dedupe --yes` during a run, garbage from the service.

Each check is on what the knowledge base holds: one entry per S3 key, and behind every job's
entry the bytes of that job's own file."""

from __future__ import annotations

import json
import random
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import (
    API_KEY,
    KB,
    child_env,
    command,
    enqueue,
    execute,
    invoke,
    make_files,
    rows,
    run_args,
    service,
    spawn,
    upload,
)
from tests.test_exactly_once import _done
from uploader.localserver import DIALECTS, MaiAgentServer

BOTH = pytest.mark.parametrize("dialect", DIALECTS, indirect=True)


def assert_each_job_holds_its_own_file(server: MaiAgentServer, db: Path, count: int) -> None:
    """`count` entries, one per key, every job done with an entry of its own whose stored
    bytes are the job's file."""
    records = server.records(KB)
    assert len(records) == count, Counter(r["key"] for r in records).most_common(3)
    assert max(Counter(r["key"] for r in records).values()) == 1
    by_id = {r["id"]: r for r in records}
    jobs = rows(db)
    assert Counter(j["state"] for j in jobs) == {"done": count}
    assert len({j["file_id"] for j in jobs}) == count
    wrong = [
        j["relpath"]
        for j in jobs
        if server.content(by_id[j["file_id"]]["key"]) != Path(j["path"].decode()).read_bytes()
    ]
    assert wrong == []


def _same_named_files(root: Path, count: int) -> None:
    """`a/<n>/report.pdf`: one name, one size, different contents."""
    for i in range(count):
        folder = root / "a" / str(i)
        folder.mkdir(parents=True)
        (folder / "report.pdf").write_bytes(f"report number {i:06d}".encode())


@pytest.mark.posix_only("kills or suspends a child process with POSIX signals")
@pytest.mark.slow
@BOTH
def test_same_named_files_killed_amid_lost_answers_each_keep_their_own_content(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """A row killed before its key was committed never registered; adopting by name would
    give it another file's entry and its own content would never arrive."""
    server = maiagent_factory(latency=0.003, lost_register_rate=0.2, seed=26)
    data = tmp_path / "data"
    _same_named_files(data, 300)
    db = tmp_path / "queue.db"
    enqueue(db, data)
    basename = run_args(server)[: run_args(server).index("--name")]
    rng = random.Random(26)

    for _cycle in range(3):
        target = _done(db) + rng.randint(20, 60)
        proc = spawn(db, *basename)
        while proc.poll() is None and _done(db) < target:
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    final = spawn(db, *basename)
    _out, err = final.communicate(timeout=120)

    assert final.returncode == 0, err.decode()
    assert_each_job_holds_its_own_file(server, db, 300)
    runs = rows(db, "SELECT ended_at, counts, exit_code FROM runs ORDER BY id")
    assert all(r["ended_at"] is not None for r in runs), "a killed run was never ended"
    lost = [r for r in runs if r["exit_code"] is None]
    assert lost and all("lost" in json.loads(r["counts"]) for r in lost)


@BOTH
def test_a_register_that_takes_effect_after_the_timeout_is_made_once(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """The retry of a timed-out register must not look in the listing before the register
    had time to land (here: 3 s after the request, with --timeout 2)."""
    server = maiagent_factory(register_effect_delay=3.0)
    make_files(tmp_path / "data", 30)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")

    result = invoke(
        db, *run_args(server, "--timeout", "2", "--workers", "30", "--register-batch", "1")
    )

    assert result.exit_code == 0, result.output
    time.sleep(3.5)  # every register sent has taken effect
    assert_each_job_holds_its_own_file(server, db, 30)


def _suspend_outside_a_write(process: subprocess.Popen[bytes], db: Path) -> None:
    """SIGSTOP `process` at a moment it holds no write lock on `db`. A process suspended inside
    a write transaction blocks every other writer of the file until it resumes (SQLite's
    nature, which no run can change); that is not what a test of a lost lease is about."""
    for _ in range(200):
        process.send_signal(signal.SIGSTOP)
        probe = sqlite3.connect(db, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            process.send_signal(signal.SIGCONT)
            time.sleep(0.005)
        finally:
            probe.close()
    raise AssertionError("the run held the database's write lock at every try")


@pytest.mark.posix_only("kills or suspends a child process with POSIX signals")
@BOTH
def test_a_run_suspended_past_its_lease_sends_no_register_for_rows_it_lost(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """Run A waits in the 429 pause with registers ready, is stopped (SIGSTOP) past its lease,
    run B takes the rows and finishes them, A resumes: A must send nothing for them."""
    server = maiagent_factory(rps_limit=15)
    make_files(tmp_path / "data", 60)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    a = spawn(db, *run_args(server, "--lease", "2", "--workers", "10", "--register-batch", "1"))
    deadline = time.monotonic() + 30
    while _done(db) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    _suspend_outside_a_write(a, db)
    try:
        time.sleep(2.5)  # A's leases run out
        server.faults.rps_limit = 0
        b = invoke(db, *run_args(server))
        assert b.exit_code == 0, b.output
    finally:
        a.send_signal(signal.SIGCONT)
    a.communicate(timeout=60)
    time.sleep(0.5)  # anything A sent has landed

    assert_each_job_holds_its_own_file(server, db, 60)


@BOTH
def test_rows_taken_from_a_stalled_run_and_claimed_back_by_it_are_registered_once(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """What a run stalled past its lease meets: its rows go back to pending (another run's
    reclaim, done here by hand) while its attempts wait in the 429 pause, and its own feeder
    claims them again. The waiting attempt and the new one must not both register the file
    (under two keys, so no service refuses the second)."""
    server = maiagent_factory(rps_limit=10)
    make_files(tmp_path / "data", 40)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    run = spawn(db, *run_args(server, "--workers", "10", "--register-batch", "1"))
    deadline = time.monotonic() + 60
    while run.poll() is None and time.monotonic() < deadline:
        execute(
            db,
            "UPDATE jobs SET state = 'pending', lease_owner = NULL, lease_expires = NULL,"
            " attempts = MAX(attempts - 1, 0) WHERE state = 'running'",
        )
        time.sleep(0.3)
    _, err = run.communicate(timeout=60)
    server.faults.rps_limit = 0
    again = invoke(db, *run_args(server))  # what the hand-made reclaims left pending
    assert again.exit_code == 0, again.output
    time.sleep(0.5)

    assert_each_job_holds_its_own_file(server, db, 40)


def _in_own_pid_namespace(db: Path, *args: str) -> subprocess.Popen[bytes]:
    """The CLI as PID 1 of a new pid namespace (a container sharing the host name and the
    volume, not the pids)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare")
    launcher = (unshare, "--user", "--map-root-user", "--pid", "--fork")
    probe = subprocess.run([*launcher, "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a pid namespace here: {probe.stderr.decode().strip()}")
    return subprocess.Popen(
        command(db, *args, launcher=launcher),
        env=child_env({"UPLOADER_HOST_ID": "one-hostname"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.posix_only("uses fcntl, fork or namespaces")
@BOTH
def test_two_runs_in_separate_pid_namespaces_with_one_hostname_never_take_each_others_rows(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(latency=0.003)
    make_files(tmp_path / "data", 1000)
    db = tmp_path / "queue.db"
    invoke(db, "--host-id", "one-hostname", "enqueue", str(tmp_path / "data"), "--kb", KB)

    procs = [_in_own_pid_namespace(db, *run_args(server)) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]

    assert [p.returncode for p in procs] == [0, 0], [err.decode() for _o, err in outputs]
    assert_each_job_holds_its_own_file(server, db, 1000)
    lost = rows(db, "SELECT job_id FROM attempts WHERE outcome = 'lost'")
    assert lost == [], "a live run's rows were reclaimed as a dead one's"


def test_dedupe_yes_refuses_while_a_run_holds_leases_on_the_knowledge_base(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(latency=0.05)
    make_files(tmp_path / "data", 200)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    proc = spawn(db, *run_args(server, "--workers", "4"))
    try:
        deadline = time.monotonic() + 30
        while not rows(db, "SELECT id FROM jobs WHERE state = 'running'"):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        before = server.stats()["delete"] + server.stats()["batch_delete"]

        result = invoke(db, "dedupe", "--base-url", server.base_url, "--kb", KB, "--yes")

        assert result.exit_code != 0
        assert "run" in result.output and "Traceback" not in result.output
        assert server.stats()["delete"] + server.stats()["batch_delete"] == before
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == 0


@BOTH
@pytest.mark.parametrize(
    "garbage",
    [
        {"null_id_rate": 0.3},
        {"bad_presign_url_rate": 0.3},
        {"filename_list_rate": 0.2},
        {"huge_answer_bytes": 20 * 1024 * 1024, "huge_answer_on": "register"},
    ],
    ids=["null-ids", "bad-presign-url", "filename-lists", "huge-register-answer"],
)
def test_garbage_from_the_service_is_retried_without_a_traceback_or_a_bad_row(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer], garbage: dict
) -> None:
    server = maiagent_factory(seed=3, **garbage)
    make_files(tmp_path / "data", 40)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")

    result = invoke(db, *run_args(server, "--register-batch", "1"))

    assert "Traceback" not in result.output
    jobs = rows(db)
    assert [j["relpath"] for j in jobs if j["state"] == "running"] == []
    assert [j for j in jobs if j["state"] == "done" and not j["file_id"]] == []
    assert "None" not in {j["file_id"] for j in jobs}
    records = server.records(KB)
    assert max(Counter(r["key"] for r in records).values(), default=1) == 1
    done = {j["file_id"] for j in jobs if j["state"] == "done"}
    assert done <= {r["id"] for r in records}


def _register_again(server: MaiAgentServer, key: str, filename: str) -> None:
    """A second register of one key, as a late-landing request would make it."""
    server.faults.duplicate_keys = "allow"
    request = urllib.request.Request(
        f"{server.base_url}knowledge-bases/{KB}/files/",
        data=json.dumps({"files": [{"file": key, "filename": filename}]}).encode(),
        headers={"Authorization": f"Api-Key {API_KEY}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 201


@BOTH
def test_verify_deletes_a_second_entry_of_one_upload_and_records_it(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, _names = upload(tmp_path, maiagent, 5)
    job = rows(db)[0]
    _register_again(maiagent, job["s3_key"], job["filename"])
    assert len(maiagent.records(KB)) == 6

    result = invoke(db, "verify", *service(maiagent), "--kb", KB)

    assert result.exit_code == 0, result.output
    kept = {r["key"]: r["id"] for r in maiagent.records(KB)}
    assert len(kept) == 5 and len(maiagent.records(KB)) == 5
    assert kept[job["s3_key"]] == job["file_id"]
    (deleted,) = rows(db, "SELECT reason, command, job_id FROM deletions")
    assert deleted == {"reason": "copy", "command": "verify", "job_id": job["id"]}


@BOTH
def test_a_run_with_registers_in_doubt_deletes_a_second_entry_that_landed(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """The safety net at the end of a run: whatever race made a second entry of one upload
    while this run was in doubt somewhere, the run ends with one."""
    server = maiagent_factory(latency=0.02, lost_register_rate=0.3, seed=5)
    db, _names = upload(tmp_path, server, 3)
    first = rows(db)[0]
    make_files(tmp_path / "data" / "more", 60)
    enqueue(db, tmp_path / "data")
    proc = spawn(db, *run_args(server))
    deadline = time.monotonic() + 30
    while _done(db) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.faults.lost_register_rate = 0.0  # this one must land and be answered
    _register_again(server, first["s3_key"], first["filename"])
    server.faults.lost_register_rate = 0.3
    _out, err = proc.communicate(timeout=120)

    assert proc.returncode == 0, err.decode()
    assert max(Counter(r["key"] for r in server.records(KB)).values()) == 1
    assert len(server.records(KB)) == 63
    run = rows(db, "SELECT counts FROM runs ORDER BY id DESC LIMIT 1")[0]
    assert json.loads(run["counts"])["copies_deleted"] == 1


@pytest.mark.parametrize("dialect", ["docs"], indirect=True)
def test_a_duplicate_key_400_after_a_late_register_adopts_the_entry(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """A register that lands after its doubt was settled: the same key sent again is refused
    as a duplicate (the docs' 400), which tells us the entry is there: adopted, not failed."""
    server = maiagent_factory(register_effect_delay=4.0)
    make_files(tmp_path / "data", 5)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")

    result = invoke(
        db, *run_args(server, "--timeout", "1", "--workers", "5", "--register-batch", "1")
    )

    assert result.exit_code == 0, result.output
    time.sleep(4.5)  # every register sent has taken effect
    assert_each_job_holds_its_own_file(server, db, 5)
    refused = rows(db, "SELECT job_id FROM attempts WHERE error_kind = 'duplicate_key'")
    assert refused, "no register was refused as a duplicate: the scenario did not happen"


@BOTH
@pytest.mark.parametrize("requeue", ["enqueue", "retry-failed"])
def test_a_file_changed_after_a_lost_answer_ends_with_only_its_new_entry(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer], requeue: str
) -> None:
    """The register of the old content took effect but its answer was lost; the file then
    changed (seen at enqueue, or only at claim after `retry-failed`). The old version's
    entry must go once the new one is registered, not stay beside it."""
    server = maiagent_factory(lost_register_rate=1.0)
    data = tmp_path / "data"
    make_files(data, 3)
    db = tmp_path / "queue.db"
    enqueue(db, data)
    first = invoke(db, *run_args(server, "--max-retries", "0"))
    assert first.exit_code == 1, first.output
    assert len(server.records(KB)) == 3  # registered, every answer lost
    changed = Path(rows(db)[0]["path"].decode())
    changed.write_bytes(b"the new version, longer than the old one")
    server.faults.lost_register_rate = 0.0
    if requeue == "enqueue":
        enqueue(db, data)  # queues the changed file again
    assert invoke(db, "retry-failed").exit_code == 0  # the others (and the changed one)

    result = invoke(db, *run_args(server))

    assert result.exit_code == 0, result.output
    assert_each_job_holds_its_own_file(server, db, 3)
    (deleted,) = rows(db, "SELECT reason, job_id FROM deletions")
    assert deleted == {"reason": "superseded", "job_id": rows(db)[0]["id"]}


def test_a_file_changed_twice_after_lost_answers_ends_with_only_its_newest_entry(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """v1's register lands unanswered; the file changes to v2, whose register lands
    unanswered too; then to v3. v1's entry, found when v2 was uploaded, must not be forgotten
    when v2's attempt ends without being done."""
    server = maiagent_factory(lost_register_rate=1.0)
    data = tmp_path / "data"
    make_files(data, 3)
    db = tmp_path / "queue.db"
    enqueue(db, data)
    changed = Path(rows(db)[0]["path"].decode())
    assert invoke(db, *run_args(server, "--max-retries", "0")).exit_code == 1
    changed.write_bytes(b"version two, longer than the first")
    enqueue(db, data)
    assert invoke(db, *run_args(server, "--max-retries", "0")).exit_code == 1
    assert len(server.records(KB)) == 4  # v1 of each, v2 of one: every answer lost
    changed.write_bytes(b"version three, longer than the second one")
    server.faults.lost_register_rate = 0.0
    enqueue(db, data)
    assert invoke(db, "retry-failed").exit_code == 0

    result = invoke(db, *run_args(server))

    assert result.exit_code == 0, result.output
    assert_each_job_holds_its_own_file(server, db, 3)
    deleted = rows(db, "SELECT reason, job_id FROM deletions")
    assert deleted == [{"reason": "superseded", "job_id": rows(db)[0]["id"]}] * 2


def test_a_file_deleted_after_a_lost_answer_keeps_its_entry_on_record_for_delete_removed(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """Its register landed unanswered, then the file was deleted: the entry is the job's (not
    a 'missing' failure beside an entry nobody knows), so --delete-removed deletes it."""
    server = maiagent_factory(lost_register_rate=1.0)
    data = tmp_path / "data"
    make_files(data, 3)
    db = tmp_path / "queue.db"
    enqueue(db, data)
    assert invoke(db, *run_args(server, "--max-retries", "0")).exit_code == 1
    gone = rows(db)[0]
    Path(gone["path"].decode()).unlink()
    server.faults.lost_register_rate = 0.0
    assert invoke(db, "retry-failed").exit_code == 0

    result = invoke(db, *run_args(server))

    assert result.exit_code == 0, result.output
    assert {job["state"] for job in rows(db)} == {"done"}
    assert len(server.records(KB)) == 3
    assert enqueue(db, data, "--delete-removed")
    assert invoke(db, *run_args(server)).exit_code == 0
    assert sorted(r["filename"] for r in server.records(KB)) == sorted(
        j["filename"] for j in rows(db) if j["id"] != gone["id"]
    )
    assert rows(db, "SELECT reason, job_id FROM deletions") == [
        {"reason": "removed", "job_id": gone["id"]}
    ]


def test_a_file_rewritten_in_place_while_it_streams_is_never_registered_torn(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """The S3 POST is held up (latency) with the file half sent; the file is rewritten in
    place meanwhile. What is registered must be one version of it, here the new one."""
    size = 64 * 1024 * 1024  # more than the socket buffers take: the sender blocks mid-file
    server = maiagent_factory(latency=1.0, keep_bytes=size)
    data = tmp_path / "data"
    data.mkdir()
    path = data / "big.pdf"
    path.write_bytes(b"A" * size)
    db = tmp_path / "queue.db"
    enqueue(db, data)
    proc = spawn(db, *run_args(server))
    deadline = time.monotonic() + 30
    while server.stats()["presign"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(1.3)  # presign answered (1 s latency), the S3 POST held up half sent
    with path.open("r+b") as f:
        f.write(b"B" * size)
    _out, err = proc.communicate(timeout=60)

    assert proc.returncode == 0, err.decode()
    assert_each_job_holds_its_own_file(server, db, 1)
    attempts = rows(db, "SELECT error_kind FROM attempts ORDER BY attempt")
    assert attempts[0]["error_kind"] == "changed", attempts
