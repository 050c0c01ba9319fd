"""`--manifest FILE`: per-file labels, metadata and display name from a document-management
export, plus the `--metadata KEY=VALUE` and `--labels-from-path N` helpers.

Two formats, chosen by the extension (`.csv`; `.jsonl` or `.ndjson`), else by the first
non-blank character (`{` → JSON Lines, anything else → CSV):

CSV (or tab-separated: the header line says which), a header row naming the columns:
    path,labels,meta.source,meta.year,filename
    hr/leave.pdf,hr;policies,nas,2024,Leave policy.pdf
An Excel workbook (`.xlsx`) is read directly: its first sheet, the same columns.
- `path` (required): relative to DIR, `/`- or `\\`-separated (Excel users write `合約\\a.txt`).
- `labels`: names separated by `;` (what people type in a spreadsheet; a JSON array in a cell
  needs every quote doubled). A label containing `;` needs JSON Lines.
- `meta.KEY` columns: one metadata key each, the cell its value, always a string (no type
  guessing: `007` stays `007`); an empty cell leaves the key out for that row.
- `filename` (optional): the name shown in the knowledge base; an empty cell means none.

JSON Lines, one object per line (blank lines skipped):
    {"path": "hr/leave.pdf", "labels": ["hr"], "metadata": {"year": 2024}, "filename": "x.pdf"}
- `labels`: a list of strings; `metadata`: an object of string → string, number or boolean.

CSV cells are stripped of surrounding blanks (spreadsheets pad them) and column names match
without case; JSON strings are taken as they are, but labels are stripped in both.

Both: labels are stripped of surrounding blanks, must not be empty, and repeats are dropped;
a path must not be absolute, contain `..`, or be listed twice (`a/./b` and `a/b` are the same).
Any other column or key is an error, so a typo is never silently ignored.

Text manifests are read in what Excel writes: a BOM names the encoding (UTF-8, or UTF-16 for
Excel's "Unicode text"); else UTF-8 when every byte is; else the encoding given
(`--manifest-encoding`, default cp950: Excel's "CSV" on Traditional Chinese Windows is Big5).
Decoded as UTF-8, undecodable bytes are kept with `surrogateescape` (`--manifest-encoding
utf-8` asks for that), so a file name that is not UTF-8 can still be named, as JSON's `\\udcXX`
escapes can; `resolve` turns it back into the exact bytes.

The file is streamed: rows come one at a time, and the duplicate check keeps an 8-byte digest
per path, not the rows. Every error is one `ManifestError` line naming the file and line.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as dt
import hashlib
import json
import os
import re
import stat
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO

from . import paths
from .i18n import _

MetadataValue = str | int | float | bool

_COLUMNS = frozenset(("path", "labels", "filename"))
_META = "meta."
_JSON_KEYS = frozenset(("path", "labels", "metadata", "filename"))
_CSV_EXTENSIONS = frozenset((".csv",))
_JSONL_EXTENSIONS = frozenset((".jsonl", ".ndjson"))
_XLSX_EXTENSIONS = frozenset((".xlsx", ".xlsm"))
_SNIFF_CHARS = 4096
_MAX_SHOWN = 80
DEFAULT_ENCODING = "cp950"  # Excel's "CSV" on Traditional Chinese Windows (Big5)
XLSX = "xlsx"  # what `encoding_of` says of a workbook: no text encoding
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_UTF8 = frozenset(("utf-8", "utf-8-sig"))
_DRIVE = re.compile(r"[A-Za-z]:")
_CHECK_CHUNK = 1 << 20


class ManifestError(Exception):
    """A manifest that cannot be used, in one line: `FILE line N: what is wrong`."""


@dataclass(frozen=True)
class ManifestRow:
    """One file of the manifest. `path` is normalised (no `.` or empty parts), relative to DIR."""

    file: str
    line: int
    path: str
    labels: tuple[str, ...] = ()
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)
    filename: str | None = None
    unit: str = "line"  # "row" in a workbook

    @property
    def where(self) -> str:
        return _where(self.file, self.unit, self.line)


def read_manifest(
    manifest: str | os.PathLike[str],
    check_duplicates: bool = True,
    encoding: str | None = None,
) -> Iterator[ManifestRow]:
    """The rows of a manifest, streamed, checked as they are read (see the module docstring).
    Raises ManifestError at the first bad row, naming the file and line.

    `encoding`: what `encoding_of` said (found again when None). The duplicate check costs
    about 60 bytes per row (an 8-byte digest in a set); a caller whose database already
    refuses a path twice in one transaction may turn it off.
    """
    name = os.fspath(manifest)
    chosen = encoding or encoding_of(name)
    with _rows(name, chosen) as rows:
        seen: set[int] = set()
        for row in rows:
            if check_duplicates:
                digest = _digest(unicodedata.normalize("NFC", row.path))
                if digest in seen:
                    _duplicate(name, chosen, row)
                seen.add(digest)
            yield row


def encoding_of(name: str, fallback: str = DEFAULT_ENCODING) -> str:
    """The encoding a manifest is read in: `XLSX` for a workbook; its BOM's; UTF-8 when every
    byte of it is (one pass over the file, in chunks); else `fallback`."""
    if os.path.splitext(name)[1].lower() in _XLSX_EXTENSIONS:
        return XLSX
    try:
        with open(name, "rb") as file:
            head = file.read(4)
            for bom, encoding in _BOMS:
                if head.startswith(bom):
                    return encoding
            file.seek(0)
            decoder = codecs.getincrementaldecoder("utf-8")()
            try:
                while chunk := file.read(_CHECK_CHUNK):
                    decoder.decode(chunk)
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                return fallback
    except OSError as exc:
        raise ManifestError(
            _("cannot read manifest {file}: {why}").format(file=name, why=exc.strerror or exc)
        ) from None
    return "utf-8"


def is_utf8(encoding: str) -> bool:
    """Whether a manifest read in `encoding` was plain UTF-8 (nothing worth saying)."""
    return encoding in _UTF8


def resolve(folder: str | bytes, row: ManifestRow, follow_symlinks: bool = False) -> bytes:
    """The file of `folder` that `row` names, as bytes. It must be a regular file inside
    `folder`; without `follow_symlinks` neither the file nor a folder on the way may be a
    symbolic link (as for a walk of the folder)."""
    root = paths.canonical(os.fsencode(folder))
    path = _stored(root, row)
    try:
        st = os.stat(path) if follow_symlinks else os.lstat(path)
    except OSError:
        raise ManifestError(
            _("{where}: {path} names no file in {folder}").format(
                where=row.where, path=_shown(row.path), folder=_dir(root)
            )
        ) from None
    if not follow_symlinks:
        # the disk's spelling (Windows, macOS): a manifest's `A.TXT` is no link to `a.txt`
        real = paths.canonical(path)
        if not paths.same_file_name(real, path):
            raise ManifestError(
                _("{where}: {path} goes through a symbolic link").format(
                    where=row.where, path=_shown(row.path)
                )
            )
        path = real  # one spelling per file, as a walk of the folder would store it
    if not stat.S_ISREG(st.st_mode):
        raise ManifestError(
            _("{where}: {path} is not a regular file").format(
                where=row.where, path=_shown(row.path)
            )
        )
    return path


def _stored(root: bytes, row: ManifestRow) -> bytes:
    """The path `row` names as the disk stores it. Unicode has two forms of an accented name:
    an export written in NFC (most software) names a file a Mac keeps in NFD, or the other way
    round. A part that does not exist as written is the one entry of its folder equal to it
    once both are normalised; two such entries are ambiguous, none leaves the path as written
    (the caller says it names no file)."""
    path = root
    for part in os.fsencode(row.path).split(b"/"):
        exact = os.path.join(path, part)
        if os.path.lexists(exact):
            path = exact
            continue
        wanted = unicodedata.normalize("NFC", os.fsdecode(part))
        try:
            with os.scandir(path) as entries:
                same = [e.name for e in entries if _nfc(e.name) == wanted]
        except OSError:
            same = []
        if len(same) > 1:
            raise ManifestError(
                _(
                    "{where}: {path} matches {n} files whose names differ only in their "
                    "Unicode form; name one by its exact form"
                ).format(where=row.where, path=_shown(row.path), n=len(same))
            )
        if not same:
            return os.path.join(root, os.fsencode(row.path))
        path = os.path.join(path, same[0])
    return path


def _where(name: str, unit: str, line: int) -> str:
    """`manifest.csv line 3`, or a workbook's `row 3`."""
    shown = _("{file} row {n}") if unit == "row" else _("{file} line {n}")
    return shown.format(file=name, n=line)


def _nfc(name: bytes) -> str:
    return unicodedata.normalize("NFC", os.fsdecode(name))


def parse_metadata_option(text: str) -> tuple[str, str]:
    """`--metadata KEY=VALUE` → (KEY, VALUE). Split at the first `=`, so the value may hold
    more; the key is stripped and must not be empty; the value is kept as typed (it may be
    empty). Raises ValueError with a one-line message."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(
            _("invalid metadata {text!r}: use KEY=VALUE, e.g. source=nas").format(text=text)
        )
    return key, value


def labels_from_path(relpath: str, depth: int) -> tuple[str, ...]:
    """`--labels-from-path N`: the first N folder names of a relative path.

    `hr/policies/2024/leave.pdf` with 2 → (`hr`, `policies`). A file at the top level has
    no folders, so no labels; N larger than the depth gives every folder (not an error); 0
    gives none. Empty and `.` parts are skipped. Raises ValueError for a negative N.
    """
    if depth < 0:
        raise ValueError(_("--labels-from-path must be 0 or more"))
    folders = [part for part in relpath.split("/")[:-1] if part not in ("", ".")]
    return tuple(dict.fromkeys(folders[:depth]))


@contextlib.contextmanager
def _rows(name: str, encoding: str) -> Iterator[Iterator[ManifestRow]]:
    """The rows of the manifest in `encoding` (see `encoding_of`), unchecked for duplicates."""
    if encoding == XLSX:
        with _workbook(name) as records:
            yield _table_rows(name, records, "row")
        return
    with _open(name, encoding) as handle:
        rows = (
            _jsonl_rows(name, handle)
            if _is_jsonl(name, handle)
            else _table_rows(name, _csv_records(name, handle), "line")
        )
        yield _decoded(name, encoding, rows)


def _open(name: str, encoding: str) -> IO[str]:
    errors = "surrogateescape" if is_utf8(encoding) else "strict"
    try:
        return open(name, encoding=encoding, errors=errors, newline="")
    except OSError as exc:
        raise ManifestError(
            _("cannot read manifest {file}: {why}").format(file=name, why=exc.strerror or exc)
        ) from None
    except LookupError:
        raise ManifestError(
            _("{file}: unknown encoding {encoding!r}").format(file=name, encoding=encoding)
        ) from None


def _decoded(name: str, encoding: str, rows: Iterator[ManifestRow]) -> Iterator[ManifestRow]:
    """A byte the chosen encoding has no character for is an error naming the encoding (the
    file is not UTF-8 either, or it would have been read so)."""
    try:
        yield from rows
    except UnicodeDecodeError:
        raise ManifestError(
            _(
                "{file}: neither UTF-8 nor {encoding}: save it as UTF-8 (Excel: CSV UTF-8) or "
                "name its encoding with --manifest-encoding"
            ).format(file=name, encoding=encoding)
        ) from None


# --- format detection ------------------------------------------------------------------------


def _is_jsonl(name: str, handle: IO[str]) -> bool:
    extension = os.path.splitext(name)[1].lower()
    if extension in _CSV_EXTENSIONS:
        return False
    try:
        start = handle.read(_SNIFF_CHARS).lstrip()
    except UnicodeDecodeError:
        start = ""  # said by `_decoded` when the rows are read
    handle.seek(0)
    handle.seek(0)
    if extension not in _JSONL_EXTENSIONS and start.startswith("["):
        raise ManifestError(
            _("{file}: a JSON array is not JSON Lines (one object per line)").format(file=name)
        )
    return extension in _JSONL_EXTENSIONS or start.startswith("{")


# --- CSV -------------------------------------------------------------------------------------


Record = tuple[int, list[str]]  # a line (a sheet's row) and its cells


def _table_rows(name: str, records: Iterable[Record], unit: str) -> Iterator[ManifestRow]:
    """CSV's and a workbook's rows: a header, then one file per non-blank record. A sheet's
    row may end early (empty cells at its end are not stored): it is padded."""
    rows = ((line, cells) for line, cells in records if any(cell.strip() for cell in cells))
    first = next(rows, None)
    if first is None:
        raise ManifestError(
            _("{file}: empty manifest (a CSV manifest needs a header row)").format(file=name)
        )
    columns = _header(name, first[0], first[1], unit)
    for line, record in rows:
        if unit == "row":
            record = _fitted(record, len(columns))
        if len(record) != len(columns):
            raise ManifestError(
                _("{where}: {n} fields, the header has {columns}").format(
                    where=_where(name, unit, line), n=len(record), columns=len(columns)
                )
            )
        yield _csv_row(name, line, dict(zip(columns, record, strict=True)), unit)


def _fitted(record: list[str], width: int) -> list[str]:
    while len(record) > width and not record[-1].strip():
        record = record[:-1]
    return record + [""] * (width - len(record))


def _csv_records(name: str, handle: IO[str]) -> Iterator[Record]:
    """Comma- or tab-separated, as the header line shows (Excel's "Unicode text" is UTF-16
    with tabs)."""
    try:
        first = handle.readline()
    except UnicodeDecodeError:
        first = ""  # said by `_decoded`
    handle.seek(0)
    delimiter = "\t" if first.count("\t") > first.count(",") else ","
    reader = csv.reader(handle, delimiter=delimiter, strict=True)
    while True:
        line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ManifestError(
                _("{where}: malformed CSV ({why})").format(
                    where=_where(name, "line", line), why=exc
                )
            ) from None
        yield line, record


@contextlib.contextmanager
def _workbook(name: str) -> Iterator[Iterator[Record]]:
    """The first sheet of an Excel workbook, a row at a time (openpyxl's read-only mode)."""
    from openpyxl import load_workbook  # slow to import: only for workbooks

    try:
        book = load_workbook(name, read_only=True, data_only=True)
    except OSError as exc:
        raise ManifestError(
            _("cannot read manifest {file}: {why}").format(file=name, why=exc.strerror or exc)
        ) from None
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ManifestError(
            _("{file}: not an Excel workbook (.xlsx) ({why})").format(file=name, why=exc)
        ) from None
    try:
        sheet = book.worksheets[0]
        yield (
            (number, [_cell(value) for value in row])
            for number, row in enumerate(sheet.iter_rows(values_only=True), start=1)
        )
    finally:
        book.close()


def _cell(value: object) -> str:
    """A cell as the text Excel shows: 2024 not 2024.0, a date as 2024-03-01."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(" ")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def _header(name: str, line: int, header: list[str], unit: str) -> list[str]:
    if unit == "row":
        header = _fitted(header, 0)
    columns = [_column(cell) for cell in header]
    where = _where(name, unit, line)
    for column in columns:
        if column.startswith(_META):
            if not column[len(_META) :].strip():
                raise ManifestError(
                    _("{where}: column {column!r} names no key").format(where=where, column=column)
                )
        elif column not in _COLUMNS:
            hint = _(" (use one meta.KEY column per key)") if column == "metadata" else ""
            raise ManifestError(
                _(
                    "{where}: unknown column {column!r}{hint}; known: path, labels, filename, "
                    "meta.KEY"
                ).format(where=where, column=column, hint=hint)
            )
    repeated = {c for c in columns if columns.count(c) > 1}
    if repeated:
        raise ManifestError(
            _("{where}: column {column!r} appears twice").format(
                where=where, column=sorted(repeated)[0]
            )
        )
    if "path" not in columns:
        raise ManifestError(_("{where}: no 'path' column in the header").format(where=where))
    return columns


def _column(cell: str) -> str:
    """Column names are matched without case (an export may say `Path`); a metadata key keeps
    its case (`meta.Year` is the key `Year`)."""
    name = cell.strip()
    if name.lower().startswith(_META):
        return _META + name[len(_META) :].strip()
    return name.lower() if name.lower() in _COLUMNS else name


def _csv_row(name: str, line: int, cells: dict[str, str], unit: str) -> ManifestRow:
    where = _where(name, unit, line)
    labels = cells.get("labels", "")
    metadata = {
        column[len(_META) :]: _text(
            where, _("metadata {key!r}").format(key=column[len(_META) :]), value
        )
        for column, value in cells.items()
        if column.startswith(_META) and value != ""
    }
    return ManifestRow(
        file=name,
        line=line,
        path=_path(where, cells["path"].strip()),
        labels=_labels(where, labels.split(";")) if labels.strip() else (),
        metadata=metadata,
        filename=_filename(where, cells.get("filename", "").strip() or None),
        unit=unit,
    )


# --- JSON Lines ------------------------------------------------------------------------------


def _jsonl_rows(name: str, handle: IO[str]) -> Iterator[ManifestRow]:
    for line, text in enumerate(handle, start=1):
        if text.strip():
            yield _jsonl_row(name, line, text)


def _jsonl_row(name: str, line: int, text: str) -> ManifestRow:
    where = _where(name, "line", line)
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise ManifestError(_("{where}: bad JSON ({why})").format(where=where, why=exc)) from None
    if not isinstance(obj, dict):
        raise ManifestError(
            _("{where}: expected a JSON object, got {what}").format(
                where=where, what=_json_type(obj)
            )
        )
    unknown = sorted(set(obj) - _JSON_KEYS)
    if unknown:
        raise ManifestError(
            _("{where}: unknown key {key!r}; known: path, labels, metadata, filename").format(
                where=where, key=unknown[0]
            )
        )
    path = obj.get("path")
    if not isinstance(path, str):
        raise ManifestError(
            _("{where}: {field} must be a string, got {what}").format(
                where=where, field="'path'", what=_json_type(path)
            )
        )
    labels = obj.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ManifestError(_("{where}: 'labels' must be a list of strings").format(where=where))
    filename = obj.get("filename")
    if filename is not None and not isinstance(filename, str):
        raise ManifestError(
            _("{where}: {field} must be a string, got {what}").format(
                where=where, field="'filename'", what=_json_type(filename)
            )
        )
    if filename is not None and not filename.strip():
        raise ManifestError(_("{where}: {field} is empty").format(where=where, field="'filename'"))
    return ManifestRow(
        file=name,
        line=line,
        path=_path(where, path),
        labels=_labels(where, labels),
        metadata=_json_metadata(where, obj.get("metadata", {})),
        filename=_filename(where, filename),
    )


def _json_metadata(where: str, metadata: object) -> dict[str, MetadataValue]:
    if not isinstance(metadata, dict):
        raise ManifestError(
            _("{where}: 'metadata' must be an object, got {what}").format(
                where=where, what=_json_type(metadata)
            )
        )
    out: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not key.strip():
            raise ManifestError(_("{where}: a metadata key is empty").format(where=where))
        _text(where, _("a metadata key"), key)
        if isinstance(value, str):
            out[key] = _text(where, _("metadata {key!r}").format(key=key), value)
        elif isinstance(value, (bool, int, float)):
            out[key] = value
        else:
            raise ManifestError(
                _(
                    "{where}: metadata {key!r} must be a string, number or boolean, got {what}"
                ).format(where=where, key=key, what=_json_type(value))
            )
    return out


def _no_constant(name: str) -> float:
    # NaN and Infinity are not JSON: the register request could not carry them.
    raise ValueError(_("{name} is not a JSON number").format(name=name))


def _json_type(value: object) -> str:
    names = {dict: _("an object"), list: _("a list"), str: _("a string"), bool: _("a boolean")}
    if value is None:
        return _("null")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _("a number")
    return names.get(type(value), type(value).__name__)


# --- fields ----------------------------------------------------------------------------------


def _path(where: str, text: str) -> str:
    """A relative path, `.` and empty parts dropped; absolute, `..` or empty → error."""
    if not text:
        raise ManifestError(_("{where}: {field} is empty").format(where=where, field="'path'"))
    if "\0" in text:
        raise ManifestError(_("{where}: 'path' contains a NUL character").format(where=where))
    text = text.replace("\\", "/")
    if text.startswith("/") or _DRIVE.match(text):
        raise ManifestError(
            _("{where}: path {path} is absolute; give it relative to DIR").format(
                where=where, path=_shown(text)
            )
        )
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ManifestError(
            _("{where}: path {path} leaves DIR ('..' is not allowed)").format(
                where=where, path=_shown(text)
            )
        )
    if not parts:
        raise ManifestError(
            _("{where}: path {path} names DIR itself, not a file").format(
                where=where, path=_shown(text)
            )
        )
    return "/".join(parts)


def label_name(raw: str) -> str:
    """A label as it is sent, wherever it was given (a manifest, --label): stripped of
    surrounding blanks, not empty, valid UTF-8 (it travels as JSON). Raises ValueError
    saying why ('is empty', 'is not valid UTF-8'), for the caller to name the label."""
    label = raw.strip()
    if not label:
        raise ValueError(_("is empty"))
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(_("is not valid UTF-8")) from None
    return label


def _labels(where: str, names: list[str]) -> tuple[str, ...]:
    labels = []
    for raw in names:
        try:
            labels.append(label_name(raw))
        except ValueError as exc:
            raise ManifestError(
                _("{where}: a label {problem}").format(where=where, problem=exc)
            ) from None
    return tuple(dict.fromkeys(labels))


def _filename(where: str, filename: str | None) -> str | None:
    return None if filename is None else _text(where, "'filename'", filename)


def _text(where: str, what: str, value: str) -> str:
    """Text that will travel as JSON: undecodable bytes (kept as surrogates) cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(
            _("{where}: {what} is not valid UTF-8").format(where=where, what=what)
        ) from None
    return value


def _digest(path: str) -> int:
    data = path.encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _duplicate(name: str, encoding: str, row: ManifestRow) -> None:
    """Raise for a path listed twice, naming the first line (found by reading the file again:
    this is the error path, and it keeps the happy path to one digest per row). A digest
    collision between two different paths is not a duplicate: then nothing is raised."""
    for earlier in _rows_before(name, encoding, row.line):
        if unicodedata.normalize("NFC", earlier.path) == unicodedata.normalize("NFC", row.path):
            raise ManifestError(
                _("{where}: path {path} is listed twice (first on line {line})").format(
                    where=row.where, path=_shown(row.path), line=earlier.line
                )
            )


def _rows_before(name: str, encoding: str, line: int) -> Iterator[ManifestRow]:
    """The rows that start before `line`, without the duplicate check."""
    with _rows(name, encoding) as rows:
        for row in rows:
            if row.line >= line:
                return
            yield row


def _shown(path: str) -> str:
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…")


def _dir(root: bytes) -> str:
    return os.fsdecode(root).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
