"""Label names to label ids, per knowledge base, by get-or-create, and an entry's labels and
metadata changed in place by update-metadata (issue 14).

A run's workers all want the same few labels at the same moment (16 files of `hr/` start
together), and a label must be created once: two POSTs of one name make a duplicate or a
refusal. So within a run each (knowledge base, name) is resolved by one task that every
worker asking for it awaits, and a knowledge base is listed by one task at a time. Across
runs the ids are kept in the database (store/facts.py), so a second run asks the
service nothing for labels it already knows. Across processes (several hosts, one queue) a
create can still lose the race: the service answers that the name exists
(`label_exists`), and the label is then read from a fresh listing.

update-metadata: the sources disagree on the method (PATCH in the examples, POST in the
docs' index) and on how labels go (`[{"id"}]` objects; bare ids in one example). The first
call of a run tries PATCH with objects and changes what the answer refuses (405: the other
method; 400 with labels sent: the other form); what was accepted is used for the rest of the
run, and logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from .client import LabelForm, MaiAgentClient, Method
from .errors import ApiError
from .i18n import _
from .model import ErrorKind, Severity
from .queue import Queue
from .store.facts import FactsStore

log = logging.getLogger("uploader.run")

T = TypeVar("T")


class LabelResolver:
    """`await resolver.ids(kb_id, names)`: the ids of those labels, made where missing."""

    def __init__(self, client: MaiAgentClient, queue: Queue) -> None:
        self._client = client
        self._facts = FactsStore(queue.engine)
        self._known: dict[str, dict[str, str]] = {}  # per knowledge base: name -> id
        self._loading: dict[str, asyncio.Task[None]] = {}  # the queue's ids, read once per kb
        self._listing: dict[str, asyncio.Task[None]] = {}  # the listing being read, per kb
        self._resolving: dict[tuple[str, str], asyncio.Task[str]] = {}
        self.created = 0  # labels this run made
        # how update-metadata is spoken, once an answer said (None: not yet known)
        self.form: tuple[Method, LabelForm] | None = None
        self._probing = asyncio.Lock()

    async def ids(self, kb_id: str, names: Sequence[str]) -> tuple[str, ...]:
        if not names:
            return ()
        await _shared(self._loading, kb_id, lambda: self._load(kb_id))
        known = self._known[kb_id]
        missing = [name for name in names if name not in known]
        if missing:
            await asyncio.gather(
                *(
                    _shared(self._resolving, (kb_id, n), functools.partial(self._resolve, kb_id, n))
                    for n in missing
                )
            )
        return tuple(known[name] for name in names)

    async def update_entry(
        self, kb_id: str, file_id: str, names: Sequence[str], metadata: dict[str, Any]
    ) -> None:
        """Give an entry exactly these labels (made where missing) and this metadata."""
        label_ids = await self.ids(kb_id, names)
        if self.form is None:
            async with self._probing:  # the others wait for the first answer
                if self.form is None:
                    await self._probe(kb_id, file_id, label_ids, metadata)
                    return
        method, label_form = self.form
        await self._client.update_metadata(kb_id, file_id, label_ids, metadata, method, label_form)

    async def _probe(
        self, kb_id: str, file_id: str, label_ids: Sequence[str], metadata: dict[str, Any]
    ) -> None:
        """The first update-metadata of the run: PATCH with label objects, then what the
        refusals point to (see the module docstring)."""
        method: Method = "PATCH"
        label_form: LabelForm = "objects"
        tried: set[tuple[Method, LabelForm]] = set()
        while True:
            tried.add((method, label_form))
            try:
                await self._client.update_metadata(
                    kb_id, file_id, label_ids, metadata, method, label_form
                )
            except ApiError as exc:
                if exc.error_kind is ErrorKind.METHOD_NOT_ALLOWED:
                    method = "POST" if method == "PATCH" else "PATCH"
                elif exc.status == 400 and label_ids:
                    label_form = "ids" if label_form == "objects" else "objects"
                else:
                    raise
                if (method, label_form) in tried:
                    raise
                log.info(
                    "update-metadata refused (%s): trying %s, labels as %s",
                    exc,
                    method,
                    label_form,
                )
                continue
            self.form = (method, label_form)
            log.info(
                "update-metadata: the service takes %s with labels as %s; used for the rest of"
                " the run",
                method,
                "objects" if label_form == "objects" else "bare ids",
            )
            return

    async def _load(self, kb_id: str) -> None:
        self._known[kb_id] = await self._facts.label_ids(kb_id)

    async def _resolve(self, kb_id: str, name: str) -> str:
        """A fresh listing first (the label may have been made in the web interface or by
        another host), then a create; a create refused because the name exists reads the
        listing again."""
        await self._list(kb_id)
        known = self._known[kb_id]
        if name in known:
            return known[name]
        try:
            label = await self._client.create_label(kb_id, name)
        except ApiError as exc:
            if exc.error_kind is not ErrorKind.LABEL_EXISTS:
                raise
            log.info("label %r of %s was made elsewhere meanwhile: reading it back", name, kb_id)
            await self._list(kb_id, again=True)
            if name not in known:
                raise ApiError(
                    _(
                        "label {name!r} exists, the service says, but its listing does not show it"
                    ).format(name=name),
                    kind=Severity.TRANSIENT,
                    error_kind=ErrorKind.BAD_RESPONSE,
                ) from None
            return known[name]
        self.created += 1
        log.info("label %r created in %s (id %s)", name, kb_id, label.id)
        known[name] = label.id
        await self._facts.store_labels(kb_id, [(name, label.id)])
        return label.id

    async def _list(self, kb_id: str, again: bool = False) -> None:
        """Read every label of `kb_id` into the cache, once per run unless `again`; callers
        at the same moment share one listing."""
        running = self._listing.get(kb_id)
        if running is not None and (not again or not running.done()):
            await asyncio.shield(running)
            return
        self._listing.pop(kb_id, None)
        await _shared(self._listing, kb_id, lambda: self._read_listing(kb_id))

    async def _read_listing(self, kb_id: str) -> None:
        labels = await self._client.list_labels(kb_id)
        pairs = [(label.name, label.id) for label in labels if label.name]
        self._known[kb_id].update(pairs)
        if pairs:
            await self._facts.store_labels(kb_id, pairs)


async def _shared(
    tasks: dict[Any, asyncio.Task[T]], key: Any, start: Callable[[], Awaitable[T]]
) -> T:
    """Await the one task for `key`, starting it if there is none: every caller at the same
    moment shares it, and a caller cancelled does not cancel it for the others. A task that
    failed is forgotten, so the next caller tries again."""
    task = tasks.get(key)
    if task is None:
        task = asyncio.ensure_future(start())
        tasks[key] = task
        task.add_done_callback(lambda done: _forget_failed(tasks, key, done))
    return await asyncio.shield(task)


def _forget_failed(tasks: dict[Any, asyncio.Task[T]], key: Any, task: asyncio.Task[T]) -> None:
    # Reading the exception also marks it retrieved when no caller is left to await it.
    if (task.cancelled() or task.exception() is not None) and tasks.get(key) is task:
        del tasks[key]
