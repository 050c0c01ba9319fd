"""Manifests as Excel writes them on Traditional Chinese Windows: "CSV" in cp950 (Big5), "CSV
UTF-8" with a BOM, "Unicode text" (UTF-16 with tabs), and the workbook itself (.xlsx), with
paths written with backslashes. Each file is written here in its real encoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openpyxl
import pytest

from tests.helpers import enqueue, invoke, make_tree, one_line_error, rows
from uploader.tags import decode

FILES = {"合約/租賃合約.txt": 3, "合約/保密協議.txt": 4, "人事/請假規則.txt": 5, "其他.txt": 1}
HEADER = ["path", "labels", "meta.年度", "filename"]
LINES = [
    ["合約\\租賃合約.txt", "合約;法務", "2024", "租賃合約 2024.txt"],
    ["合約\\保密協議.txt", "合約", "", ""],
    ["人事/請假規則.txt", "人事", "2023", ""],
]
EXPECTED = {
    "合約/租賃合約.txt": (("合約", "法務"), {"年度": "2024"}),
    "合約/保密協議.txt": (("合約",), {}),
    "人事/請假規則.txt": (("人事",), {"年度": "2023"}),
}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "data", FILES)


def _text(separator: str) -> str:
    return "".join(separator.join(cells) + "\r\n" for cells in [HEADER, *LINES])


def _tags(db: Path) -> dict[str, Any]:
    return {r["relpath"]: decode(r["tags"]) for r in rows(db)}


def _enqueue(db: Path, data: Path, manifest: Path, *args: str) -> Any:
    return invoke(db, "enqueue", str(data), "--kb", "kb-test", "--manifest", str(manifest), *args)


@pytest.mark.parametrize(
    ("encoding", "separator", "note"),
    [
        ("utf-8", ",", None),
        ("utf-8-sig", ",", None),  # Excel's "CSV UTF-8"
        ("utf-16", "\t", "utf-16"),  # Excel's "Unicode text": UTF-16LE, BOM, tabs
        ("cp950", ",", "cp950"),  # Excel's "CSV" on Traditional Chinese Windows
    ],
)
def test_a_manifest_as_excel_saves_it_is_read_right(
    tmp_path: Path, data: Path, encoding: str, separator: str, note: str | None
) -> None:
    manifest = tmp_path / "清單.csv"
    manifest.write_bytes(_text(separator).encode(encoding))
    db = tmp_path / "q.db"

    result = _enqueue(db, data, manifest)

    assert result.exit_code == 0, result.output
    assert _tags(db) == EXPECTED
    assert {r["relpath"]: r["display_name"] for r in rows(db)}["合約/租賃合約.txt"] == (
        "租賃合約 2024.txt"
    )
    if note is None:
        assert "not UTF-8" not in result.stderr
    else:
        assert f"is not UTF-8: read as {note}" in result.stderr


def test_manifest_encoding_names_another_encoding(tmp_path: Path, data: Path) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_bytes(_text(",").encode("big5"))
    db = tmp_path / "q.db"

    result = _enqueue(db, data, manifest, "--manifest-encoding", "big5")

    assert result.exit_code == 0, result.output
    assert "read as big5" in result.stderr
    assert _tags(db) == EXPECTED


def test_a_manifest_in_no_encoding_it_is_read_in_is_one_line(tmp_path: Path, data: Path) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_bytes(_text(",").encode("utf-8") + b"\xff\xff,x\r\n")
    db = tmp_path / "q.db"

    error = one_line_error(_enqueue(db, data, manifest))

    assert "neither UTF-8 nor cp950" in error and "--manifest-encoding" in error
    assert "nothing was queued" in error
    assert rows(db) == []


def test_an_unknown_manifest_encoding_is_a_usage_error(tmp_path: Path, data: Path) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_text(_text(","), encoding="utf-8")
    result = _enqueue(tmp_path / "q.db", data, manifest, "--manifest-encoding", "klingon")
    assert result.exit_code == 2
    assert "unknown encoding 'klingon'" in result.output


def test_an_xlsx_manifest_is_read_from_its_first_sheet(tmp_path: Path, data: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "清單"
    for cells in [HEADER, *LINES]:
        # Excel keeps the year as a number: it is the text shown, "2024", not "2024.0"
        sheet.append([int(c) if c.isdigit() else (c or None) for c in cells])
    sheet["F1"] = None  # a formatted but empty column beyond the header
    book.create_sheet("其他").append(["path", "labels"])
    manifest = tmp_path / "清單.xlsx"
    book.save(manifest)
    db = tmp_path / "q.db"

    counts = enqueue(db, data, "--manifest", str(manifest))

    assert counts["new"] == 3
    assert _tags(db) == EXPECTED


def test_an_xlsx_manifest_error_names_the_row(tmp_path: Path, data: Path) -> None:
    book = openpyxl.Workbook()
    book.active.append(["path"])
    book.active.append(["合約\\租賃合約.txt"])
    book.active.append(["合約\\沒有這個檔案.txt"])
    manifest = tmp_path / "list.xlsx"
    book.save(manifest)

    error = one_line_error(_enqueue(tmp_path / "q.db", data, manifest))

    assert error.startswith(f"Error: {manifest} row 3: '合約/沒有這個檔案.txt' names no file")


def test_a_file_that_is_not_a_workbook_is_one_line(tmp_path: Path, data: Path) -> None:
    manifest = tmp_path / "list.xlsx"
    manifest.write_text("path\n合約/租賃合約.txt\n", encoding="utf-8")
    error = one_line_error(_enqueue(tmp_path / "q.db", data, manifest))
    assert "not an Excel workbook" in error


def test_a_windows_absolute_path_is_refused(tmp_path: Path, data: Path) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\r\nD:\\共用\\合約\\租賃合約.txt\r\n", encoding="cp950")
    error = one_line_error(_enqueue(tmp_path / "q.db", data, manifest))
    assert "is absolute" in error
