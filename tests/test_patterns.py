"""--include/--exclude from Windows habits: case (`*.PDF`), `\\` as a separator, a bare folder
name, and a filter that matches no file at all, which enqueue says (exit code unchanged)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import invoke, make_tree, rows
from uploader import scan

FILES = {"合約/租賃合約.PDF": 1, "合約/附件/保密協議.pdf": 2, "人事/請假.txt": 3}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "data", FILES)


def _enqueue(tmp_path: Path, data: Path, *args: str) -> tuple[object, set[str]]:
    db = tmp_path / "q.db"
    result = invoke(db, "enqueue", str(data), "--kb", "kb-test", *args)
    assert result.exit_code == 0, result.output  # a warning, never an error
    return result, {r["relpath"] for r in rows(db)} if db.exists() else set()


def test_ignore_case_matches_pdf_and_PDF(tmp_path: Path, data: Path) -> None:
    _result, queued = _enqueue(tmp_path, data, "--include", "*.PDF", "--ignore-case")
    assert queued == {"合約/租賃合約.PDF", "合約/附件/保密協議.pdf"}


def test_no_ignore_case_matches_the_case_given(tmp_path: Path, data: Path) -> None:
    _result, queued = _enqueue(tmp_path, data, "--include", "*.pdf", "--no-ignore-case")
    assert queued == {"合約/附件/保密協議.pdf"}


def test_a_filter_that_matched_no_file_is_named_on_stderr(tmp_path: Path, data: Path) -> None:
    result, queued = _enqueue(
        tmp_path,
        data,
        "--include",
        "*.docx",
        "--include",
        "*.txt",
        "--exclude",
        "草稿/**",
        "--no-ignore-case",
    )
    assert queued == {"人事/請假.txt"}
    warnings = [line for line in result.stderr.splitlines() if "matched no file" in line]
    assert warnings == [
        "warning: --exclude '草稿/**' matched no file",
        "warning: --include '*.docx' matched no file",
    ]


def test_a_bare_folder_name_matches_files_of_that_name_and_says_how_to_take_its_files(
    tmp_path: Path, data: Path
) -> None:
    """rclone's reading: a pattern matches files; `合約` names no file, and the warning says
    to write `合約/**` for the folder's files."""
    result, queued = _enqueue(tmp_path, data, "--include", "合約")
    assert queued == set()
    assert "warning: --include '合約' matched no file (a folder's files: add /**)" in (
        result.stderr
    )


def test_an_exclude_that_prunes_a_folder_counts_as_matched(tmp_path: Path, data: Path) -> None:
    result, queued = _enqueue(tmp_path, data, "--exclude", "合約/")
    assert queued == {"人事/請假.txt"}
    assert "matched no file" not in result.stderr


def test_backslash_is_a_separator_where_windows_reads_it_so() -> None:
    filters = scan.Filters(include=["合約\\**"], backslash_separates=True, ignore_case=True)
    assert filters.wanted("合約/附件/保密協議.pdf")
    assert not filters.wanted("人事/請假.txt")
    posix = scan.Filters(include=["合約\\**"], backslash_separates=False)
    assert not posix.wanted("合約/附件/保密協議.pdf")  # `\` escapes there, as in rclone
