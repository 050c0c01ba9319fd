"""What a run would do, without doing it (`run --dry-run`, `sync --dry-run`): the files it
would upload, the changed files whose entries it would replace, the entries it would relabel
or delete. Read from the queue only: no request reaches the service and nothing is written
(`sync --dry-run` scans inside a transaction it rolls back)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .queue import Queue
from .scan import display
from .store.status import StatusStore


@dataclass
class Plan:
    upload: list[tuple[str, int]] = field(default_factory=list)  # (path, size): new files
    replace: list[tuple[str, int]] = field(default_factory=list)  # changed: a new entry, old gone
    relabel: list[str] = field(default_factory=list)  # update-metadata only
    delete: list[str] = field(default_factory=list)  # removed files: their entries deleted

    @property
    def empty(self) -> bool:
        return not (self.upload or self.replace or self.relabel or self.delete)


async def plan(q: Queue, kb_id: str | None) -> Plan:
    """What `uploader run --kb kb_id` would do now."""
    found = Plan()
    async for path, size, state, step, replaces, has_entry in StatusStore(q.engine).plan_rows(
        kb_id
    ):
        shown = display(path)
        if state == "removed":
            if replaces or has_entry:  # marked removed, its entry is in the superseded record
                found.delete.append(shown)
        elif step == "metadata":
            found.relabel.append(shown)
        elif replaces:
            found.replace.append((shown, size))
        elif step != "recheck":  # a recheck hashes the file and is most often done at once
            found.upload.append((shown, size))
    return found
