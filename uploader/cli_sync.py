"""`uploader sync` and `uploader jobs`: the weekly job in one command. Enqueue's scan, run's
upload (changed files replaced, removed ones deleted with --delete-removed, the deletion guard
included) and the report, with one set of options, remembered per folder and knowledge base.

The command is made of the two it composes: its options are enqueue's and run's own (shared
by name, as sqlite-utils shares its option decorators), and it calls their callbacks, so a
change to either reaches `sync` without being written twice.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import click

from . import cli_dryrun, client, dryrun, filetypes, replace, saved, scan, watch
from .cli import (
    ENQUEUE_CHECK_TIMEOUT,
    RUN_HAD_WORK,
    YOUNG_LEFT_OUT,
    Context,
    DeletionsRefused,
    ServiceError,
    UserError,
    _auto_report,
    _check_service,
    ask_service,
    cli,
    enqueue,
    given,
    on_queue,
    pass_ctx,
    run,
    walk_filters,
)
from .exitcodes import ExitCode, exit_code, worst
from .i18n import _
from .printable import printable
from .queue import Queue
from .store.saved_jobs import SavedJob, SavedJobsStore
from .store.status import StatusStore
from .tags import TagOptions

# enqueue's and run's parameters that `sync` does not take from them: its folder argument is
# its own, and enqueue's --dry-run (of --delete-removed alone) and both commands' --json
# (two documents) say something else in a command that does both.
_NOT_SHARED = frozenset({"directory", "dry_run", "as_json"})


def _shared_params(commands: Iterable[click.Command]) -> list[click.Parameter]:
    """The commands' parameters, each name once (the first command's wins: --kb, --shared and
    the service options are in both), copied so that `sync` may change its own."""
    seen: set[str] = set()
    params: list[click.Parameter] = []
    for command in commands:
        for param in command.params:
            if param.name is None or param.name in seen or param.name in _NOT_SHARED:
                continue
            if not param.expose_value and param.name in ("db", "verbose", "quiet"):
                continue  # the group's own, added back to every command at the end
            seen.add(param.name)
            mine = copy.copy(param)
            if param.name == "kb_id":
                mine.required = False  # a saved job knows its knowledge base
            params.append(mine)
    return params


def _names(command: click.Command) -> set[str]:
    return {p.name for p in command.params if p.name is not None and p.expose_value}


@dataclass(frozen=True)
class _Job:
    """One folder and knowledge base to sync, with the options it is synced with."""

    folder: str
    kb_id: str
    options: dict[str, Any]
    job_id: int | None = None  # the saved job's, once it is saved
    unsaved: dict[str, Any] | None = None  # a first sync's: saved once the service accepts it


async def _jobs(
    q: Queue,
    directory: str | None,
    kb_id: str | None,
    opts: dict[str, Any],
    asked: set[str],
    save: bool = True,
) -> tuple[list[_Job], list[str]]:
    """The jobs this sync does, the saved ones made or changed by what was `asked` (unless
    not `save`: a dry run); and the lines that say what was saved."""
    store = SavedJobsStore(q.engine)
    changed = {name: opts[name] for name in saved.JOB_OPTIONS if name in asked}
    if directory is None:
        if changed:
            names = ", ".join(saved.JOB_OPTIONS[name] for name in changed)
            raise UserError(
                _(
                    "{options}: the options of a job go with its folder "
                    "(`uploader sync DIR {options} ...` changes that folder's job)"
                ).format(options=names)
            )
        found = [j for j in await store.jobs() if kb_id in (None, j.kb_id)]
        if not found:
            said = _("no saved job in this database")
            if kb_id is not None:
                said = _("no saved job of {kb} in this database").format(kb=kb_id)
            raise UserError(
                said + _(": `uploader sync DIR --kb KB_ID` syncs a folder and saves its job")
            )
        return [_job(job) for job in found], []
    folder = os.path.realpath(os.fsencode(directory))
    found = [j for j in await store.jobs(folder) if kb_id in (None, j.kb_id)]
    if not found:
        if kb_id is None:
            raise UserError(
                _(
                    "{folder} has no saved job: its first sync needs --kb KB_ID (saved with "
                    "the job, with its filters, labels and delete policy)"
                ).format(folder=directory)
            )
        first = saved.to_saved(opts)
        return [
            _Job(directory, kb_id, saved.from_saved(first), unsaved=first if save else None)
        ], []
    jobs: list[_Job] = []
    notes: list[str] = []
    for job in found:
        differs = saved.differences(job.options, saved.to_saved(changed))
        options = job.options
        if differs:
            options = {**job.options, **saved.to_saved(changed)}
            if save:
                await store.save(folder, job.kb_id, options)
            notes.append(
                _("changed the saved job {folder} -> {kb}: {changes}").format(
                    folder=directory, kb=job.kb_id, changes="; ".join(map(str, differs))
                )
            )
        jobs.append(_Job(directory, job.kb_id, saved.from_saved(options), job.id))
    return jobs, notes


def _job(job: SavedJob) -> _Job:
    return _Job(os.fsdecode(job.folder), job.kb_id, saved.from_saved(job.options), job.id)


def _save_first(ctx: Context, job: _Job, opts: dict[str, Any]) -> None:
    """A folder's first sync saves its job only once the service has accepted its knowledge
    base and the key: a mistyped --kb saved anyway was tried again by every later `uploader
    sync`, which stopped at it with exit 3 before the jobs after it. A refusal queues nothing
    either. A service that does not answer is no refusal: the job is saved, and the run says
    what it finds."""
    if job.unsaved is None:
        return
    _check_service(opts["api_key"], opts["base_url"], opts["allow_http"], "sync")
    try:
        ask_service(
            opts["base_url"],
            opts["api_key"],
            lambda api: api.check_kb(job.kb_id),
            min(opts["timeout"], ENQUEUE_CHECK_TIMEOUT),
        )
    except client.ApiError as exc:
        if exit_code(exc) is ExitCode.REFUSED:
            raise ServiceError(exc) from None
    folder = os.path.realpath(os.fsencode(job.folder))
    on_queue(ctx, lambda q: SavedJobsStore(q.engine).save(folder, job.kb_id, job.unsaved or {}))
    note = _(
        "saved the job {folder} -> {kb}: `uploader sync {folder}` repeats it with these options"
    ).format(folder=job.folder, kb=job.kb_id)
    ctx.echo(printable(note))


def _sync(
    directory: str | None,
    watching: bool,
    every: float,
    metrics_addr: str | None,
    dry_run: bool,
    **opts: Any,
) -> None:
    """Scan DIRECTORY into the queue for knowledge base --kb, upload what is new or changed,
    (with --delete-removed) delete the entries of removed files, and write the report: what
    `uploader enqueue` then `uploader run` do, with the options of both.

    The first sync of a folder saves its job (knowledge base, filters, labels, metadata,
    manifest, parser, --name, delete policy): `uploader sync DIRECTORY` repeats it, and
    `uploader sync` repeats every saved job of the database. An option given again changes
    the saved job (and says so); `uploader jobs` lists them.

    With --watch it keeps running: a cycle whenever the folders changed and then stayed still
    for a few seconds (file-system events, where they work) and at least every --every (a
    rescan: the only way on network shares); one line per cycle; SIGTERM or Ctrl+C finishes
    what is in flight and stops, exit 0. --metrics-addr serves Prometheus metrics meanwhile.

    Exit codes: run's (0 all done, 1 some files failed, 3 refused, 4 unreachable, 130
    interrupted), 2 bad input, 5 deletions refused by the guard (--max-delete,
    --allow-empty-source): the upload still ran, nothing was deleted.
    """
    click_ctx = click.get_current_context()
    ctx = click_ctx.find_object(Context)
    assert ctx is not None
    asked = {name for name in opts if given(click_ctx, name)}
    for name, option in (("every", "--every"), ("metrics_addr", "--metrics-addr")):
        if given(click_ctx, name) and not watching:
            raise UserError(_("{option} goes with --watch").format(option=option))
    if directory is not None and not os.path.isdir(directory):
        what = _("does not exist") if not os.path.exists(directory) else _("is not a folder")
        raise UserError(f"{directory} {what}")
    # a bad pattern is said before a job is saved or changed with it
    walk_filters(opts["include"], opts["exclude"], None, None, opts["ignore_case"], None)
    jobs, notes = on_queue(
        ctx, lambda q: _jobs(q, directory, opts["kb_id"], opts, asked, save=not dry_run)
    )
    if dry_run:
        for job in jobs:
            if len(jobs) > 1:
                ctx.echo(
                    printable(_("sync {folder} -> {kb}").format(folder=job.folder, kb=job.kb_id))
                )
            cli_dryrun.show(on_queue(ctx, functools.partial(_dry, ctx=ctx, job=job, opts=opts)))
        return
    for note in notes:
        ctx.echo(printable(note))
    for job in jobs:
        _save_first(ctx, job, opts)
    if watching:
        if "min_age" not in asked:
            opts["min_age"] = watch.SETTLE  # a file still being written waits for a later cycle
        _watch(click_ctx, ctx, jobs, opts, every, metrics_addr)
        return
    code = worst(_cycle(click_ctx, ctx, jobs, opts))
    if code:
        sys.exit(code)


def _cycle(
    click_ctx: click.Context, ctx: Context, jobs: list[_Job], opts: dict[str, Any]
) -> list[ExitCode]:
    """Every job once: their codes (an interrupted one ends the cycle); then
    the report, which covers the whole database, when a job's run had work: written by the
    last job's run, it was never written when that job had nothing to do or was refused."""
    codes: list[ExitCode] = []
    click_ctx.meta[RUN_HAD_WORK] = False
    for job in jobs:
        if len(jobs) > 1:
            ctx.echo(printable(_("sync {folder} -> {kb}").format(folder=job.folder, kb=job.kb_id)))
        try:
            codes.append(_one(click_ctx, job, opts))
        except (ServiceError, UserError) as exc:
            if len(jobs) == 1 or exc.exit_code not in _ONE_JOBS:
                raise
            codes.append(_went_on(exc, job))
        if codes[-1] == ExitCode.INTERRUPTED:
            break
    if click_ctx.meta[RUN_HAD_WORK] and not opts["no_report"]:
        report = on_queue(ctx, lambda q: _auto_report(q, ctx))
        if report is not None:
            click.echo(_("report: {path}").format(path=report))
    return codes


# What stops one job of several and not the others (rclone's sync of many remotes goes on
# past one that fails): its knowledge base refused (deleted, or the key lost its access),
# its folder gone, a filter it was saved with that is bad today.
_ONE_JOBS = (ExitCode.REFUSED, ExitCode.USAGE)


def _went_on(exc: click.ClickException, job: _Job) -> ExitCode:
    """Say why this job stopped and how to drop it; the other jobs go on, and the sync ends
    with this code (or a worse one)."""
    exc.show()
    if job.job_id is not None:
        click.echo(
            printable(
                _(
                    "sync {folder} -> {kb} stopped; the other jobs go on "
                    "(`uploader jobs --remove {id}` forgets this one)"
                ).format(folder=job.folder, kb=job.kb_id, id=job.job_id)
            ),
            err=True,
        )
    return ExitCode(exc.exit_code)


def _stops_a_watch(codes: list[ExitCode]) -> bool:
    """A watch stops on what another cycle cannot fix: bad input, a refused key or knowledge
    base, for every job of the cycle (one job of several refused leaves the others watched:
    each cycle names it); and on an interruption."""
    return ExitCode.INTERRUPTED in codes or all(code in _ONE_JOBS for code in codes)


def _watch(
    click_ctx: click.Context,
    ctx: Context,
    jobs: list[_Job],
    opts: dict[str, Any],
    every: float,
    metrics_addr: str | None,
) -> None:
    """Cycles until a signal: SIGTERM and Ctrl+C finish what is in flight (the run puts the
    rest back to pending) and end the watch with exit 0, the clean stop a service manager
    expects; a cycle that cannot be fixed by another (bad input, a refused key, for every
    job) ends it with its code."""
    exporter = None
    if metrics_addr is not None:
        from .metrics import Metrics, parse_addr

        try:
            exporter = Metrics(*parse_addr(metrics_addr))
        except (ValueError, OSError) as exc:
            raise UserError(
                _("--metrics-addr {addr}: {why}").format(addr=metrics_addr, why=exc)
            ) from None
    folders = [job.folder for job in jobs]
    code = ExitCode.OK
    n = 0
    try:
        while True:
            n += 1
            started = time.monotonic()
            click_ctx.meta[YOUNG_LEFT_OUT] = 0
            codes = _cycle(click_ctx, ctx, jobs, opts)
            code = worst(codes)
            took = time.monotonic() - started
            if exporter is not None:
                states, errors = on_queue(ctx, _counts)
                exporter.cycle(took, code, states, errors)
            click.echo(
                _("cycle {n} ended at {at}: exit {code} in {took:.1f}s; watching").format(
                    n=n, at=time.strftime("%H:%M:%S"), code=int(code), took=took
                )
            )
            if _stops_a_watch(codes):
                break
            # files left out as still changing are looked at again once they may have settled
            young = click_ctx.meta.get(YOUNG_LEFT_OUT, 0)
            soon = (opts["min_age"] or watch.SETTLE) + 1
            watch.wait(folders, min(every, soon) if young else every, events=True)
    except KeyboardInterrupt:
        code = ExitCode.INTERRUPTED
    finally:
        if exporter is not None:
            exporter.close()
    if code == ExitCode.INTERRUPTED:
        click.echo(_("stopped: nothing left running; the same command resumes"))
        return
    sys.exit(code)


async def _counts(q: Queue) -> tuple[dict[str, dict[str, tuple[int, int]]], dict[str, int]]:
    store = StatusStore(q.engine)
    return await store.state_counts(), await store.error_kind_counts()


def _one(click_ctx: click.Context, job: _Job, opts: dict[str, Any]) -> ExitCode:
    """One job: its enqueue, then its run (without the report: `_cycle` writes it)."""
    scan_opts = {name: opts[name] for name in _names(enqueue) if name in opts}
    scan_opts.update({k: v for k, v in job.options.items() if k in scan_opts})
    refused = False
    try:
        click_ctx.invoke(
            enqueue,
            **{**scan_opts, "directory": job.folder, "kb_id": job.kb_id},
            dry_run=False,
            as_json=False,
        )
    except DeletionsRefused as exc:
        exc.show()
        refused = True
    ctx = click_ctx.find_object(Context)
    assert ctx is not None
    if not on_queue(ctx, lambda q: _holds_rows(q, job.kb_id)):
        # nothing queued yet (an empty folder, files still being written): nothing to run,
        # which is no error for a watch's cycle
        return ExitCode.DELETIONS_REFUSED if refused else ExitCode.OK
    run_opts = {name: opts[name] for name in _names(run) if name in opts}
    run_opts.update({k: v for k, v in job.options.items() if k in run_opts})
    run_opts.update(
        kb_id=job.kb_id,
        name=run_opts.get("name") or "basename",
        shared=False,  # enqueue --shared made the folder's rows any host's already
        as_json=False,
        no_report=True,
    )
    code = ExitCode.OK
    try:
        click_ctx.invoke(run, **run_opts)
    except SystemExit as exc:
        code = ExitCode(int(exc.code or 0))
    if refused and code in (ExitCode.OK, ExitCode.NOTHING_TO_DO):
        return ExitCode.DELETIONS_REFUSED  # the upload went well: the refusal is the news
    return code


class _RolledBack(Exception):
    def __init__(self, plan: dryrun.Plan) -> None:
        self.plan = plan


async def _dry(q: Queue, ctx: Context, job: _Job, opts: dict[str, Any]) -> dryrun.Plan:
    """What syncing `job` would do: its scan written in a transaction rolled back once the
    plan is read from it (so that new, changed and relabelled files are judged by the same
    statements as for real), and the removed files it would delete."""
    o = {**opts, **job.options}
    if o.get("manifest"):
        raise UserError(_("sync --dry-run of a job with --manifest: not yet; use enqueue and run"))
    if o.get("checksum"):
        # the comparison reads every file in the run: a plan without it would say 0 to
        # replace where the sync replaces the files whose bytes differ
        raise UserError(_("sync --dry-run --checksum: not yet (the run compares the bytes)"))
    filters = walk_filters(
        o.get("include") or (),
        o.get("exclude") or (),
        o.get("max_size"),
        o.get("filename_encoding"),
        o.get("ignore_case"),
        o.get("min_age"),
    )
    if not o.get("any_type"):
        accepted = await filetypes.known(q, opts["base_url"], job.kb_id)
        filters = dataclasses.replace(filters, types=accepted.types)
    tags = TagOptions(
        tuple(o.get("labels") or ()),
        o.get("labels_from_path"),
        o.get("metadata") or {},
        o.get("parser"),
    )
    own = scan.OwnState.of(ctx.anchor)
    try:
        async with q.transaction():
            counts, stats = await scan.enqueue_here(
                q, job.folder, job.kb_id, filters, bool(o.get("follow_symlinks")), own, tags
            )
            found = await dryrun.plan(q, job.kb_id)
            if o.get("delete_removed"):
                unread = [f.path for f in stats.unreadable_folders]
                gone = await replace.removed_files(q, job.kb_id, job.folder, unread, dry_run=True)
                found.delete += gone.relpaths
            raise _RolledBack(found)
    except _RolledBack as done:
        return done.plan


async def _holds_rows(q: Queue, kb_id: str) -> bool:
    return kb_id in await StatusStore(q.engine).state_counts()


def _every(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    try:
        return watch.parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _command() -> click.Command:
    params: list[click.Parameter] = [click.Argument(["directory"], required=False)]
    params += [
        click.Option(
            ["--dry-run"],
            is_flag=True,
            help="Only list what the sync would upload, replace, relabel and delete; nothing "
            "is sent, nothing changes (nor is the job saved).",
        ),
        click.Option(
            ["--watch", "watching"],
            is_flag=True,
            help="Keep running: a cycle when the folders changed (and stayed still a few "
            "seconds) and at least every --every; SIGTERM or Ctrl+C stops it cleanly.",
        ),
        click.Option(
            ["--every"],
            default="10m",
            show_default=True,
            callback=_every,
            metavar="DURATION",
            help="With --watch: rescan at least this often (30s, 10m, 1h); on a network "
            "share, whose changes raise no events, the only trigger.",
        ),
        click.Option(
            ["--metrics-addr"],
            metavar="HOST:PORT",
            help="With --watch: serve Prometheus metrics there (files by state, bytes, "
            "failures by kind, cycle time).",
        ),
    ]
    params += _shared_params([enqueue, run])
    return click.Command(
        "sync",
        callback=_sync,
        params=params,
        help=inspect.cleandoc(_sync.__doc__ or ""),
    )


sync = _command()
cli.add_command(sync)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the saved jobs as JSON.")
@click.option(
    "--remove",
    type=int,
    metavar="ID",
    help="Forget saved job ID (its files stay queued, its entries in the knowledge base).",
)
@pass_ctx
def jobs(ctx: Context, as_json: bool, remove: int | None) -> None:
    """The saved sync jobs: each folder and knowledge base `uploader sync` repeats, with the
    options it repeats them with."""
    if remove is not None:
        gone = on_queue(ctx, lambda q: SavedJobsStore(q.engine).remove(remove))
        if not gone:
            raise UserError(_("no saved job {id} (`uploader jobs` lists them)").format(id=remove))
        click.echo(_("forgot saved job {id}").format(id=remove))
        return
    found = on_queue(ctx, lambda q: SavedJobsStore(q.engine).jobs())
    if as_json:
        shown = [
            {"id": j.id, "folder": os.fsdecode(j.folder), "kb_id": j.kb_id, "options": j.options}
            for j in found
        ]
        click.echo(json.dumps(shown, indent=2, ensure_ascii=False))
        return
    if not found:
        click.echo(
            _("no saved job: `uploader sync DIR --kb KB_ID` syncs a folder and saves its job")
        )
    for job in found:
        asked = [
            f"{saved.JOB_OPTIONS[name]} {saved.shown(value)}"
            for name, value in job.options.items()
            if name in saved.JOB_OPTIONS and saved.shown(value) != "none"
        ]
        line = f"{job.id}  {os.fsdecode(job.folder)} -> {job.kb_id}  {'  '.join(asked)}"
        click.echo(printable(line))
