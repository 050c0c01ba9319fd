"""The name a file is shown under in the knowledge base (`run --name`).

`basename` (the default) may repeat across folders (twenty `文件0000.txt`); `relpath` keeps
the folders but holds `/`, which MaiAgent refuses in a name; `folders` keeps them with a
separator the service takes (`合約 › 二〇二四 › 租賃合約.pdf`, `--name-separator`)."""

from __future__ import annotations

import enum

from .i18n import _

DEFAULT_SEPARATOR = " › "


class NameMode(str, enum.Enum):
    BASENAME = "basename"
    RELPATH = "relpath"
    FOLDERS = "folders"


def shown_name(relpath: str, mode: str, separator: str = DEFAULT_SEPARATOR) -> str:
    """The name for a file at `relpath` (`/`-separated, below the enqueued folder)."""
    if mode == NameMode.RELPATH:
        return relpath
    if mode == NameMode.FOLDERS:
        return separator.join(relpath.split("/"))
    return relpath.rsplit("/", 1)[-1]


def check_separator(separator: str) -> str:
    """A separator the service takes and a reader can see: not empty, no `/`, no control
    character (ValueError saying which)."""
    if not separator.strip():
        raise ValueError(_("a separator must show something (it is empty or blank)"))
    if "/" in separator:
        raise ValueError(_("a separator cannot hold '/': MaiAgent refuses it in a name"))
    if not separator.isprintable():
        raise ValueError(_("a separator cannot hold control characters"))
    return separator
