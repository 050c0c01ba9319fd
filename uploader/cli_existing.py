"""`run` (and `sync`) before a database's first upload to a knowledge base: entries there like
the files about to be uploaded stop the run before anything is sent (exit 2), naming the ways
on: the database that uploaded them (`--db`), `--adopt-existing` (with `--from-checkpoint`
for the reference script's uploads) or `--upload-anyway`. A second database uploaded a whole
folder again, and verify then called the copies 'extra' (exit 0)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import click

from . import existing
from .client import MaiAgentClient
from .exitcodes import ExitCode
from .i18n import _, ngettext
from .options import RunOptions
from .printable import printable
from .queue import Queue

# on_queue_and_service bound to the command's queue and service
Service = Callable[[Callable[[Queue, MaiAgentClient], Awaitable[Any]]], Any]


class ExistingEntries(click.ClickException):
    """Entries like the files about to be uploaded, and no word on what to do: exit 2."""

    exit_code = ExitCode.USAGE


# run's (and so sync's) options for a knowledge base that holds the files already
OPTIONS = [
    click.option(
        "--adopt-existing",
        is_flag=True,
        help="Before this database's first upload to the knowledge base: a file whose name "
        "and size match exactly one entry no file of this database has is done with that "
        "entry (not uploaded again); ambiguous ones are listed and uploaded.",
    ),
    click.option(
        "--from-checkpoint",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="With --adopt-existing: the reference script's upload_checkpoint.json; its "
        "completed_files are the files adopted.",
    ),
    click.option(
        "--upload-anyway",
        is_flag=True,
        help="Upload even though the knowledge base holds entries like the files (a second "
        "copy of each).",
    ),
]


def check(service: Service, options: RunOptions, echo: Callable[[str], None]) -> None:
    """Before the first upload of each knowledge base with work: stop on entries like the
    files (nothing sent), or adopt them as asked; what was adopted is said by `echo`."""
    adopt = options.adopt_existing
    if adopt and options.upload_anyway:
        raise click.UsageError(_("--adopt-existing and --upload-anyway: choose one"))
    if options.from_checkpoint is not None and not adopt:
        raise click.UsageError(_("--from-checkpoint goes with --adopt-existing"))
    if options.upload_anyway:
        return
    checkpoint = None
    if options.from_checkpoint is not None:
        try:
            checkpoint = existing.Checkpoint.read(options.from_checkpoint)
        except existing.CheckpointError as exc:
            raise click.UsageError(str(exc)) from None

    async def body(q: Queue, api: MaiAgentClient) -> list[tuple[existing.Found, int]]:
        done: list[tuple[existing.Found, int]] = []
        for kb in await q.kbs_with_work(options.kb_id):
            if not await existing.first_upload(q, kb):
                continue
            found = await existing.look(
                q, api, kb, options.name, options.name_separator, checkpoint
            )
            if found.alike and not adopt:
                _stop(found)
            adopted = await existing.adopt(q, found.unique) if adopt else 0
            done.append((found, adopted))
        return done

    try:
        done = service(body)
    except click.ClickException as exc:
        if exc.exit_code == ExitCode.REFUSED:
            return  # a refused key or knowledge base: the run's start says so, and records it
        raise
    for found, adopted in done:
        if adopt:
            _say_adopted(found, adopted, checkpoint, echo)


def _names(relpaths: list[str]) -> str:
    shown = ", ".join(relpaths[: existing.SHOWN])
    more = len(relpaths) - existing.SHOWN
    if more > 0:
        shown += _(" and {n} more").format(n=f"{more:,}")
    return printable(shown)


def _stop(found: existing.Found) -> None:
    alike = [p.file.relpath for p in found.unique] + found.ambiguous + found.not_in_checkpoint
    said = ngettext(
        "knowledge base {kb} already holds entries with the name and size of {n} file about "
        "to be uploaded ({names}), uploaded from another database or by another tool? "
        "Nothing was sent. Use the database that uploaded them (--db PATH), or "
        "--adopt-existing (those files are done with those entries), or --upload-anyway",
        "knowledge base {kb} already holds entries with the names and sizes of {n} files "
        "about to be uploaded ({names}), uploaded from another database or by another tool? "
        "Nothing was sent. Use the database that uploaded them (--db PATH), or "
        "--adopt-existing (those files are done with those entries), or --upload-anyway",
        found.alike,
    )
    raise ExistingEntries(said.format(kb=found.kb_id, n=f"{found.alike:,}", names=_names(alike)))


def _say_adopted(
    found: existing.Found,
    adopted: int,
    checkpoint: existing.Checkpoint | None,
    echo: Callable[[str], None],
) -> None:
    if not found.alike and not found.without_entry:
        return
    echo(
        _("adopted {n} existing entries of {kb}: those files are not uploaded again").format(
            n=f"{adopted:,}", kb=found.kb_id
        )
    )
    if found.ambiguous:
        echo(
            _(
                "{n} files are like several entries, or share theirs with other files: left "
                "for upload ({names})"
            ).format(n=f"{len(found.ambiguous):,}", names=_names(found.ambiguous))
        )
    if checkpoint is not None and found.without_entry:
        echo(
            _(
                "{n} files of {checkpoint} have no entry like them: left for upload ({names})"
            ).format(
                n=f"{len(found.without_entry):,}",
                checkpoint=printable(checkpoint.path),
                names=_names(found.without_entry),
            )
        )
    if found.not_in_checkpoint:
        echo(
            _("{n} files not in the checkpoint are like entries: left for upload ({names})").format(
                n=f"{len(found.not_in_checkpoint):,}", names=_names(found.not_in_checkpoint)
            )
        )
