"""Replace, never accumulate: the entry a changed file's new version supersedes is deleted
once that new version is registered, never before (there is no moment with neither).

`enqueue` of a changed file that was uploaded moves its entry into the queue's `superseded`
record instead of forgetting it; this module is what `run` does with that record at its end:
every superseded entry whose job is done again with another entry, and that no job points to,
is deleted and the deletion recorded. A delete that fails (a 409 while the entry is still
processed, a 5xx) stays in the record with its error and is tried again by the next run; so
is one a crash cut short. `run --keep-old-versions` keeps them instead (the old behaviour),
marked kept so that `verify` still knows them for what they are.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from .client import ApiError, MaiAgentClient
from .model import Deletion, DeletionReason, Superseded, SupersedeFailure
from .queue import Queue
from .reconcile import delete_entry, each

log = logging.getLogger("uploader.run")

COMMAND = "run"


@dataclass
class Replaced:
    """What a run did with the superseded entries it found due."""

    deleted: int = 0
    kept: int = 0
    errors: list[str] = field(default_factory=list)  # not deleted this time: the next run retries
    fatal: ApiError | None = None  # the service refused the key or the knowledge base


async def drain(
    q: Queue, client: MaiAgentClient, kb_id: str | None, *, keep_old_versions: bool
) -> Replaced:
    """Delete (or, with `keep_old_versions`, keep) every superseded entry that is due."""
    due = await q.superseded_due(kb_id)
    result = Replaced()
    if not due:
        return result
    if keep_old_versions:
        await q.keep_superseded(due)
        result.kept = len(due)
        return result
    deleted: list[Deletion] = []
    failed: list[SupersedeFailure] = []

    async def one(row: Superseded) -> None:
        try:
            gone, status = await delete_entry(client, row.kb_id, row.entry_id)
        except ApiError as err:
            if err.kind == "fatal":
                raise
            failed.append(SupersedeFailure(row.kb_id, row.entry_id, str(err)))
            return
        if not gone:
            failed.append(SupersedeFailure(row.kb_id, row.entry_id, f"still {status}"))
            return
        deleted.append(
            Deletion(
                row.kb_id,
                row.entry_id,
                row.filename,
                DeletionReason.SUPERSEDED,
                f"replaced by {row.replaced_by}",
                COMMAND,
                time.time(),
                row.job_id,
            )
        )

    try:
        await each(due, one)
    except ApiError as err:
        result.fatal = err
    finally:
        await q.settle_superseded(deleted, failed)
    result.deleted = len(deleted)
    result.errors = [f"{f.entry_id}: {f.error}" for f in failed]
    for error in result.errors:
        log.info("superseded entry not deleted yet (the next run tries again): %s", error)
    return result
