"""Replace, never accumulate (issue 13, point 1): a changed file's new version is uploaded
and registered, then the entry it replaces is deleted and the deletion recorded; a crash
between the two, or a delete refused while the entry is processed, is finished by the next
run; `run --keep-old-versions` keeps both; another database's entries are never touched."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FAST, KB, enqueue, invoke, last_counts, rows, service, spawn
from uploader.localserver import DIALECTS, MaiAgentServer

pytestmark = pytest.mark.parametrize("dialect", DIALECTS, indirect=True)

OLD, NEW = b"the policy, version one\n", b"the policy, version two, longer\n"


def _folder(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "d").mkdir(parents=True)
    (data / "d" / "policy.txt").write_bytes(OLD)
    (data / "a.txt").write_bytes(b"a")
    (data / "b.txt").write_bytes(b"bb")
    return data


def _run(db: Path, server: MaiAgentServer, *extra: str) -> str:
    result = invoke(db, "run", *service(server), *FAST, *extra)
    assert result.exit_code == 0, result.output
    return result.output


def _edited(tmp_path: Path, server: MaiAgentServer) -> tuple[Path, dict[str, Any]]:
    """Uploaded once, then d/policy.txt rewritten and enqueued again: the job's old row."""
    data = _folder(tmp_path)
    db = tmp_path / "queue.db"
    enqueue(db, data)
    _run(db, server)
    [old] = [j for j in rows(db) if j["relpath"] == "d/policy.txt"]
    (data / "d" / "policy.txt").write_bytes(NEW)
    assert enqueue(db, data)["changed"] == 1
    return db, old


def _policy_entries(server: MaiAgentServer) -> list[bytes | None]:
    return [
        server.entry_content(e["id"]) for e in server.entries(KB) if e["filename"] == "policy.txt"
    ]


def _deletions(db: Path, tmp_path: Path) -> list[dict[str, Any]]:
    target = tmp_path / "report.json"
    assert invoke(db, "export-report", "-o", str(target)).exit_code == 0
    return json.loads(target.read_text())["deletions"]


def test_an_edited_file_leaves_exactly_one_entry_the_new_one(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, old = _edited(tmp_path, maiagent)
    theirs = maiagent.add_entry(KB, "policy.txt", len(OLD))["id"]  # another database's

    output = _run(db, maiagent)

    assert sorted(_policy_entries(maiagent), key=str) == [None, NEW]  # theirs has no bytes
    assert theirs in {e["id"] for e in maiagent.entries(KB)}
    assert len(maiagent.entries(KB)) == 4
    assert "deleted 1 superseded entries" in output
    [job] = [j for j in rows(db) if j["relpath"] == "d/policy.txt"]
    [deletion] = _deletions(db, tmp_path)
    assert (deletion["knowledge_file_id"], deletion["reason"], deletion["command"]) == (
        old["file_id"],
        "superseded",
        "run",
    )
    assert deletion["detail"] == f"replaced by {job['file_id']}"
    assert deletion["file_path"] == str(tmp_path / "data" / "d" / "policy.txt")
    assert rows(db, "SELECT * FROM superseded") == []
    verified = invoke(db, "verify", *service(maiagent))
    assert verified.exit_code == 0, verified.output
    assert last_counts(db)["superseded"] == 0


@pytest.mark.posix_only("kills or suspends a child process with POSIX signals")
def test_a_crash_between_register_and_delete_is_finished_by_the_next_run(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory()
    db, old = _edited(tmp_path, server)
    server.faults.delete_delay = 30.0  # the delete hangs: the run is killed while it waits

    proc = spawn(db, "run", *service(server), *FAST)
    deadline = time.monotonic() + 60
    while server.stats()["delete"] == 0:
        assert proc.poll() is None and time.monotonic() < deadline, "no delete was sent"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    server.faults.delete_delay = 0.0
    assert sorted(_policy_entries(server), key=len) == [OLD, NEW]  # registered, not deleted

    _run(db, server)

    assert _policy_entries(server) == [NEW]
    assert len(server.entries(KB)) == 3
    assert [d["knowledge_file_id"] for d in _deletions(db, tmp_path)] == [old["file_id"]]


def test_a_delete_refused_while_processing_is_retried_until_it_goes(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(delete_conflict_first=5)  # a run tries four times
    db, old = _edited(tmp_path, server)

    first = _run(db, server)

    assert sorted(_policy_entries(server), key=len) == [OLD, NEW]
    assert "1 superseded entries not deleted yet" in first
    [left] = rows(db, "SELECT * FROM superseded")
    assert (left["entry_id"], left["attempts"]) == (old["file_id"], 1)
    assert "409" in left["last_error"]
    status = json.loads(invoke(db, "status", "--json").stdout)
    assert status["content"][KB] == {
        "algorithm": "xxh3_128",
        "hashed": 3,
        "superseded": 1,
        "old_versions_kept": 0,
    }
    assert "1 entries of changed or removed files' old versions to delete" in (
        invoke(db, "status").output
    )
    verified = invoke(db, "verify", *service(server))
    assert verified.exit_code == 1, verified.output
    assert last_counts(db)["superseded"] == 1
    assert f"entry {old['file_id']}" in verified.output and "superseded" in verified.output

    _run(db, server)

    assert _policy_entries(server) == [NEW]
    assert rows(db, "SELECT * FROM superseded") == []
    assert invoke(db, "verify", *service(server)).exit_code == 0


def test_keep_old_versions_keeps_both_and_verify_knows_the_old_one(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, old = _edited(tmp_path, maiagent)

    output = _run(db, maiagent, "--keep-old-versions")
    later = _run(db, maiagent)

    assert "kept 1 old versions" in output
    assert "superseded" not in later
    assert sorted(_policy_entries(maiagent), key=len) == [OLD, NEW]
    verified = invoke(db, "verify", *service(maiagent))
    assert verified.exit_code == 0, verified.output
    counts = last_counts(db)
    assert (counts["superseded"], counts["old_versions_kept"], counts["extra"]) == (0, 1, 0)
    assert _deletions(db, tmp_path) == []
