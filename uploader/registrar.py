"""Registering uploaded keys with the knowledge base, one file per call or N per call
(--register-batch), and matching each file sent to the entry the answer names."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from .client import ApiError, MaiAgentClient, RegisterItem, RemoteEntry
from .model import ErrorKind
from .reconcile import RemoteIndex

log = logging.getLogger("uploader.run")


@dataclass
class _Batch:
    items: list[tuple[RegisterItem, asyncio.Future[str]]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class Registrar:
    """Registers uploaded keys, N per call when --register-batch N > 1, each file waiting at
    most `delay`. An answer that does not name every file sent turns batching off."""

    def __init__(self, client: MaiAgentClient, index: RemoteIndex, size: int, delay: float):
        self._client = client
        self._index = index
        self.size = size
        self._delay = delay
        self._batches: dict[str, _Batch] = {}
        # Per knowledge base: whether every answer to a register of several files named them
        # all (absent: no such call was answered); kept for `--register-batch auto`.
        self.proved: dict[str, bool] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def register(self, kb_id: str, item: RegisterItem) -> str:
        """The entry id of one file (its key, name shown, labels, metadata and parser), sent
        alone or in a batch with others of the same knowledge base."""
        key, filename = item.key, item.filename
        if self.size <= 1:
            entries = await self._client.register(kb_id, [item])
            [file_id] = self._match(entries, [(key, filename)])
            if file_id is None:
                raise _unlisted(filename)
            self._index.taken.add(file_id)
            return file_id
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        batch = self._batches.setdefault(kb_id, _Batch())
        batch.items.append((item, fut))
        if len(batch.items) >= self.size:
            self._send(kb_id)
        elif batch.timer is None:
            batch.timer = asyncio.get_running_loop().call_later(self._delay, self._send, kb_id)
        return await fut

    def _send(self, kb_id: str) -> None:
        batch = self._batches.pop(kb_id, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        items = [(item, fut) for item, fut in batch.items if not fut.done()]
        if items:
            task = asyncio.create_task(self._call(kb_id, items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(
        self, kb_id: str, items: list[tuple[RegisterItem, asyncio.Future[str]]]
    ) -> None:
        try:
            entries = await self._client.register(kb_id, [item for item, _ in items])
        except ApiError as exc:
            for _item, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            return
        ids = self._match(entries, [(item.key, item.filename) for item, _fut in items])
        if len(items) > 1:
            self.proved[kb_id] = self.proved.get(kb_id, True) and None not in ids
        for (item, fut), file_id in zip(items, ids, strict=True):
            if fut.done():
                continue
            if file_id is None:
                fut.set_exception(_unlisted(item.filename))
            else:
                self._index.taken.add(file_id)
                fut.set_result(file_id)

    def _match(self, entries: list[RemoteEntry], sent: list[tuple[str, str]]) -> list[str | None]:
        """The entry of each (key, filename) sent: by S3 key when the answer shows keys, else
        by filename. A file the answer does not name may or may not be registered (its job
        looks in the listing before trying again), and from then on one file goes per call."""
        keyed = [e for e in entries if e.file]
        by_name: dict[str, list[str]] = {}
        for entry in entries:
            by_name.setdefault(entry.filename, []).append(entry.id)
        ids: list[str | None] = []
        for key, name in sent:
            if keyed:
                ids.append(next((e.id for e in keyed if e.has_key(key)), None))
            else:
                ids.append(by_name[name].pop(0) if by_name.get(name) else None)
        if None in ids and self.size > 1:
            log.warning("the register answer did not list every file: one file per call now")
            self.size = 1
        return ids

    async def close(self) -> None:
        """Batch calls still in flight at the end of the run: let them go, their jobs were
        released as doubtful."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _unlisted(filename: str) -> ApiError:
    return ApiError(
        f"register answer has no entry for {filename!r}",
        kind="transient",
        error_kind=ErrorKind.BAD_RESPONSE,
        maybe_applied=True,
    )
