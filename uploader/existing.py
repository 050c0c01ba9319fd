"""A second database does not upload a folder again. Before this database first uploads to a
knowledge base, the knowledge base is listed and the files about to be uploaded are compared
with the entries no job of this database owns, by the name they would be shown under and
their size. Entries like them mean the folder was (probably) uploaded from elsewhere: another
working folder's `./uploader.db`, a lost database, the reference script. The run then stops
before sending anything unless told what to do: `--adopt-existing` takes a file whose name
and size match exactly one entry (and that entry no other file) as done with that entry;
`--from-checkpoint` takes the reference script's `completed_files` as the files to adopt.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .client import MaiAgentClient
from .i18n import _
from .model import ListedRow
from .naming import shown_name
from .queue import Queue
from .reconcile import PAGE_SIZE, listed_rows
from .reconcile import _call as call
from .store.existing import Adoption, ExistingStore, NeverSent

SHOWN = 5  # files named in a message; the rest counted


class CheckpointError(Exception):
    """The checkpoint file cannot be read as the reference script writes it."""


@dataclass(frozen=True)
class Checkpoint:
    """The reference script's upload_checkpoint.json: the files it completed, by path."""

    path: str
    completed: frozenset[bytes]  # real paths, as the queue keeps them

    @classmethod
    def read(cls, path: str) -> Checkpoint:
        try:
            with open(path, encoding="utf-8-sig") as f:
                data = json.load(f)
        except OSError as exc:
            raise CheckpointError(f"{path}: {exc.strerror or exc}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            said = _("{path}: not the reference script's JSON ({why})")
            raise CheckpointError(said.format(path=path, why=exc)) from None
        completed = data.get("completed_files") if isinstance(data, dict) else None
        if not isinstance(completed, list) or not all(isinstance(p, str) for p in completed):
            said = _("{path}: no completed_files list (a list of file paths)")
            raise CheckpointError(said.format(path=path))
        return cls(path, frozenset(_real(p) for p in completed))

    def names(self, file: NeverSent) -> bool:
        return file.path in self.completed


def _real(path: str) -> bytes:
    """A completed file's path as the queue keeps a file's: absolute (a relative one from the
    current folder), links resolved; a backslash is a separator on Windows."""
    return os.fsencode(os.path.realpath(path))


@dataclass(frozen=True)
class Pair:
    file: NeverSent
    entry: ListedRow


@dataclass
class Found:
    """What the knowledge base holds like the files about to be uploaded."""

    kb_id: str
    listed: int = 0  # entries of the knowledge base
    unique: list[Pair] = field(default_factory=list)  # one file, one entry: adoptable
    ambiguous: list[str] = field(default_factory=list)  # several entries or files alike
    # with a checkpoint: its files with no entry alike (left for upload), and files it does not
    # name that are like entries (left for upload too: the checkpoint says what was done)
    without_entry: list[str] = field(default_factory=list)
    not_in_checkpoint: list[str] = field(default_factory=list)

    @property
    def alike(self) -> int:
        """Files about to be uploaded that entries are like."""
        return len(self.unique) + len(self.ambiguous) + len(self.not_in_checkpoint)


async def first_upload(q: Queue, kb_id: str) -> bool:
    """Whether nothing of `kb_id` was ever uploaded from this database (the check is made
    before a database's first upload only: after it, its own entries are known by id)."""
    return not await ExistingStore(q.engine).ever_uploaded(kb_id)


async def look(
    q: Queue,
    api: MaiAgentClient,
    kb_id: str,
    name_mode: str,
    separator: str,
    checkpoint: Checkpoint | None,
) -> Found:
    """List `kb_id` and compare the files of it nothing of which was sent with its entries
    (none is this database's: it never uploaded there), by name shown and size (an entry
    listed without its size: by name). The listing is read here, not stored: the stored one
    is the run's, for settling doubtful registers."""
    store = ExistingStore(q.engine)
    entries = await _listing(api, kb_id)
    found = Found(kb_id, listed=len(entries))
    if not entries:
        return found
    sized: dict[tuple[str, int], list[ListedRow]] = defaultdict(list)
    unsized: dict[str, list[ListedRow]] = defaultdict(list)
    for entry in entries:
        if entry.size is None:
            unsized[entry.filename].append(entry)
        else:
            sized[(entry.filename, entry.size)].append(entry)
    groups: dict[tuple[str, int], list[NeverSent]] = defaultdict(list)
    async for file in store.never_sent(kb_id):
        name = _shown(file, name_mode, separator)
        alike = (name, file.size) in sized or name in unsized
        if checkpoint is not None and checkpoint.names(file):
            if alike:
                groups[(name, file.size)].append(file)
            else:
                found.without_entry.append(file.relpath)
        elif alike and checkpoint is not None:
            found.not_in_checkpoint.append(file.relpath)
        elif alike:
            groups[(name, file.size)].append(file)
    for (name, size), files in groups.items():
        like = sized.get((name, size), []) + unsized.get(name, [])
        if checkpoint is not None:
            # the script says these files are done: entries alike are theirs, one each
            pairs = zip(files, like, strict=False)
            found.unique += [Pair(f, entry) for f, entry in pairs]
            found.ambiguous += [f.relpath for f in files[len(like) :]]
        elif len(files) == 1 and len(like) == 1:
            found.unique.append(Pair(files[0], like[0]))
        else:
            found.ambiguous += [f.relpath for f in files]
    return found


async def _listing(api: MaiAgentClient, kb_id: str) -> list[ListedRow]:
    """Every entry of `kb_id`, page after page (an entry shown twice while pages shift, once)."""
    entries: dict[str, ListedRow] = {}
    page = 1
    while True:
        data = await call(api.list_files, kb_id, page, PAGE_SIZE)
        for row in listed_rows(kb_id, data.entries, 0.0, set()):
            entries.setdefault(row.id, row)
        if not data.next or not data.entries:
            return list(entries.values())
        page += 1


def _shown(file: NeverSent, name_mode: str, separator: str) -> str:
    """The name the file's entry would get (as the attempt names it)."""
    return file.display_name or shown_name(file.relpath, name_mode, separator)


async def adopt(q: Queue, pairs: Iterable[Pair]) -> int:
    """Each file done with its entry (pending for labels the entry lacks); how many."""
    adoptions = [
        Adoption(
            p.file.job_id,
            p.entry.id,
            p.entry.filename,
            p.entry.status,
            p.entry.tags,
            relabel=p.file.tags is not None and p.file.tags != p.entry.tags,
        )
        for p in pairs
    ]
    return await ExistingStore(q.engine).adopt(adoptions)
