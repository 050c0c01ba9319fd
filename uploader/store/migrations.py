"""The migration series (see migrations/__init__.py): each number a pair of files, one per
backend, read from the installed package so that a built copy finds them too."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from .engine import Dialect

_NAME = re.compile(r"^(\d{4})_(\w+)\.(sqlite|postgresql)\.sql$")

# PostgreSQL numbered its own series before the two were joined: its old numbers (the
# `uploader_schema` table) and the numbers of the joined series they became. Old 0001 also
# did what SQLite's 0002 and 0003 do.
LEGACY_POSTGRESQL: dict[int, tuple[int, ...]] = {
    1: (1, 2, 3),
    2: (9,),
    3: (6,),
    4: (4,),
    6: (11,),
    8: (13,),
    9: (14,),
    10: (15,),
    11: (16,),
    12: (17,),
    13: (18,),
    14: (19,),
    15: (5,),
    16: (12,),
}


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    sqlite: str
    postgresql: str

    def script(self, dialect: Dialect) -> str:
        return self.sqlite if dialect is Dialect.SQLITE else self.postgresql


class SeriesError(Exception):
    """The installed migrations are not a series of pairs (a packaging or naming mistake)."""


def series() -> list[Migration]:
    """Every migration in number order; a number missing one of its two files is refused."""
    found: dict[tuple[int, str], dict[str, str]] = {}
    for entry in resources.files("uploader.migrations").iterdir():
        parsed = _NAME.match(entry.name)
        if parsed is None:
            continue
        number, name, dialect = int(parsed[1]), parsed[2], parsed[3]
        found.setdefault((number, name), {})[dialect] = entry.read_text(encoding="utf-8")
    numbers = [number for number, _name in found]
    if len(set(numbers)) != len(numbers):
        raise SeriesError(f"two migrations share a number: {sorted(numbers)}")
    pairs = []
    for (number, name), scripts in sorted(found.items()):
        missing = {d.value for d in Dialect} - set(scripts)
        if missing:
            raise SeriesError(f"migration {number:04d}_{name} has no {missing.pop()} file")
        pairs.append(Migration(number, name, scripts["sqlite"], scripts["postgresql"]))
    return pairs


def latest() -> int:
    return series()[-1].number


def has_statements(script: str) -> bool:
    """Whether a file does something (a backend with nothing to do holds only comments)."""
    return any(ln.strip() and not ln.strip().startswith("--") for ln in script.splitlines())
