"""`uploader check`: a set-up proven with probe files, the shapes the service speaks reported
right for each dialect, no probe ever left behind (also when interrupted), what was learned
stored for `run --register-batch auto`, and nothing written to the jobs table."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    KB,
    enqueue,
    execute,
    invoke,
    make_flat_files,
    rows,
    run_args,
    service,
    spawn,
)
from uploader import checkup
from uploader.localserver import DIALECTS, MaiAgentServer

pytestmark = pytest.mark.parametrize("dialect", DIALECTS, indirect=True)

# What each dialect of the local server speaks, as `check` must report it.
EXPECTED = {
    "docs": {
        "register_answer": "page",
        "file": "url",
        "status": "object",
        "created_at": "digits",
        "size_field": "size",
        "key_has_filename": False,
        "listing_file": "url",
        "listing_status": "object",
        "listing_created_at": "digits",
    },
    "examples": {
        "register_answer": "list",
        "file": "key",
        "status": "string",
        "created_at": "int",
        "size_field": "size",
        "key_has_filename": True,
        "listing_file": "key",
        "listing_status": "string",
        "listing_created_at": "int",
    },
}
TEXT = {
    "docs": "answer paginated, file a URL, status an object (done), createdAt a digits string",
    "examples": "answer a list, file the key, status a string (done), createdAt an int",
}


def probes(server: MaiAgentServer) -> list[dict[str, Any]]:
    return [e for e in server.records(KB) if e["filename"].startswith(checkup.PROBE_PREFIX)]


def check(db: Path, server: MaiAgentServer, *extra: str) -> Any:
    return invoke(db, "check", "--kb", KB, *service(server), *extra)


def check_json(db: Path, server: MaiAgentServer, *extra: str) -> tuple[int, dict[str, Any]]:
    result = check(db, server, "--json", *extra)
    return result.exit_code, json.loads(result.stdout)


def stored(db: Path) -> list[dict[str, Any]]:
    return rows(db, "SELECT * FROM service_facts")


def test_check_reports_what_each_dialect_speaks(
    tmp_path: Path, maiagent: MaiAgentServer, dialect: str
) -> None:
    db = tmp_path / "q.db"
    result = check(db, maiagent)
    assert result.exit_code == 0, result.output
    out = result.stdout
    steps = [line.split()[0] for line in out.splitlines()[1:-1]]
    assert steps == [
        "key",
        "knowledge",
        "presign",
        "S3",
        "register",
        "register",
        "listing",
        "delete",
    ]
    assert TEXT[dialect] in out
    assert "accepted: the answer named both files" in out
    assert "order: newest first" in out
    assert "asked 2, served 2 (honoured)" in out
    assert "3 probe entries deleted, confirmed gone" in out
    assert out.splitlines()[-1].startswith("OK: the upload path works")
    assert probes(maiagent) == []
    assert maiagent.stats()["register"] == 2  # one probe, then two in one call

    code, report = check_json(tmp_path / "q2.db", maiagent)
    assert code == 0 and report["ok"]
    facts = report["facts"]
    assert {k: facts[k] for k in EXPECTED[dialect]} == EXPECTED[dialect]
    assert facts["newest_first"] is True
    assert facts["batch_register"] is True
    assert facts["page_size_honoured"] is True
    assert all(step["ok"] and step["seconds"] >= 0 for step in report["steps"])
    assert probes(maiagent) == []


def test_what_check_learned_is_stored_and_nothing_touches_the_jobs(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = tmp_path / "q.db"
    make_flat_files(tmp_path / "data", 3)
    enqueue(db, tmp_path / "data")
    before = (rows(db), rows(db, "SELECT * FROM attempts"), rows(db, "SELECT * FROM runs"))
    assert check(db, maiagent).exit_code == 0
    assert (rows(db), rows(db, "SELECT * FROM attempts"), rows(db, "SELECT * FROM runs")) == before
    [fact] = stored(db)
    assert (fact["base_url"], fact["kb_id"], fact["source"]) == (maiagent.base_url, KB, "check")
    assert fact["batch_register"] == 1
    assert json.loads(fact["facts"])["newest_first"] is True


def test_a_service_that_registers_only_the_first_file_is_not_batched(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(register_first_only=True)
    db = tmp_path / "q.db"
    result = check(db, server)
    assert result.exit_code == 0, result.output  # the upload path works, batching does not
    assert "not proven: the answer named 1 of 2 files" in result.stdout
    assert probes(server) == []
    assert stored(db)[0]["batch_register"] == 0


def test_order_and_page_size_are_measured_not_assumed(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    # Oldest first, and a server that reads another page-size parameter: its default is served.
    server = maiagent_factory(list_order="oldest", page_size_params="pageSize")
    for i in range(150):
        server.add_entry(KB, f"old{i}.txt", 10)
        time.sleep(0.002)  # distinct createdAt (ms): the order is evidence only then
    code, report = check_json(tmp_path / "q.db", server)
    assert code == 0, report
    facts = report["facts"]
    assert facts["newest_first"] is False
    assert facts["page_size_honoured"] is False
    assert facts["page_size_asked"] == 100
    assert facts["page_size_served"] == {"docs": 20, "examples": 10}[server.dialect]
    listing = next(s for s in report["steps"] if s["step"] == "listing")
    assert "order: oldest first" in listing["saw"]
    assert "probe on page 1;" not in listing["saw"]  # found further down, by following next
    assert probes(server) == []
    assert len(server.records(KB)) == 150


def test_other_shapes_are_named_as_they_come(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(
        created_at_form="iso", status_form="string", file_field="url", size_field="fileSize"
    )
    code, report = check_json(tmp_path / "q.db", server)
    assert code == 0, report
    facts = report["facts"]
    assert (facts["created_at"], facts["status"], facts["file"], facts["size_field"]) == (
        "iso",
        "string",
        "url",
        "fileSize",
    )


def test_a_lost_register_answer_fails_the_check_and_its_probe_is_found_and_deleted(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(lost_register_rate=1.0)
    result = check(tmp_path / "q.db", server)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: register: connection failed (Server disconnected)"
    ]
    assert "1 probe entry deleted, confirmed gone" in result.stdout
    assert server.stats()["register"] == 1
    assert probes(server) == []


def test_probes_still_being_parsed_are_waited_for(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(delete_conflict_while_processing=True, parse_delay=1.0)
    result = check(tmp_path / "q.db", server)
    assert result.exit_code == 0, result.output
    assert probes(server) == []


def test_a_probe_that_cannot_be_deleted_is_named_and_fails_the_check(
    tmp_path: Path,
    maiagent_factory: Callable[..., MaiAgentServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checkup, "DELETE_WAIT", 0.5)
    server = maiagent_factory(delete_conflict_first=1000)
    result = check(tmp_path / "q.db", server)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: probe entries left behind in {KB}: uploader-check-probe-")
    assert "HTTP 409" in line
    assert len(probes(server)) == 3


@pytest.mark.parametrize(
    ("env", "kb", "error"),
    [
        ({"MAIAGENT_API_KEY": "wrong"}, KB, "Error: API key rejected (HTTP 401): Invalid API key"),
        ({}, "kb-nope", "Error: knowledge base kb-nope not found (HTTP 404)"),
    ],
)
def test_a_refused_key_or_knowledge_base_exits_3(
    tmp_path: Path, maiagent: MaiAgentServer, env: dict[str, str], kb: str, error: str
) -> None:
    db = tmp_path / "q.db"
    result = invoke(db, "check", "--kb", kb, *service(maiagent), env=env)
    assert result.exit_code == 3
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(error)
    assert maiagent.stats()["presign"] == 0
    assert not db.exists()  # nothing learned, nothing stored


def test_dry_run_makes_only_read_calls(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    for i in range(5):
        maiagent.add_entry(KB, f"f{i}.txt", 3)
        time.sleep(0.002)  # distinct createdAt (ms): the order is evidence only then
    db = tmp_path / "q.db"
    code, report = check_json(db, maiagent, "--dry-run")
    assert code == 0, report
    assert [s["step"] for s in report["steps"]] == ["key", "knowledge base", "listing"]
    stats = maiagent.stats()
    assert stats["presign"] == stats["s3"] == stats["register"] == stats["delete"] == 0
    assert report["facts"]["newest_first"] is True
    assert report["facts"]["page_size_honoured"] is True
    assert not db.exists()


def test_register_batch_auto_batches_only_where_proven(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory()
    db = tmp_path / "q.db"
    make_flat_files(tmp_path / "data", 40)
    enqueue(db, tmp_path / "data")
    # Refused where a run saw it fail: one file per call.
    execute(
        db,
        "INSERT INTO service_facts (base_url, kb_id, learned_at, source, batch_register, facts)"
        " VALUES (?, ?, 0, 'run', 0, '{}')",
        (server.base_url, KB),
    )
    auto = ("--workers", "20", "--register-batch", "auto")
    assert invoke(db, *run_args(server, *auto)).exit_code == 0
    assert server.stats()["register"] == 40
    # Proven by check: the next files go in batches.
    assert check(db, server).exit_code == 0
    make_flat_files(tmp_path / "more", 40)
    enqueue(db, tmp_path / "more")
    server.reset_stats()
    ran = invoke(db, *run_args(server, *auto))
    assert ran.exit_code == 0, ran.output
    assert server.stats()["register"] < 40
    assert len(server.records(KB)) == 80


def test_a_run_with_batches_records_whether_they_worked(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    good, bad = maiagent_factory(), maiagent_factory(register_first_only=True)
    for server in (good, bad):
        db = tmp_path / f"{id(server)}.db"
        make_flat_files(tmp_path / f"d{id(server)}", 12)
        enqueue(db, tmp_path / f"d{id(server)}")
        ran = invoke(db, *run_args(server, "--workers", "12", "--register-batch", "4"))
        assert ran.exit_code == 0, ran.output
        [fact] = stored(db)
        assert (fact["source"], fact["batch_register"]) == ("run", int(server is good))
        assert len(server.records(KB)) == 12


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.posix_only("sends a POSIX signal to a child process")
@pytest.mark.slow
@pytest.mark.parametrize("moment", ["register in flight", "probes registered"])
def test_ctrl_c_still_deletes_every_probe(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer], moment: str
) -> None:
    if moment == "register in flight":
        # The register lands a second after it was sent, whatever the client does meanwhile.
        server = maiagent_factory(register_effect_delay=1.0)
        ready = lambda: server.stats()["register"] >= 1  # noqa: E731
    else:
        server = maiagent_factory(latency=0.2)
        ready = lambda: len(probes(server)) >= 1  # noqa: E731
    proc = spawn(tmp_path / "q.db", "check", "--kb", KB, *service(server), text=True)
    try:
        _wait_for(ready, moment)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "interrupted: deleting the probes before quitting" in err
    assert "Traceback" not in err
    assert "delete probes   ok" in out
    if moment == "register in flight":  # its entry appeared after the Ctrl+C, found by name
        assert "1 probe entry deleted, confirmed gone" in out
    time.sleep(1.2)  # a register still in flight on the server would have landed by now
    assert probes(server) == []


def test_check_needs_a_kb(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    result = invoke(tmp_path / "q.db", "check", *service(maiagent))
    assert result.exit_code == 2
    assert "--kb" in result.output
