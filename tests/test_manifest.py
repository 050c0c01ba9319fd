"""Manifests read from real temp files, both formats; every error names its file and line."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from uploader.manifest import (
    ManifestError,
    ManifestRow,
    labels_from_path,
    parse_metadata_option,
    read_manifest,
    resolve,
)


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def _error(path: Path) -> str:
    with pytest.raises(ManifestError) as caught:
        list(read_manifest(path))
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- CSV ---------------------------------------------------------------------------------------


def test_a_csv_manifest_gives_typed_rows(tmp_path: Path) -> None:
    manifest = _write(
        tmp_path,
        "m.csv",
        "path,labels,meta.source,meta.year,filename\r\n"
        "hr/leave.pdf, hr ;policies;hr,nas,007,Leave policy.pdf\r\n"
        "\r\n"
        '"a, b/./c.txt",,,,\r\n'
        'notes.md,x,"two\nlines",2024,\r\n'
        "last.txt,y,,,\r\n",
    )
    rows = list(read_manifest(manifest))
    assert rows == [
        ManifestRow(
            str(manifest),
            2,
            "hr/leave.pdf",
            ("hr", "policies"),
            {"source": "nas", "year": "007"},
            "Leave policy.pdf",
        ),
        ManifestRow(str(manifest), 4, "a, b/c.txt"),
        ManifestRow(str(manifest), 5, "notes.md", ("x",), {"source": "two\nlines", "year": "2024"}),
        ManifestRow(str(manifest), 7, "last.txt", ("y",)),
    ]
    assert rows[3].where == f"{manifest} line 7"


def test_a_csv_with_a_byte_order_mark_and_only_a_path_column(tmp_path: Path) -> None:
    manifest = _write(tmp_path, "export.txt", "\ufeffpath\na.pdf\n")
    assert [row.path for row in read_manifest(manifest)] == ["a.pdf"]
    exported = _write(tmp_path, "export.csv", " Path ,Labels, META. Year \na.pdf,x,2024\n")
    [row] = read_manifest(exported)
    assert (row.path, row.labels, row.metadata) == ("a.pdf", ("x",), {"Year": "2024"})


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("path,colour\na,b\n", "line 1: unknown column 'colour'; known: path, labels"),
        ("path,metadata\na,{}\n", "line 1: unknown column 'metadata' (use one meta.KEY column"),
        ("path,labels,labels\na,b,c\n", "line 1: column 'labels' appears twice"),
        ("labels,filename\na,b\n", "line 1: no 'path' column in the header"),
        ("path,meta.\na,b\n", "line 1: column 'meta.' names no key"),
        ("path,labels\na,b\nc\n", "line 3: 1 fields, the header has 2"),
        ('path,labels\na,b\n"c,d\n', "line 3: malformed CSV (unexpected end of data)"),
        ("path\n/etc/passwd\n", "line 2: path '/etc/passwd' is absolute; give it relative to DIR"),
        ("path\nok\na/../../x\n", "line 3: path 'a/../../x' leaves DIR ('..' is not allowed)"),
        ("path,labels\n,x\n", "line 2: 'path' is empty"),
        ("path\n./\n", "line 2: path './' names DIR itself, not a file"),
        ("path,labels\na,x;;y\n", "line 2: a label is empty"),
        ("path,labels\na,x;\n", "line 2: a label is empty"),
        (
            "path\na/b.pdf\nc\na/./b.pdf\n",
            "line 4: path 'a/b.pdf' is listed twice (first on line 2)",
        ),
    ],
)
def test_csv_errors_name_the_file_and_line(tmp_path: Path, text: str, error: str) -> None:
    manifest = _write(tmp_path, "m.csv", text)
    assert _error(manifest).startswith(f"{manifest} {error}")


def test_an_empty_csv_says_it_needs_a_header(tmp_path: Path) -> None:
    manifest = _write(tmp_path, "m.csv", "\n\n")
    assert _error(manifest) == f"{manifest}: empty manifest (a CSV manifest needs a header row)"


def test_rows_before_the_bad_one_are_yielded_then_the_error(tmp_path: Path) -> None:
    # The caller enqueues inside one transaction and rolls back on the error.
    manifest = _write(tmp_path, "m.csv", "path\na\nb\n/c\n")
    seen = []
    with pytest.raises(ManifestError, match="line 4"):
        for row in read_manifest(manifest):
            seen.append(row.path)
    assert seen == ["a", "b"]


# --- JSON Lines ------------------------------------------------------------------------------


def test_a_jsonl_manifest_gives_typed_rows(tmp_path: Path) -> None:
    manifest = _write(
        tmp_path,
        "m.jsonl",
        '{"path": "hr/leave.pdf", "labels": ["hr", " a;b "], "filename": "Leave.pdf",'
        ' "metadata": {"year": 2024, "score": 0.5, "public": false, "source": "nas"}}\n'
        "\n"
        '{"path": "plain.txt"}\r\n',
    )
    assert list(read_manifest(manifest)) == [
        ManifestRow(
            str(manifest),
            1,
            "hr/leave.pdf",
            ("hr", "a;b"),
            {"year": 2024, "score": 0.5, "public": False, "source": "nas"},
            "Leave.pdf",
        ),
        ManifestRow(str(manifest), 3, "plain.txt"),
    ]


def test_the_format_is_sniffed_when_the_extension_says_nothing(tmp_path: Path) -> None:
    jsonl = _write(tmp_path, "export.txt", '\n  {"path": "a"}\n')
    assert [row.path for row in read_manifest(jsonl)] == ["a"]
    ndjson = _write(tmp_path, "export.ndjson", '{"path": "b"}\n')
    assert [row.path for row in read_manifest(ndjson)] == ["b"]
    array = _write(tmp_path, "export.json", '[{"path": "a"}]\n')
    assert _error(array) == f"{array}: a JSON array is not JSON Lines (one object per line)"


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('{"path": "a",}', "bad JSON (Expecting property name enclosed in double quotes"),
        ('["a"]', "expected a JSON object, got a list"),
        ('{"path": "a", "tags": []}', "unknown key 'tags'; known: path, labels, metadata"),
        ('{"labels": ["x"]}', "'path' must be a string, got null"),
        ('{"path": 7}', "'path' must be a string, got a number"),
        ('{"path": "a", "labels": "x"}', "'labels' must be a list of strings"),
        ('{"path": "a", "labels": ["x", 1]}', "'labels' must be a list of strings"),
        ('{"path": "a", "labels": ["x", " "]}', "a label is empty"),
        ('{"path": "a", "metadata": "k=v"}', "'metadata' must be an object, got a string"),
        ('{"path": "a", "metadata": {"k": {"n": 1}}}', "metadata 'k' must be a string, number"),
        ('{"path": "a", "metadata": {"k": null}}', "or boolean, got null"),
        ('{"path": "a", "metadata": {"": 1}}', "a metadata key is empty"),
        ('{"path": "a", "metadata": {"k": NaN}}', "bad JSON (NaN is not a JSON number)"),
        ('{"path": "a", "filename": ""}', "'filename' is empty"),
        ('{"path": "a", "filename": 3}', "'filename' must be a string, got a number"),
        ('{"path": "/abs"}', "path '/abs' is absolute"),
        ('{"path": "../x"}', "path '../x' leaves DIR"),
        ('{"path": "ok.txt"}', "path 'ok.txt' is listed twice (first on line 1)"),
    ],
)
def test_jsonl_errors_name_the_file_and_line(tmp_path: Path, line: str, error: str) -> None:
    manifest = _write(tmp_path, "m.jsonl", '{"path": "ok.txt"}\n\n' + line + "\n")
    message = _error(manifest)
    assert message.startswith(f"{manifest} line 3: "), message
    assert error in message, message


def test_a_missing_manifest_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    assert _error(missing) == f"cannot read manifest {missing}: No such file or directory"


# --- resolve -----------------------------------------------------------------------------------


def test_resolve_gives_the_exact_bytes_of_a_file_in_dir(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "hr").mkdir(parents=True)
    (root / "hr" / "leave.pdf").write_bytes(b"x")
    odd = os.fsencode(root) + b"/caf\xe9.txt"  # not UTF-8
    with open(odd, "wb") as f:
        f.write(b"y")
    manifest = _write(tmp_path, "m.csv", b"path\nhr/./leave.pdf\ncaf\xe9.txt\n")
    rows = list(read_manifest(manifest, encoding="utf-8"))  # --manifest-encoding utf-8
    assert [resolve(str(root), row) for row in rows] == [
        os.fsencode(root / "hr" / "leave.pdf"),
        odd,
    ]
    assert resolve(os.fsencode(root), rows[1]) == odd


@pytest.mark.posix_only("makes symbolic links (a privilege on Windows)")
def test_resolve_errors_name_the_line(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "folder").mkdir(parents=True)
    outside = tmp_path / "secret.txt"
    outside.write_text("s")
    (root / "link.txt").symlink_to(outside)
    (root / "linked").symlink_to(tmp_path)
    manifest = _write(tmp_path, "m.csv", "path\nnope.pdf\nfolder\nlink.txt\nlinked/secret.txt\n")
    rows = list(read_manifest(manifest))
    errors = []
    for row in rows:
        with pytest.raises(ManifestError) as caught:
            resolve(root, row)  # type: ignore[arg-type]
        errors.append(str(caught.value))
    assert errors == [
        f"{manifest} line 2: 'nope.pdf' names no file in {root}",
        f"{manifest} line 3: 'folder' is not a regular file",
        f"{manifest} line 4: 'link.txt' goes through a symbolic link",
        f"{manifest} line 5: 'linked/secret.txt' goes through a symbolic link",
    ]
    assert resolve(str(root), rows[2], follow_symlinks=True) == os.fsencode(root / "link.txt")


def test_a_label_that_is_not_utf8_is_refused_by_line(tmp_path: Path) -> None:
    manifest = _write(tmp_path, "m.csv", b"path,labels\na,ok\nb,caf\xe9\n")
    with pytest.raises(ManifestError) as caught:
        list(read_manifest(manifest, encoding="utf-8"))  # --manifest-encoding utf-8
    assert str(caught.value) == f"{manifest} line 3: a label is not valid UTF-8"
    assert _error(manifest) == (
        f"{manifest}: neither UTF-8 nor cp950: save it as UTF-8 (Excel: CSV UTF-8) or name its"
        " encoding with --manifest-encoding"
    )


# --- streaming ---------------------------------------------------------------------------------


def test_a_large_manifest_is_streamed_not_held(tmp_path: Path) -> None:
    count = 20_000
    manifest = tmp_path / "big.csv"
    with open(manifest, "w", encoding="utf-8") as out:
        out.write("path,labels,meta.source,filename\n")
        for i in range(count):
            out.write(f"folder-{i % 100}/a-fairly-long-file-name-{i:07d}.pdf,hr;x,nas,Doc {i}\n")
    tracemalloc.start()
    try:
        rows = sum(1 for _ in read_manifest(manifest))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == count
    # Held rows would take over 17 MB; one 8-byte digest per path (in a set) is about 3 MB.
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


# --- the option helpers ------------------------------------------------------------------------


def test_parse_metadata_option() -> None:
    assert parse_metadata_option("source=nas") == ("source", "nas")
    assert parse_metadata_option(" k =a=b ") == ("k", "a=b ")
    assert parse_metadata_option("empty=") == ("empty", "")
    for bad in ("novalue", "=x", " =x", ""):
        with pytest.raises(ValueError, match="use KEY=VALUE"):
            parse_metadata_option(bad)


def test_labels_from_path() -> None:
    assert labels_from_path("hr/policies/2024/leave.pdf", 2) == ("hr", "policies")
    assert labels_from_path("leave.pdf", 3) == (), "a file at the top level has no folders"
    assert labels_from_path("hr/leave.pdf", 5) == ("hr",), "N beyond the depth: every folder"
    assert labels_from_path("hr/leave.pdf", 0) == ()
    assert labels_from_path("a//./b/c.txt", 2) == ("a", "b")
    assert labels_from_path("x/x/f", 2) == ("x",)
    with pytest.raises(ValueError):
        labels_from_path("a/b", -1)


def test_the_duplicate_check_can_be_left_to_the_database(tmp_path: Path) -> None:
    manifest = _write(tmp_path, "m.csv", "path\na\na\n")
    assert [r.line for r in read_manifest(manifest, check_duplicates=False)] == [2, 3]
