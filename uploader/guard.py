"""The mass-deletion guard of `--delete-removed`: a folder that reads empty or mostly gone is
more often a share that is not mounted, a disk not plugged in or a wrong path than files
really deleted, and following it would delete the knowledge base's entries.

rclone has `--max-delete`; its bisync refuses to delete more than half by default. Here the
default is half of the job's uploaded files, and a folder holding no file at all while the
job has uploaded files is refused whatever the limit (`--allow-empty-source` lets it through):
an unmounted mount point is an empty folder.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from .i18n import _

_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class MaxDelete:
    """--max-delete: a number of entries, or a percentage of the job's uploaded files."""

    amount: float
    percent: bool

    @classmethod
    def parse(cls, text: str) -> MaxDelete:
        found = _LIMIT.match(text)
        if not found:
            raise ValueError(
                _("{text!r} is neither a number of files nor a percentage (50%)").format(text=text)
            )
        amount, percent = float(found.group(1)), bool(found.group(2))
        if percent and amount > 100:
            raise ValueError(_("{text!r} is more than 100%").format(text=text))
        if not percent and amount != int(amount):
            raise ValueError(_("{text!r} is not a whole number of files").format(text=text))
        return cls(amount, percent)

    def allowed(self, uploaded: int) -> int:
        """How many entries may be deleted of a job that has `uploaded` files."""
        if self.percent:
            return math.floor(uploaded * self.amount / 100 + 1e-9)
        return int(self.amount)

    def __str__(self) -> str:
        shown = f"{self.amount:g}"
        return f"{shown}%" if self.percent else shown


DEFAULT = MaxDelete(50.0, percent=True)


class Why(enum.Enum):
    EMPTY_SOURCE = "empty source"
    ABOVE_LIMIT = "above the limit"


@dataclass(frozen=True)
class Refusal:
    """Why the entries of the files found gone are not deleted, with the numbers to say so."""

    why: Why
    deleting: int  # entries the marking would delete
    uploaded: int  # the job's uploaded files (entries) before it
    limit: MaxDelete

    @property
    def advice(self) -> str:
        """How to let it through, when the files really are gone."""
        needed = math.ceil(100 * self.deleting / self.uploaded) if self.uploaded else 100
        raise_limit = f"--max-delete {self.deleting} (or {needed}%)"
        if self.why is Why.EMPTY_SOURCE:
            if self.deleting > self.limit.allowed(self.uploaded):
                return f"--allow-empty-source {raise_limit}"
            return "--allow-empty-source"
        return raise_limit


Judge = Callable[[int, int], "Refusal | None"]


def judge(
    deleting: int, uploaded: int, *, found: int, limit: MaxDelete, allow_empty: bool
) -> Refusal | None:
    """None when the deletions may go ahead; else why not. `found`: the files the walk found
    in the folder. --allow-empty-source lifts the refusal of an empty folder, not the limit."""
    if deleting == 0:
        return None
    if found == 0 and uploaded and not allow_empty:
        return Refusal(Why.EMPTY_SOURCE, deleting, uploaded, limit)
    if deleting > limit.allowed(uploaded):
        return Refusal(Why.ABOVE_LIMIT, deleting, uploaded, limit)
    return None
