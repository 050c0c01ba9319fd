"""`uploader enqueue DIR --kb KB`: what a real folder turns into in the queue's SQLite file."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    KB,
    enqueue,
    execute,
    invoke,
    make_tree,
    one_line_error,
    rows,
    run_cli,
    summary_of,
)


def counts(
    scanned: int, new: int = 0, changed: int = 0, unchanged: int = 0, skipped: int = 0
) -> dict[str, int]:
    """What a summary line should say; unnamed counts are zero."""
    return {
        "scanned": scanned,
        "new": new,
        "changed": changed,
        "unchanged": unchanged,
        "skipped": skipped,
    }


def jobs(db: Path) -> dict[str, dict[str, Any]]:
    """The jobs table keyed by relative path, read with nothing but the stdlib."""
    return {row["relpath"]: row for row in rows(db)}


def test_hidden_files_folders_and_clutter_are_left_out(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "docs",
        {
            "a.txt": 3,
            "sub/b.txt": 4,
            ".hidden.txt": 1,
            ".git/config": 1,
            "sub/.cache/c.txt": 1,
            "Thumbs.db": 1,
            "sub/thumbs.db": 1,
            "desktop.ini": 1,
            "~$lock.docx": 1,
            "sub/~$report.xlsx": 1,
        },
    )
    db = tmp_path / "q.db"

    assert enqueue(db, tree) == counts(2, new=2)
    rows = jobs(db)
    assert set(rows) == {"a.txt", "sub/b.txt"}
    assert {r["state"] for r in rows.values()} == {"pending"}
    assert rows["sub/b.txt"]["size"] == 4
    assert rows["sub/b.txt"]["kb_id"] == KB
    assert rows["sub/b.txt"]["path"] == os.fsencode(tree / "sub" / "b.txt")


FILTER_TREE = {
    "top.txt": 1,
    "doc.pdf": 1,
    "sub/top.txt": 1,
    "sub/y.txt": 1,
    "sub/deep/x.pdf": 1,
    "other/z.pdf": 1,
    "other/notes.txt": 1,
}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--include", "*.pdf"], {"doc.pdf", "sub/deep/x.pdf", "other/z.pdf"}),
        (["--exclude", "sub/**"], {"top.txt", "doc.pdf", "other/z.pdf", "other/notes.txt"}),
        (["--include", "/top.txt"], {"top.txt"}),
        (["--include", "top.txt"], {"top.txt", "sub/top.txt"}),
        (["--exclude", "/top.txt"], set(FILTER_TREE) - {"top.txt"}),
        (
            ["--include", "*.pdf", "--include", "/top.txt"],
            {"top.txt", "doc.pdf", "sub/deep/x.pdf", "other/z.pdf"},
        ),
        (["--include", "*.pdf", "--exclude", "sub/**"], {"doc.pdf", "other/z.pdf"}),
        (["--exclude", "*.pdf", "--exclude", "other/**"], {"top.txt", "sub/top.txt", "sub/y.txt"}),
        (["--include", "sub/*"], {"sub/top.txt", "sub/y.txt"}),
    ],
)
def test_include_and_exclude_match_the_relative_path_like_rclone(
    tmp_path: Path, options: list[str], expected: set[str]
) -> None:
    tree = make_tree(tmp_path / "docs", FILTER_TREE)
    db = tmp_path / "q.db"

    assert enqueue(db, tree, *options) == counts(len(expected), new=len(expected))
    assert set(jobs(db)) == expected


def test_max_size_makes_a_larger_file_skipped_with_its_reason(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "docs", {"small.txt": 10, "exact.txt": 1024, "big.txt": 2000})
    db = tmp_path / "q.db"

    assert enqueue(db, tree, "--max-size", "1k") == counts(3, new=2, skipped=1)
    rows = jobs(db)
    assert rows["small.txt"]["state"] == rows["exact.txt"]["state"] == "pending"
    assert rows["big.txt"]["state"] == "skipped"
    assert rows["big.txt"]["size"] == 2000
    assert "max-size" in rows["big.txt"]["last_error"]
    assert "2000" in rows["big.txt"]["last_error"]


def test_an_invalid_max_size_is_bad_input(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "docs", {"a.txt": 1})
    result = invoke(tmp_path / "q.db", "enqueue", str(tree), "--kb", KB, "--max-size", "lots")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "lots" in result.stderr


def test_the_knowledge_base_comes_from_the_environment(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "docs", {"a.txt": 1})
    db = tmp_path / "q.db"
    result = invoke(db, "enqueue", str(tree), env={"MAIAGENT_KB_ID": "kb-env"})
    assert result.exit_code == 0, result.output
    assert jobs(db)["a.txt"]["kb_id"] == "kb-env"


@pytest.mark.posix_only("makes a FIFO")
def test_fifos_and_other_non_regular_files_are_ignored(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "docs", {"a.txt": 1})
    os.mkfifo(tree / "pipe")
    db = tmp_path / "q.db"

    assert enqueue(db, tree) == counts(1, new=1)
    assert set(jobs(db)) == {"a.txt"}


@pytest.mark.posix_only("makes symbolic links (a privilege on Windows)")
def test_symlinks_are_not_followed_unless_asked(tmp_path: Path) -> None:
    outside = make_tree(tmp_path / "outside", {"linked.txt": 5, "dir/inner.txt": 6})
    tree = make_tree(tmp_path / "docs", {"real.txt": 1})
    (tree / "file-link.txt").symlink_to(outside / "linked.txt")
    (tree / "dir-link").symlink_to(outside / "dir")
    (tree / "dangling").symlink_to(tmp_path / "nowhere")

    plain = tmp_path / "plain.db"
    assert enqueue(plain, tree) == counts(1, new=1)
    assert set(jobs(plain)) == {"real.txt"}

    followed = tmp_path / "followed.db"
    assert enqueue(followed, tree, "--follow-symlinks") == counts(3, new=3)
    rows = jobs(followed)
    assert set(rows) == {"real.txt", "file-link.txt", "dir-link/inner.txt"}
    assert rows["file-link.txt"]["size"] == 5


@pytest.mark.posix_only("makes symbolic links (a privilege on Windows)")
def test_a_symlink_loop_with_follow_symlinks_ends_and_finds_each_file_once(
    tmp_path: Path,
) -> None:
    """In a child process with a time limit: a walk that loops fails instead of hanging."""
    tree = make_tree(tmp_path / "docs", {"a/f.txt": 1, "a/b/g.txt": 2})
    (tree / "a" / "to-root").symlink_to(tree)
    (tree / "a" / "b" / "up").symlink_to("..")
    (tree / "self").symlink_to(".")
    db = tmp_path / "q.db"

    done = run_cli(db, "enqueue", str(tree), "--kb", KB, "--follow-symlinks")
    assert done.returncode == 0, done.stderr
    assert summary_of(done.stdout) == counts(2, new=2)
    names = sorted(os.path.basename(rel) for rel in jobs(db))
    assert names == ["f.txt", "g.txt"]


def test_enqueue_again_is_idempotent_and_adds_only_new_files(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "docs", {"a.txt": 1, "sub/b.txt": 2, "big.pdf": 5000})
    db = tmp_path / "q.db"

    assert enqueue(db, tree, "--max-size", "1k") == counts(3, new=2, skipped=1)
    before = jobs(db)
    assert enqueue(db, tree, "--max-size", "1k") == counts(3, unchanged=2, skipped=1)
    assert jobs(db) == before

    make_tree(tree, {"sub/c.txt": 3})
    assert enqueue(db, tree, "--max-size", "1k") == counts(4, new=1, unchanged=2, skipped=1)
    after = jobs(db)
    assert set(after) == {"a.txt", "sub/b.txt", "sub/c.txt", "big.pdf"}
    assert {rel: after[rel] for rel in before} == before


def test_the_same_folder_for_two_knowledge_bases_is_two_sets_of_rows(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "docs", {"a.txt": 1, "b.txt": 1})
    db = tmp_path / "q.db"
    assert invoke(db, "enqueue", str(tree), "--kb", "kb-one").exit_code == 0
    assert invoke(db, "enqueue", str(tree), "--kb", "kb-two").exit_code == 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        found = conn.execute("SELECT kb_id, relpath FROM jobs ORDER BY kb_id, relpath").fetchall()
    assert found == [
        ("kb-one", "a.txt"),
        ("kb-one", "b.txt"),
        ("kb-two", "a.txt"),
        ("kb-two", "b.txt"),
    ]


def _grow(path: Path) -> None:
    stat = path.stat()
    path.write_bytes(path.read_bytes() + b"more")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _touch(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


@pytest.mark.parametrize("change", [_grow, _touch], ids=["size", "mtime"])
def test_a_changed_file_that_was_uploaded_goes_back_to_pending(
    tmp_path: Path, change: Callable[[Path], None]
) -> None:
    tree = make_tree(tmp_path / "docs", {"same.txt": 10, "edited.txt": 10})
    db = tmp_path / "q.db"
    enqueue(db, tree)
    execute(
        db,
        "UPDATE jobs SET state = 'done', step = 'registered', attempts = 1, file_id = 'f-' || id,"
        " s3_key = 'k-' || id, started_at = 1, finished_at = 2, duration = 1",
    )

    change(tree / "edited.txt")
    assert enqueue(db, tree) == counts(2, changed=1, unchanged=1)
    rows = jobs(db)
    edited = rows["edited.txt"]
    assert edited["state"] == "pending"
    assert edited["attempts"] == 0
    assert edited["file_id"] is None and edited["s3_key"] is None
    assert edited["size"] == (tree / "edited.txt").stat().st_size
    assert edited["mtime_ns"] == (tree / "edited.txt").stat().st_mtime_ns
    assert rows["same.txt"]["state"] == "done"
    assert rows["same.txt"]["file_id"] is not None

    assert enqueue(db, tree) == counts(2, unchanged=2)


def test_a_name_that_is_not_utf8_is_kept_as_bytes_shown_escaped_and_skipped(
    tmp_path: Path,
) -> None:
    """Skipped (without --filename-encoding): its name would reach the knowledge base as
    escape codes (test_filename_encoding.py)."""
    tree = tmp_path / "docs"
    tree.mkdir()
    raw = os.path.join(os.fsencode(tree), b"caf\xe9 \xff.txt")
    try:
        os.close(os.open(raw, os.O_CREAT | os.O_WRONLY, 0o644))
    except OSError as exc:
        pytest.skip(f"this file system refuses non-UTF-8 names: {exc}")
    db = tmp_path / "q.db"

    assert enqueue(db, tree) == counts(1, skipped=1)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        path, relpath, kind, state = conn.execute(
            "SELECT path, relpath, typeof(path), state FROM jobs"
        ).fetchone()
    assert kind == "blob"
    assert path == raw
    assert relpath == "caf\\xe9 \\xff.txt"
    assert state == "skipped"
    assert enqueue(db, tree) == counts(1, skipped=1)


@pytest.mark.posix_only("needs file modes that bind (chmod)")
def test_an_unreadable_file_is_skipped_with_its_reason(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "docs", {"ok.txt": 2, "secret.txt": 3})
    (tree / "secret.txt").chmod(0)
    db = tmp_path / "q.db"

    done = run_cli(db, "enqueue", str(tree), "--kb", KB, privileged=False)
    assert done.returncode == 0, done.stderr
    assert summary_of(done.stdout) == counts(2, new=1, skipped=1)
    rows = jobs(db)
    assert rows["ok.txt"]["state"] == "pending"
    assert rows["secret.txt"]["state"] == "skipped"
    assert "permission denied" in rows["secret.txt"]["last_error"].lower()

    (tree / "secret.txt").chmod(0o644)
    assert enqueue(db, tree) == counts(2, changed=1, unchanged=1)
    assert jobs(db)["secret.txt"]["state"] == "pending"


def test_a_missing_folder_is_a_one_line_error(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    line = one_line_error(invoke(db, "enqueue", str(tmp_path / "nope"), "--kb", KB))
    assert "nope" in line
    assert not db.exists()


def test_a_file_instead_of_a_folder_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    db = tmp_path / "q.db"
    line = one_line_error(invoke(db, "enqueue", str(tmp_path / "file.txt"), "--kb", KB))
    assert "file.txt" in line
    assert not db.exists()


RCLONE_TREE = {
    "a*b.txt": 1,
    "axb.txt": 1,
    "notes.md": 1,
    "doc.pdf": 1,
    "sub/deep/x.pdf": 1,
    "sub/y.txt": 1,
    "build/out.txt": 1,
    "src/build/gen.txt": 1,
    "src/main.txt": 1,
}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--include", "a\\*b.txt"], {"a*b.txt"}),
        (["--exclude", "a\\*b.txt", "--include", "a*b.txt"], {"axb.txt"}),
        (["--include", "*.{pdf,{md,nothing}}"], {"notes.md", "doc.pdf", "sub/deep/x.pdf"}),
        (
            ["--include", "{notes.md,{sub,src}/**}"],
            {"notes.md", "sub/deep/x.pdf", "sub/y.txt"} | {"src/build/gen.txt", "src/main.txt"},
        ),
        (["--exclude", "build/"], set(RCLONE_TREE) - {"build/out.txt", "src/build/gen.txt"}),
        (["--exclude", "/build/"], set(RCLONE_TREE) - {"build/out.txt"}),
        (["--exclude", "sub/*"], set(RCLONE_TREE) - {"sub/y.txt"}),
    ],
)
def test_escapes_nested_braces_and_folder_excludes_work_as_in_rclone(
    tmp_path: Path, options: list[str], expected: set[str]
) -> None:
    tree = make_tree(tmp_path / "docs", RCLONE_TREE)
    db = tmp_path / "q.db"

    assert enqueue(db, tree, *options) == counts(len(expected), new=len(expected))
    assert set(jobs(db)) == expected


@pytest.mark.posix_only("needs file modes that bind (chmod)")
def test_an_excluded_folder_is_not_entered(tmp_path: Path) -> None:
    """An unreadable folder inside an excluded one: entering it would warn that it cannot be
    read, so the absence of the warning shows the walk never went in."""
    tree = make_tree(
        tmp_path / "docs",
        {
            "keep.txt": 1,
            "node_modules/pkg/index.js": 1,
            "node_modules/locked/x.js": 1,
            "app/node_modules/locked/y.js": 1,
            "build/locked/z.txt": 1,
        },
    )
    for locked in ("node_modules/locked", "app/node_modules/locked", "build/locked"):
        (tree / locked).chmod(0)
    db = tmp_path / "q.db"
    try:
        done = run_cli(
            db,
            "enqueue",
            str(tree),
            "--kb",
            KB,
            "--exclude",
            "node_modules/**",
            "--exclude",
            "/build/",
            privileged=False,
        )
    finally:
        for locked in ("node_modules/locked", "app/node_modules/locked", "build/locked"):
            (tree / locked).chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert "cannot read" not in done.stderr
    assert summary_of(done.stdout) == counts(1, new=1)
    assert set(jobs(db)) == {"keep.txt"}


def test_a_folder_matched_only_in_part_is_still_entered(tmp_path: Path) -> None:
    """`sub/*.pdf` excludes some files of sub, `sub/*` only its own files: neither may keep
    the walk out of sub or its subfolders."""
    tree = make_tree(tmp_path / "docs", {"sub/a.pdf": 1, "sub/b.txt": 1, "sub/deep/c.pdf": 1})
    db = tmp_path / "q.db"
    assert enqueue(db, tree, "--exclude", "sub/*.pdf") == counts(2, new=2)
    assert set(jobs(db)) == {"sub/b.txt", "sub/deep/c.pdf"}


@pytest.mark.parametrize(
    ("option", "pattern", "says"),
    [
        ("--include", "", "empty pattern"),
        ("--exclude", "", "empty pattern"),
        ("--include", "*.{pdf,txt", "unbalanced"),
        ("--exclude", "*.pdf}", "unbalanced"),
        ("--include", "*.{pdf}", "without a comma"),
        ("--include", "*.{{jpe?g}}", "regexp"),
        ("--include", "docs/", "docs/**"),
        ("--include", ".git/**", "hidden"),
        ("--exclude", "./build/**", "can match nothing"),
        ("--exclude", "a//b", "can match nothing"),
        ("--include", "{1..2000}", "alternatives"),
        ("--include", "[", "unbalanced ["),
        ("--exclude", "*.[pdf", "unbalanced ["),
        ("--include", "[]", "unbalanced ["),
        ("--include", "[!]*", "unbalanced ["),
        ("--include", "{a,[b}", "unbalanced ["),
        ("--exclude", "x[/]y", "unbalanced ["),
    ],
)
def test_an_invalid_pattern_is_a_one_line_error_and_nothing_is_queued(
    tmp_path: Path, option: str, pattern: str, says: str
) -> None:
    tree = make_tree(tmp_path / "docs", {"a.txt": 1, "docs/b.txt": 1, "build/c.txt": 1})
    db = tmp_path / "q.db"
    line = one_line_error(invoke(db, "enqueue", str(tree), "--kb", KB, option, pattern))
    assert option in line
    assert says in line
    assert not db.exists()


def test_max_size_zero_is_refused_and_off_means_no_limit(tmp_path: Path) -> None:
    """rclone's --max-size 0 keeps only empty files: here a clear refusal instead of a run
    that skips everything; `off` is rclone's word for no limit."""
    tree = make_tree(tmp_path / "docs", {"empty.txt": 0, "big.txt": 5000})
    db = tmp_path / "q.db"
    for zero in ("0", "0k", "0.0M"):
        result = invoke(db, "enqueue", str(tree), "--kb", KB, "--max-size", zero)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert "zero bytes" in result.stderr and "'off'" in result.stderr
    assert not db.exists()

    assert enqueue(db, tree, "--max-size", "off") == counts(2, new=2)
    assert {r["state"] for r in jobs(db).values()} == {"pending"}


def test_verbose_names_every_file_left_out_and_why(tmp_path: Path) -> None:
    data = make_tree(
        tmp_path / "data",
        {"a.txt": 3, "logo.png": 3, ".hidden.txt": 3, "drafts/x.txt": 3, "big.txt": 50,
         "setup.exe": 3},
    )  # fmt: skip
    os.symlink(data / "a.txt", data / "link.txt")

    result = invoke(
        tmp_path / "q.db", "-v", "enqueue", str(data), "--kb", KB, "--exclude", "*.png",
        "--exclude", "drafts/**", "--max-size", "10",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "left out" in line]
    assert any("left out logo.png: excluded by --exclude '*.png'" in s for s in said), said
    assert any("left out drafts/: excluded by --exclude 'drafts/**'" in s for s in said), said
    assert any("left out .hidden.txt: hidden or system file" in s for s in said), said
    assert any("left out link.txt: a symbolic link" in s for s in said), said
    assert any("left out big.txt: skipped: larger than --max-size" in s for s in said), said
    assert any("left out setup.exe: skipped:" in s for s in said), said
    assert not any("a.txt" in s and "link" not in s for s in said), said
