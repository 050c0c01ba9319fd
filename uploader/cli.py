"""The `uploader` command: thin click commands over the library modules."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiosqlite
import click

from . import __version__, client, queue, report, scan, worker

T = TypeVar("T")
DEFAULT_BASE_URL = "https://api.maiagent.ai/api/v1/"


class UserError(click.ClickException):
    """Bad input or an unusable database: one line on stderr, exit code 2."""

    exit_code = 2


class Context:
    def __init__(self, db: str, verbose: int, quiet: bool) -> None:
        self.db = db
        self.verbose = verbose
        self.quiet = quiet

    def echo(self, text: str) -> None:
        if not self.quiet:
            click.echo(text)


def run_async(coro: Awaitable[T]) -> T:
    """Run a command's coroutine; database problems become one-line errors, never tracebacks."""
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except queue.QueueError as exc:
        raise UserError(str(exc)) from None


async def with_db(ctx: Context, body: Callable[[aiosqlite.Connection], Awaitable[T]], **kw) -> T:  # type: ignore[no-untyped-def]
    conn = await queue.connect(ctx.db, **kw)
    try:
        return await body(conn)
    finally:
        await conn.close()


def kb_option(required: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--kb",
        "kb_id",
        envvar="MAIAGENT_KB_ID",
        required=required,
        help="Knowledge base id (env MAIAGENT_KB_ID).",
    )


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("uploader")
    root.handlers[:] = [handler]
    root.setLevel(level)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="uploader")
@click.option(
    "--db",
    default="uploader.db",
    envvar="UPLOADER_DB",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The SQLite file that holds the queue (env UPLOADER_DB).",
)
@click.option("-v", "--verbose", count=True, help="More detail on stderr (HTTP calls at -v).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the final summary.")
@click.pass_context
def cli(ctx: click.Context, db: str, verbose: int, quiet: bool) -> None:
    """Upload a folder of files into a MaiAgent knowledge base, exactly once.

    \b
    uploader enqueue DIR --kb KB_ID     scan DIR into the queue (safe to repeat)
    uploader run --workers 10           upload everything pending
    uploader status                     counts per state
    uploader retry-failed               failed files back to pending
    uploader export-report              the JSON report
    """
    _setup_logging(verbose, quiet)
    ctx.obj = Context(db, verbose, quiet)


pass_ctx = click.make_pass_decorator(Context)


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


# --- enqueue ---------------------------------------------------------------------------------


def _size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return scan.parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@kb_option(required=True)
@click.option("--include", multiple=True, metavar="GLOB", help="Only paths matching (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip paths matching (repeatable).")
@click.option("--max-size", callback=_size, metavar="SIZE", help="Skip files larger (e.g. 500M).")
@click.option("--follow-symlinks", is_flag=True, help="Follow symbolic links (loops are cut).")
@pass_ctx
def enqueue(
    ctx: Context,
    directory: str,
    kb_id: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    max_size: int | None,
    follow_symlinks: bool,
) -> None:
    """Scan DIRECTORY into the queue for knowledge base --kb.

    Hidden files and folders, Thumbs.db, desktop.ini and Office lock files (~$*) are left
    out; GLOBs match the path relative to DIRECTORY (`*` within a folder, `**` across, a
    leading `/` anchors at DIRECTORY). Running it again adds new files and re-queues changed
    ones; files already queued or uploaded are left alone.
    """
    if not os.path.isdir(directory):
        what = "does not exist" if not os.path.exists(directory) else "is not a folder"
        raise UserError(f"{directory} {what}")
    filters = scan.Filters(include, exclude, max_size)

    async def body(conn: aiosqlite.Connection) -> tuple[queue.EnqueueCounts, scan.ScanStats]:
        return await scan.enqueue(conn, directory, kb_id, filters, follow_symlinks)

    counts, stats = run_async(with_db(ctx, body))
    for problem in stats.unreadable_folders:
        click.echo(f"warning: cannot read folder {problem}", err=True)
    click.echo(
        f"scanned {counts.scanned}: {counts.new} new, {counts.changed} changed, "
        f"{counts.unchanged} unchanged, {counts.skipped} skipped"
        f" ({stats.ignored} ignored by filters, hidden or not regular files)"
    )


# --- run -------------------------------------------------------------------------------------


def _open_log(db_path: str) -> str:
    """logs/upload_log_<time>.log beside the database, owner-only, INFO and up."""
    folder = os.path.join(os.path.dirname(os.path.abspath(db_path)), "logs")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, f"upload_log_{dt.datetime.now():%Y%m%d_%H%M%S}.log")
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600))
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("uploader")
    root.addHandler(handler)
    root.setLevel(min(root.level, logging.INFO))
    for other in root.handlers:
        if other is not handler and other.level == logging.NOTSET:
            other.setLevel(logging.WARNING if root.level >= logging.INFO else logging.DEBUG)
    return path


def _summary(result: worker.RunResult, skipped: int) -> str:
    rate = (result.uploaded + result.failed) / result.elapsed if result.elapsed else 0.0
    mb = result.bytes / 1e6 / result.elapsed if result.elapsed else 0.0
    return (
        f"uploaded {result.uploaded}, failed {result.failed}, skipped {skipped} "
        f"in {result.elapsed:.1f}s ({rate:.1f} files/s, {mb:.2f} MB/s)"
    )


@cli.command()
@click.option(
    "--api-key",
    envvar="MAIAGENT_API_KEY",
    required=True,
    help="MaiAgent API key (env MAIAGENT_API_KEY); never printed, logged or stored.",
)
@click.option(
    "--base-url",
    envvar="MAIAGENT_BASE_URL",
    default=DEFAULT_BASE_URL,
    show_default=True,
    help="API root (env MAIAGENT_BASE_URL); https only, except loopback.",
)
@click.option("--insecure", is_flag=True, help="Allow plain http to a non-loopback host.")
@click.option("--workers", type=click.IntRange(1, 512), default=10, show_default=True)
@click.option("--max-retries", type=click.IntRange(0), default=3, show_default=True)
@click.option(
    "--retry-delay",
    type=click.FloatRange(0),
    default=2.0,
    show_default=True,
    help="Base of the exponential backoff, in seconds.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1),
    default=60.0,
    show_default=True,
    help="Seconds per request; uploads get one more second per MiB.",
)
@kb_option(required=False)
@click.option("--rate-limit", type=click.FloatRange(0.1), help="API requests per second.")
@click.option(
    "--name",
    type=click.Choice(["basename", "relpath"]),
    default="basename",
    show_default=True,
    help="The filename shown in the knowledge base.",
)
@click.option(
    "--register-batch",
    type=click.IntRange(1, 100),
    default=1,
    show_default=True,
    help="Files per register call.",
)
@click.option(
    "--grace",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="Seconds in-flight uploads get after Ctrl+C.",
)
@pass_ctx
def run(ctx: Context, api_key: str, base_url: str, insecure: bool, **opts: Any) -> None:
    """Upload every pending file: presign, S3 POST, register, with retries and resume.

    Exit codes: 0 all done, 1 some files failed, 2 bad input, 3 the service refused the run
    (bad key, unknown knowledge base), 130 interrupted. Running it again resumes.
    """
    try:
        warning = client.check_base_url(base_url, insecure)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if warning:
        click.echo(f"warning: {warning}", err=True)
    settings = worker.Settings(
        workers=opts["workers"],
        max_retries=opts["max_retries"],
        retry_delay=opts["retry_delay"],
        kb_id=opts["kb_id"],
        name=opts["name"],
        register_batch=opts["register_batch"],
        grace=opts["grace"],
    )
    service = worker.Connection(base_url, api_key, opts["rate_limit"], opts["timeout"])
    recorded = {**opts, "base_url": base_url}

    async def body(conn: aiosqlite.Connection) -> tuple[worker.RunResult, int]:
        log_path = _open_log(ctx.db)
        logging.getLogger("uploader.run").info("run started: %s, log %s", recorded, log_path)
        result = await worker.execute(conn, settings, service, recorded, ctx.quiet)
        counts = await queue.state_counts(conn)
        skipped = sum(
            states.get("skipped", (0, 0))[0]
            for kb, states in counts.items()
            if settings.kb_id in (None, kb)
        )
        logging.getLogger("uploader.run").info("run ended: %s", _summary(result, skipped))
        return result, skipped

    result, skipped = run_async(with_db(ctx, body, create=False))
    if result.fatal is not None:
        click.echo(f"Error: {result.fatal}", err=True)
    else:
        click.echo(_summary(result, skipped))
        if result.failed_in_queue:
            click.echo(f"{result.failed_in_queue} files failed: see `uploader status`")
        click.echo(f"report: uploader --db {ctx.db} export-report")
    code = worker.exit_code(result)
    if code:
        sys.exit(code)


# --- status ----------------------------------------------------------------------------------


async def _status(conn: aiosqlite.Connection) -> dict[str, Any]:
    counts = await queue.state_counts(conn)
    last = await queue.runs(conn, last=1)
    return {
        "knowledge_bases": {
            kb: {s: {"files": n, "bytes": b} for s, (n, b) in states.items()}
            for kb, states in counts.items()
        },
        "failed_by_kind": await queue.error_kind_counts(conn),
        "last_run": last[0] if last else None,
    }


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _print_status(data: dict[str, Any]) -> None:
    if not data["knowledge_bases"]:
        click.echo("the queue is empty: run `uploader enqueue DIR --kb KB_ID`")
    for kb, states in data["knowledge_bases"].items():
        total = sum(v["files"] for v in states.values())
        click.echo(f"knowledge base {kb}: {total} files")
        for state in queue.STATES:
            v = states.get(state, {"files": 0, "bytes": 0})
            click.echo(f"  {state:<8} {v['files']:>10,} files {_human(v['bytes']):>10}")
    if data["failed_by_kind"]:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(data["failed_by_kind"].items()))
        click.echo(f"failed by kind: {kinds}")
    run = data["last_run"]
    if run:
        counts = run["counts"] or {}
        outcome = (
            f"exit {run['exit_code']}, " + ", ".join(f"{k} {v}" for k, v in counts.items())
            if run["ended_at"]
            else "still running or interrupted"
        )
        click.echo(
            f"last run #{run['id']}: {_when(run['started_at'])} to {_when(run['ended_at'])}, "
            f"{outcome}"
        )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the same as JSON.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Files and bytes per state, per knowledge base, and the last run."""
    data = run_async(with_db(ctx, _status, create=False))
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        _print_status(data)


# --- retry-failed ----------------------------------------------------------------------------


@cli.command("retry-failed")
@kb_option(required=False)
@click.option("--kind", multiple=True, help="Only failures of this error kind (repeatable).")
@click.option("--match", multiple=True, metavar="GLOB", help="Only relative paths matching.")
@pass_ctx
def retry_failed(ctx: Context, kb_id: str | None, kind: tuple[str, ...], match: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """Put failed files back to pending, attempts reset, for the next `uploader run`."""
    matches = scan.matcher(match) if match else None

    async def body(conn: aiosqlite.Connection) -> int:
        return await queue.retry_failed(conn, kb_id, kind, matches)

    n = run_async(with_db(ctx, body, create=False))
    click.echo(f"{n} failed files back to pending; run `uploader run` to upload them")


# --- export-report ---------------------------------------------------------------------------


@cli.command("export-report")
@click.option(
    "-o",
    "--output",
    metavar="PATH",
    help="Where to write it ('-' for stdout); default reports/upload_report_<time>.json "
    "beside the database.",
)
@pass_ctx
def export_report(ctx: Context, output: str | None) -> None:
    """Write the JSON report: summary, successful, failed and skipped files, runs."""
    target = output or report.default_path(ctx.db)

    async def body(conn: aiosqlite.Connection) -> dict[str, Any]:
        try:
            return await report.export(conn, ctx.db, target)
        except OSError as exc:
            raise UserError(f"cannot write report {target}: {exc.strerror}") from None

    summary = run_async(with_db(ctx, body, create=False))
    if target != "-":
        click.echo(
            f"report written to {target}: {summary['successful_uploads']} uploaded, "
            f"{summary['failed_uploads']} failed, {summary['pending']} pending, "
            f"{summary['skipped']} skipped"
        )


def main() -> None:
    cli(prog_name="uploader")
