"""enqueue/sync --checksum (rclone's flag): change detection is size plus modification time,
so an edit that keeps both (a tool that puts the old time back) is not seen; --checksum queues
every uploaded file still there for a comparison of its bytes with the uploaded ones, and the
run replaces only those that differ, once each, their old entries deleted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.helpers import FAST, KB, invoke, make_tree, one_line_error, rows
from uploader.localserver import MaiAgentServer


def sync(db: Path, server: MaiAgentServer, *args: str) -> Any:
    return invoke(db, "sync", *args, "--base-url", server.base_url, *FAST)


def _edit_keeping_size_and_time(path: Path, data: bytes) -> None:
    before = os.stat(path)
    assert len(data) == before.st_size
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_checksum_replaces_the_file_whose_edit_kept_size_and_time_and_no_other(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    share = tmp_path / "share"
    make_tree(share, {f"f{i}.txt": 0 for i in range(5)})
    for i in range(5):
        (share / f"f{i}.txt").write_bytes(f"file {i}, version 1\n".encode())
    db = tmp_path / "uploader.db"
    assert sync(db, maiagent, str(share), "--kb", KB).exit_code == 0
    first = {e["filename"]: e["id"] for e in maiagent.entries(KB)}
    _edit_keeping_size_and_time(share / "f0.txt", b"file 0, version 2\n")
    (share / "f4.txt").unlink()  # gone, and no --delete-removed: its row and entry stay
    maiagent.reset_stats()

    plain = sync(db, maiagent, str(share))
    checked = sync(db, maiagent, str(share), "--checksum")
    again = sync(db, maiagent, str(share), "--checksum")

    assert plain.exit_code == 0 and "nothing pending" in plain.stdout, plain.output
    assert checked.exit_code == 0, checked.output
    assert "the next run compares the bytes of 4 uploaded files" in checked.stdout
    assert "uploaded 1, failed 0, skipped 0, unchanged 3 (same content)" in checked.stdout
    now = {e["filename"]: e["id"] for e in maiagent.entries(KB)}
    assert sorted(now) == [f"f{i}.txt" for i in range(5)]
    assert now["f0.txt"] != first["f0.txt"]
    assert maiagent.entry_content(now["f0.txt"]) == b"file 0, version 2\n"
    assert all(now[f"f{i}.txt"] == first[f"f{i}.txt"] for i in range(1, 5))
    assert maiagent.stats()["presign"] == 1
    assert "deleted 1 superseded entries" in checked.stdout
    assert again.exit_code == 0, again.output
    assert maiagent.stats()["presign"] == 1  # the second comparison finds the same bytes
    assert {r["relpath"]: r["state"] for r in rows(db)} == {f"f{i}.txt": "done" for i in range(5)}


def test_a_dry_run_with_checksum_is_refused_rather_than_planning_without_it(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    share = make_tree(tmp_path / "share", {"a.txt": 3})
    db = tmp_path / "uploader.db"
    assert sync(db, maiagent, str(share), "--kb", KB).exit_code == 0

    dry = sync(db, maiagent, str(share), "--checksum", "--dry-run")

    assert "--checksum" in one_line_error(dry)


def test_a_labelled_file_whose_bytes_are_the_same_costs_no_request(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    share = tmp_path / "share"
    make_tree(share, {f"f{i}.txt": 20 for i in range(3)})
    db = tmp_path / "uploader.db"
    assert sync(db, maiagent, str(share), "--kb", KB, "--label", "hr").exit_code == 0
    os.utime(share / "f0.txt")  # touched: its bytes are compared, found the same
    maiagent.reset_stats()

    touched = sync(db, maiagent, str(share))
    checked = sync(db, maiagent, str(share), "--checksum")

    assert touched.exit_code == 0 and checked.exit_code == 0, touched.output + checked.output
    assert "unchanged 3 (same content)" in checked.stdout, checked.stdout
    stats = maiagent.stats()
    assert stats["update_metadata"] == 0 and stats["presign"] == 0, stats
    assert {r["relpath"]: r["state"] for r in rows(db)} == {f"f{i}.txt": "done" for i in range(3)}
