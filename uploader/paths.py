"""A file's path relative to the folder enqueued, the same on every system: its parts joined
by `/`, whatever the system's own separator (Windows' `\\`). Patterns (`--include sub/**`),
labels taken from folders, `--name relpath` and every list shown split it on `/`, so a walk
on Windows must give `sub/a.txt` where the system spells `sub\\a.txt`.

Absolute paths stay as the system spells them (drive letters, UNC `\\\\server\\share`, a
`\\\\?\\` long path): they are what the file is opened by.
"""

from __future__ import annotations

import os

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
    """Whether two absolute paths name a file the same way, as this system compares names
    (Windows: case and `/` against `\\` do not count)."""
    return os.path.normcase(a) == os.path.normcase(b)
