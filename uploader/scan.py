"""Walking the folder: which files to queue, streamed in batches so a million never sit in memory.

Paths are handled as bytes end to end: a file name that is not valid UTF-8 is still a file
the user wants uploaded, and bytes are the only lossless form of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import stat
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import bracex
from wcmatch import glob

from . import filetypes, paths, queue
from .i18n import N_, _
from .manifest import ManifestError, read_manifest, resolve
from .moves import Moves
from .queue import EnqueueCounts, ScanRow
from .store.parse import ParseStore
from .tags import TagOptions

log = logging.getLogger("uploader.scan")

CLUTTER = frozenset({b"thumbs.db", b"desktop.ini", b"ehthumbs.db"})
_CLUTTER_LENGTHS = frozenset(map(len, CLUTTER))  # most names need no lower-case copy
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'500M' -> bytes. Units are binary like rclone's (k = KiB, M = MiB, G = GiB)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(
            _("invalid size {text!r}: use a number with an optional k, M, G or T").format(text=text)
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_max_size(text: str) -> int | None:
    """--max-size: a size, or `off` for no limit (rclone's word). Zero is refused: as in
    rclone it would mean "zero bytes", skipping every file that is not empty, which is never
    what someone uploading a folder wants and is most often a guess at "no limit"."""
    if text.strip().lower() == "off":
        return None
    size = parse_size(text)
    if size == 0:
        raise ValueError(
            _(
                "{text!r} would skip every file that is not empty (0 means zero bytes, as in"
                " rclone, not no limit): leave --max-size out, or give 'off', for no limit"
            ).format(text=text)
        )
    return size


def display(path: bytes) -> str:
    """A path as text: undecodable bytes shown as \\xNN escapes, never an exception."""
    return path.decode("utf-8", "backslashreplace")


NOT_UTF8 = N_(
    "the name is not valid UTF-8: give its encoding with --filename-encoding (cp950 for Big5)"
)
_SHOWN_UNDECODABLE = 5


def name_text(rel: bytes, encoding: str | None) -> str | None:
    """A relative path as the text the knowledge base shows: UTF-8, else decoded with
    --filename-encoding (a Big5 name from an old Samba share); None when neither reads it,
    for the file to be skipped rather than named with escape codes."""
    try:
        return rel.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if encoding is None:
        return None
    try:
        return rel.decode(encoding)
    except UnicodeDecodeError:
        return None


class PatternError(ValueError):
    """A --include/--exclude/--match pattern that is invalid or can match nothing: said at
    once, because a typo that silently matches nothing reads as "scanned 0" (or, for an
    exclude, uploads what the user meant to keep out)."""


# rclone's rules: `*` and `?` stop at `/`, `**` crosses folders, `{a,b}` alternates (nested
# too), `\` escapes, and `*` matches names starting with a dot. FORCEUNIX: `/` is the only
# separator and `\` always an escape, whatever the platform.
_FLAGS = glob.GLOBSTAR | glob.BRACE | glob.DOTGLOB | glob.FORCEUNIX
_LIMIT = 1000  # brace alternatives per pattern, wcmatch's own default
# Where names differ by case only in the eyes of the user: the volumes are case-insensitive.
IGNORE_CASE_DEFAULT = sys.platform in ("win32", "darwin")
_LEFTOVER_BRACE = re.compile(r"(?<!\\)[{}]")


def _unmatchable(segments: list[str], hidden_too: bool) -> bool:
    """A relative path never has an empty, `.` or `..` element, and (for an include) never a
    hidden one: enqueue leaves hidden entries out before any filter."""
    return any(s in ("", ".", "..") or (hidden_too and s.startswith(".")) for s in segments)


def _unclosed_bracket(pattern: str) -> bool:
    """An unescaped `[` that opens no class (no `]` before the next `/`): wcmatch would match
    it as a literal bracket, so `--include '['` silently matched nothing where rclone says
    the pattern is bad. A `]` right after `[` or `[!` is the class's own, as in every glob."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] == "[":
            j = i + 1
            j += pattern.startswith(("!", "^"), j)
            j += pattern.startswith("]", j)
            while j < len(pattern) and pattern[j] not in "]/":
                j += 2 if pattern[j] == "\\" else 1
            if j >= len(pattern) or pattern[j] == "/":
                return True
            i = j
        i += 1
    return False


def _check(pattern: str, role: str) -> str:
    """The pattern to compile (an exclude `dir/` as rclone's `dir/**`), or a PatternError
    saying what is wrong with it."""
    shown = f"--{role} {pattern!r}"
    if pattern in ("", "/"):
        raise PatternError(_("{pattern}: an empty pattern matches nothing").format(pattern=shown))
    if pattern.endswith("/"):
        if role != "exclude":
            raise PatternError(
                _("{pattern} names a folder and matches no file: use {instead!r}").format(
                    pattern=shown, instead=pattern + "**"
                )
            )
        pattern += "**"  # rclone: excluding `dir/` excludes everything below it
    try:
        expanded = bracex.expand(pattern, keep_escapes=True, limit=_LIMIT)
    except bracex.ExpansionLimitException:
        raise PatternError(
            _("{pattern}: more than {limit} alternatives").format(pattern=shown, limit=_LIMIT)
        ) from None
    if any(_LEFTOVER_BRACE.search(e) for e in expanded):
        if "{{" in pattern:
            raise PatternError(
                _("{pattern}: rclone's {{{{regexp}}}} syntax is not supported").format(
                    pattern=shown
                )
            )
        raise PatternError(
            _(
                "{pattern}: unbalanced {{ }} or a {{group}} without a comma (\\{{ for a literal "
                "brace)"
            ).format(pattern=shown)
        )
    if any(_unclosed_bracket(e) for e in expanded):
        raise PatternError(
            _(
                "{pattern}: unbalanced [ ] (a [class] closes before any /; \\[ for a literal "
                "bracket)"
            ).format(pattern=shown)
        )
    hidden_too = role != "exclude"
    if all(_unmatchable(e.lstrip("/").split("/"), hidden_too) for e in expanded):
        why = (
            _(
                "paths relative to the folder have no empty, '.' or '..' element, and hidden "
                "names are always left out"
            )
            if hidden_too
            else _("paths relative to the folder have no empty, '.' or '..' element")
        )
        raise PatternError(_("{pattern} can match nothing: {why}").format(pattern=shown, why=why))
    return pattern


def _regex(patterns: Sequence[str], flags: int = _FLAGS) -> re.Pattern[str] | None:
    """One compiled regex for many wcmatch patterns: a path costs one `match`, not a wcmatch
    call per pattern."""
    if not patterns:
        return None
    positive, _negative = glob.translate(patterns, flags=flags, limit=_LIMIT)
    return re.compile("|".join(f"(?:{p})" for p in positive))


@dataclass(frozen=True)
class _Union:
    """Checked patterns with rclone's anchoring: a leading `/` anchors at the enqueued folder;
    any other pattern matches whole trailing path elements at any depth (`b.txt` matches
    `a/b.txt`, not `ab.txt`), which is `**/` in front. A pattern without `/` (most, e.g.
    `*.pdf`) can then only match the last element, and is matched against the name alone:
    three times faster than a `**/` regex."""

    names: re.Pattern[str] | None
    paths: re.Pattern[str] | None

    @classmethod
    def of(cls, patterns: Sequence[str], flags: int = _FLAGS) -> _Union | None:
        if not patterns:
            return None
        names = [p for p in patterns if "/" not in p]
        paths = [p[1:] if p.startswith("/") else "**/" + p for p in patterns if "/" in p]
        return cls(_regex(names, flags), _regex(paths, flags))

    def match(self, relpath: str) -> bool:
        if self.names is not None and self.names.match(relpath.rpartition("/")[2]):
            return True
        return self.paths is not None and self.paths.match(relpath) is not None


def _prune_rule(pattern: str) -> str | None:
    """The folder pattern F of an exclude `F/**`: a folder F matches holds only excluded
    files, so the walk need not enter it (rclone's directory filter rules do the same)."""
    if pattern in ("**", "/**"):
        return "**"
    return pattern[: -len("/**")] if pattern.endswith("/**") else None


@dataclass
class Filters:
    """--include / --exclude on the relative path: excludes win, includes (if any) must match.
    An invalid pattern raises PatternError here, before any file is looked at. `types`: the
    file types the knowledge base accepts (None: any, --any-type); a file of another type is
    recorded skipped with the reason, never uploaded."""

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    max_size: int | None = None
    filename_encoding: str | None = None  # of names that are not UTF-8 (--filename-encoding)
    types: frozenset[str] | None = None
    ignore_case: bool = IGNORE_CASE_DEFAULT  # --ignore-case: `*.PDF` matches `a.pdf`
    backslash_separates: bool = sys.platform == "win32"  # `合約\\**` as `合約/**`
    # --min-age: a file modified after this (ns since the epoch) is still being written,
    # perhaps: left out of this scan, queued by a later one (sync --watch: a few seconds)
    newer_than_ns: int | None = None
    _inc: _Union | None = field(init=False, repr=False)
    _exc: _Union | None = field(init=False, repr=False)
    _prune: _Union | None = field(init=False, repr=False)
    _each: dict[str, _Union] = field(init=False, repr=False)  # "--include 'x'": its matcher
    _unseen: set[str] = field(init=False, repr=False)  # filters that matched nothing yet

    def __post_init__(self) -> None:
        if self.backslash_separates:
            self.include = [p.replace("\\", "/") for p in self.include]
            self.exclude = [p.replace("\\", "/") for p in self.exclude]
        flags = _FLAGS | (glob.IGNORECASE if self.ignore_case else 0)
        includes = [_check(p, "include") for p in self.include]
        excludes = [_check(p, "exclude") for p in self.exclude]
        self._inc = _Union.of(includes, flags)
        self._exc = _Union.of(excludes, flags)
        self._prune = _Union.of([f for f in map(_prune_rule, excludes) if f is not None], flags)
        self._each = {}
        for role, given, checked in [
            *(("include", g, c) for g, c in zip(self.include, includes, strict=True)),
            *(("exclude", g, c) for g, c in zip(self.exclude, excludes, strict=True)),
        ]:
            union = _Union.of([checked], flags)
            prune = _prune_rule(checked) if role == "exclude" else None
            if union is not None:
                self._each[f"--{role} {given!r}"] = union
            if prune is not None and (folder := _Union.of([prune], flags)) is not None:
                self._each[f"--{role} {given!r} "] = folder  # its folders, when pruned
        self._unseen = {key.rstrip() for key in self._each}

    def wanted(self, relpath: str) -> bool:
        if self._unseen:
            self._seen(relpath, folder=False)
        if self._exc is not None and self._exc.match(relpath):
            return False
        return self._inc is None or self._inc.match(relpath)

    def why_not(self, relpath: str, folder: bool = False) -> str:
        """Why `wanted` (or `pruned`, for a folder) left `relpath` out: the first filter that
        did, for enqueue -v."""
        for key, union in self._each.items():
            if key.startswith("--exclude") and key.endswith(" ") == folder and union.match(relpath):
                return f"excluded by {key.rstrip()}"
        return "matched by no --include"

    def pruned(self, relpath: str) -> bool:
        """True for a folder every file below which an exclude matches."""
        found = self._prune is not None and self._prune.match(relpath)
        if found and self._unseen:
            self._seen(relpath, folder=True)
        return found

    def _seen(self, relpath: str, folder: bool) -> None:
        for key, union in self._each.items():
            unseen = key.endswith(" ") == folder and key.rstrip() in self._unseen
            if unseen and union.match(relpath):
                self._unseen.discard(key.rstrip())

    def unmatched(self) -> list[str]:
        """The filters that matched no path of the walk (`--include '*.PDF'`), to be said:
        a filter that matches nothing is most often a typo or a Windows habit."""
        return sorted(self._unseen)


def matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """A predicate on relative paths for `retry-failed --match`, same glob rules as enqueue;
    PatternError for an invalid or empty list."""
    union = _Union.of([_check(p, "match") for p in patterns])
    if union is None:
        raise PatternError(_("--match needs a pattern"))
    return union.match


def is_ignored_name(name: bytes) -> bool:
    """Hidden entries and operating-system clutter never reach the queue."""
    return name.startswith((b".", b"~$")) or (
        len(name) in _CLUTTER_LENGTHS and name.lower() in CLUTTER
    )


# Where the uploader writes beside its database: cli._open_log (logs/) and
# report._default_folder (reports/); test_enqueue_own_files runs both, then checks neither is
# queued.
OWN_FOLDERS = (b"logs", b"reports")
# the database, SQLite's files beside it, and the folders of run and enqueue locks
_SIDE_FILES = (b"", b"-wal", b"-shm", b"-journal", b".runs", b".scans")

FileId = tuple[int, int]


@dataclass(frozen=True)
class OwnState:
    """The database, its side files and the folders the tool writes, never to be queued: the
    database holds the full path of every file, and uploading it would re-queue it as
    "changed" on every enqueue. Held by identity, never by path text, so `enqueue .` from
    beside the database, a relative --db, a link to a parent folder and --follow-symlinks
    all find them."""

    names: dict[FileId, frozenset[bytes]]  # per folder (by identity): its own names
    ids: frozenset[FileId]  # each of them that exists now, by identity

    @classmethod
    def of(cls, db_path: str) -> OwnState:
        """Both the path as given and its real target: SQLite may put the side files
        beside either when the database is a link."""
        given = os.path.abspath(os.fsencode(db_path))
        places: dict[bytes, set[bytes]] = {}
        for path in {given, os.path.realpath(given)}:
            folder, base = os.path.split(path)
            places.setdefault(folder, set()).update(base + s for s in _SIDE_FILES)
        places.setdefault(os.path.dirname(given), set()).update(OWN_FOLDERS)
        names: dict[FileId, frozenset[bytes]] = {}
        ids: set[FileId] = set()
        for folder, found in places.items():
            folder_id = _identity(folder)
            if folder_id is None:
                continue
            names[folder_id] = names.get(folder_id, frozenset()) | found
            ids.update(i for i in map(_identity, (os.path.join(folder, n) for n in found)) if i)
        return cls(names, frozenset(ids))


def _identity(path: bytes) -> FileId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class UnreadableFolder:
    """A folder the walk could not read to its end (permission, I/O error, vanished meanwhile):
    what is below it was not seen, so nothing below it may be taken for gone."""

    path: bytes
    why: str

    def __str__(self) -> str:
        return f"{display(self.path)}: {self.why}"


@dataclass
class ScanStats:
    ignored: int = 0
    found: int = 0  # files the filters want (survey's count; enqueue's is its counts.scanned)
    unreadable_folders: list[UnreadableFolder] = field(default_factory=list)
    own: list[str] = field(default_factory=list)  # the uploader's own files met, left out
    undecodable: int = 0  # files skipped as NOT_UTF8
    undecodable_shown: list[str] = field(default_factory=list)  # the first few, escaped
    young: int = 0  # files modified too recently (--min-age), left for a later scan

    def count_undecodable(self, row: ScanRow) -> None:
        # `_()` looks its catalogue up on disk at every call: asked of skipped rows only, not
        # of every file of the walk (it was two thirds of the walk's time)
        if row.skip is not None and row.skip == _(NOT_UTF8):
            self.undecodable += 1
            if len(self.undecodable_shown) < _SHOWN_UNDECODABLE:
                self.undecodable_shown.append(row.relpath)

    # files skipped for their type, per extension ("" for none): enqueue's summary names them
    unsupported: Counter[str] = field(default_factory=Counter)


def walk(
    root: bytes,
    filters: Filters,
    follow_symlinks: bool,
    stats: ScanStats,
    own: OwnState | None = None,
) -> Iterator[ScanRow]:
    """Depth-first walk with an explicit stack (a tree 200 levels deep needs no recursion),
    streaming each folder's entries (a folder of a million files is never listed in memory).
    With --follow-symlinks a folder already visited (by device and inode) is never entered
    twice, so link loops end. A folder an exclude matches whole is not entered at all."""
    own = own or OwnState({}, frozenset())
    root = paths.canonical(root)
    root_stat = os.stat(root)
    root_id = (root_stat.st_dev, root_stat.st_ino)
    if root_id in own.ids:
        stats.own.append(display(root) + "/")
        return
    seen = {root_id}
    stack = [(root, root_id)]
    prefix = paths.prefix_length(root)
    while stack:
        folder, folder_id = stack.pop()
        own_here = own.names.get(folder_id, frozenset())
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if is_ignored_name(entry.name):
                        stats.ignored += 1
                        if log.isEnabledFor(logging.INFO):
                            _left_out(paths.below(entry.path, prefix), "hidden or system file")
                        continue
                    st = _stat(entry, follow_symlinks)
                    if entry.name in own_here or (
                        st is not None and (st.st_dev, st.st_ino) in own.ids
                    ):
                        is_dir = st is not None and stat.S_ISDIR(st.st_mode)
                        shown = display(paths.below(entry.path, prefix))
                        stats.own.append(shown + ("/" if is_dir else ""))
                        continue
                    if st is not None and stat.S_ISDIR(st.st_mode):
                        entry_id = (st.st_dev, st.st_ino)
                        below = os.fsdecode(paths.below(entry.path, prefix))
                        if filters.pruned(below):
                            stats.ignored += 1
                            _left_out(below + "/", filters.why_not(below, folder=True))
                        elif entry_id not in seen:
                            seen.add(entry_id)
                            stack.append((entry.path, entry_id))
                        continue
                    row = _row(entry, st, prefix, filters, stats)
                    if row is not None:
                        stats.count_undecodable(row)
                        yield row
        except OSError as exc:
            stats.unreadable_folders.append(UnreadableFolder(folder, exc.strerror or str(exc)))


def survey(
    root: str, filters: Filters, follow_symlinks: bool, own: OwnState | None = None
) -> ScanStats:
    """The walk of `enqueue --delete-removed --dry-run`, queueing nothing: which folders
    cannot be read, so that the dry run lists what the real one would mark, and warns alike."""
    stats = ScanStats()
    for _row in walk(os.fsencode(root), filters, follow_symlinks, stats, own):
        stats.found += 1
    return stats


def _left_out(rel: bytes | str, why: str) -> None:
    """enqueue -v names every file the walk leaves out, and why (the hot path asks
    `log.isEnabledFor` first where naming it costs)."""
    log.info("left out %s: %s", display(rel) if isinstance(rel, bytes) else rel, why)


def _stat(entry: os.DirEntry[bytes], follow: bool) -> os.stat_result | None:
    try:
        if not follow and entry.is_symlink():
            return None
        return entry.stat(follow_symlinks=follow)
    except OSError:
        return None


def _row(
    entry: os.DirEntry[bytes],
    st: os.stat_result | None,
    prefix: int,
    filters: Filters,
    stats: ScanStats,
) -> ScanRow | None:
    """The queue row for a regular file the filters want; None for everything else (counted
    ignored, and named at -v)."""
    rel = paths.below(entry.path, prefix)
    if st is None or not stat.S_ISREG(st.st_mode):
        stats.ignored += 1
        if log.isEnabledFor(logging.INFO):
            link = st is None and entry.is_symlink()
            why = "a symbolic link (--follow-symlinks follows it)" if link else "not a file"
            _left_out(rel, why)
        return None
    text = name_text(rel, filters.filename_encoding)
    name = os.fsdecode(rel) if text is None else text
    if not filters.wanted(name):
        stats.ignored += 1
        if log.isEnabledFor(logging.INFO):
            _left_out(rel, filters.why_not(name))
        return None
    if filters.newer_than_ns is not None and st.st_mtime_ns > filters.newer_than_ns:
        stats.young += 1
        _left_out(rel, "modified too recently (--min-age): for a later scan")
        return None
    return _file_row(entry.path, rel, text, st, filters, entry.is_symlink(), stats)


def _file_row(
    path: bytes,
    rel: bytes,
    text: str | None,
    st: os.stat_result,
    filters: Filters,
    link: bool,
    stats: ScanStats,
    shown: str | None = None,
) -> ScanRow:
    """The row of a regular file, with why it is skipped if it is. `text`: its relative path
    as `name_text` reads it. Its type is the one of the name it is shown under (`shown`, a
    manifest's), which is what the service reads."""
    skip = None
    name = display(rel) if text is None else text
    refused = None
    if filters.types is not None:
        refused = filetypes.refusal(shown or name, filters.types)
    if text is None:
        skip = _(NOT_UTF8)
    elif filters.max_size is not None and st.st_size > filters.max_size:
        skip = _("larger than --max-size ({size} > {limit} bytes)").format(
            size=st.st_size, limit=filters.max_size
        )
    elif refused is not None:
        skip = refused
        stats.unsupported[filetypes.extension(shown or name)] += 1
    elif not _readable(path, st):
        skip = "unreadable: permission denied"
    # The upload opens with O_NOFOLLOW (a link swapped in later is refused), so a link that
    # --follow-symlinks followed is queued as the file it leads to.
    real = os.path.realpath(path) if link else path
    if skip is not None:
        _left_out(rel, f"skipped: {skip}")
    return ScanRow(real, name, st.st_size, st.st_mtime_ns, skip)


_UID = os.getuid() if hasattr(os, "getuid") else None  # real, as os.access asks


def _readable(path: bytes, st: os.stat_result) -> bool:
    """Whether the user may read the file. A file of the user's own with the owner's read bit
    is, as the walk's stat already says: asking the system again cost as much as the stat,
    once per file. Any other file (a group's, another user's, an ACL's) is asked."""
    if st.st_uid == _UID and st.st_mode & stat.S_IRUSR:
        return True
    return os.access(path, os.R_OK)


def manifest_rows(
    root: str,
    manifest: str,
    filters: Filters,
    follow_symlinks: bool,
    tags: TagOptions,
    stats: ScanStats,
    own: OwnState | None = None,
    encoding: str | None = None,
) -> Iterator[ScanRow]:
    """The files a manifest names, each with its labels, metadata and name shown; the first
    bad row (or one naming no file of `root`) raises ManifestError naming its line. The
    filters and --max-size apply as to a walk; the manifest names files, so hidden ones too.
    `encoding`: the manifest's (`manifest.encoding_of`; found again when None)."""
    own = own or OwnState({}, frozenset())
    for row in read_manifest(manifest, encoding=encoding):
        path = resolve(root, row, follow_symlinks)
        # as stored (NFC/NFD; Windows: the disk's case), `/`-separated
        rel = paths.slashed(os.path.relpath(path, paths.canonical(os.fsencode(root))))
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ManifestError(
                _("{where}: cannot read {path}: {why}").format(
                    where=row.where, path=display(rel), why=exc.strerror
                )
            ) from None
        if (st.st_dev, st.st_ino) in own.ids:
            stats.own.append(display(rel))
            continue
        if not filters.wanted(os.fsdecode(rel)):
            stats.ignored += 1
            if log.isEnabledFor(logging.INFO):
                _left_out(rel, filters.why_not(os.fsdecode(rel)))
            continue
        if filters.newer_than_ns is not None and st.st_mtime_ns > filters.newer_than_ns:
            stats.young += 1
            _left_out(rel, "modified too recently (--min-age): for a later scan")
            continue
        text = name_text(rel, filters.filename_encoding)
        link = os.path.islink(path)
        file_row = _file_row(path, rel, text, st, filters, link, stats, row.filename)
        stats.count_undecodable(file_row)
        yield dataclasses.replace(
            file_row,
            tags=tags.tags_for(file_row.relpath, row),
            parser=tags.parser,
            display_name=row.filename,
        )


def _tagged(rows: Iterator[ScanRow], tags: TagOptions) -> Iterator[ScanRow]:
    if not tags.asks and tags.parser is None:
        yield from rows  # nothing to add: a copy of every row costs a tenth of the walk
        return
    for row in rows:
        yield dataclasses.replace(row, tags=tags.tags_for(row.relpath), parser=tags.parser)


async def _write(
    q: queue.Queue, kb_id: str, batch: list[ScanRow], any_type: bool, moves: Moves
) -> EnqueueCounts:
    """One batch into the queue, after its files that are uploaded files moved here took
    their rows; with --any-type its files are marked so that a run sends them whatever their
    type."""
    moved = await moves.adopt(batch)
    counts = await q.enqueue_batch(kb_id, batch)
    counts.moved, counts.unchanged = moved, counts.unchanged - moved
    if any_type:
        await ParseStore(q.engine).mark_any_type(kb_id, [r.path for r in batch if r.skip is None])
    return counts


def batches(rows: Iterator[ScanRow], size: int) -> Iterator[list[ScanRow]]:
    batch: list[ScanRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# Rows per batch of a walk. While other writers are about (a run beside the walk), a batch is
# written in transactions of CROWDED_ROWS (queue/sqlite_jobs.py), the longest each of the run's
# claims and outcomes waits; alone, in one transaction of 30-50 ms, which a run started beside
# waits for once before the walk sees it (store/turns.py). Each batch costs the event loop
# about a millisecond of CPU and a few thread wake-ups: a million files in batches of 500 spent
# 1.8 CPU-s there, and 1.5 more in the database thread's commits.
WALK_BATCH = 5000


async def enqueue(
    q: queue.Queue,
    root: str,
    kb_id: str,
    filters: Filters,
    follow_symlinks: bool,
    own: OwnState | None = None,
    batch_size: int = WALK_BATCH,
    tags: TagOptions | None = None,
    on_batch: Callable[[EnqueueCounts], Awaitable[None]] | None = None,
    any_type: bool = False,
) -> tuple[EnqueueCounts, ScanStats]:
    """Walk `root` into the queue, one transaction per batch; safe to run again. The walk
    runs in a thread so the next batch is scanned while the database writes this one.
    `on_batch` hears the counts so far after each batch is committed."""
    stats = ScanStats()
    counts = EnqueueCounts()
    rows = walk(os.fsencode(root), filters, follow_symlinks, stats, own)
    if tags is not None:
        rows = _tagged(rows, tags)
    chunks = batches(rows, batch_size)
    moves = Moves(q.engine, q.scope, kb_id)
    writing: asyncio.Task[EnqueueCounts] | None = None
    while True:
        batch = await asyncio.to_thread(next, chunks, None)
        if writing is not None:
            counts.add(await writing)
            if on_batch is not None:
                await on_batch(counts)
        if batch is None:
            return counts, stats
        writing = asyncio.create_task(_write(q, kb_id, batch, any_type, moves))


async def enqueue_here(
    q: queue.Queue,
    root: str,
    kb_id: str,
    filters: Filters,
    follow_symlinks: bool,
    own: OwnState | None,
    tags: TagOptions,
    batch_size: int = 2000,
) -> tuple[EnqueueCounts, ScanStats]:
    """`enqueue`'s walk written by the calling task, batch after batch: for a caller inside a
    transaction it rolls back after reading what the queue then holds (sync --dry-run)."""
    stats = ScanStats()
    counts = EnqueueCounts()
    rows = _tagged(walk(os.fsencode(root), filters, follow_symlinks, stats, own), tags)
    for batch in batches(rows, batch_size):
        counts.add(await q.enqueue_batch(kb_id, batch))
    return counts, stats


async def enqueue_manifest(
    q: queue.Queue,
    root: str,
    kb_id: str,
    manifest: str,
    filters: Filters,
    follow_symlinks: bool,
    tags: TagOptions,
    own: OwnState | None = None,
    encoding: str | None = None,
    batch_size: int = 2000,
    any_type: bool = False,
) -> tuple[EnqueueCounts, ScanStats]:
    """The files a manifest names into the queue, all in one transaction: a bad row anywhere
    (ManifestError) leaves the queue as it was, so a fixed manifest can simply be given
    again. The rows are still streamed, a batch at a time."""
    stats = ScanStats()
    counts = EnqueueCounts()
    rows = manifest_rows(root, manifest, filters, follow_symlinks, tags, stats, own, encoding)
    chunks = batches(rows, batch_size)
    moves = Moves(q.engine, q.scope, kb_id)
    async with q.transaction():
        while (batch := await asyncio.to_thread(next, chunks, None)) is not None:
            counts.add(await _write(q, kb_id, batch, any_type, moves))
    return counts, stats
