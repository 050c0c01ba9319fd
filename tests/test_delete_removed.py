"""enqueue DIR --delete-removed (issue 13, point 2): the queued files of DIR that are gone are
marked `removed` (a dry run only lists them), the next run deletes their entries and records
it; without the flag nothing is ever deleted because a file vanished."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    FAST,
    KB,
    enqueue,
    invoke,
    make_flat_files,
    make_tree,
    rows,
    run_cli,
    service,
    upload,
)
from uploader.localserver import DIALECTS, MaiAgentServer

BOTH = pytest.mark.parametrize("dialect", DIALECTS, indirect=True)


def _uploaded(tmp_path: Path, server: MaiAgentServer) -> tuple[Path, Path, dict[str, str]]:
    db, _names = upload(tmp_path, server, 6)
    return db, tmp_path / "data", {j["relpath"]: j["file_id"] for j in rows(db)}


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

    assert "deleted 2 entries of removed files" in output and "superseded" not in output
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


@contextlib.contextmanager
def _unreadable(folder: Path) -> Iterator[None]:
    """`folder` at mode 000 (an ACL change on a share, a restore under way) for the block."""
    folder.chmod(0)
    try:
        yield
    finally:
        folder.chmod(0o755)


def _two_folders(tmp_path: Path, server: MaiAgentServer) -> tuple[Path, Path, dict[str, str]]:
    """a/ and b/ with three files each, all uploaded; one file of a/ then really deleted."""
    data = make_tree(tmp_path / "docs", {f"{d}/{d}{i}.txt": 3 + i for d in "ab" for i in (1, 2, 3)})
    db = tmp_path / "queue.db"
    enqueue(db, data)
    _run(db, server)
    entries = {j["relpath"]: j["file_id"] for j in rows(db)}
    (data / "a" / "a1.txt").unlink()
    return db, data, entries


@pytest.mark.posix_only("needs file modes that bind (chmod)")
def test_files_under_a_folder_that_cannot_be_read_are_never_marked_removed(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, data, entries = _two_folders(tmp_path, maiagent)

    with _unreadable(data / "b"):
        marked = run_cli(db, "enqueue", str(data), "--kb", KB, "--delete-removed", privileged=False)

    assert marked.returncode == 0, marked.stderr
    assert f"warning: cannot read folder {data / 'b'}: Permission denied" in marked.stderr
    assert f"1 queued files of {data} are gone: marked removed" in marked.stdout
    assert "  a/a1.txt" in marked.stdout and "b/" not in marked.stdout
    assert "3 queued files under folders that could not be read were left as they are" in (
        marked.stdout
    )
    states = {j["relpath"]: j["state"] for j in rows(db)}
    assert [rel for rel, state in sorted(states.items()) if state == "removed"] == ["a/a1.txt"]

    output = _run(db, maiagent)

    assert "deleted 1 entries of removed files" in output and "superseded" not in output
    assert {e["id"] for e in maiagent.entries(KB)} == {
        fid for rel, fid in entries.items() if rel != "a/a1.txt"
    }
    assert {j["relpath"]: j["state"] for j in rows(db) if j["relpath"].startswith("b/")} == {
        "b/b1.txt": "done",
        "b/b2.txt": "done",
        "b/b3.txt": "done",
    }


@pytest.mark.posix_only("needs file modes that bind (chmod)")
def test_a_dry_run_warns_of_a_folder_that_cannot_be_read_and_lists_nothing_below_it(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, data, _entries = _two_folders(tmp_path, maiagent)

    with _unreadable(data / "b"):
        dry = run_cli(
            db, "enqueue", str(data), "--kb", KB, "--delete-removed", "--dry-run", privileged=False
        )

    assert dry.returncode == 0, dry.stderr
    assert f"warning: cannot read folder {data / 'b'}: Permission denied" in dry.stderr
    assert f"1 queued files of {data} are gone" in dry.stdout
    assert "dry run, nothing changed" in dry.stdout
    assert "  a/a1.txt" in dry.stdout and "b/" not in dry.stdout
    assert "3 queued files under folders that could not be read would be left as they are" in (
        dry.stdout
    )
    assert {j["state"] for j in rows(db)} == {"done"}


@pytest.mark.posix_only("needs file modes that bind (chmod)")
def test_json_counts_the_files_left_under_folders_that_cannot_be_read(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, data, _entries = _two_folders(tmp_path, maiagent)

    with _unreadable(data / "b"):
        marked = run_cli(
            db, "enqueue", str(data), "--kb", KB, "--delete-removed", "--json", privileged=False
        )

    assert marked.returncode == 0, marked.stderr
    shown = json.loads(marked.stdout)
    assert (shown["removed"], shown["left_unread"]) == (1, 3)
    assert shown["unreadable_folders"] == [f"{data / 'b'}: Permission denied"]


def test_a_folder_deleted_whole_has_its_files_marked_removed(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, data, _entries = _two_folders(tmp_path, maiagent)
    for name in ("b1.txt", "b2.txt", "b3.txt"):
        (data / "b" / name).unlink()
    (data / "b").rmdir()

    # 4 of 6 gone is above the default guard of half (test_deletion_guard): allowed here
    marked = invoke(db, "enqueue", str(data), "--kb", KB, "--delete-removed", "--max-delete", "4")

    assert marked.exit_code == 0, marked.output
    assert "4 queued files" in marked.output and "could not be read" not in marked.output
    assert "deleted 4 entries of removed files" in _run(db, maiagent)
    assert len(maiagent.entries(KB)) == 2


def test_a_queued_file_an_exclude_now_leaves_out_is_removed_only_once_gone(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, data, _entries = _two_folders(tmp_path, maiagent)
    (data / "b" / "b1.txt").unlink()

    marked = invoke(db, "enqueue", str(data), "--kb", KB, "--exclude", "b/", "--delete-removed")

    assert marked.exit_code == 0, marked.output
    states = {j["relpath"]: j["state"] for j in rows(db)}
    assert [rel for rel, state in sorted(states.items()) if state == "removed"] == [
        "a/a1.txt",
        "b/b1.txt",
    ]
    assert states["b/b2.txt"] == states["b/b3.txt"] == "done"


def test_a_folder_renamed_away_can_have_its_files_marked_removed(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    """`docs` renamed `docs-2024` and enqueued again: `enqueue docs --delete-removed` takes the
    folder that is gone (a dry run lists its files), and, as for a folder that reads empty
    (a share not mounted?), only with --allow-empty-source marks them removed."""
    db, data, _entries = _uploaded(tmp_path, maiagent)
    data.rename(tmp_path / "data-2024")

    dry = invoke(db, "enqueue", str(data), "--kb", KB, "--delete-removed", "--dry-run")

    assert dry.exit_code == 0, dry.output
    assert "6 queued files" in dry.output and "dry run, nothing changed" in dry.output
    assert "--allow-empty-source" in dry.output
    refused = invoke(db, "enqueue", str(data), "--kb", KB, "--delete-removed")
    assert refused.exit_code == 5, refused.output
    assert {j["state"] for j in rows(db)} == {"done"}

    args = ("--delete-removed", "--allow-empty-source", "--max-delete", "100%")
    marked = invoke(db, "enqueue", str(data), "--kb", KB, *args)

    assert marked.exit_code == 0, marked.output
    assert {j["state"] for j in rows(db)} == {"removed"}
    assert "deleted 6 entries of removed files" in _run(db, maiagent)
    assert maiagent.entries(KB) == []
    typo = invoke(db, "enqueue", str(tmp_path / "dcos"), "--kb", KB, "--delete-removed")
    assert typo.exit_code == 2 and "does not exist" in typo.output


def test_nothing_gone_is_not_a_line_of_every_sync(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    """A weekly `enqueue --delete-removed` (a saved sync job's) of a folder where nothing
    vanished said "0 queued files of DIR are gone: marked removed; the next `uploader run`
    deletes their entries" every time; as rclone, nothing to delete says nothing. The dry
    run, which was asked for that list, still says 0."""
    db, data, _entries = _uploaded(tmp_path, maiagent)
    args = ("enqueue", str(data), "--kb", KB, "--delete-removed")

    real = invoke(db, *args)
    dry = invoke(db, *args, "--dry-run")

    assert real.exit_code == 0, real.output
    assert "are gone" not in real.output
    assert "0 queued files" in dry.output
