"""A file's path relative to the folder enqueued, the same on every system: its parts joined
by `/`, whatever the system's own separator (Windows' `\\`). Patterns (`--include sub/**`),
labels taken from folders, `--name relpath` and every list shown split it on `/`, so a walk
on Windows must give `sub/a.txt` where the system spells `sub\\a.txt`.

Absolute paths stay as the system spells them (drive letters, UNC `\\\\server\\share`, a
`\\\\?\\` long path): they are what the file is opened by, and the queue knows a file by its
path. On a case-insensitive volume (macOS, Windows) one folder typed two ways (`~/documents`,
`~/Documents`) would be two sets of files, each uploaded: `canonical` spells a path as the
disk stores each name.
"""

from __future__ import annotations

import os
import sys
import unicodedata

SEP = os.fsencode(os.sep)
_SEPARATORS = os.fsencode(os.sep + (os.altsep or ""))


def prefix_length(root: bytes, separators: bytes = _SEPARATORS) -> int:
    """How much of a path below `root` (as the walk makes them: root, separator, rest) is
    the root: `C:\\` and `\\\\server\\share\\` end with their separator, `C:\\data` does not."""
    return len(root.rstrip(separators)) + 1


def slashed(relative: bytes, sep: bytes = SEP) -> bytes:
    """A relative path with `/` between its parts (`sep`: the system's separator)."""
    return relative if sep == b"/" else relative.replace(sep, b"/")


def below(path: bytes, prefix: int, sep: bytes = SEP) -> bytes:
    """The part of `path` below the root whose `prefix_length` is `prefix`, `/`-separated."""
    return slashed(path[prefix:], sep)


def same_file_name(a: bytes, b: bytes) -> bool:
    """Whether two absolute paths name a file the same way, as this system's volumes usually
    compare names (Windows: case and `/` against `\\` do not count; macOS: case and the
    Unicode form do not)."""
    if sys.platform == "darwin":
        return _folded(a) == _folded(b)
    return os.path.normcase(a) == os.path.normcase(b)


def canonical(path: bytes) -> bytes:
    """The real path (links resolved) spelled as the disk stores each name. Windows' realpath
    already does that; on macOS each part whose spelling differs from the disk's (case, NFC
    against NFD) is replaced by the one entry of its folder that is the same file."""
    real = os.path.realpath(path)
    if sys.platform != "darwin":
        return real
    return _as_stored(real)


def _as_stored(path: bytes) -> bytes:
    parent, name = os.path.split(path)
    if not name or parent == path:
        return path
    parent = _as_stored(parent)
    given = os.path.join(parent, name)
    try:
        with os.scandir(parent) as entries:
            alike = []
            for entry in entries:
                if entry.name == name:
                    return given
                if _folded(entry.name) == _folded(name):
                    alike.append(entry.path)
    except OSError:
        return given
    same = [other for other in alike if _same_file(other, given)]
    return same[0] if len(same) == 1 else given


def _same_file(a: bytes, b: bytes) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _folded(name: bytes) -> str:
    return unicodedata.normalize("NFC", os.fsdecode(name)).casefold()
