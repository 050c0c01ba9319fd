"""Relative paths are `/`-separated on every system: what a walk gives on Windows (drive
roots, UNC shares, `\\\\?\\` long paths, backslashes) checked with Windows' separators here,
and a walk of a real folder on this system."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import KB, enqueue, rows
from uploader.paths import below, prefix_length

WINDOWS = b"\\/"  # Windows' separators: `\` and its alternative `/`


@pytest.mark.parametrize(
    ("root", "path", "relative"),
    [
        (b"C:\\", b"C:\\contracts\\2024\\a.pdf", b"contracts/2024/a.pdf"),
        (b"C:\\Data", b"C:\\Data\\sub\\a.txt", b"sub/a.txt"),
        (b"\\\\server\\share\\", b"\\\\server\\share\\hr\\a.txt", b"hr/a.txt"),
        (b"\\\\server\\share\\docs", b"\\\\server\\share\\docs\\a.txt", b"a.txt"),
        (b"\\\\?\\D:\\long", b"\\\\?\\D:\\long\\x\\y.txt", b"x/y.txt"),
    ],
    ids=["drive root", "folder", "UNC share", "UNC folder", "long path"],
)
def test_a_windows_walk_gives_slash_separated_paths_below_any_root(
    root: bytes, path: bytes, relative: bytes
) -> None:
    assert below(path, prefix_length(root, WINDOWS), b"\\") == relative


def test_a_posix_root_keeps_a_backslash_that_is_part_of_a_name() -> None:
    assert below(b"/a/b.txt", prefix_length(b"/", b"/"), b"/") == b"a/b.txt"
    root = b"/data/odd\\"  # a folder named `odd\` on Linux
    assert below(b"/data/odd\\/x.txt", prefix_length(root, b"/"), b"/") == b"x.txt"


def test_a_walk_stores_relative_paths_with_slashes(tmp_path: Path) -> None:
    for rel in ("a.txt", "sub/b.txt", "sub/deeper/c.txt"):
        (tmp_path / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / rel).write_text(rel)
    db = tmp_path / "q.db"
    enqueue(db, tmp_path / "data", kb=KB)
    assert sorted(job["relpath"] for job in rows(db)) == [
        "a.txt",
        "sub/b.txt",
        "sub/deeper/c.txt",
    ]
