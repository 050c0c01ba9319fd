"""enqueue DIR --delete-removed (issue 13, point 2): the queued files of DIR that are gone are
marked `removed` (a dry run only lists them), the next run deletes their entries and records
it; without the flag nothing is ever deleted because a file vanished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import FAST, KB, enqueue, invoke, make_flat_files, rows, service
from tests.maiagent_server import DIALECTS, MaiAgentServer

BOTH = pytest.mark.parametrize("dialect", DIALECTS, indirect=True)


def _uploaded(tmp_path: Path, server: MaiAgentServer) -> tuple[Path, Path, dict[str, str]]:
    data = tmp_path / "data"
    make_flat_files(data, 6)
    db = tmp_path / "queue.db"
    enqueue(db, data)
    ran = invoke(db, "run", *service(server), *FAST)
    assert ran.exit_code == 0, ran.output
    return db, data, {j["relpath"]: j["file_id"] for j in rows(db)}


def _run(db: Path, server: MaiAgentServer) -> str:
    ran = invoke(db, "run", *service(server), *FAST)
    assert ran.exit_code == 0, ran.output
    return ran.output


@BOTH
def test_removed_files_are_listed_by_a_dry_run_then_marked_and_their_entries_deleted(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, data, entries = _uploaded(tmp_path, maiagent)
    for name in ("f0001.txt", "f0004.txt"):
        (data / name).unlink()

    plain = invoke(db, "enqueue", str(data), "--kb", KB)
    _run(db, maiagent)
    assert plain.exit_code == 0 and len(maiagent.entries(KB)) == 6  # copy semantics: kept

    dry = invoke(db, "enqueue", str(data), "--kb", KB, "--delete-removed", "--dry-run")

    assert dry.exit_code == 0, dry.output
    assert "2 queued files" in dry.output and "dry run, nothing changed" in dry.output
    assert "f0001.txt" in dry.output and "f0004.txt" in dry.output
    assert {j["state"] for j in rows(db)} == {"done"}

    marked = invoke(db, "enqueue", str(data), "--kb", KB, "--delete-removed")

    assert marked.exit_code == 0, marked.output
    assert "2 queued files" in marked.output and "marked removed" in marked.output
    states = {j["relpath"]: j["state"] for j in rows(db)}
    assert [rel for rel, state in sorted(states.items()) if state == "removed"] == [
        "f0001.txt",
        "f0004.txt",
    ]
    assert "removed" in invoke(db, "status").output

    output = _run(db, maiagent)

    assert "deleted 2 superseded entries" in output
    left = {e["id"] for e in maiagent.entries(KB)}
    assert left == {fid for rel, fid in entries.items() if rel not in ("f0001.txt", "f0004.txt")}
    target = tmp_path / "report.json"
    assert invoke(db, "export-report", "-o", str(target)).exit_code == 0
    recorded = json.loads(target.read_text())["deletions"]
    assert sorted((d["knowledge_file_id"], d["reason"], d["command"]) for d in recorded) == sorted(
        (entries[rel], "removed", "run") for rel in ("f0001.txt", "f0004.txt")
    )
    verified = invoke(db, "verify", *service(maiagent))
    assert verified.exit_code == 0, verified.output

    (data / "f0001.txt").write_bytes(b"back again\n")  # a removed file that comes back
    assert enqueue(db, data)["changed"] == 1
    _run(db, maiagent)
    assert len(maiagent.entries(KB)) == 5


def test_dry_run_needs_delete_removed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_flat_files(data, 1)
    result = invoke(tmp_path / "queue.db", "enqueue", str(data), "--kb", KB, "--dry-run")
    assert result.exit_code == 2 and "--dry-run goes with --delete-removed" in result.output
