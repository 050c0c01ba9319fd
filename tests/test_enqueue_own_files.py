"""`uploader enqueue` never queues the uploader's own state: its database (which lists the full
path of every file), the database's side files, and the logs/ and reports/ folders it writes
beside the database, however the folder and the database are named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import KB, invoke, make_tree, rows, run_args, summary_of
from uploader.localserver import MaiAgentServer

OWN = "left out the uploader's own files: "


def queued(db: Path) -> set[str]:
    return {row["relpath"] for row in rows(db)}


def own_line(stdout: str) -> str:
    """The one line that names what was left out."""
    lines = [line for line in stdout.splitlines() if line.startswith(OWN)]
    assert len(lines) == 1, stdout
    return lines[0][len(OWN) :]


def test_enqueue_dot_beside_the_database_queues_none_of_its_files(
    tmp_path: Path, maiagent: MaiAgentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real `run` and `export-report` write logs/ and reports/ where they do, so this also
    fails if either moves and the exclusion does not follow."""
    tree = make_tree(tmp_path / "docs", {"a.txt": 1, "sub/b.txt": 2})
    monkeypatch.chdir(tree)
    db = Path("uploader.db")

    first = invoke(db, "enqueue", ".", "--kb", KB)
    assert first.exit_code == 0, first.output
    assert summary_of(first.stdout)["new"] == 2
    assert "uploader.db" in own_line(first.stdout).split(", ")

    ran = invoke(db, *run_args(maiagent), "--kb", KB)
    assert ran.exit_code == 0, ran.output
    reported = invoke(db, "export-report")
    assert reported.exit_code == 0, reported.output
    assert os.listdir("logs") and os.listdir("reports")

    (tree / "c.txt").write_text("new")
    again = invoke(db, "enqueue", ".", "--kb", KB)
    assert again.exit_code == 0, again.output
    assert summary_of(again.stdout) == {
        "scanned": 3,
        "new": 1,
        "changed": 0,
        "unchanged": 2,
        "skipped": 0,
    }
    left_out = own_line(again.stdout).split(", ")
    assert {"uploader.db", "uploader.db-wal", "logs/", "reports/"} <= set(left_out)
    assert queued(db) == {"a.txt", "sub/b.txt", "c.txt"}


@pytest.mark.posix_only("makes symbolic links (a privilege on Windows)")
def test_links_to_the_database_and_its_folder_do_not_bring_it_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cd docs`, the database one level up named relatively, and --follow-symlinks through a
    link to the parent folder and a link to the database file itself."""
    project = make_tree(
        tmp_path / "project",
        {"readme.txt": 1, "docs/a.txt": 1, "logs/upload.log": 1, "reports/r.json": 1},
    )
    docs = project / "docs"
    (docs / "up").symlink_to("..")
    (docs / "db-link").symlink_to(project / "uploader.db")
    monkeypatch.chdir(docs)
    db = Path("..", "uploader.db")

    for _ in range(2):
        result = invoke(db, "enqueue", ".", "--kb", KB, "--follow-symlinks")
        assert result.exit_code == 0, result.output
        assert queued(db) == {"a.txt", "up/readme.txt"}
        left_out = set(own_line(result.stdout).split(", "))
        assert {"db-link", "up/uploader.db", "up/logs/", "up/reports/"} <= left_out
    assert summary_of(result.stdout)["changed"] == 0

    elsewhere = make_tree(tmp_path / "elsewhere", {"e.txt": 1})
    plain = invoke(db, "enqueue", str(elsewhere), "--kb", KB)
    assert plain.exit_code == 0, plain.output
    assert OWN not in plain.stdout


def test_the_database_folder_itself_is_never_walked_into_from_a_parent(tmp_path: Path) -> None:
    """Enqueueing the parent of the database's folder: the database and its folders, one level
    down, are still recognised."""
    root = make_tree(tmp_path / "all", {"top.txt": 1, "state/keep.txt": 1})
    db = root / "state" / "queue.db"
    (root / "state" / "logs").mkdir()
    (root / "state" / "logs" / "upload.log").write_text("log")

    result = invoke(db, "enqueue", str(root), "--kb", KB)
    assert result.exit_code == 0, result.output
    assert queued(db) == {"top.txt", "state/keep.txt"}
    assert {"state/queue.db", "state/logs/"} <= set(own_line(result.stdout).split(", "))
