"""Registering uploaded keys with the knowledge base, one file per call or N per call
(--register-batch), and matching each file sent to the entry the answer names."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from .client import MaiAgentClient, RegisterItem, RemoteEntry
from .errors import ApiError
from .i18n import _
from .model import ErrorKind, Severity
from .reconcile import RemoteIndex

log = logging.getLogger("uploader.run")


# The attempt's write-ahead and fence for one file: the time of its write-ahead when the
# register may go now, None when it may not.
FileFence = Callable[[], Awaitable[float | None]]


@dataclass
class _Pending:
    item: RegisterItem
    fence: FileFence
    fut: asyncio.Future[str]


@dataclass
class _Batch:
    items: list[_Pending] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class Registrar:
    """Registers uploaded keys, N per call when --register-batch N > 1, each file waiting at
    most `delay`. An answer that does not name every file sent turns batching off. Every
    file's fence is passed just before its call is sent (and again before a re-send after a
    429): a file whose fence fails is left out and gets a `lease` error, never sent."""

    def __init__(
        self,
        client: MaiAgentClient,
        index: RemoteIndex,
        size: int,
        delay: float,
        *,
        learn: bool = False,
    ):
        self._client = client
        self._index = index
        self.size = size
        self._delay = delay
        # --register-batch auto where batching is not proven yet: two files per call until
        # an answer names both (then up to `size`), one per call once one does not
        self._learn = learn
        self._batches: dict[str, _Batch] = {}
        # Per knowledge base: whether every answer to a register of several files named them
        # all (absent: no such call was answered); kept for `--register-batch auto`.
        self.proved: dict[str, bool] = {}
        # S3 keys of files whose batch failed unrefused (a 5xx, a timeout): sent alone from
        # then on, so that a file the service fails on (a parser broken for its type) spends
        # its own retries, not its batch-mates'
        self._alone: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def register(self, kb_id: str, item: RegisterItem, fence: FileFence) -> str:
        """The entry id of one file (its key, name shown, labels, metadata and parser), sent
        alone or in a batch with others of the same knowledge base once `fence` lets it."""
        pending = _Pending(item, fence, asyncio.get_running_loop().create_future())
        if self.size <= 1 or item.key in self._alone:
            await self._call(kb_id, [pending])
            return pending.fut.result()
        batch = self._batches.setdefault(kb_id, _Batch())
        batch.items.append(pending)
        if len(batch.items) >= self._limit(kb_id):
            self._send(kb_id)
        elif batch.timer is None:
            batch.timer = asyncio.get_running_loop().call_later(self._delay, self._send, kb_id)
        return await pending.fut

    def _limit(self, kb_id: str) -> int:
        """Files per call to `kb_id` now."""
        if self._learn and not self.proved.get(kb_id):
            return min(2, self.size)
        return self.size

    def _send(self, kb_id: str) -> None:
        batch = self._batches.pop(kb_id, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        items = [p for p in batch.items if not p.fut.done()]
        if items:
            task = asyncio.create_task(self._call(kb_id, items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, kb_id: str, pending: list[_Pending]) -> None:
        """One register call for `pending`; every future is settled (a result or an error)."""
        sent: list[_Pending] = []

        async def fence(_items: Sequence[RegisterItem]) -> tuple[list[RegisterItem], float]:
            passed = await _passing(pending)
            sent[:] = [p for p, _since in passed]
            if not sent:
                raise _fenced()
            return [p.item for p in sent], min(since for _p, since in passed)

        names = [p.item.filename for p in pending]
        self._index.registering.update(names)
        try:
            entries = await self._client.register(kb_id, [p.item for p in pending], fence=fence)
        except ApiError as exc:
            if exc.permanent and len(sent) > 1:
                # A refusal (one file's name or type) fails the whole call, and nothing of it
                # was registered: each file goes again alone, through its own fence.
                await asyncio.gather(*(self._call(kb_id, [p]) for p in sent))
            elif len(sent) > 1:
                self._alone.update(p.item.key for p in sent)
            for p in pending:
                if not p.fut.done():
                    p.fut.set_exception(exc if p in sent else _fenced())
            return
        finally:
            self._index.registered(names)
        ids = self._match(entries, [(p.item.key, p.item.filename) for p in sent])
        if len(sent) > 1:
            proved = self.proved.get(kb_id, True) and None not in ids
            if proved and self._learn and kb_id not in self.proved:
                log.info(
                    "register batching proven for %s by this run: up to %d files per call",
                    kb_id,
                    self.size,
                )
            self.proved[kb_id] = proved
        for p, file_id in zip(sent, ids, strict=True):
            if p.fut.done():
                continue
            if file_id is None:
                p.fut.set_exception(_unlisted(p.item.filename))
            else:
                self._index.taken.add(file_id)
                p.fut.set_result(file_id)
        for p in pending:
            if not p.fut.done():
                p.fut.set_exception(_fenced())

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


async def _passing(pending: list[_Pending]) -> list[tuple[_Pending, float]]:
    """The files whose fence lets them go now, with the time of their write-ahead (cancelled
    waiters are dropped)."""
    waiting = [p for p in pending if not p.fut.done()]
    verdicts = await asyncio.gather(*(p.fence() for p in waiting))
    return [(p, since) for p, since in zip(waiting, verdicts, strict=True) if since is not None]


def _fenced() -> ApiError:
    return ApiError(
        _("not registered: this run's lease on the file ended (another run may hold it)"),
        kind=Severity.TRANSIENT,
        error_kind=ErrorKind.LEASE,
    )


def _unlisted(filename: str) -> ApiError:
    return ApiError(
        _("register answer has no entry for {name!r}").format(name=filename),
        kind=Severity.TRANSIENT,
        error_kind=ErrorKind.BAD_RESPONSE,
        maybe_applied=True,
    )
