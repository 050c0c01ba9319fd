"""A manifest names files in one Unicode form and the disk keeps another (issue 23): an export
written in NFC (what most software writes) names `café.txt`, a folder copied from a Mac keeps it
in NFD (`cafe` + U+0301). The names are compared normalised, the file queued under its name as
stored (so a walk of the same folder finds the same row), and a name that matches two files
differing only in form is refused as ambiguous."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from tests.helpers import KB, enqueue, invoke, one_line_error, rows

NAME = "合約/café 租賃.txt"


def _nfd_tree(root: Path) -> Path:
    path = root / unicodedata.normalize("NFD", NAME)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"contract")
    return path


def test_an_nfc_manifest_queues_the_nfd_file_under_its_stored_name(tmp_path: Path) -> None:
    stored = _nfd_tree(tmp_path / "data")
    manifest = tmp_path / "export.csv"
    manifest.write_text(f"path,labels\n{unicodedata.normalize('NFC', NAME)},legal\n")
    db = tmp_path / "queue.db"

    counts = enqueue(db, tmp_path / "data", "--manifest", str(manifest))
    walked = enqueue(db, tmp_path / "data")

    assert counts["new"] == 1, counts
    assert walked["new"] == 0 and walked["unchanged"] == 1, walked
    (job,) = rows(db)
    assert bytes(job["path"]) == os.fsencode(stored)


def test_a_name_matching_two_files_that_differ_only_in_form_is_ambiguous(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for form in ("NFC", "NFD"):
        (data / unicodedata.normalize(form, "año é.txt")).write_bytes(form.encode())
    mixed = "an\u0303o \u00e9.txt"  # ñ decomposed, é composed: neither file's bytes
    manifest = tmp_path / "export.csv"
    manifest.write_text(f"path\n{mixed}\n")

    line = one_line_error(
        invoke(tmp_path / "q.db", "enqueue", str(data), "--kb", KB, "--manifest", str(manifest))
    )

    assert "line 2" in line and "2 files" in line, line
