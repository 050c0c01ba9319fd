"""`uploader check`: prove a set-up in seconds, and learn which of the documented shapes the
service speaks, before a first real upload.

MaiAgent's documentation and its example code disagree (docs/localserver.md's dialects show
both) and nobody here can try the real service, so the check asks it: the key, the knowledge
base, then tiny probe files through presign, S3 POST, register (one file, then two in one
call), the listing, and delete. Every probe is deleted
again, also when the check is interrupted: a register whose answer was not seen (an error, a
Ctrl+C mid-call) is looked for in the listing by the probe's unique name. What was learned is
stored per API base URL and knowledge base, so `run --register-batch auto` batches only where
a register of several files in one call was seen to name every file.

Nothing here prints: steps are handed to `on_step` as they end, with one line of what each
saw, and the caller shows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .client import (
    FilePage,
    Forms,
    MaiAgentClient,
    Presigned,
    RegisterItem,
    RemoteEntry,
)
from .errors import ApiError
from .exitcodes import Ending, ExitCode, exit_code
from .i18n import N_, _, ngettext
from .interrupts import Interrupts
from .model import ErrorKind, ServiceFacts, Severity
from .outage import classify
from .queue import Queue
from .reconcile import CLOCK_SKEW, PAGE_SIZE, open_client, transient
from .retrying import Retry, backoff, retrying
from .store.facts import FactsStore

log = logging.getLogger("uploader.check")

PROBE_PREFIX = "uploader-check-probe-"
PROBE_TEXT = b"A probe of `uploader check`, deleted again at once. Safe to delete.\n"
SMALL_PAGE = 2  # asked once, to see whether the page size asked is the one served
AUTO_BATCH = 20  # files per register call where batching was proven
LISTING_WAIT = 10.0  # seconds a registered probe is given to appear in the listing
DOUBT_WAIT = 5.0  # seconds a register in doubt is given to show its entry before cleanup
DELETE_WAIT = 60.0  # seconds a probe the service is still parsing (409) is waited for
POLL = 0.25
CLEANUP_READS = Retry(tries=4, first=POLL)  # the listings that find the probes to delete


class Step(str, enum.Enum):
    KEY = "key"
    KB = "knowledge base"
    PRESIGN = "presign"
    S3 = "S3 upload"
    REGISTER = "register"
    BATCH = "register of 2"
    LISTING = "listing"
    DELETE = "delete probes"

    def __str__(self) -> str:
        return str(self.value)


@dataclass
class StepResult:
    step: Step
    ok: bool
    seconds: float
    saw: str  # one line: what the step saw, or why it failed


@dataclass
class CheckResult:
    """`facts` is what was learned (JSON-able, as stored); `error` the one that stopped the
    check; `left_behind` the probe entries that could not be deleted (with why)."""

    base_url: str
    kb_id: str
    dry_run: bool
    steps: list[StepResult] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    error: ApiError | None = None
    interrupted: bool = False
    left_behind: list[str] = field(default_factory=list)

    @property
    def batch_register(self) -> bool | None:
        return self.facts.get("batch_register")

    @property
    def unreachable(self) -> bool:
        """The service never answered: the first step met a connection error (a lost answer
        later is the upload path failing, not a service out of reach)."""
        return (
            self.error is not None
            and classify(self.error).outage_like
            and not any(step.ok for step in self.steps)
        )

    @property
    def exit_code(self) -> ExitCode:
        """0 the upload path works (or, dry, the reads do); 3 the service refused the key or
        the knowledge base; 4 it could not be reached at all; 130 interrupted; 1 anything else,
        a probe left behind included."""
        return exit_code(
            Ending(
                error=self.error,
                unreachable=self.unreachable,
                interrupted=self.interrupted,
                failed=bool(self.left_behind),
            )
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "kb_id": self.kb_id,
            "dry_run": self.dry_run,
            "ok": self.exit_code == 0,
            "steps": [
                {"step": str(s.step), "ok": s.ok, "seconds": round(s.seconds, 3), "saw": s.saw}
                for s in self.steps
            ],
            "facts": self.facts,
            "error": None if self.error is None else str(self.error),
            "interrupted": self.interrupted,
            "left_behind": self.left_behind,
        }


class _Stop(Exception):
    """A step that failed in a way the check cannot go on from (already recorded)."""


def normal_base_url(base_url: str) -> str:
    """The key service facts are stored under: the base URL as the client uses it."""
    return base_url if base_url.endswith("/") else base_url + "/"


class _Check:
    """One check: the steps in order, the probes it made, and their cleanup."""

    def __init__(
        self,
        client: MaiAgentClient,
        result: CheckResult,
        folder: str,
        on_step: Callable[[StepResult], None],
    ) -> None:
        self._client = client
        self._kb = result.kb_id
        self._result = result
        self._facts = result.facts
        self._folder = folder
        self._on_step = on_step
        self._started = time.time()
        self._stamp = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        self._count = 0
        self._ids: dict[str, str] = {}  # probe filename -> its entry id
        self._doubt: set[str] = set()  # probes whose register may have landed unseen

    # --- the steps -----------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._step(Step.KEY, self._key)
            files = await self._step(Step.KB, self._knowledge_base)
            if self._result.dry_run:
                await self._step(Step.LISTING, lambda: self._listing_dry(files))
                return
            name, key = await self._upload_probe(report=True)
            await self._step(Step.REGISTER, lambda: self._register_one(name, key))
            await self._step(Step.BATCH, self._register_two, required=False)
            await self._step(Step.LISTING, self._listing)
        except _Stop:
            return

    async def _step(
        self, step: Step, body: Callable[[], Awaitable[tuple[Any, str]]], required: bool = True
    ) -> Any:
        """Run one step, timed; hand on what it saw. A failed required step stops the check
        (its error is the check's); a failed optional one is only reported."""
        start = time.monotonic()
        try:
            value, saw = await body()
        except ApiError as err:
            self._report(StepResult(step, False, time.monotonic() - start, str(err)))
            if required:
                self._result.error = err
                raise _Stop from None
            return None
        self._report(StepResult(step, True, time.monotonic() - start, saw))
        return value

    def _report(self, step: StepResult) -> None:
        self._result.steps.append(step)
        self._on_step(step)

    async def _key(self) -> tuple[None, str]:
        kbs = await self._client.list_knowledge_bases()
        visible = ngettext(
            "accepted; {n} knowledge base visible to it",
            "accepted; {n} knowledge bases visible to it",
            len(kbs),
        )
        return None, visible.format(n=f"{len(kbs):,}")

    async def _knowledge_base(self) -> tuple[int | None, str]:
        kb = await self._client.get_knowledge_base(self._kb)
        files = "?" if kb.files_count is None else f"{kb.files_count:,}"
        return kb.files_count, _("found: {name!r}, {files} files").format(name=kb.name, files=files)

    async def _upload_probe(self, report: bool = False) -> tuple[str, str]:
        """Presign and S3-upload one probe file (each its own step when `report`); returns
        (filename, key)."""
        self._count += 1
        name = f"{PROBE_PREFIX}{self._stamp}-{self._count}.txt"
        path = os.path.join(self._folder, name)
        with open(path, "wb") as handle:
            handle.write(PROBE_TEXT)
        if not report:
            signed = await self._client.presign(name, len(PROBE_TEXT))
            await self._client.upload(signed, path, len(PROBE_TEXT), name)
            return name, signed.key

        async def presign() -> tuple[Presigned, str]:
            signed = await self._client.presign(name, len(PROBE_TEXT))
            held = name in signed.key
            self._facts["key_has_filename"] = held
            holds = (
                _("key {key} (holds the filename)")
                if held
                else _("key {key} (without the filename)")
            )
            return signed, holds.format(key=signed.key)

        signed = await self._step(Step.PRESIGN, presign)

        async def upload() -> tuple[None, str]:
            sent = await self._client.upload(signed, path, len(PROBE_TEXT), name)
            return None, _("{n} bytes accepted by {host}").format(
                n=sent.size, host=urlsplit(signed.url).netloc
            )

        await self._step(Step.S3, upload)
        return name, signed.key

    async def _register_one(self, name: str, key: str) -> tuple[None, str]:
        entries, forms = await self._register([(name, key)])
        entry = entries[0]
        assert entry is not None
        self._facts.update(_forms_facts(forms))
        return None, _("entry {id}; {forms}").format(id=entry.id, forms=_describe(forms, entry))

    async def _register_two(self) -> tuple[None, str]:
        """Two probes in one call: proven only when the answer names both."""
        probes = [await self._upload_probe() for _ in range(2)]
        try:
            entries, forms = await self._register(probes)
        except ApiError as err:
            if err.permanent:
                self._facts["batch_register"] = False
            raise
        named = sum(e is not None for e in entries)
        self._facts["batch_register"] = named == len(probes)
        if named < len(probes):
            return None, _(
                "not proven: the answer named {named} of {n} files; "
                "`run --register-batch auto` sends one file per call"
            ).format(named=named, n=len(probes))
        return None, _(
            "accepted: the answer named both files ({answer}); "
            "`run --register-batch auto` sends up to {most} per call"
        ).format(answer=forms.answer, most=AUTO_BATCH)

    async def _register(
        self, probes: list[tuple[str, str]]
    ) -> tuple[list[RemoteEntry | None], Forms]:
        """Register probes in one call; each entry the answer names, matched by key when the
        answer shows keys, else by filename. A probe not named stays in doubt for cleanup."""
        names = [name for name, _ in probes]
        self._doubt.update(names)
        items = [RegisterItem(key, name) for name, key in probes]
        answer, forms = await self._client.register_forms(self._kb, items)
        matched: list[RemoteEntry | None] = []
        for name, key in probes:
            entry = next(
                (e for e in answer if (e.has_key(key) if e.file else e.filename == name)), None
            )
            matched.append(entry)
            if entry is not None:
                self._ids[name] = entry.id
                self._doubt.discard(name)
        if matched[0] is None and len(probes) == 1:
            raise ApiError(
                _("register: the answer names no entry for {name}").format(name=names[0]),
                kind=Severity.TRANSIENT,
                error_kind=ErrorKind.BAD_RESPONSE,
            )
        return matched, forms

    async def _listing_dry(self, files: int | None) -> tuple[None, str]:
        page, forms = await self._client.list_files_forms(self._kb, 1, PAGE_SIZE)
        seen = [self._page_size(page, files)]
        if page.entries:
            self._facts.update(_forms_facts(forms, listing=True))
            entry = page.entries[0]
            seen.append(_("entries: {forms}").format(forms=_describe(forms, entry, register=False)))
        seen.append(self._order(page))
        small = await self._small_page(page)
        if small:
            seen.append(small)
        return None, "; ".join(seen)

    async def _listing(self) -> tuple[None, str]:
        """The probes must show in the listing (adoption relies on it), within a few seconds
        of their register; then what the listing looks like."""
        deadline = time.monotonic() + LISTING_WAIT
        while True:
            page, forms = await self._client.list_files_forms(self._kb, 1, PAGE_SIZE)
            where = await self._find_probes(page)
            if where is not None or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL)
        self._facts.update(_forms_facts(forms, listing=True))
        seen = [self._page_size(page, page.count), self._order(page)]
        small = await self._small_page(page)
        if small:
            seen.append(small)
        if where is None:
            raise ApiError(
                _(
                    "list files: the probe is not in the listing {seconds:g} s after its "
                    "register ({seen})"
                ).format(seconds=LISTING_WAIT, seen="; ".join(seen)),
                kind=Severity.PERMANENT,
                error_kind=ErrorKind.BAD_RESPONSE,
            )
        return None, _("probe on page {page}; {seen}").format(page=where, seen="; ".join(seen))

    async def _find_probes(self, first: FilePage) -> int | None:
        """The page number the first probe is on, reading on while the listing is not newest
        first; None when it is not there."""
        target = self._ids.get(f"{PROBE_PREFIX}{self._stamp}-1.txt")
        page, number = first, 1
        while True:
            if any(e.id == target for e in page.entries):
                return number
            if not page.next or self._before_probes(page):
                return None
            page, number = await self._client.next_files(self._kb, page.next), number + 1

    def _before_probes(self, page: FilePage) -> bool:
        """A newest-first page whose oldest entry is older than the check: no probe below."""
        times = [e.created_at for e in page.entries if e.created_at is not None]
        newest_first = self._facts.get("newest_first") is not False and page.newest_first()
        return bool(times) and newest_first and times[-1] < self._started - CLOCK_SKEW

    def _page_size(self, page: FilePage, count: int | None) -> str:
        served = len(page.entries)
        self._facts["page_size_asked"] = PAGE_SIZE
        self._facts["page_size_served"] = served if page.next else None
        if page.next:
            return _("page size: asked {asked}, served {served}").format(
                asked=PAGE_SIZE, served=served
            )
        total = "?" if count is None else count
        return _("page size: asked {asked}, all {total} entries on one page").format(
            asked=PAGE_SIZE, total=total
        )

    async def _small_page(self, first: FilePage) -> str | None:
        """With more entries than SMALL_PAGE, ask for a page of SMALL_PAGE: whether the size
        asked is honoured at all (a server that reads another parameter name serves its
        default)."""
        if len(first.entries) <= SMALL_PAGE and not first.next:
            return None
        page = await self._client.list_files(self._kb, 1, SMALL_PAGE)
        honoured = len(page.entries) == SMALL_PAGE
        self._facts["page_size_honoured"] = honoured
        small = (
            _("asked {asked}, served {served} (honoured)")
            if honoured
            else _("asked {asked}, served {served} (not honoured)")
        )
        return small.format(asked=SMALL_PAGE, served=len(page.entries))

    def _order(self, page: FilePage) -> str:
        order = listing_order(page.entries)
        self._facts["newest_first"] = {"newest first": True, "unknown": None}.get(order, False)
        return _("order: {order}").format(order=_(order))

    # --- cleanup -------------------------------------------------------------------------

    async def cleanup(self) -> None:
        """Delete every probe entry: those the answers named, and those a register in doubt
        may have made (looked for by name for a few seconds). Reported as the delete step."""
        if not self._ids and not self._doubt:
            return
        start = time.monotonic()
        errors: list[str] = []
        looked = True
        if self._doubt:
            try:
                await self._look_for_doubtful()
            except ApiError as err:
                looked = False
                errors.append(
                    _("could not look for {names}: {why}").format(
                        names=", ".join(sorted(self._doubt)), why=err
                    )
                )
        deleted = await asyncio.gather(*map(self._delete, list(self._ids)))
        errors += [error for error in deleted if error]
        self._result.left_behind = errors
        gone = len(deleted) - sum(1 for error in deleted if error)
        saw = ngettext(
            "{n} probe entry deleted, confirmed gone",
            "{n} probe entries deleted, confirmed gone",
            gone,
        ).format(n=f"{gone:,}")
        if self._doubt and looked:
            saw += _("; not in the listing (never registered): {names}").format(
                names=", ".join(sorted(self._doubt))
            )
        if errors:
            saw += _("; left behind: {errors}").format(errors="; ".join(errors))
        self._report(StepResult(Step.DELETE, not errors, time.monotonic() - start, saw))

    async def _look_for_doubtful(self) -> None:
        deadline = time.monotonic() + DOUBT_WAIT
        while self._doubt:
            for entry in await self._probe_entries():
                if entry.filename in self._doubt:
                    self._doubt.discard(entry.filename)
                    self._ids[entry.filename] = entry.id
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(POLL)

    async def _probe_entries(self) -> list[RemoteEntry]:
        """This check's probes in the listing: the pages since the check began when the
        listing is newest first, else all of it."""
        found: list[RemoteEntry] = []
        page: FilePage | None = await _retried(self._client.list_files, self._kb, 1, PAGE_SIZE)
        while page is not None:
            prefix = f"{PROBE_PREFIX}{self._stamp}-"
            found.extend(e for e in page.entries if e.filename.startswith(prefix))
            if not page.next or self._before_probes(page):
                break
            page = await _retried(self._client.next_files, self._kb, page.next)
        return found

    async def _delete(self, name: str) -> str | None:
        """Delete one probe and read it back until it is gone; why not, if it stays. A 409
        (still being parsed) is waited out, a 500 that deleted anyway is seen by the read."""
        file_id = self._ids[name]
        deadline = time.monotonic() + DELETE_WAIT
        attempt = 0
        while True:
            attempt += 1
            failure: ApiError | None = None
            try:
                await self._client.delete_file(self._kb, file_id)
            except ApiError as err:
                failure = err
            if failure is None or not failure.fatal:
                with contextlib.suppress(ApiError):
                    if await self._client.get_file(self._kb, file_id) is None:
                        return None
            if (failure is not None and failure.fatal) or time.monotonic() > deadline:
                why = failure or _("still listed after its delete")
                return _("{name} (entry {id}): {why}").format(name=name, id=file_id, why=why)
            await asyncio.sleep(min(backoff(attempt, POLL, None) + POLL, 5.0))


async def _retried(fn: Callable[..., Awaitable[FilePage]], *args: Any) -> FilePage:
    return await retrying(lambda: fn(*args), CLEANUP_READS, transient)


def listing_order(entries: list[RemoteEntry]) -> str:
    """What the createdAt of one page says about the order: "newest first", "oldest first",
    "no order", or "unknown" when fewer than two distinct times are shown."""
    times = [e.created_at for e in entries if e.created_at is not None]
    steps = [b - a for a, b in itertools.pairwise(times)]
    if not any(steps):
        return N_("unknown")
    if all(s <= 0 for s in steps):
        return N_("newest first")
    if all(s >= 0 for s in steps):
        return N_("oldest first")
    return N_("no order")


_FORM_NAMES = {
    "list": "a list",
    "page": "paginated",
    "key": "the key",
    "url": "a URL",
    "path": "a path",
    "string": "a string",
    "object": "an object",
    "int": "an int",
    "float": "a float",
    "digits": "a digits string",
    "iso": "ISO 8601",
}


def _forms_facts(forms: Forms, listing: bool = False) -> dict[str, Any]:
    values = {
        "file": forms.file,
        "status": forms.status,
        "created_at": forms.created_at,
        "size_field": forms.size_field,
    }
    if listing:
        return {f"listing_{name}": value for name, value in values.items()}
    return {"register_answer": forms.answer, **values}


def _describe(forms: Forms, entry: RemoteEntry, register: bool = True) -> str:
    def name(form: str | None) -> str:
        return "absent" if form is None else _FORM_NAMES[form]

    parts = [f"answer {name(forms.answer)}"] if register else []
    parts += [
        f"file {name(forms.file)}",
        f"status {name(forms.status)}" + (f" ({entry.status})" if entry.status else ""),
        f"createdAt {name(forms.created_at)}",
        f"size as {forms.size_field or 'absent'}",
    ]
    return ", ".join(parts)


# --- running it ------------------------------------------------------------------------------


async def run_check(
    base_url: str,
    api_key: str,
    kb_id: str,
    *,
    dry_run: bool = False,
    timeout: float = 30.0,
    on_step: Callable[[StepResult], None],
    notify: Callable[[str], None],
) -> CheckResult:
    """The whole check. Ctrl+C or SIGTERM stops the steps at once; the probes are deleted
    all the same (a further Ctrl+C only says so: the cleanup is bounded in time)."""
    result = CheckResult(normal_base_url(base_url), kb_id, dry_run)
    with tempfile.TemporaryDirectory(prefix="uploader-check-") as folder:
        async with open_client(base_url, api_key, timeout=timeout) as client:
            check = _Check(client, result, folder, on_step)
            steps = asyncio.ensure_future(check.run())

            def on_signal() -> None:
                if not result.interrupted:
                    result.interrupted = True
                    notify(_("interrupted: deleting the probes before quitting"))
                    steps.cancel()
                else:
                    notify(_("still deleting the probes; this ends on its own"))

            with Interrupts() as signals:
                signals.on_interrupt(on_signal)
                with contextlib.suppress(asyncio.CancelledError):
                    await steps
                await check.cleanup()
    return result


async def remember(q: Queue, result: CheckResult) -> bool:
    """Store what a check learned, for `run`; False when it learned nothing (dry, or stopped
    before a register answered)."""
    if result.dry_run or "register_answer" not in result.facts:
        return False
    await FactsStore(q.engine).store_service_facts(
        ServiceFacts(
            result.base_url,
            result.kb_id,
            time.time(),
            "check",
            result.batch_register,
            result.facts,
        )
    )
    return True


async def register_batch(q: Queue, base_url: str, kb_ids: list[str], requested: int | None) -> int:
    """Files per register call for a run: `requested` when given; for auto (None), one per
    call where some knowledge base of the run was seen not to take a batch (by `check` or an
    earlier run's answers), else up to AUTO_BATCH. Where it was never seen either way, the
    run learns it from its own first answers (`Registrar`: two files per call until an
    answer names both)."""
    if requested is not None:
        return requested
    base = normal_base_url(base_url)
    refused, unproven = [], []
    for kb_id in kb_ids:
        known = await FactsStore(q.engine).service_facts(base, kb_id)
        if known is not None and known.batch_register is False:
            refused.append(kb_id)
        elif known is None or not known.batch_register:
            unproven.append(kb_id)
    if refused:
        log.info(
            "register batching refused by %s: one file per call (`uploader check --kb` tests"
            " it again)",
            ", ".join(refused),
        )
        return 1
    if unproven:
        log.info(
            "register batching not known for %s: learning it from this run's first register"
            " of two files",
            ", ".join(unproven),
        )
    elif kb_ids:
        log.info("register batching proven for %s: up to %d files per call", kb_ids, AUTO_BATCH)
    return AUTO_BATCH


async def learned_from_run(q: Queue, base_url: str, proved: dict[str, bool]) -> None:
    """What a run's batched register answers showed, per knowledge base, for later runs."""
    base = normal_base_url(base_url)
    for kb_id, ok in proved.items():
        await FactsStore(q.engine).store_service_facts(
            ServiceFacts(base, kb_id, time.time(), "run", ok, {})
        )
