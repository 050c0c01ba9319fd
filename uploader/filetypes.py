"""Which file types the knowledge base accepts, known before any byte is sent.

MaiAgent refuses a register of another type with a 400, after the presign and the whole S3
upload were spent; so the accepted types are asked of the service (`GET
parsers/supported-file-types/`) once per run or enqueue, kept with the other service facts,
and a file of another type is recorded `skipped` at enqueue (and again at claim) instead.
A service without that call (an older or on-premise deployment) gets the documented list.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass

from .checkup import normal_base_url
from .client import MaiAgentClient
from .errors import ApiError
from .i18n import _
from .model import ServiceFacts
from .queue import Queue
from .store.facts import FactsStore

log = logging.getLogger("uploader.filetypes")

# The types MaiAgent's documentation lists as supported ("Knowledge Base File Upload").
DOCUMENTED = frozenset(
    ("doc", "docx", "txt", "pdf", "md", "xls", "xlsx", "csv", "ppt", "pptx", "json", "jsonl")
)
FACT = "file_types"  # the key in service_facts.facts


class Source(str, enum.Enum):
    """Where the accepted types came from."""

    SERVICE = "service"  # asked now
    STORED = "stored"  # what an earlier run or enqueue learned from the service
    DOCUMENTED = "documented"  # the service was not asked, or has no such call


@dataclass(frozen=True)
class Accepted:
    """The accepted types, where they came from, and the one line to say when the service
    lacks the call (None otherwise)."""

    types: frozenset[str]
    source: Source
    note: str | None = None


def extension(name: str) -> str:
    """The type of a name as MaiAgent reads it: the last suffix, lower case, no dot."""
    base = name.rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    return ext.lower() if dot and stem else ""


def refusal(name: str, accepted: frozenset[str]) -> str | None:
    """Why a file of this name is not sent (None: its type is accepted)."""
    ext = extension(name)
    if ext in accepted:
        return None
    if not ext:
        return _("a file without an extension is not accepted by MaiAgent (--any-type sends it)")
    return _("type .{ext} is not accepted by MaiAgent (--any-type sends it)").format(ext=ext)


def _no_call(base_url: str) -> str:
    return _(
        "the service at {url} does not offer parsers/supported-file-types/: files of other "
        "types than the {n} MaiAgent documents are skipped (--any-type sends them)"
    ).format(url=base_url, n=len(DOCUMENTED))


async def known(q: Queue, base_url: str, kb_id: str) -> Accepted:
    """The types last learned from this service for `kb_id`, else the documented list; no
    request (enqueue without a key, or told not to ask)."""
    facts = await FactsStore(q.engine).service_facts(normal_base_url(base_url), kb_id)
    stored = facts.facts.get(FACT) if facts is not None else None
    if isinstance(stored, list) and stored:
        return Accepted(frozenset(str(t) for t in stored), Source.STORED)
    return Accepted(DOCUMENTED, Source.DOCUMENTED)


async def learn(q: Queue, client: MaiAgentClient, base_url: str, kb_ids: list[str]) -> Accepted:
    """Ask the service once and keep the answer with the service facts of each knowledge
    base; a service without the call gets the documented list (said once, in `note`), one
    that fails now what was learned before."""
    try:
        types = await client.supported_file_types()
    except ApiError as exc:
        if exc.fatal:
            raise
        log.warning("could not ask the service for its file types (%s): using what is known", exc)
        return (
            await known(q, base_url, kb_ids[0])
            if kb_ids
            else Accepted(DOCUMENTED, Source.DOCUMENTED)
        )
    if types is None:
        note = _no_call(normal_base_url(base_url))
        log.info("%s", note)
        return Accepted(DOCUMENTED, Source.DOCUMENTED, note)
    base = normal_base_url(base_url)
    store = FactsStore(q.engine)
    for kb_id in kb_ids:
        before = await store.service_facts(base, kb_id)
        facts = {**(before.facts if before is not None else {}), FACT: sorted(types)}
        source = before.source if before is not None else "run"
        await store.store_service_facts(ServiceFacts(base, kb_id, time.time(), source, None, facts))
    return Accepted(types, Source.SERVICE)
