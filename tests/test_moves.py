"""A folder renamed or moved (`docs` -> `docs-2024`) and enqueued again (issue 23): its uploaded
files are recognised by the content hashes their uploads recorded (same bytes, done, gone from
the old path) and their rows move to the new paths with their entries; nothing is uploaded
twice and verify finds every file once."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers import FAST, KB, enqueue, invoke, make_tree, rows, service
from uploader.localserver import MaiAgentServer

TREE = {"a/one.txt": 10, "a/two.txt": 20, "b/three.txt": 30, "four.txt": 40}


def _uploaded(tmp_path: Path, server: MaiAgentServer) -> tuple[Path, Path, dict[str, str]]:
    data = make_tree(tmp_path / "docs", TREE)
    for rel in TREE:
        (data / rel).write_bytes(rel.encode() * 3)  # distinct bytes per file
    db = tmp_path / "queue.db"
    enqueue(db, data)
    ran = invoke(db, "run", *service(server), *FAST)
    assert ran.exit_code == 0, ran.output
    return db, data, {j["relpath"]: j["file_id"] for j in rows(db)}


def test_a_renamed_folder_keeps_its_entries_and_uploads_nothing(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, data, entries = _uploaded(tmp_path, maiagent)
    moved = data.rename(tmp_path / "docs-2024")

    result = invoke(db, "enqueue", str(moved), "--kb", KB)

    assert result.exit_code == 0, result.output
    assert "4 moved" in result.output, result.output
    after = {j["relpath"]: j for j in rows(db)}
    assert {rel: j["file_id"] for rel, j in after.items()} == entries
    assert {j["state"] for j in after.values()} == {"done"}
    assert all(j["path"].startswith(bytes(moved).rstrip(b"/") + b"/") for j in after.values())
    ran = invoke(db, "run", *service(maiagent), *FAST)
    assert ran.exit_code == 0, ran.output
    assert sorted(e["id"] for e in maiagent.entries(KB)) == sorted(entries.values())
    verified = invoke(db, "verify", *service(maiagent))
    assert verified.exit_code == 0, verified.output
    assert "no longer exist" not in verified.output


def test_a_folder_moved_below_another_enqueued_folder_is_adopted(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    """Enqueued from the parent: `docs/a/one.txt` becomes `archive/docs/a/one.txt`."""
    db, data, entries = _uploaded(tmp_path, maiagent)
    (tmp_path / "archive").mkdir()
    data.rename(tmp_path / "archive" / "docs")

    counts = enqueue(db, tmp_path / "archive")

    assert counts["new"] == 0
    assert {j["file_id"] for j in rows(db)} == set(entries.values())
    assert invoke(db, "run", *service(maiagent), *FAST).exit_code == 0
    assert len(maiagent.entries(KB)) == len(entries)


def test_a_copy_a_changed_file_or_a_renamed_file_is_uploaded(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    """Only a move is adopted: a copy (the old path still holds the file), other bytes, or
    another file name (its entry would keep a wrong name: MaiAgent has no rename) is a new
    file."""
    db, data, entries = _uploaded(tmp_path, maiagent)
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    from_copy = enqueue(db, copy)
    other = tmp_path / "other"
    other.mkdir()
    (data / "four.txt").rename(other / "renamed.txt")
    (data / "a" / "one.txt").rename(other / "one.txt")
    (other / "one.txt").write_bytes(b"new bytes")

    from_other = enqueue(db, other)

    assert from_copy["new"] == 4 and from_other["new"] == 2
    assert invoke(db, "run", *service(maiagent), *FAST).exit_code == 0
    assert len(maiagent.entries(KB)) == len(entries) + 6
