"""File names that are not UTF-8 on disk (Big5 bytes from an old Samba share): never sent to
the knowledge base as escape codes; decoded with --filename-encoding, else skipped with a
warning naming the file and the option."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers import FAST, enqueue, invoke, rows, service
from uploader.localserver import MaiAgentServer

pytestmark = pytest.mark.skipif(
    sys.platform in ("win32", "darwin"), reason="the file system stores names as Unicode there"
)

FOLDER = "合約".encode("cp950")  # b"\xa6X\xac\xf9"
NAME = "公司章程.txt".encode("cp950")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    folder = os.path.join(os.fsencode(root), FOLDER)
    os.mkdir(folder)
    with open(os.path.join(folder, NAME), "wb") as file:
        file.write(b"big5 named\n")
    (root / "ok.txt").write_text("utf-8 named\n")
    return root


def test_a_big5_name_is_skipped_with_a_warning_naming_it_and_the_option(
    tmp_path: Path, data: Path, maiagent: MaiAgentServer
) -> None:
    db = tmp_path / "q.db"

    result = invoke(db, "enqueue", str(data), "--kb", "kb-test")
    ran = invoke(db, "-q", "run", *service(maiagent), *FAST)

    assert result.exit_code == 0, result.output
    (warning,) = [line for line in result.stderr.splitlines() if "UTF-8" in line]
    assert "\\xa6X\\xac\\xf9/\\xa4\\xbd" in warning and "--filename-encoding" in warning
    states = {r["relpath"]: (r["state"], r["last_error"]) for r in rows(db)}
    skipped = [rel for rel, (state, _error) in states.items() if state == "skipped"]
    assert len(skipped) == 1 and "--filename-encoding" in states[skipped[0]][1]
    assert ran.exit_code == 0, ran.output
    assert [e["filename"] for e in maiagent.entries("kb-test")] == ["ok.txt"]


def test_filename_encoding_decodes_the_name_sent(
    tmp_path: Path, data: Path, maiagent: MaiAgentServer
) -> None:
    db = tmp_path / "q.db"

    counts = enqueue(db, data, "--filename-encoding", "cp950", "--include", "合約/**")
    ran = invoke(db, "-q", "run", *service(maiagent), *FAST, "--name", "relpath")

    assert counts["new"] == 1
    assert [(r["relpath"], r["state"]) for r in rows(db)] == [("合約/公司章程.txt", "done")]
    assert ran.exit_code == 0, ran.output
    assert [e["filename"] for e in maiagent.entries("kb-test")] == ["合約/公司章程.txt"]
