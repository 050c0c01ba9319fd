"""The `uploader` command: thin click commands over the library modules."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import logging
import math
import os
import socket
import stat
import sys
import time
import unicodedata
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar

import click
from click.core import ParameterSource

from . import (
    __version__,
    bandwidth,
    checkup,
    cli_dryrun,
    cli_existing,
    client,
    content,
    dryrun,
    filetypes,
    guard,
    i18n,
    logs,
    network,
    outage,
    parsing,
    presets,
    progress,
    queue,
    reconcile,
    replace,
    report,
    runner,
    saved,
    scan,
    start,
    tags,
    walkwait,
    watch,
)
from .exitcodes import Ending, ExitCode, exit_code
from .i18n import N_, _, ngettext
from .liveness import make_owner
from .manifest import DEFAULT_ENCODING, ManifestError, encoding_of, is_utf8, parse_metadata_option
from .model import (
    FAILURE_KINDS,
    EnqueueCounts,
    ErrorKind,
    FailedRow,
    HostScope,
    JobState,
    SkippedRow,
    VerificationItem,
    Waiting,
)
from .naming import DEFAULT_SEPARATOR, NameMode, check_separator
from .options import RunOptions
from .pipes import reader_gone, reader_went_away
from .printable import Formatter, printable
from .queue import Queue, anchor, redact
from .scan import display
from .store.parse import ParseStore
from .store.runs import RunsStore
from .store.saved_jobs import SavedJobsStore
from .store.status import StatusStore

T = TypeVar("T")
R = TypeVar("R")  # a library call's result, per knowledge base
run_logger = logging.getLogger("uploader.run")
DEFAULT_BASE_URL = "https://api.maiagent.ai/api/v1/"


class UserError(click.ClickException):
    """Bad input or an unusable database: one line on stderr, exit code 2."""

    exit_code = ExitCode.USAGE


class Context:
    def __init__(
        self, db: str, verbose: int, quiet: bool, host_id: str, db_timeout: float = 60.0
    ) -> None:
        self.db = db
        self.verbose = verbose
        self.quiet = quiet
        self.host_id = host_id
        self.db_timeout = db_timeout

    @property
    def shown_db(self) -> str:
        """--db as it may be printed: a URL's password hidden."""
        return redact(self.db)

    @property
    def anchor(self) -> str:
        """The path beside which logs/ and reports/ go (the current folder for a server)."""
        return anchor(self.db)

    def echo(self, text: str) -> None:
        if not self.quiet:
            click.echo(text)


class DatabaseGone(click.ClickException):
    """The database stayed out of reach for --db-timeout (or its file cannot be read or
    written any more): one line, exit 4."""

    exit_code = exit_code(Ending(error=queue.DatabaseUnreachable()))


class NoSpace(click.ClickException):
    """The disk holding the database is full: one line naming it, exit 6."""

    exit_code = exit_code(Ending(error=queue.DiskFull()))


class Interrupted(click.ClickException):
    """Ctrl+C (or SIGTERM) in a command that has no stop of its own, or before `run` has its
    own: exit 130, as `run`."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self) -> None:
        super().__init__("interrupted")


def run_async(coro: Awaitable[T]) -> T:
    """Run a command's coroutine; database problems become one-line errors, never tracebacks.
    Ctrl+C cancels the coroutine (its own clean-up runs), then its KeyboardInterrupt is the
    group's exit 130 (`_Uploader`)."""
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except queue.DatabaseUnreachable as exc:
        raise DatabaseGone(str(exc)) from None
    except queue.DiskFull as exc:
        raise NoSpace(str(exc)) from None
    except queue.QueueError as exc:
        raise UserError(str(exc)) from None
    finally:
        start.signals_back()


def on_queue(
    ctx: Context,
    call: Callable[[Queue], Awaitable[T]],
    *,
    shared: bool = False,
    create: bool = True,
) -> T:
    """A command's library call on its queue: opened for this host (`shared`: for every
    host's rows; `create`: made if it does not exist), closed after `call`; a queue problem
    is a one-line error and Ctrl+C exit 130 (run_async)."""

    async def opened() -> T:
        async with queue.opened(
            ctx.db,
            scope=HostScope(ctx.host_id, shared),
            create=create,
            db_timeout=ctx.db_timeout,
        ) as q:
            return await call(q)

    return run_async(opened())


def ask_service(
    base_url: str,
    api_key: str,
    call: Callable[[client.MaiAgentClient], Awaitable[T]],
    timeout: float = 60.0,
) -> T:
    """A command's library call on the service alone (no queue); an ApiError is the
    command's to translate (most raise ServiceError; enqueue's check only warns)."""

    async def asked() -> T:
        async with reconcile.open_client(base_url, api_key, timeout) as api:
            return await call(api)

    return run_async(asked())


def _name_separator(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return check_separator(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _seconds(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    """A number of seconds, 0 or more (nan and inf pass click's own ranges)."""
    if not math.isfinite(value) or value < 0:
        raise click.BadParameter(_("a number of seconds, 0 or more"))
    return value


def _host_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    if value is None:
        return socket.gethostname()
    if not value.strip() or not value.isprintable():
        raise click.BadParameter(_("a host id is a non-empty name without control characters"))
    return value


def shared_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--shared", is_flag=True, help=help_text)


def kb_option(required: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--kb",
        "kb_id",
        envvar="MAIAGENT_KB_ID",
        required=required,
        help="Knowledge base id (env MAIAGENT_KB_ID).",
    )


_KEY_FILE = "uploader.api_key_file"  # ctx.meta: the key --api-key-file read, and from where
_KEY_TYPED = "uploader.api_key_typed"  # ctx.meta: the key was given by --api-key


def _read_key_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """--api-key-file (eager: read before --api-key's callback, which takes its key)."""
    if value is None:
        return
    try:
        with open(value, encoding="utf-8") as file:
            key = file.read()
    except OSError as exc:
        raise UserError(
            _("cannot read --api-key-file {file}: {why}").format(
                file=value, why=exc.strerror or exc
            )
        ) from None
    except UnicodeDecodeError:
        raise UserError(_("--api-key-file {file} is not a text file").format(file=value)) from None
    ctx.meta[_KEY_FILE] = (key, ctx.get_parameter_source(param.name or ""))


def _strip_key(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A key pasted with a space or read from a file with its line end still works; an empty
    one is no key (the command says where to get one). A key file wins over the environment's
    key; a key typed on the command line is marked for `_check_service`'s warning."""
    typed = ctx.get_parameter_source(param.name or "") is ParameterSource.COMMANDLINE
    if _KEY_FILE in ctx.meta:
        key, source = ctx.meta[_KEY_FILE]
        if typed and source is ParameterSource.COMMANDLINE:
            raise UserError(_("give the key by --api-key or by --api-key-file, not both"))
        if not typed:
            value = key
    elif typed and value:
        ctx.meta[_KEY_TYPED] = True
    return (value.strip() or None) if value is not None else None


def _proxy(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """--proxy, and the environment's proxies checked: a bad one is one line now."""
    try:
        chosen = None if value is None else network.parse_proxy(value, "--proxy")
        network.check_environment()
    except network.NetworkError as exc:
        raise UserError(str(exc)) from None
    network.use(dataclasses.replace(network.current(), proxy=chosen))
    ctx.call_on_close(lambda: network.use(network.Network()))


def _ca_bundle(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    problem = network.ssl_cert_file_problem()
    if problem:
        raise UserError(problem)
    if value is not None:
        try:
            network.check_ca_bundle(value)
        except network.NetworkError as exc:
            raise UserError(str(exc)) from None
    network.use(dataclasses.replace(network.current(), ca_bundle=value))
    ctx.call_on_close(lambda: network.use(network.Network()))


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def stacked(options: Sequence[Decorator]) -> Decorator:
    """A group of options as one decorator, as if written one above the other (the first on
    top: first in --help)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def service_options() -> Decorator:
    """--api-key, --base-url, --allow-http: how every command that calls the service reaches
    it (the command gets api_key, base_url, allow_http; `_check_service` insists on a key, so
    that its absence is one line naming MAIAGENT_API_KEY rather than click's "Missing
    option"). --proxy and --ca-bundle go to `network`, which every session reads."""
    options = [
        click.option(
            "--api-key",
            envvar="MAIAGENT_API_KEY",
            callback=_strip_key,
            help="MaiAgent API key (env MAIAGENT_API_KEY); never printed, logged or stored, but "
            "visible to other users in the process list while the command runs: prefer the "
            "variable or --api-key-file.",
        ),
        click.option(
            "--api-key-file",
            metavar="PATH",
            envvar="MAIAGENT_API_KEY_FILE",
            is_eager=True,
            expose_value=False,
            callback=_read_key_file,
            help="Read the API key from this file (env MAIAGENT_API_KEY_FILE); wins over "
            "MAIAGENT_API_KEY.",
        ),
        click.option(
            "--base-url",
            envvar="MAIAGENT_BASE_URL",
            default=DEFAULT_BASE_URL,
            show_default=True,
            help="API root (env MAIAGENT_BASE_URL); https only, except loopback.",
        ),
        click.option(
            "--allow-http",
            is_flag=True,
            help="Allow plain http (the key in clear text) to a host other than this machine.",
        ),
        click.option(
            "--proxy",
            metavar="URL",
            expose_value=False,
            callback=_proxy,
            help="HTTP(S) proxy for every request, http://[USER:PASSWORD@]HOST:PORT; default "
            "HTTPS_PROXY/HTTP_PROXY (NO_PROXY applies to both).",
        ),
        click.option(
            "--ca-bundle",
            metavar="FILE",
            expose_value=False,
            callback=_ca_bundle,
            help="Also trust the CA certificates in FILE (PEM or DER): a company proxy's that "
            "inspects TLS.",
        ),
    ]
    return stacked(options)


def _db_target(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """--db (or UPLOADER_DB) as given, once a PostgreSQL URL's hosts and ports are known to
    parse: the driver, and the display that hides the password, would raise on them as a
    traceback. A URL that does not split is not quoted at all (its password is in it)."""
    if not queue.is_url(value):
        return value
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        raise UserError(
            _("--db: the PostgreSQL URL has a '[' without its ']' (an IPv6 host is written [::1])")
        ) from None
    ports = [
        host.rpartition("]")[2].partition(":")[2]  # "[::1]:5432", "h1:5432,h2:5433", "h"
        for host in parts.netloc.rpartition("@")[2].split(",")
    ]
    ports += [
        p for given in urllib.parse.parse_qs(parts.query).get("port", []) for p in given.split(",")
    ]
    if any(
        port and not (port.isascii() and port.isdigit() and int(port) <= 65535) for port in ports
    ):
        raise UserError(
            _("--db {db}: a port must be a number from 0 to 65535").format(db=redact(value))
        )
    return value


def _lang(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    if not i18n.known(value):
        raise UserError(
            _("--lang {value}: not a language of uploader (en, zh-TW)").format(value=value)
        )
    i18n.use(value)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING
    handler = progress.AboveTheBar(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(logs.for_the_terminal)
    root = logging.getLogger("uploader")
    root.handlers[:] = [handler]
    root.setLevel(level)


def _closed_pipe() -> NoReturn:
    """`uploader status --failed | head`: the reader has what it wanted. Quiet, as `cat` is
    (stdout goes to /dev/null so that the interpreter's last flush cannot complain), 141 as a
    shell reports a command killed by SIGPIPE."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(ExitCode.CLOSED_PIPE)


def _reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it. One large write (a --json
    document) that the reader left half-read is cut short without an error: only the pipe's
    state tells."""
    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
    except (OSError, ValueError):  # no real stdout (closed, or a test's buffer)
        return False
    return reader_gone(fd)


@contextlib.contextmanager
def _common_ends(finished: bool) -> Iterator[None]:
    """How any command ends when interrupted or when its reader goes away, in one place
    (`finished`: the command's own end, after which the pipe is checked too). An error's
    message names files and quotes the service: its control characters are escaped."""
    try:
        yield
    except click.ClickException as exc:
        exc.message = printable(exc.message)  # type: ignore[misc]  # Final in click's types
        raise
    except KeyboardInterrupt:
        raise Interrupted() from None
    except OSError as exc:
        if not reader_went_away(exc):
            raise
        _closed_pipe()
    if finished and _reader_gone():
        _closed_pipe()


class _Uploader(click.Group):
    """The `uploader` group: Ctrl+C, SIGTERM (`start`) and a closed stdout end every command
    the same way, while its options are read or while it runs (click's own would be
    "Aborted!" and exit 1 for both)."""

    command_class = i18n.TranslatedCommand

    def main(self, *args: Any, **kwargs: Any) -> Any:
        chosen = os.environ.get("LANGUAGE")
        try:
            return super().main(*args, **kwargs)
        finally:
            if chosen is None:
                os.environ.pop("LANGUAGE", None)
            else:
                os.environ["LANGUAGE"] = chosen

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with i18n.translated_help(self):
            super().format_help(ctx, formatter)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _common_ends(finished=False):
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _common_ends(finished=True):
            return super().invoke(ctx)


@click.group(cls=_Uploader, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="uploader")
@click.option(
    "--db",
    default="uploader.db",
    envvar="UPLOADER_DB",
    callback=_db_target,
    show_default=True,
    help="The queue: a SQLite file, or postgresql://user@host/dbname for one queue shared by "
    "several hosts (env UPLOADER_DB).",
)
@click.option(
    "--host-id",
    envvar="UPLOADER_HOST_ID",
    callback=_host_id,
    help="This host's name in the queue (env UPLOADER_HOST_ID; default the host name): rows "
    "are claimed by the host that enqueued them unless shared.",
)
@click.option(
    "--db-timeout",
    type=float,
    callback=_seconds,
    default=60.0,
    show_default=True,
    envvar="UPLOADER_DB_TIMEOUT",
    help="Seconds a command waits for a database that stopped answering (a restart, a "
    "failover, dropped connections) before it stops (exit 4).",
)
@click.option("-v", "--verbose", count=True, help="More detail on stderr (HTTP calls at -v).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the final summary.")
@click.option(
    "--lang",
    metavar="LANG",
    is_eager=True,
    expose_value=False,
    callback=_lang,
    help="The language of messages and help: en or zh-TW (default: from LANGUAGE, LC_ALL, "
    "LC_MESSAGES or LANG).",
)
@click.pass_context
def cli(
    ctx: click.Context, db: str, db_timeout: float, verbose: int, quiet: bool, host_id: str
) -> None:
    """Upload a folder of files into a MaiAgent knowledge base, exactly once.

    \b
    uploader sync DIR --kb KB_ID        scan, upload and report in one; the job is saved
    uploader jobs                       the saved sync jobs
    uploader kbs                        the knowledge bases the API key can see
    uploader check --kb KB_ID           prove the set-up with a probe file, first
    uploader enqueue DIR --kb KB_ID     scan DIR into the queue (safe to repeat)
    uploader run --workers 10           upload everything pending
    uploader status [--failed]          counts per state (the failed files)
    uploader retry-failed               failed files back to pending
    uploader verify --wait              the knowledge base read back: parsed, missing, extra
    uploader dedupe                     surplus copies in the knowledge base (--yes deletes)
    uploader forget --kb KB_ID          drop rows from the queue (--yes; never the service)
    uploader export-report              the JSON report

    Exit codes: 0 done, 1 some failed, 2 bad input, 3 the service refused, 4 unreachable,
    5 deletions refused, 9 nothing to do (--error-on-nothing-to-do), 130 interrupted.
    """
    _setup_logging(verbose, quiet)
    ctx.obj = Context(db, verbose, quiet, host_id, db_timeout)


pass_ctx = click.make_pass_decorator(Context)


def _group_context(ctx: click.Context) -> Context:
    """The group's Context, made before any command's own options are read."""
    obj = ctx.find_object(Context)
    if obj is None:
        # a programming error, not shown
        raise RuntimeError("an uploader option read outside the uploader group")
    return obj


def _late_db(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        _group_context(ctx).db = _db_target(ctx, param, value)


def _late_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    if value:
        obj = _group_context(ctx)
        obj.verbose += value
        _setup_logging(obj.verbose, obj.quiet)


def _late_db_timeout(ctx: click.Context, param: click.Parameter, value: float | None) -> None:
    if value is not None:
        _group_context(ctx).db_timeout = _seconds(ctx, param, value)


def _late_host_id(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        _group_context(ctx).host_id = _host_id(ctx, param, value)


def _late_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        obj = _group_context(ctx)
        obj.quiet = True
        _setup_logging(obj.verbose, obj.quiet)


def _accept_global_options_after(group: click.Group) -> None:
    """`uploader run --db x.db -v` means what `uploader --db x.db -v run` does: every command
    also takes --db, --host-id, -v and -q (hidden from its --help, which would repeat the
    group's), and they win over the group's. Their callbacks run before the command, in the
    order given."""
    for command in group.commands.values():
        command.params += [
            click.Option(["--db"], expose_value=False, hidden=True, callback=_late_db),
            click.Option(
                ["--db-timeout"],
                type=float,
                expose_value=False,
                hidden=True,
                callback=_late_db_timeout,
            ),
            click.Option(["--host-id"], expose_value=False, hidden=True, callback=_late_host_id),
            click.Option(
                ["-v", "--verbose"],
                count=True,
                expose_value=False,
                hidden=True,
                callback=_late_verbose,
            ),
            click.Option(
                ["-q", "--quiet"],
                is_flag=True,
                expose_value=False,
                hidden=True,
                callback=_late_quiet,
            ),
        ]


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
        return scan.parse_max_size(value)
    except ValueError as exc:
        raise UserError(_("--max-size: {why}").format(why=exc)) from None


def _encoding(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return codecs.lookup(value).name
    except LookupError:
        raise click.BadParameter(_("unknown encoding {value!r}").format(value=value)) from None


def _bwlimit(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return bandwidth.parse_bwlimit(value)
    except ValueError as exc:
        raise UserError(_("--bwlimit: {why}").format(why=exc)) from None


def _labels(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    try:
        return tuple(dict.fromkeys(tags.check_label(name) for name in value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _metadata(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> dict[str, str]:
    try:
        return dict(parse_metadata_option(item) for item in value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _parser(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else tags.check_parser(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class DeletionsRefused(click.ClickException):
    """The mass-deletion guard stopped --delete-removed: nothing marked, exit 5."""

    exit_code = ExitCode.DELETIONS_REFUSED


def _max_delete(_ctx: click.Context, _param: click.Parameter, value: str) -> guard.MaxDelete:
    try:
        return guard.MaxDelete.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def deletion_guard_options() -> Decorator:
    """--max-delete and --allow-empty-source: how far --delete-removed may go."""
    options = [
        click.option(
            "--max-delete",
            default=str(guard.DEFAULT),
            show_default=True,
            callback=_max_delete,
            metavar="N|N%",
            help="With --delete-removed: refuse (delete none, exit 5) when more files than "
            "this, or this share of the folder's uploaded files, are gone.",
        ),
        click.option(
            "--allow-empty-source",
            is_flag=True,
            help="With --delete-removed: let a folder holding no file at all delete its "
            "entries (refused by default: an unmounted share looks like that).",
        ),
    ]
    return stacked(options)


def _judge(found: int, limit: guard.MaxDelete, allow_empty: bool) -> guard.Judge:
    return functools.partial(guard.judge, found=found, limit=limit, allow_empty=allow_empty)


def _refusal(refused: guard.Refusal, directory: str, dry_run: bool) -> str:
    """The one line that says why --delete-removed deleted nothing, and how to allow it."""
    if refused.why is guard.Why.EMPTY_SOURCE:
        what = _(
            "deletions refused: {folder} holds no file at all (a share not mounted?): "
            "{n} of its {uploaded} uploaded files would be deleted"
        )
    else:
        what = _(
            "deletions refused: {n} of its {uploaded} uploaded files in {folder} are gone, "
            "more than --max-delete {limit} allows"
        )
    if dry_run:
        verdict = _("would be refused (if they really are gone: {advice})")
    else:
        verdict = _("nothing was marked removed nor deleted (if they really are gone: {advice})")
    return (what + "; " + verdict).format(
        folder=directory,
        n=refused.deleting,
        uploaded=refused.uploaded,
        limit=refused.limit,
        advice=refused.advice,
    )


def _min_age(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None or value.strip() in ("0", "off"):
        return None
    try:
        return watch.parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


# What the last enqueue left out for --min-age, for `sync --watch` (click's meta is shared by
# the commands sync calls).
YOUNG_LEFT_OUT = "uploader.young_left_out"
# Whether a run had work (not "nothing pending"), for `sync`, which writes one report after its
# jobs when one of them did something.
RUN_HAD_WORK = "uploader.run_had_work"
SCAN_TOUCH = 5.0  # seconds between an enqueue's "still walking" in the scans table


def walk_filters(
    include: Sequence[str],
    exclude: Sequence[str],
    max_size: int | None,
    filename_encoding: str | None,
    ignore_case: bool | None,
    min_age: float | None,
) -> scan.Filters:
    """What enqueue's walk leaves out, from its options (and `sync --dry-run`'s, which must
    walk as the sync would); a bad pattern is one line."""
    try:
        return scan.Filters(
            include,
            exclude,
            max_size,
            filename_encoding,
            ignore_case=scan.IGNORE_CASE_DEFAULT if ignore_case is None else ignore_case,
            newer_than_ns=None if not min_age else time.time_ns() - int(min_age * 1e9),
        )
    except scan.PatternError as exc:
        raise UserError(str(exc)) from None


def _refused_json(refused: guard.Refusal | None) -> dict[str, Any] | None:
    if refused is None:
        return None
    return {
        "why": refused.why.value,
        "would_delete": refused.deleting,
        "uploaded": refused.uploaded,
        "max_delete": str(refused.limit),
        "allow_with": refused.advice,
    }


@cli.command()
@click.argument("directory")
@kb_option(required=True)
@click.option("--include", multiple=True, metavar="GLOB", help="Only paths matching (repeatable).")
@click.option(
    "--ignore-case/--no-ignore-case",
    default=None,
    help="Match --include/--exclude without regard to case (default: on Windows and macOS, "
    "whose volumes ignore case).",
)
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip paths matching (repeatable).")
@click.option(
    "--max-size",
    callback=_size,
    metavar="SIZE",
    help="Skip files larger (e.g. 500M; 'off' for no limit, the default).",
)
@click.option("--follow-symlinks", is_flag=True, help="Follow symbolic links (loops are cut).")
@click.option(
    "--min-age",
    callback=_min_age,
    metavar="DURATION",
    help="Leave out files modified less than this long ago (30s, 5m), perhaps still being "
    "written: a later scan queues them (sync --watch: 3s unless given).",
)
@click.option(
    "--any-type",
    is_flag=True,
    help="Queue files of every type; by default a type the knowledge base does not accept is "
    "recorded skipped, with the reason (nothing of it is sent).",
)
@shared_option(
    "DIRECTORY is on storage every host sees at the same path: any host's `run` may upload "
    "its files."
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="NAME",
    callback=_labels,
    help="A label every file's entry gets (repeatable); made in the knowledge base if new.",
)
@click.option(
    "--labels-from-path",
    type=click.IntRange(0),
    metavar="N",
    help="The first N folder names of each file's path become labels (hr/policies/a.pdf, 1: hr).",
)
@click.option(
    "--metadata",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_metadata,
    help="User-defined metadata every file's entry gets (repeatable).",
)
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="CSV, JSON Lines or an Excel workbook (.xlsx) naming the files of DIRECTORY to "
    "queue, each with its labels, metadata and name shown (see the README); all or nothing.",
)
@click.option(
    "--manifest-encoding",
    default=DEFAULT_ENCODING,
    show_default=True,
    callback=_encoding,
    metavar="ENCODING",
    help="The encoding of a text manifest that has no BOM and is not UTF-8 (cp950 is Big5, "
    "Excel's CSV on Traditional Chinese Windows).",
)
@click.option(
    "--filename-encoding",
    callback=_encoding,
    metavar="ENCODING",
    help="The encoding of file names that are not UTF-8 (cp950 for Big5 names from an old "
    "share); without it such files are skipped, with a warning.",
)
@click.option("--parser", callback=_parser, metavar="ID", help="The parser of every file (a UUID).")
@click.option(
    "--delete-removed",
    is_flag=True,
    help="Mark the queued files of DIRECTORY that are gone `removed`: the next `uploader run` "
    "deletes their entries from the knowledge base.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="With --delete-removed: only list the files that would be marked; nothing is changed.",
)
@deletion_guard_options()
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON only.")
@click.option(
    "--checksum",
    is_flag=True,
    help="Also compare the bytes of every uploaded file still there with the uploaded ones "
    "(the next run reads each once and replaces those that differ): finds an edit that kept "
    "both size and modification time, which alone decide a change otherwise.",
)
@click.option(
    "--no-kb-check",
    is_flag=True,
    envvar="UPLOADER_NO_KB_CHECK",
    help="Do not ask the service whether --kb exists (env UPLOADER_NO_KB_CHECK=1); without "
    "it the check runs when an API key is set.",
)
@service_options()
@pass_ctx
def enqueue(
    ctx: Context,
    directory: str,
    kb_id: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    max_size: int | None,
    follow_symlinks: bool,
    min_age: float | None,
    any_type: bool,
    shared: bool,
    labels: tuple[str, ...],
    labels_from_path: int | None,
    metadata: dict[str, str],
    manifest: str | None,
    manifest_encoding: str,
    filename_encoding: str | None,
    ignore_case: bool | None,
    parser: str | None,
    delete_removed: bool,
    dry_run: bool,
    max_delete: guard.MaxDelete,
    allow_empty_source: bool,
    as_json: bool,
    checksum: bool,
    no_kb_check: bool,
    api_key: str | None,
    base_url: str,
    allow_http: bool,
) -> None:
    """Scan DIRECTORY into the queue for knowledge base --kb.

    Hidden files and folders, Thumbs.db, desktop.ini and Office lock files (~$*) are left
    out, and so are the uploader's own database, logs/ and reports/; GLOBs match the path
    relative to DIRECTORY (`*` within a folder, `**` across, `{a,b}` alternatives, `\\`
    escapes, a leading `/` anchors at DIRECTORY; an excluded folder is not entered). Running
    it again adds new files and re-queues changed ones; files already queued or uploaded are
    left alone.

    --label, --labels-from-path, --metadata and --manifest say what each file's entry carries
    (all of it: given again with other values, uploaded files get the new ones on the next
    run through update-metadata, without uploading again). With --manifest only the files it
    names are queued, in one transaction: a bad row queues nothing.

    A file that vanished is never deleted from the knowledge base unless asked: with
    --delete-removed the queued files of DIRECTORY that are gone are marked `removed`, and the
    next `uploader run` deletes their entries (and records it); --dry-run lists them only.

    Files of a type the knowledge base does not accept (the service's list, else the 12
    MaiAgent documents) are recorded skipped with the reason, never sent; --any-type queues
    them anyway.

    With an API key (MAIAGENT_API_KEY) the service is asked first whether --kb exists, and
    which file types it accepts: an unknown knowledge base queues nothing (exit 3); a service
    out of reach is a warning.
    """
    if dry_run and not delete_removed:
        raise UserError(_("--dry-run goes with --delete-removed (it lists what would be removed)"))
    # A folder renamed or deleted: --delete-removed may still mark its queued files removed
    # (the guard's --allow-empty-source decides, as for a folder that reads empty).
    gone_folder = delete_removed and _gone(directory)
    if not os.path.isdir(directory) and not gone_folder:
        what = (
            _("{path} does not exist")
            if not os.path.exists(directory)
            else _("{path} is not a folder")
        )
        raise UserError(what.format(path=directory))
    filters = walk_filters(include, exclude, max_size, filename_encoding, ignore_case, min_age)
    asked = tags.TagOptions(labels, labels_from_path, metadata, parser, manifest is not None)
    if dry_run:
        # The same walk as the real one (queueing nothing): what it cannot read, it must not list.
        own_state = scan.OwnState.of(ctx.anchor)
        seen = scan.ScanStats()
        if not gone_folder:
            seen = scan.survey(directory, filters, follow_symlinks, own_state)
        unread = [f.path for f in seen.unreadable_folders]
        judge = _judge(seen.found, max_delete, allow_empty_source)
        gone = on_queue(
            ctx,
            lambda q: replace.removed_files(q, kb_id, directory, unread, dry_run=True, guard=judge),
            shared=shared,
        )
        if gone_folder and not gone.relpaths:
            raise UserError(_gone_and_unknown(directory))
        _warn_unreadable(seen)
        _print_removed(gone, directory, dry_run=True)
        if gone.refused is not None:
            click.echo(_refusal(gone.refused, directory, dry_run=True))
        return

    walkwait.announce(ctx.db)  # a run started with this enqueue waits for its scan
    # the service's file types are asked only of a service that just answered the check
    ask = bool(api_key) and not no_kb_check
    if ask:
        ask = _check_kb_exists(api_key or "", base_url, allow_http, kb_id)

    encoding = "utf-8"
    if manifest is not None:
        try:
            encoding = encoding_of(manifest, manifest_encoding)
        except ManifestError as exc:
            raise UserError(str(exc)) from None
    meter = _ScanMeter(not ctx.quiet and not as_json and sys.stderr.isatty())

    async def body(q: Queue) -> tuple[EnqueueCounts, scan.ScanStats]:
        nonlocal filters
        if not any_type:
            accepted = await _accepted_types(q, api_key if ask else None, base_url, kb_id)
            if accepted.note:
                click.echo(_("warning: {note}").format(note=accepted.note), err=True)
            filters = dataclasses.replace(filters, types=accepted.types)
        own = scan.OwnState.of(ctx.anchor)
        # Recorded, so that a `run` meanwhile waits for the walk's next batch.
        scan_id = await RunsStore(q.engine).start_scan(make_owner(q.scope.host), kb_id)
        walkwait.announced()

        touched = time.monotonic()

        async def batch_done(counts: EnqueueCounts) -> None:
            nonlocal touched
            # Alive is said every few seconds, not at every batch: a transaction each, which a
            # run beside the walk would wait for (a scan is taken for dead after 10 minutes).
            if time.monotonic() - touched >= SCAN_TOUCH:
                await RunsStore(q.engine).touch_scan(scan_id)
                touched = time.monotonic()
            meter.update(counts.scanned)

        try:
            if manifest is not None:
                return await scan.enqueue_manifest(
                    q,
                    directory,
                    kb_id,
                    manifest,
                    filters,
                    follow_symlinks,
                    asked,
                    own,
                    encoding,
                    any_type=any_type,
                )
            return await scan.enqueue(
                q,
                directory,
                kb_id,
                filters,
                follow_symlinks,
                own,
                tags=asked,
                on_batch=batch_done,
                any_type=any_type,
            )
        finally:
            meter.close()
            await RunsStore(q.engine).end_scan(scan_id)

    asked_now = {
        "include": include,
        "exclude": exclude,
        "max_size": max_size,
        "follow_symlinks": follow_symlinks,
        "labels": labels,
        "labels_from_path": labels_from_path,
        "metadata": metadata,
        "manifest": manifest,
        "parser": parser,
    }

    rechecked = 0

    async def removing(q: Queue) -> tuple[EnqueueCounts, scan.ScanStats, replace.Removed | None]:
        nonlocal rechecked
        await _warn_saved_job(q, directory, kb_id, asked_now)
        counts, stats = (EnqueueCounts(), scan.ScanStats()) if gone_folder else await body(q)
        if checksum and not gone_folder:
            rechecked = await replace.recheck_all(q, kb_id, directory)
        if not delete_removed:
            return counts, stats, None
        unread = [f.path for f in stats.unreadable_folders]
        judge = _judge(counts.scanned, max_delete, allow_empty_source)
        gone = await replace.removed_files(q, kb_id, directory, unread, dry_run=False, guard=judge)
        return counts, stats, gone

    try:
        counts, stats, removed = on_queue(ctx, removing, shared=shared)
    except ManifestError as exc:
        raise UserError(_("{why}; nothing was queued").format(why=exc)) from None
    if gone_folder and removed is not None and not removed.relpaths:
        raise UserError(_gone_and_unknown(directory))
    if manifest is not None and encoding != "xlsx" and not is_utf8(encoding):
        click.echo(
            _("note: {file} is not UTF-8: read as {encoding} (--manifest-encoding)").format(
                file=manifest, encoding=encoding
            ),
            err=True,
        )
    _warn_unreadable(stats)
    for unmatched in filters.unmatched():
        hint = ""
        if "/" not in unmatched and not any(c in unmatched for c in "*?[{."):
            hint = _(" (a folder's files: add /**)")
        click.echo(
            printable(_("warning: {filter} matched no file").format(filter=unmatched) + hint),
            err=True,
        )
    if as_json:
        shown = {
            "kb_id": kb_id,
            **dataclasses.asdict(counts),
            "ignored": stats.ignored,
            "own_files_left_out": sorted(set(stats.own)),
            "unreadable_folders": [str(f) for f in stats.unreadable_folders],
            "removed": len(removed.relpaths) if removed is not None and not removed.refused else 0,
            "left_unread": removed.left if removed is not None else 0,
            "deletions_refused": _refused_json(removed.refused if removed is not None else None),
            "unsupported_types": dict(sorted(stats.unsupported.items())),
            "left_for_later": stats.young,
            "checksum_compared": rechecked,
        }
        click.echo(json.dumps(shown, indent=2, ensure_ascii=False))
    else:
        if stats.own:
            own = ", ".join(sorted(set(stats.own)))
            ctx.echo(printable(_("left out the uploader's own files: {files}").format(files=own)))
        click.echo(
            _(
                "scanned {scanned}: {new} new, {changed} changed, {unchanged} unchanged, "
                "{skipped} skipped ({ignored} ignored by filters, hidden or not regular files)"
            ).format(
                scanned=counts.scanned,
                new=counts.new,
                changed=counts.changed,
                unchanged=counts.unchanged,
                skipped=counts.skipped,
                ignored=stats.ignored,
            )
        )
        if counts.moved:
            click.echo(
                _(
                    "{n} moved from another path (a folder renamed?): each keeps its entry"
                    " and the name it was given, nothing to upload"
                ).format(n=counts.moved)
            )
        if stats.unsupported:
            click.echo(_unsupported_line(stats))
        if stats.young:
            click.echo(
                _(
                    "{n} files were modified less than {age} ago (--min-age): left for a later scan"
                ).format(n=f"{stats.young:,}", age=f"{min_age:g}s")
            )
        if removed is not None and removed.refused is None:
            _print_removed(removed, directory, dry_run=False)
        if counts.relabel:
            click.echo(
                _(
                    "{n} uploaded files get new labels or metadata on the next run "
                    "(update-metadata only, no upload)"
                ).format(n=counts.relabel)
            )
        if checksum:
            click.echo(
                _(
                    "--checksum: the next run compares the bytes of {n} uploaded files with "
                    "their entries' and replaces those that differ"
                ).format(n=f"{rechecked:,}")
            )
    # sync --watch comes back for them soon, not a whole --every later
    meta = click.get_current_context().meta
    meta[YOUNG_LEFT_OUT] = meta.get(YOUNG_LEFT_OUT, 0) + stats.young
    if counts.foreign:
        click.echo(
            _(
                "warning: {n} files are at paths another host queued, left to it: use --shared "
                "if every host sees this folder at the same path, else give it another path or "
                "knowledge base"
            ).format(n=counts.foreign),
            err=True,
        )
    if removed is not None and removed.refused is not None:
        raise DeletionsRefused(_refusal(removed.refused, directory, dry_run=False))


async def _warn_saved_job(q: Queue, directory: str, kb_id: str, asked: dict[str, Any]) -> None:
    """An enqueue of a folder `sync` saved a job of, with other filters or labels: said, since
    the weekly `enqueue DIR --kb KB` that forgot the first time's --include and --label let
    excluded files back in and left new files without the labels that decide who sees them."""
    folder = os.path.realpath(os.fsencode(directory))
    for job in await SavedJobsStore(q.engine).jobs(folder):
        if job.kb_id != kb_id:
            continue
        differs = saved.differences(job.options, saved.to_saved(asked), saved.SCAN_OPTIONS)
        if differs:
            said = _(
                "warning: {folder} is a saved sync job of {kb} with other options: {changes}; "
                "`uploader sync {folder}` repeats the saved job"
            ).format(folder=directory, kb=kb_id, changes="; ".join(map(str, differs)))
            click.echo(printable(said), err=True)


def _gone(directory: str) -> bool:
    """The path names nothing (a folder renamed or deleted since it was enqueued)."""
    try:
        os.lstat(directory)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


async def _accepted_types(
    q: Queue, api_key: str | None, base_url: str, kb_id: str
) -> filetypes.Accepted:
    """The types enqueue lets through: asked of the service when it may be asked (a key, the
    check not turned off), else what was learned before, else the documented list."""
    if api_key:
        try:
            async with reconcile.open_client(base_url, api_key, ENQUEUE_CHECK_TIMEOUT) as api:
                return await filetypes.learn(q, api, base_url, [kb_id])
        except client.ApiError:
            pass  # a refused key is a warning already (_check_kb_exists)
    return await filetypes.known(q, base_url, kb_id)


def _unsupported_line(stats: scan.ScanStats) -> str:
    """enqueue's word on the files skipped for their type."""
    kinds = ", ".join(
        f"{'.' + ext if ext else _('no extension')} {n:,}"
        for ext, n in sorted(stats.unsupported.items())
    )
    total = sum(stats.unsupported.values())
    return _(
        "{total} of the skipped are of a type MaiAgent does not accept ({kinds}): nothing of "
        "them is sent; `uploader status --skipped` lists them, `enqueue --any-type` queues them "
        "anyway"
    ).format(total=f"{total:,}", kinds=kinds)


def _warn_unreadable(stats: scan.ScanStats) -> None:
    for problem in stats.unreadable_folders:
        click.echo(printable(_("warning: cannot read folder {why}").format(why=problem)), err=True)
    if stats.undecodable:
        more = stats.undecodable - len(stats.undecodable_shown)
        names = ", ".join(stats.undecodable_shown)
        if more:
            names += _(" and {n} more").format(n=more)
        message = _(
            "warning: {count} file names are not valid UTF-8 and were skipped ({names}):"
            " give their encoding with --filename-encoding (cp950 for Big5)"
        ).format(count=stats.undecodable, names=names)
        click.echo(printable(message), err=True)


def _gone_and_unknown(directory: str) -> str:
    return _("{path} does not exist (and the queue holds no file of it)").format(path=directory)


def _print_removed(gone: replace.Removed, directory: str, dry_run: bool) -> None:
    """What --delete-removed marked, or in a dry run would mark."""
    n = len(gone.relpaths)
    directory = printable(directory)
    if dry_run:
        click.echo(
            _(
                "{n} queued files of {folder} are gone: `enqueue --delete-removed` would mark "
                "them removed and the next `uploader run` would delete their entries (dry run, "
                "nothing changed)"
            ).format(n=n, folder=directory)
        )
    elif n:
        click.echo(
            _(
                "{n} queued files of {folder} are gone: marked removed; the next "
                "`uploader run` deletes their entries"
            ).format(n=gone.marked, folder=directory)
        )
    for rel in gone.relpaths[:LIST_SHOWN]:
        click.echo(f"  {printable(rel)}")
    if n > LIST_SHOWN:
        click.echo(_("  ... and {n} more").format(n=f"{n - LIST_SHOWN:,}"))
    if gone.left:
        left = (
            _(
                "{n} queued files under folders that could not be read would be left as they "
                "are (let them be read and enqueue again to look at them)"
            )
            if dry_run
            else _(
                "{n} queued files under folders that could not be read were left as they are "
                "(let them be read and enqueue again to look at them)"
            )
        )
        click.echo(left.format(n=gone.left))


class _ScanMeter:
    """enqueue's progress on a terminal (stderr): files scanned and per second, on one line
    redrawn at most five times a second and wiped at the end."""

    def __init__(self, show: bool) -> None:
        self._show = show
        self._started = time.monotonic()
        self._drawn = 0.0

    def update(self, scanned: int) -> None:
        now = time.monotonic()
        if self._show and now - self._drawn >= 0.2:
            self._drawn = now
            rate = scanned / max(now - self._started, 1e-9)
            shown = _("scanning: {n} files ({rate}/s)").format(
                n=f"{scanned:,}", rate=f"{rate:,.0f}"
            )
            click.echo("\r" + shown, err=True, nl=False)

    def close(self) -> None:
        if self._show and self._drawn:
            click.echo("\r\033[K", err=True, nl=False)


ENQUEUE_CHECK_TIMEOUT = 10.0  # seconds: a scan should not wait long for a service out of reach


def _check_kb_exists(api_key: str, base_url: str, allow_http: bool, kb_id: str) -> bool:
    """One listing call before a scan, so that a mistyped --kb is found before it fills the
    queue with rows no run can upload. Only a knowledge base the service says it does not
    know stops the enqueue: anything else (offline, a refused key: enqueue needs no key) is
    a warning, and `run` checks again. True when the service answered."""
    _check_service(api_key, base_url, allow_http, "enqueue")

    try:
        ask_service(base_url, api_key, lambda api: api.check_kb(kb_id), ENQUEUE_CHECK_TIMEOUT)
    except client.ApiError as exc:
        if exc.error_kind == ErrorKind.KB_NOT_FOUND:
            raise ServiceError(exc) from None
        reason = exc
        if outage.classify(exc).outage_like:
            reason = outage.ServiceUnreachable.at_start(exc)
        click.echo(
            printable(
                _(
                    "warning: could not check knowledge base {kb} ({why}): queued anyway, "
                    "`uploader run` checks it again"
                ).format(kb=kb_id, why=reason)
            ),
            err=True,
        )
        return False
    return True


# --- run -------------------------------------------------------------------------------------


class Finite(click.FloatRange):
    """A number of seconds (or a rate) from `min` up: never nan or inf, which compare false
    with every bound, so click's range lets them through (nan seconds of retry delay, inf
    grace: a run that never waits, or never ends)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(_("{value!r} is not a finite number").format(value=value), param, ctx)
        return number


class BatchSize(click.ParamType):
    """--register-batch: "auto" (None) or a number of files from 1 to 100."""

    name = "auto|N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or value == "auto":
            return None
        if isinstance(value, int):
            number = value
        else:
            try:
                number = int(str(value))
            except ValueError:
                self.fail(
                    _("{value!r} is neither auto nor a number").format(value=value), param, ctx
                )
        if not 1 <= number <= 100:
            self.fail(_("{n} is not in the range 1<=x<=100").format(n=number), param, ctx)
        return number


def _log_broken(message: str) -> None:
    click.echo(_("warning: {why}: logging to stderr only").format(why=message), err=True)


def _open_log(ctx: Context, path: str | None, level_name: str) -> logs.RunLog | None:
    """The run's log file (--log-file, else logs/ beside the database) at --log-level, or DEBUG
    with -v so that the HTTP lines reach it too. One that cannot be made is a warning: the run
    goes on, logging to stderr only."""
    target = path or logs.default_path(ctx.anchor)
    level = logging.DEBUG if ctx.verbose else logs.LEVELS[level_name]
    try:
        return logs.open_file(target, level, _log_broken)
    except OSError as exc:
        _log_broken(
            _("cannot write the log {target} ({why})").format(
                target=target, why=exc.strerror or exc
            )
        )
        return None


def _notice(text: str) -> None:
    """What a signal does to a run, shown even with -q on stderr (stdout may be `run --json`'s
    document) on a line of its own (after the terminal's ^C), above the bar; flushed before a
    second Ctrl+C quits at once. The run's log keeps it too."""
    run_logger.warning("%s", text, extra=logs.FILE_ONLY)
    progress.write(f"\n{text}")


def _show_outage(state: outage.GateState, what: outage.Outage) -> None:
    """The pool paused for an outage, or resumed."""
    if state is outage.GateState.CLOSED:
        progress.write(
            printable(_("paused: {why}; probing until it answers").format(why=what.message))
        )
    elif state is outage.GateState.OPEN:
        progress.write(_("resumed: the service answers again"))


def wait_parsed_options() -> Decorator:
    """--wait-parsed, --parse-timeout, --stuck-after: what `run` (and `sync`) take to wait,
    after uploading, until the files are parsed (`ParseWait`)."""
    options = [
        click.option(
            "--wait-parsed",
            is_flag=True,
            help="After uploading, wait until the files are parsed (or --parse-timeout): done, "
            "failed with the reason, still processing; exit 1 unless every one is done.",
        ),
        click.option(
            "--parse-timeout",
            type=Finite(0),
            default=parsing.PARSE_TIMEOUT,
            show_default=True,
            help="Seconds --wait-parsed waits at most.",
        ),
        click.option(
            "--stuck-after",
            type=Finite(0),
            default=parsing.STUCK_AFTER,
            show_default=True,
            help="Seconds after its upload (or reparse) a file still initial or processing is "
            "reported as stuck (`retry-failed --remote` reparses it).",
        ),
    ]
    return stacked(options)


def _refer(_ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is not None:
        instead = presets.RENAMED[param.name or ""]
        if instead is None:
            said = _(
                "{option} is the reference script's setting; it has no equivalent here: the "
                "folder's files are streamed in bounded batches, so memory stays flat however "
                "many there are (--workers sets how many upload at once)"
            )
        else:
            said = _("{option} is the reference script's setting: give {instead} here")
        raise UserError(said.format(option=param.opts[0], instead=instead))


def reference_names() -> Decorator:
    """The reference script's setting names, hidden: given, they say which option does the
    same here instead of click's bare "No such option"."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in presets.RENAMED:
            flag = "--" + name.replace("_", "-")
            fn = click.option(flag, name, hidden=True, expose_value=False, callback=_refer)(fn)
        return fn

    return decorate


def _with_network(opts: dict[str, Any], network: str | None) -> dict[str, Any]:
    """run's options with --network's preset applied where the user gave no value."""
    ctx = click.get_current_context()
    explicit = {name for name in opts if given(ctx, name)}
    return presets.apply(presets.Network(network) if network else None, opts, explicit)


def given(ctx: click.Context, name: str) -> bool:
    """Whether the user gave option `name` (typed, or by its environment variable) to this
    command, or to the command that called it (`sync` calls `enqueue` and `run`)."""
    current: click.Context | None = ctx
    while current is not None:
        source = current.get_parameter_source(name)
        if source is not None:
            return source in (
                click.core.ParameterSource.COMMANDLINE,
                click.core.ParameterSource.ENVIRONMENT,
            )
        current = current.parent
    return False


async def _auto_report(q: Queue, ctx: Context) -> str | None:
    """The report a run writes at its end, as the reference script did (`--no-report` skips
    it): its path, or None (with a warning) when it cannot be written; the run's outcome
    stands either way."""
    target = report.default_path(ctx.anchor)
    try:
        await report.export(q, ctx.db, target)
    except OSError as exc:
        why = exc.strerror or str(exc)
        click.echo(
            _("warning: cannot write the report {target}: {why}").format(target=target, why=why),
            err=True,
        )
        return None
    return target


@cli.command()
@service_options()
@click.option(
    "--workers",
    type=click.IntRange(1, 512),
    default=10,
    show_default=True,
    help="Files uploading at once.",
)
@click.option(
    "--max-retries",
    type=click.IntRange(0),
    default=3,
    show_default=True,
    help="Retries of a file after its first attempt, for transient errors (then failed).",
)
@click.option(
    "--retry-delay",
    type=Finite(0),
    default=2.0,
    show_default=True,
    help="Base of the exponential backoff, in seconds.",
)
@click.option(
    "--timeout",
    type=Finite(0.1),
    default=60.0,
    show_default=True,
    help="Seconds per API request; an S3 upload is cut only when none of its bytes moved for"
    " that long.",
)
@kb_option(required=False)
@click.option("--rate-limit", type=Finite(0.1), help="API requests per second.")
@click.option(
    "--bwlimit",
    metavar="RATE",
    callback=_bwlimit,
    help="Cap the upload bandwidth of the run, rclone-style: 2M = 2 MiB/s, 512k; a bare"
    " number is KiB/s.",
)
@click.option(
    "--name",
    type=click.Choice([m.value for m in NameMode]),
    default="basename",
    show_default=True,
    help="The filename shown in the knowledge base: basename (names may repeat across "
    "folders), folders (the path below DIR, joined by --name-separator), relpath (with '/', "
    "which MaiAgent refuses).",
)
@click.option(
    "--name-separator",
    default=DEFAULT_SEPARATOR,
    show_default=True,
    callback=_name_separator,
    help="What joins the folders of a --name folders name.",
)
@click.option(
    "--register-batch",
    type=BatchSize(),
    default="auto",
    show_default=True,
    help="Files per register call (1-100); auto: 20 where `uploader check` or an earlier "
    "run proved the service takes several, else 1.",
)
@click.option(
    "--lease",
    type=Finite(2.0),
    default=60.0,
    show_default=True,
    help="Seconds a claimed file stays this run's without renewal (renewed every third).",
)
@click.option(
    "--grace",
    type=Finite(0),
    default=5.0,
    show_default=True,
    help="Seconds in-flight uploads get after Ctrl+C.",
)
@click.option(
    "--outage-timeout",
    type=Finite(0.1),
    default=600.0,
    show_default=True,
    help="Seconds the run waits, paused, for a service that stopped answering (then exit 4).",
)
@shared_option(
    "This host sees every queued folder at the same path as the host that enqueued it: "
    "claim any host's files."
)
@click.option(
    "--log-file",
    metavar="PATH",
    help="Write the run's log here (appended to) instead of logs/ beside the database.",
)
@click.option(
    "--log-level",
    type=click.Choice(list(logs.LEVELS), case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Least level the log file gets (rclone's names; NOTICE: warnings and errors); -v "
    "makes it DEBUG, with every HTTP call.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON only.")
@click.option(
    "--error-on-nothing-to-do",
    is_flag=True,
    help="Exit 9 when nothing is pending (rclone's --error-on-no-transfer); else 0.",
)
@click.option(
    "--skip-same-content",
    is_flag=True,
    help="Skip a file whose bytes equal a file's already uploaded to the knowledge base (or "
    "uploaded by this run), naming that file; costs one more read of each file.",
)
@click.option(
    "--keep-old-versions",
    is_flag=True,
    help="Leave the entry of a changed file's old version beside the new one (by default it "
    "is deleted once the new version is registered).",
)
@click.option(
    "--network",
    type=click.Choice([n.value for n in presets.Network]),
    help="The reference script's presets of --workers, --max-retries, --retry-delay and "
    "--timeout for a good, average or poor network (those options, given, win).",
)
@click.option(
    "--no-report",
    is_flag=True,
    help="Do not write the JSON report at the end (reports/ beside the database).",
)
@wait_parsed_options()
@stacked(cli_existing.OPTIONS)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Only list what the run would upload, replace, relabel and delete; nothing is sent "
    "and nothing changes.",
)
@reference_names()
@pass_ctx
def run(
    ctx: Context,
    api_key: str,
    base_url: str,
    allow_http: bool,
    as_json: bool,
    error_on_nothing_to_do: bool,
    no_report: bool,
    network: str | None,
    wait_parsed: bool,
    parse_timeout: float,
    stuck_after: float,
    dry_run: bool,
    **opts: Any,
) -> None:
    """Upload every pending file: presign, S3 POST, register, with retries and resume.

    Exit codes: 0 all done (or nothing pending), 1 some files failed, 2 bad input (a --kb
    the queue does not hold), 3 the service refused the run (bad key, unknown knowledge base),
    4 the service was unreachable (at the start, or past --outage-timeout), 9 nothing pending
    with --error-on-nothing-to-do, 130 interrupted. Running it again resumes.
    """
    if dry_run:
        cli_dryrun.show(on_queue(ctx, lambda q: dryrun.plan(q, opts["kb_id"]), create=False))
        return
    _check_service(api_key, base_url, allow_http, "run")
    waiting = ParseWait(wait_parsed, parse_timeout, stuck_after)
    options = RunOptions(
        base_url=base_url, api_key=api_key, host_id=ctx.host_id, **_with_network(opts, network)
    )
    # An enqueue started with this run may not have made its database yet.
    until = walkwait.deadline()
    walkwait.wait_for_database(ctx.db, until)
    cli_existing.check(
        lambda call: on_queue_and_service(ctx, api_key, base_url, call),
        options,
        (lambda text: click.echo(text, err=True)) if as_json else ctx.echo,
    )
    run_log: list[logs.RunLog] = []  # opened once the run has work

    def begin(before: dict[str, int], resumed: bool) -> None:
        """The run has work: its log opens, and a resumed run says how far it was."""
        opened = _open_log(ctx, options.log_file, options.log_level)
        run_log.extend([opened] if opened is not None else [])
        if before["done"] and resumed and not as_json:
            total = sum(before.values()) - before["skipped"]
            ctx.echo(
                _("resuming: {done} of {total} files were uploaded before").format(
                    done=f"{before['done']:,}", total=f"{total:,}"
                )
            )

    def started(run_id: int) -> None:
        """The run has its id: the log takes it as its name and says what the run is."""
        where = "stderr only"
        for opened in run_log:
            where = opened.baseFilename if options.log_file else logs.name_for_run(opened, run_id)
        shown = {
            **options.recorded(),
            "kb_id": options.kb_id or "all",
            "register_batch": options.register_batch or "auto",
        }
        run_logger.info("run %d started (log %s): %s", run_id, where, logs.readable(shown))

    hooks = runner.Hooks(
        begin=begin,
        start=started,
        progress=None if ctx.quiet or as_json else progress.Progress,
        notice=_notice,
        outage=None if ctx.quiet else _show_outage,
    )

    async def body(q: Queue) -> tuple[runner.RunOutcome, list[dict[str, Any]], str | None]:
        outcome = await runner.run(q, options, hooks, until)
        failed = []
        if outcome.result.failed_in_queue:
            failed = await _failed(q, options.kb_id, FAILED_SHOWN)
        ran = outcome.idle is None and not no_report
        return outcome, failed, await _auto_report(q, ctx) if ran else None

    try:
        outcome, failed, report_path = on_queue(ctx, body, shared=options.shared, create=False)
    except runner.RunRefused as exc:
        raise UserError(str(exc)) from None
    finally:
        for opened in run_log:
            logs.close(opened)
    if outcome.idle is None:
        click.get_current_context().meta[RUN_HAD_WORK] = True
    if outcome.idle is not None:
        code = ExitCode.NOTHING_TO_DO if error_on_nothing_to_do else ExitCode.OK
        if as_json:
            click.echo(
                json.dumps(
                    {"nothing_pending": True, "message": outcome.idle, "exit_code": code},
                    ensure_ascii=False,
                )
            )
        else:
            click.echo(printable(outcome.idle))
        if waiting.asked and code == ExitCode.OK:
            code = waiting.wait(ctx, api_key, base_url, options.kb_id, as_json)
        sys.exit(code)
    result = outcome.result
    code = exit_code(result.ending())
    if as_json:
        if result.fatal is not None:
            click.echo(printable(_("Error: {message}").format(message=result.fatal)), err=True)
        shown = _run_json(outcome, failed, report_path, code)
        click.echo(json.dumps(shown, indent=2, ensure_ascii=False))
    else:
        _print_run(ctx, options.kb_id, outcome, failed, report_path)
    if waiting.asked and code in (ExitCode.OK, ExitCode.FAILED):
        code = max(code, waiting.wait(ctx, api_key, base_url, options.kb_id, as_json))
    if code:
        sys.exit(code)


@dataclasses.dataclass(frozen=True)
class ParseWait:
    """The options of `wait_parsed_options`, and the wait itself with its report."""

    asked: bool
    timeout: float
    stuck_after: float

    def wait(
        self, ctx: Context, api_key: str, base_url: str, kb_id: str | None, as_json: bool
    ) -> ExitCode:
        """Wait for the files of --kb (or of every knowledge base of the queue) to be parsed;
        print where they stand; exit 1 unless every one is done."""
        notes = parsing.Notes()

        async def body(q: Queue, api: client.MaiAgentClient) -> parsing.Parsed:
            return await parsing.wait_parsed(
                q,
                api,
                await _kbs(q, kb_id),
                timeout=self.timeout,
                stuck_after=self.stuck_after,
                notes=notes,
            )

        if not as_json and not ctx.quiet:
            click.echo(_("waiting for the knowledge base to parse the files..."), err=True)
        parsed = on_queue_and_service(ctx, api_key, base_url, body)
        for note in notes.said:
            click.echo(_("warning: {note}").format(note=note), err=True)
        if as_json:
            click.echo(json.dumps({"parsed": _parsed_json(parsed)}, indent=2, ensure_ascii=False))
        else:
            _print_parsed(parsed, self.stuck_after)
        return ExitCode.OK if parsed.ok else ExitCode.FAILED


def _parse_item(row: parsing.ParseRow) -> dict[str, Any]:
    return {
        "path": display(row.path),
        "kb_id": row.kb_id,
        "entry": row.file_id,
        "status": row.status,
        "reason": row.reason,
        "seen_at": report.iso(row.seen_at),
        "since": report.iso(row.since),
    }


def _parsed_json(parsed: parsing.Parsed) -> dict[str, Any]:
    return {
        "ok": parsed.ok,
        "done": parsed.done,
        "failed": [_parse_item(r) for r in parsed.failed],
        "processing": [_parse_item(r) for r in parsed.waiting],
        "stuck": [_parse_item(r) for r in parsed.stuck],
        "deleting": parsed.deleting,
        "missing": parsed.missing,
        "other": parsed.other,
        "timed_out": parsed.timed_out,
    }


def _print_parsed(parsed: parsing.Parsed, stuck_after: float) -> None:
    click.echo(
        _("parsed: done {done}, failed {failed}, still processing {waiting}, stuck {stuck}").format(
            done=f"{parsed.done:,}",
            failed=f"{len(parsed.failed):,}",
            waiting=f"{len(parsed.waiting):,}",
            stuck=f"{len(parsed.stuck):,}",
        )
    )
    for row in parsed.failed[:FAILED_SHOWN]:
        failed = _("  {path}  [parse failed] {why}").format(
            path=display(row.path), why=row.reason or ""
        )
        click.echo(printable(failed.rstrip()))
    for row in parsed.stuck[:FAILED_SHOWN]:
        click.echo(
            printable(
                _("  {path}  [stuck] {status} for more than {seconds:g}s").format(
                    path=display(row.path), status=row.status, seconds=stuck_after
                )
            )
        )
    if parsed.timed_out:
        click.echo(_("--parse-timeout passed while files were still being parsed"))
    if parsed.failed or parsed.stuck:
        click.echo(
            _(
                "`uploader status --failed` lists every parse failure; `uploader retry-failed "
                "--remote` parses them again in place"
            )
        )


def _run_json(
    outcome: runner.RunOutcome, failed: list[dict[str, Any]], report: str | None, code: ExitCode
) -> dict[str, Any]:
    """`run --json`: the summary's numbers, every state of the queue after the run (zeros
    included) and the first failed files."""
    result, elapsed = outcome.result, outcome.result.elapsed
    return {
        "nothing_pending": False,
        "run_id": outcome.run_id,
        "exit_code": int(code),
        "fatal": None if result.fatal is None else str(result.fatal),
        "interrupted": result.interrupted,
        "uploaded": result.uploaded,
        "adopted": result.adopted,
        "failed": result.failed,
        "released": result.released,
        "bytes": result.bytes,
        "seconds": round(elapsed, 3),
        "files_per_second": round((result.uploaded + result.failed) / elapsed, 2) if elapsed else 0,
        "bytes_per_second": round(result.bytes / elapsed) if elapsed else 0,
        "failed_in_queue": result.failed_in_queue,
        "first_failed": failed,
        "pending_elsewhere": outcome.elsewhere,
        "uploaded_by_others": result.by_others,
        "unknown_kbs": {kb: str(error) for kb, error in result.unknown_kbs.items()},
        "states": outcome.states,
        "report": report,
    }


def _print_run(
    ctx: Context,
    kb_id: str | None,
    outcome: runner.RunOutcome,
    failed: list[dict[str, Any]],
    report_path: str | None,
) -> None:
    result, states = outcome.result, outcome.states
    if result.fatal is None:
        for kb, error in result.unknown_kbs.items():
            click.echo(
                printable(
                    _(
                        "Error: {message}; its {n} queued files were left alone "
                        "(`uploader forget --kb {kb}` drops them from the queue)"
                    ).format(message=error, n=f"{outcome.unknown[kb]:,}", kb=kb)
                ),
                err=True,
            )
    if result.fatal is not None:
        click.echo(printable(_("Error: {message}").format(message=result.fatal)), err=True)
    else:
        click.echo(runner.summary(result, outcome.skipped))
        if result.by_others:
            click.echo(runner.by_others(result.by_others))
        _print_replaced(result.replaced)
        if result.failed_in_queue:
            click.echo(_("{n} files failed:").format(n=result.failed_in_queue))
            for item in failed:
                click.echo(f"  {printable(_failed_line(item))}")
            kb = f" --kb {kb_id}" if kb_id else ""
            again = f"uploader --db {ctx.shown_db} status --failed{kb}"
            more = (
                _("all of them: {command}")
                if result.failed_in_queue > len(failed)
                else _("again: {command}")
            )
            click.echo(more.format(command=again))
        if result.interrupted:
            kb = f" --kb {kb_id}" if kb_id else ""
            click.echo(
                _("interrupted: {n:,} files pending; `{command}` resumes").format(
                    n=states["pending"], command=f"uploader --db {ctx.shown_db} run{kb}"
                )
            )
        if states["running"] and not result.interrupted:
            click.echo(
                _(
                    "{n} files are held by another uploader run (or one that died on another "
                    "host, until its lease expires): run again later to finish them"
                ).format(n=states["running"])
            )
        if outcome.elsewhere:
            click.echo(
                _(
                    "{n} pending files were queued by other hosts and are left to them "
                    "(`run --shared` if this host sees their folders at the same paths)"
                ).format(n=outcome.elsewhere)
            )
        if report_path is not None:
            click.echo(_("report: {path}").format(path=report_path))


def _print_replaced(replaced: Any) -> None:
    """What became of the entries of changed files' old versions and of removed files."""
    if replaced.superseded:
        click.echo(
            _("deleted {n} superseded entries (old versions of changed files)").format(
                n=replaced.superseded
            )
        )
    if replaced.removed:
        click.echo(
            _("deleted {n} entries of removed files (enqueue --delete-removed)").format(
                n=replaced.removed
            )
        )
    if replaced.kept:
        click.echo(
            _("kept {n} old versions of changed files (--keep-old-versions)").format(
                n=replaced.kept
            )
        )
    if replaced.errors:
        click.echo(
            printable(
                _(
                    "{n} superseded entries not deleted yet (the next `uploader run` tries "
                    "again): {errors}"
                ).format(n=len(replaced.errors), errors="; ".join(replaced.errors[:3]))
            )
        )


# --- status ----------------------------------------------------------------------------------


async def _status(q: Queue) -> dict[str, Any]:
    reads = StatusStore(q.engine)
    tally = await reads.tally()
    runs = RunsStore(q.engine)
    last = await runs.runs(last=1)
    if last:
        last[0]["fatal"] = await runs.run_fatal(last[0]["id"])
    failed = await reads.error_kind_counts() if tally.files_in(JobState.FAILED) else {}
    return {
        "knowledge_bases": {kb: _every_state(states) for kb, states in tally.states().items()},
        "failed_by_kind": failed,
        # uploaded files per their entry's status as last seen (verify, run --wait-parsed)
        "parsed": tally.parsed(),
        "last_run": report.with_iso_times(last[0]) if last else None,
        "remote": {v["kb_id"]: report.with_iso_times(v) for v in await reads.last_verifications()},
        "hosts": {
            label: {state.value: states.get(state, 0) for state in JobState}
            for label, states in _hosts(tally.hosts()).items()
        },
        # what is known of the bytes behind the entries (their hash, as uploaded) and the entries
        # of changed or removed files' old versions still to delete
        "content": {
            kb: {
                "algorithm": content.ALGORITHM,
                "hashed": 0,
                "superseded": 0,
                "old_versions_kept": 0,
                **c,
            }
            for kb, c in (await reads.content_counts()).items()
        },
    }


def _every_state(states: dict[str, tuple[int, int]]) -> dict[str, dict[str, int]]:
    """Files and bytes of every state, zeros included: a JSON reader needs no defaults."""
    return {
        state.value: dict(zip(("files", "bytes"), states.get(state, (0, 0)), strict=True))
        for state in JobState
    }


def _hosts(counts: list[Any]) -> dict[str, dict[str, int]]:
    """Rows per host that enqueued them; shared rows apart ("<host> (shared)"), rows of no
    recorded host under "(any host)"."""
    hosts: dict[str, dict[str, int]] = {}
    for c in counts:
        label = c.host or "(any host)"
        if c.shared:
            label += " (shared)"
        hosts.setdefault(label, {})[c.state] = c.files
    return hosts


def _when(iso: str | None) -> str:
    """An ISO 8601 time of `status`'s data, in this machine's zone, for people."""
    if not iso:
        return "-"
    return dt.datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _print_status(data: dict[str, Any], host_id: str) -> None:
    if not data["knowledge_bases"]:
        click.echo(_("the queue is empty: run `uploader enqueue DIR --kb KB_ID`"))
    for kb, states in data["knowledge_bases"].items():
        total = sum(v["files"] for v in states.values())
        click.echo(printable(_("knowledge base {kb}: {total} files").format(kb=kb, total=total)))
        for state in JobState:
            v = states.get(state, {"files": 0, "bytes": 0})
            row = _("  {state} {files:>10,} files {size:>10}")
            word = _pad(runner.state_word(state), 8)  # 完成 is as wide as `done`
            click.echo(row.format(state=word, files=v["files"], size=_human(v["bytes"])))
        parsed = data["parsed"].get(kb)
        if parsed and set(parsed) != {"unseen"}:
            click.echo(_("  parsed (as last seen): {counts}").format(counts=_pairs(parsed)))
        if kb in data["remote"]:
            click.echo(f"  {_remote_line(data['remote'][kb])}")
        waiting = data["content"].get(kb, {}).get("superseded", 0)
        if waiting:
            click.echo(
                _(
                    "  {n:,} entries of changed or removed files' old versions to delete "
                    "(the next `uploader run`)"
                ).format(n=waiting)
            )
    if data["failed_by_kind"]:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(data["failed_by_kind"].items()))
        click.echo(_("failed by kind: {kinds}").format(kinds=kinds))
    hosts = data["hosts"]
    if hosts and list(hosts) != [host_id]:
        click.echo(
            _("hosts (files by the host that enqueued them; shared: any host uploads them):")
        )
        for label, states in hosts.items():
            line = ", ".join(f"{state.value} {states.get(state, 0):,}" for state in JobState)
            click.echo(printable(f"  {label:<24} {line}"))
    run = data["last_run"]
    if run:
        counts = run["counts"] or {}
        outcome = (
            _("exit {code}: {counts}").format(code=run["exit_code"], counts=_run_counts(counts))
            if run["ended_at"]
            else _("still running or interrupted")
        )
        if run.get("fatal"):
            outcome += _("; stopped: {why}").format(why=run["fatal"])
        line = _("last run #{id}: {started} to {ended}, {outcome}").format(
            id=run["id"],
            started=_when(run["started_at"]),
            ended=_when(run["ended_at"]),
            outcome=outcome,
        )
        click.echo(printable(line))


# A run's recorded counts beyond uploaded and failed, in words; said only when not zero.
_RUN_COUNT_WORDS = (
    ("unchanged", N_("unchanged {} (same content)")),
    ("relabelled", N_("relabelled {} (update-metadata, no upload)")),
    ("adopted", N_("{} found registered after a lost answer")),
    # attempts, not files: the same rows are often done later in that run
    ("released", N_("{} attempts put back for later")),
    ("superseded_deleted", N_("{} old entries deleted (changed or removed files)")),
    ("copies_deleted", N_("{} second entries of one upload deleted")),
)


def _run_counts(counts: dict[str, Any]) -> str:
    """`status`'s last run as the run's own summary says it: `uploaded 48, failed 0 in 40.8s`,
    then what else happened, in words."""
    others = counts.get("unchanged", 0) + counts.get("relabelled", 0)
    first = _("uploaded {uploaded}, failed {failed} in {seconds:.1f}s").format(
        uploaded=counts.get("uploaded", 0) - others,
        failed=counts.get("failed", 0),
        seconds=counts.get("seconds", 0),
    )
    words = [first]
    words += [_(text).format(counts[key]) for key, text in _RUN_COUNT_WORDS if counts.get(key)]
    return ", ".join(words)


FAILED_SHOWN = 5  # failed files a run's summary names; `status --failed` lists them all


async def _parse_failures(q: Queue, kb_id: str | None) -> list[dict[str, Any]]:
    """Uploaded files whose entry's parsing failed (as last seen), with the reason."""
    return [
        {
            "path": display(r.path),
            "kb_id": r.kb_id,
            "kind": "parse_failed",
            "last_error": r.reason,
            "attempts": None,
            "entry": r.file_id,
            "seen_at": report.iso(r.seen_at),
        }
        for r in await ParseStore(q.engine).rows(kb_id, ("failed",))
    ]


async def _failed(q: Queue, kb_id: str | None, limit: int | None = None) -> list[dict[str, Any]]:
    """The failed files (of --kb), oldest row first: path, kind, last error, attempts."""
    found: list[dict[str, Any]] = []
    rows = StatusStore(q.engine).report_rows(JobState.FAILED)
    try:
        async for row in rows:
            if not isinstance(row, FailedRow) or kb_id not in (None, row.kb_id):
                continue
            if limit is not None and len(found) == limit:
                break
            found.append(
                {
                    "path": display(row.path),
                    "kb_id": row.kb_id,
                    "kind": row.error_kind or "unknown",
                    "last_error": row.error,
                    "attempts": row.attempts,
                }
            )
    finally:
        await rows.aclose()  # type: ignore[attr-defined]
    return found


def _show_list(
    items: list[dict[str, Any]], as_json: bool, empty: str, line: Callable[[dict[str, Any]], str]
) -> None:
    """One of status's file lists: as JSON, or a line per file, each made printable (a name
    may hold control characters)."""
    if as_json:
        click.echo(json.dumps(items, indent=2, ensure_ascii=False))
        return
    if not items:
        click.echo(empty)
    for item in items:
        click.echo(printable(line(item)))


def _skipped_line(item: dict[str, Any]) -> str:
    return f"{item['path']}  {item['reason'] or ''}".rstrip()


async def _skipped(q: Queue, kb_id: str | None) -> list[dict[str, Any]]:
    """The skipped files (of --kb), oldest row first, with why each is not uploaded."""
    found: list[dict[str, Any]] = []
    rows = StatusStore(q.engine).report_rows(JobState.SKIPPED)
    try:
        async for row in rows:
            if isinstance(row, SkippedRow) and kb_id in (None, row.kb_id):
                found.append({"path": display(row.path), "kb_id": row.kb_id, "reason": row.reason})
    finally:
        await rows.aclose()  # type: ignore[attr-defined]
    return found


async def _pending(q: Queue, kb_id: str | None) -> list[dict[str, Any]]:
    """The files not uploaded yet (of --kb), oldest row first, with what each waits for."""
    found: list[dict[str, Any]] = []
    rows = StatusStore(q.engine).pending_rows(kb_id)
    try:
        async for row in rows:
            found.append(
                {
                    "path": display(row.path),
                    "kb_id": row.kb_id,
                    "size": row.size,
                    "waiting": Waiting.of(row).value,
                    "attempts": row.attempts,
                    "kind": row.error_kind,
                    "last_error": row.error,
                    "due_at": report.iso(row.next_attempt_at) if row.next_attempt_at else None,
                }
            )
    finally:
        await rows.aclose()  # type: ignore[attr-defined]
    return found


# What `status --pending` says a file waits for (the JSON keeps the English word).
_WAITING = {
    Waiting.RUNNING: N_("uploading now"),
    Waiting.DOUBT: N_("a register may have landed: the listing settles it first"),
    Waiting.REGISTER: N_("on S3: to register"),
    Waiting.METADATA: N_("uploaded: labels or metadata to update (no upload)"),
    Waiting.RECHECK: N_("uploaded: same size, new time; its bytes are compared first"),
    Waiting.RETRY: N_("to retry"),
    Waiting.UPLOAD: N_("to upload"),
}


def _pending_line(item: dict[str, Any]) -> str:
    said = _(_WAITING[Waiting(item["waiting"])])
    if item["waiting"] == Waiting.RETRY and item["due_at"]:
        said += " " + _("at {time}").format(time=_when(item["due_at"]))
    if item["last_error"]:
        kind = f"[{item['kind']}] " if item["kind"] else ""
        said += f" {kind}{item['last_error']}"
    return f"{item['path']}  {said}"


def _failed_line(item: dict[str, Any]) -> str:
    if item["kind"] == "parse_failed":
        why = item["last_error"] or ""
        line = _("{path}  [parse failed, entry {entry}] {why}")
        return line.format(path=item["path"], entry=item["entry"], why=why).rstrip()
    tries = ngettext("{n} attempt", "{n} attempts", item["attempts"]).format(n=item["attempts"])
    line = _("{path}  [{kind}, {tries}] {why}")
    return line.format(
        path=item["path"], kind=item["kind"], tries=tries, why=item["last_error"] or ""
    ).rstrip()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the same as JSON.")
@click.option(
    "--failed",
    is_flag=True,
    help="Instead: every failed file with its error kind, last error and attempts.",
)
@click.option(
    "--skipped",
    is_flag=True,
    help="Instead: every skipped file with the reason (too large, unreadable, a type the "
    "knowledge base does not accept, same content).",
)
@click.option(
    "--pending",
    is_flag=True,
    help="Instead: every file not uploaded yet, with what it waits for (upload, retry, "
    "register, a metadata update).",
)
@kb_option(required=False)
@pass_ctx
def status(
    ctx: Context, as_json: bool, failed: bool, skipped: bool, pending: bool, kb_id: str | None
) -> None:
    """Files and bytes per state, per knowledge base, and the last run; with --failed, which
    files failed and why (`uploader retry-failed --kind KIND` puts them back); with
    --skipped, which files are not uploaded and why; with --pending, which files are still
    to upload."""
    if failed + skipped + pending > 1:
        raise UserError(_("--failed, --skipped and --pending are separate lists: ask for one"))
    if pending:
        items = on_queue(ctx, lambda q: _pending(q, kb_id), create=False)
        _show_list(items, as_json, _("no file pending"), _pending_line)
        return
    if skipped:
        items = on_queue(ctx, lambda q: _skipped(q, kb_id), create=False)
        _show_list(items, as_json, _("no file skipped"), _skipped_line)
        return
    if failed:

        async def both(q: Queue) -> list[dict[str, Any]]:
            return await _failed(q, kb_id) + await _parse_failures(q, kb_id)

        items = on_queue(ctx, both, create=False)
        _show_list(items, as_json, _("no file failed"), _failed_line)
        return
    data = on_queue(ctx, _status, create=False)
    if kb_id is not None and kb_id not in data["knowledge_bases"]:
        raise UserError(_no_rows(kb_id, data["knowledge_bases"]))
    if kb_id is not None:  # that knowledge base only
        for part in ("knowledge_bases", "remote", "content"):
            data[part] = {kb: v for kb, v in data[part].items() if kb == kb_id}
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        _print_status(data, ctx.host_id)


# --- retry-failed ----------------------------------------------------------------------------


@cli.command("retry-failed")
@kb_option(required=False)
@click.option(
    "--kind",
    multiple=True,
    type=click.Choice(FAILURE_KINDS),
    help="Only failures of this error kind (repeatable); `uploader status` counts them.",
)
@click.option("--match", multiple=True, metavar="GLOB", help="Only relative paths matching.")
@click.option(
    "--remote",
    is_flag=True,
    help="Instead: files whose knowledge-base entry failed parsing, is stuck, or is missing (as "
    "last seen): parsed again in place (batch-reparse); those that fail again, and the missing "
    "ones, are deleted and queued for upload.",
)
@click.option(
    "--parser",
    callback=_parser,
    metavar="ID",
    help="With --remote: parse again with this parser (a UUID), e.g. an OCR one for scans.",
)
@click.option(
    "--stuck-after",
    type=Finite(0),
    default=parsing.STUCK_AFTER,
    show_default=True,
    help="With --remote: seconds after which an entry still initial or processing is stuck "
    "(parsed again too).",
)
@click.option(
    "--parse-timeout",
    type=Finite(0),
    default=parsing.REPAIR_TIMEOUT,
    show_default=True,
    help="With --remote: seconds to wait for the outcome of the reparse.",
)
@service_options()
@pass_ctx
def retry_failed(  # type: ignore[no-untyped-def]
    ctx: Context,
    kb_id: str | None,
    kind: tuple[str, ...],
    match: tuple[str, ...],
    remote: bool,
    parser: str | None,
    stuck_after: float,
    parse_timeout: float,
    **service: Any,
):
    """Put failed files back to pending, attempts reset, for the next `uploader run`.

    With --remote: entries whose parsing failed or is stuck are parsed again in place first
    (same entry, labels and metadata; no upload), with --parser if given; only those that fail
    again, and missing ones, are deleted and their files queued. Exit 0, or 1 when some
    entries could not be deleted, 3 when the service refused (bad key, unknown knowledge base).
    """
    try:
        matches = scan.matcher(match) if match else None
    except scan.PatternError as exc:
        raise UserError(str(exc)) from None
    if remote:
        repair = _Repair(parser, stuck_after, parse_timeout)
        _retry_remote(ctx, kb_id, kind, matches, repair, **service)
        return
    if parser is not None:
        raise UserError(_("--parser goes with --remote (it parses entries again)"))

    n = on_queue(ctx, lambda q: q.retry_failed(kb_id, kind, matches), create=False)
    ctx.echo(_("{n} failed files back to pending; run `uploader run` to upload them").format(n=n))


# --- forget ----------------------------------------------------------------------------------


def _no_rows(kb_id: str, held: Iterable[str]) -> str:
    """A --kb the queue holds no row of (a typo, most likely): the ones it does hold."""
    kbs = sorted(held)
    holds = _("the queue holds: {kbs}").format(kbs=", ".join(kbs)) if kbs else _("it is empty")
    return _("the queue has no rows for {kb} ({holds})").format(kb=kb_id, holds=holds)


@cli.command()
@kb_option(required=True)
@click.option("--match", multiple=True, metavar="GLOB", help="Only relative paths matching.")
@click.option("--yes", is_flag=True, help="Drop them; without it, only show what would go.")
@pass_ctx
def forget(ctx: Context, kb_id: str, match: tuple[str, ...], yes: bool) -> None:
    """Drop the rows of knowledge base --kb from the queue (those matching --match), in every
    state but running: a mistyped --kb at enqueue, files that should not have been queued.

    Never calls the service: entries already uploaded stay in the knowledge base (and a later
    enqueue of their folder queues them again). Without --yes it is a dry run.
    """
    try:
        matches = scan.matcher(match) if match else None
    except scan.PatternError as exc:
        raise UserError(str(exc)) from None

    async def body(q: Queue) -> tuple[dict[str, int], list[tuple[str, str, int]]]:
        counts = await StatusStore(q.engine).state_counts()
        if kb_id not in counts:
            raise UserError(_no_rows(kb_id, counts))
        dropped = await q.forget_jobs(kb_id, matches, yes)
        shown = None if ctx.verbose else LIST_SHOWN
        return dropped, [] if yes else await q.forgettable(kb_id, matches, shown)

    counts, listed = on_queue(ctx, body, create=False)
    running = counts.pop(JobState.RUNNING, 0)
    total = sum(counts.values())
    states = ", ".join(
        f"{runner.state_word(state)} {counts[state]:,}" for state in JobState if counts.get(state)
    )
    dropped = (
        _("dropped {n} rows of {kb} from the queue")
        if yes
        else _("would drop {n} rows of {kb} from the queue")
    )
    shown = f" ({states})" if total else ""
    click.echo(dropped.format(n=f"{total:,}", kb=kb_id) + shown)
    if not yes:
        _print_forgettable(listed, total)
    if running:
        click.echo(_("{n} files a run is uploading now were left alone").format(n=f"{running:,}"))
    if counts.get(JobState.DONE):
        click.echo(_("the uploaded files' entries stay in the knowledge base"))
    if total and not yes:
        click.echo(_("dry run: add --yes to drop them"))


def _print_forgettable(rows: list[tuple[str, str, int]], total: int) -> None:
    """The rows a dry run of forget would drop, one a line (state, size, relpath), the first
    LIST_SHOWN of them unless -v: a count alone does not show a --match that catches more
    than meant."""
    words = [runner.state_word(JobState(state)) for _relpath, state, _size in rows]
    width = max(map(_columns, words), default=0)
    for word, (relpath, _state, size) in zip(words, rows, strict=True):
        click.echo(f"  {_pad(word, width)}  {_human(size):>8}  {printable(relpath)}")
    if total > len(rows):
        click.echo(_("  ... and {n} more").format(n=f"{total - len(rows):,}"))


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
    target = output or report.default_path(ctx.anchor)

    async def body(q: Queue) -> dict[str, Any]:
        try:
            return await report.export(q, ctx.db, target)
        except BrokenPipeError:
            raise  # `-o - | head`: the group's quiet 141, not a write error
        except OSError as exc:
            raise UserError(
                _("cannot write report {target}: {why}").format(target=target, why=exc.strerror)
            ) from None

    summary = on_queue(ctx, body, create=False)
    if target != "-":
        click.echo(
            _(
                "report written to {target}: {uploaded} uploaded, {failed} failed, "
                "{pending} pending, {skipped} skipped"
            ).format(
                target=target,
                uploaded=summary["successful_uploads"],
                failed=summary["failed_uploads"],
                pending=summary["pending"],
                skipped=summary["skipped"],
            )
        )


# --- verify, dedupe, retry-failed --remote ---------------------------------------------------

LIST_SHOWN = 10  # lines of each list verify prints; export-report has them all


class ServiceError(click.ClickException):
    """The service refused or kept failing: one line, and the exit code `exit_code` gives the
    error (3 a refused key or knowledge base, 4 a service not reached: "cannot reach
    HOST:PORT (why)", as `run` says; 2 out of open files; else 1)."""

    def __init__(self, error: client.ApiError) -> None:
        code = exit_code(error)
        if code is ExitCode.UNREACHABLE:
            super().__init__(str(outage.ServiceUnreachable.at_start(error)))
        else:
            super().__init__(str(error))
        self.exit_code = code  # type: ignore[misc]  # per error, not per class


def get_a_key() -> str:
    return _(
        "it is on the API Key page of your MaiAgent account (the user name menu at the top "
        "right, then Account)"
    )


def _check_service(api_key: str | None, base_url: str, allow_http: bool, what: str) -> None:
    if not api_key:
        raise UserError(
            _(
                "{command} needs an API key: set MAIAGENT_API_KEY (or pass --api-key); {where}"
            ).format(command=what, where=get_a_key())
        )
    # Such a key cannot go into a header (aiohttp raises mid-run); name the character only.
    bad = next((c for c in api_key if not c.isprintable() or ord(c) > 0xFF), None)
    if bad is not None:
        raise UserError(
            _(
                "the API key contains character U+{code}, which cannot be sent (a stray line end "
                "from a .env file?): check --api-key or MAIAGENT_API_KEY"
            ).format(code=f"{ord(bad):04X}")
        )
    try:
        warning = client.check_base_url(base_url, allow_http)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if warning:
        click.echo(warning, err=True)
    current = click.get_current_context(silent=True)
    if current is not None and current.meta.get(_KEY_TYPED) and sys.stderr.isatty():
        # A command line is readable by every local user while the command runs (`ps`): said
        # to the person who typed it (a script's stderr keeps its one line per error).
        click.echo(
            _(
                "warning: a key given by --api-key is visible to every user of this machine in "
                "the process list while the command runs: set MAIAGENT_API_KEY or use "
                "--api-key-file"
            ),
            err=True,
        )


def on_queue_and_service(
    ctx: Context,
    api_key: str,
    base_url: str,
    call: Callable[[Queue, client.MaiAgentClient], Awaitable[T]],
) -> T:
    """A command's library call on its queue (which must exist) and the service: on_queue,
    and the service's refusal or failure a ServiceError."""

    async def opened(q: Queue) -> T:
        async with reconcile.open_client(base_url, api_key) as api:
            return await call(q, api)

    try:
        return on_queue(ctx, opened, create=False)
    except client.ApiError as exc:
        raise ServiceError(exc) from None


async def _kbs(q: Queue, kb_id: str | None) -> list[str]:
    if kb_id:
        return [kb_id]
    kbs = sorted(await StatusStore(q.engine).state_counts())
    if not kbs:
        raise UserError(_("the queue is empty: pass --kb KB_ID"))
    return kbs


def _each_kb(
    ctx: Context,
    api_key: str,
    base_url: str,
    kb_id: str | None,
    call: Callable[[Queue, client.MaiAgentClient, str], Awaitable[R]],
    shown: Callable[[Queue, str, R], Awaitable[None]] | None,
    as_dict: Callable[[str, R], dict[str, Any]],
    ok: Callable[[R], bool],
) -> None:
    """verify's and dedupe's shape: the library `call` for --kb or each knowledge base of the
    queue, each result `shown` as text as it comes (the next listing's bar after it), or with
    `shown` None all of them as one JSON list; exit 1 unless every result is `ok`."""

    async def each(q: Queue, api: client.MaiAgentClient) -> bool:
        fine = True
        documents = []
        for kb in await _kbs(q, kb_id):
            result = await call(q, api, kb)
            if shown is None:
                documents.append(as_dict(kb, result))
            else:
                await shown(q, kb, result)
            fine = fine and ok(result)
        if shown is None:
            click.echo(json.dumps(documents, indent=2, ensure_ascii=False))
        return fine

    if not on_queue_and_service(ctx, api_key, base_url, each):
        sys.exit(ExitCode.FAILED)


def _read_bars(
    ctx: Context, lines: Callable[[str], None] | None = None
) -> progress.ReadBars | None:
    """verify's and dedupe's drawing: bars where stderr (they are drawn there) is a terminal,
    else `lines`; nothing with -q."""
    return None if ctx.quiet else progress.ReadBars(sys.stderr.isatty(), lines)


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in counts.items())


def _remote_line(verification: dict[str, Any]) -> str:
    """`status`'s summary of the last verify of one knowledge base."""
    c = verification["counts"]
    return _("remote (verify of {when}): {counts}; extra {extra}, duplicates {duplicates}").format(
        when=_when(verification["ended_at"]),
        counts=_pairs(c["files"]),
        extra=f"{c['extra']:,}",
        duplicates=f"{c['duplicates']:,}",
    )


def _item_line(kind: str, item: VerificationItem) -> str:
    path, file_id, filename, size, status, kept_id = item
    if kind in ("missing", "failed"):
        return _("{file} (entry {id})").format(file=display(path) if path else filename, id=file_id)
    shown = f"{filename} ({'?' if size is None else f'{size:,} B'}, {status or '?'})"
    if kind == "duplicate":
        return _("{file}: entry {id}, a copy of {kept}").format(
            file=shown, id=file_id, kept=kept_id
        )
    if kind == "superseded":
        local = display(path) if path else "?"
        if kept_id is None:
            return _("{file}: entry {id} of {local}, removed from its folder").format(
                file=shown, id=file_id, local=local
            )
        return _("{file}: entry {id}, the old version of {local} (now {kept})").format(
            file=shown, id=file_id, local=local, kept=kept_id
        )
    return _("{file}: entry {id}").format(file=shown, id=file_id)


_LISTS = (
    ("missing", N_("missing (uploaded, entry gone)")),
    ("failed", N_("failed parsing")),
    ("duplicate", N_("duplicates (surplus copies)")),
    ("superseded", N_("superseded (old versions of changed files, still present)")),
    ("extra", N_("extra (not uploaded from this database)")),
)


async def _print_lists(q: Queue, v: reconcile.Verification, reasons: dict[str, str]) -> None:
    for kind, title in _LISTS:
        c = v.counts
        if kind == "duplicate":
            total = c["duplicates"] + c["extra_duplicates"]
        elif kind == "superseded":
            total = c["superseded"] + c["old_versions_kept"]
        else:
            total = c[kind]
        if not total:
            continue
        click.echo(_("  {title}:").format(title=_(title)))
        async for row in StatusStore(q.engine).verification_items(v.id, kind, LIST_SHOWN):
            why = reasons.get(row.file_id or "") if kind == "failed" else None
            line = _item_line(kind, row) + (f": {why}" if why else "")
            click.echo(f"    {printable(line)}")
        if total > LIST_SHOWN:
            click.echo(
                _("    ... and {n} more (uploader export-report)").format(
                    n=f"{total - LIST_SHOWN:,}"
                )
            )


def _verdict(c: dict[str, Any]) -> str:
    if c["ok"]:
        return _("OK: every file is in the knowledge base once, parsed")
    files = c["files"]
    problems = {
        _("{n} failed parsing"): files["failed"],
        _("{n} missing"): files["missing"],
        _("{n} still parsing"): files["initial"] + files["processing"],
        _("{n} being deleted (not present, not missing yet)"): files.get("deleting", 0),
        _("{n} duplicated"): c["duplicates"],
        _("{n} superseded"): c["superseded"],
        _("{n} not uploaded"): c["not_uploaded"],
        _("{n} with other labels or metadata"): c.get("tag_mismatches", 0),
    }
    found = ", ".join(what.format(n=f"{n:,}") for what, n in problems.items() if n)
    hints = []
    if files["failed"] or files["missing"]:
        hints.append(_("`uploader retry-failed --remote` then `uploader run` upload them again"))
    if c["duplicates"]:
        hints.append(_("`uploader dedupe` shows the copies it would delete"))
    if c["superseded"]:
        hints.append(_("`uploader run` deletes the old versions"))
    if c["not_uploaded"]:
        hints.append(
            _(
                "`uploader status --pending` and `--failed` list them; `uploader run` uploads "
                "the pending ones, after `uploader retry-failed` the failed ones"
            )
        )
    if c["timed_out"]:
        hints.append(_("--wait timed out"))
    verdict = _("NOT OK: {problems}").format(problems=found or _("see above"))
    return verdict + "".join(f"; {h}" for h in hints)


async def _print_verification(
    q: Queue, ctx: Context, v: reconcile.Verification, reasons: dict[str, str]
) -> None:
    c = v.counts
    files = c["files"]
    if ctx.quiet:  # the verdict alone: its exit code says the rest
        click.echo(
            printable(_("knowledge base {kb}: {verdict}").format(kb=v.kb_id, verdict=_verdict(c)))
        )
        return
    click.echo(
        printable(_("knowledge base {kb}: {n} entries").format(kb=v.kb_id, n=f"{c['entries']:,}"))
    )
    click.echo(_("  remote      {counts}").format(counts=_pairs(c["remote"])))
    click.echo(
        _("  our files   {n} uploaded: {counts}; {not_uploaded} not uploaded").format(
            n=f"{sum(files.values()):,}",
            counts=_pairs(files),
            not_uploaded=f"{c['not_uploaded']:,}",
        )
    )
    click.echo(
        _("  extra       {n} entries not uploaded from this database").format(n=f"{c['extra']:,}")
    )
    duplicates = _("{n} surplus copies in {groups} groups").format(
        n=f"{c['duplicates']:,}", groups=f"{c['duplicate_groups']:,}"
    )
    if c["extra_duplicates"]:
        duplicates += _(" (and {n} among extra entries)").format(n=f"{c['extra_duplicates']:,}")
    click.echo(_("  duplicates  {duplicates}").format(duplicates=duplicates))
    superseded = _("{n} old versions of changed files still present").format(
        n=f"{c['superseded']:,}"
    )
    if c["old_versions_kept"]:
        superseded += _(" (and {n} kept: --keep-old-versions)").format(
            n=f"{c['old_versions_kept']:,}"
        )
    click.echo(_("  superseded  {superseded}").format(superseded=superseded))
    if c.get("copies_deleted"):
        click.echo(
            _(
                "  repaired    deleted {n} second entries of one upload (the same S3 key as a "
                "file's entry: a register that landed after its answer was lost; --no-repair "
                "leaves them)"
            ).format(n=f"{c['copies_deleted']:,}")
        )
    if c.get("tag_mismatches"):
        click.echo(
            _(
                "  labels      {n} entries carry other labels or metadata than their files ask "
                "(give `uploader enqueue` the same --label/--metadata/--manifest again, then "
                "`uploader run`)"
            ).format(n=f"{c['tag_mismatches']:,}")
        )
        for m in c["tag_mismatch_examples"]:
            click.echo(
                printable(
                    _(
                        "    {file}: asks {labels} {metadata}, entry has {entry_labels} "
                        "{entry_metadata}"
                    ).format(
                        file=m["file"],
                        labels=m["labels"],
                        metadata=m["metadata"],
                        entry_labels=m["entry_labels"],
                        entry_metadata=m["entry_metadata"],
                    )
                )
            )
    if c.get("gone_from_disk"):
        shown = ", ".join(c["gone_from_disk_examples"])
        if c["gone_from_disk"] > len(c["gone_from_disk_examples"]):
            shown += ", ..."
        click.echo(
            printable(
                _(
                    "  on disk     {n} uploaded files no longer exist ({files}): their entries "
                    "stay; `uploader enqueue DIR --delete-removed` deletes them"
                ).format(n=f"{c['gone_from_disk']:,}", files=shown)
            )
        )
    await _print_lists(q, v, reasons)
    click.echo(f"  {_verdict(c)}")


@cli.command()
@service_options()
@kb_option(required=False)
@click.option(
    "--wait", is_flag=True, help="List again until no file is initial or processing any more."
)
@click.option(
    "--timeout",
    type=Finite(0),
    default=3600.0,
    show_default=True,
    help="Seconds --wait waits at most.",
)
@click.option("--json", "as_json", is_flag=True, help="Print each knowledge base's counts as JSON.")
@click.option(
    "--no-repair",
    "repair",
    flag_value=False,
    default=True,
    help="Only read: leave second entries of one upload (same S3 key) in place, counted as "
    "duplicates; by default verify deletes them.",
)
@pass_ctx
def verify(
    ctx: Context,
    api_key: str,
    base_url: str,
    allow_http: bool,
    kb_id: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
    repair: bool,
) -> None:
    """Check the knowledge base against this database: the parse status of every uploaded
    file, missing entries (uploaded, then gone), extra entries (not uploaded from here) and
    duplicates (copies of a file's entry, registered with the S3 key it uploaded).

    A second entry of one upload (the same S3 key as the file's own entry) is deleted and
    counted in the output; --no-repair makes verify read-only.

    Every knowledge base of the queue unless --kb. The outcome is kept for `status` and
    `export-report`. Exit codes: 0 every file uploaded and parsed (`done`), none missing or
    duplicated; 1 otherwise; 2 bad input; 3 the service refused (bad key, unknown KB).
    """
    _check_service(api_key, base_url, allow_http, "verify")
    drawn = _read_bars(ctx, functools.partial(click.echo, err=True))
    notes = parsing.Notes()

    async def verified(q: Queue, api: client.MaiAgentClient, kb: str) -> _Verified:
        result = await reconcile.verify(
            q, api, kb, wait=wait, timeout=timeout, progress=drawn, repair=repair
        )
        await parsing.read_reasons(q, api, kb, notes)
        failures = await ParseStore(q.engine).rows(kb, ("failed",))
        return _Verified(result, failures)

    async def shown(q: Queue, _kb: str, found: _Verified) -> None:
        for note in notes.said:
            click.echo(_("warning: {note}").format(note=note), err=True)
        notes.said.clear()
        await _print_verification(q, ctx, found.verification, found.reasons)

    _each_kb(
        ctx,
        api_key,
        base_url,
        kb_id,
        verified,
        None if as_json else shown,
        lambda kb, found: {
            "kb_id": kb,
            "ok": found.verification.ok,
            "counts": found.verification.counts,
            "parse_failures": [_parse_item(r) for r in found.failures],
        },
        lambda found: found.verification.ok,
    )


@dataclasses.dataclass(frozen=True)
class _Verified:
    """A verify's outcome and the parse failures it saw, with their reasons."""

    verification: reconcile.Verification
    failures: list[parsing.ParseRow]

    @property
    def reasons(self) -> dict[str, str]:
        return {r.file_id: r.reason for r in self.failures if r.reason}


def _print_dedupe(ctx: Context, kb: str, result: reconcile.Dedupe, yes: bool) -> None:
    doomed = {e.id for e in result.doomed}
    groups = [g for g in result.groups if any(e.id in doomed for e in g.surplus)]
    click.echo(
        _("knowledge base {kb}: {n} surplus copies in {groups} duplicate groups").format(
            kb=kb, n=f"{len(doomed):,}", groups=f"{len(groups):,}"
        )
    )
    group_line = (
        _("  {file} ({size}){origin}: keep {keep}; delete {ids}")
        if yes
        else _("  {file} ({size}){origin}: keep {keep}; would delete {ids}")
    )
    if any(g.extra for g in groups):
        click.echo(
            _(
                "warning: entries not uploaded from this database are grouped by filename and "
                "size only, which does not prove they are copies (two different documents can "
                "share both); groups that share a name and size with an entry of this database "
                "are left alone"
            ),
            err=True,
        )
    if not ctx.quiet:
        for g in groups:
            size = "?" if g.size is None else f"{g.size:,} B"
            origin = _(" (extra entries, same name and size)") if g.extra else ""
            click.echo(
                printable(
                    group_line.format(
                        file=g.filename,
                        size=size,
                        origin=origin,
                        keep=g.keep,
                        ids=", ".join(e.id for e in g.surplus),
                    )
                )
            )
    if result.spared_extra:
        click.echo(
            _("  {n} copies among extra entries left alone (--include-extra deletes them)").format(
                n=f"{result.spared_extra:,}"
            )
        )
    for error in result.errors[:LIST_SHOWN]:
        click.echo(printable(_("error: {message}").format(message=error)), err=True)
    if yes:
        click.echo(_("  deleted {n} entries").format(n=f"{result.deleted:,}"))
    elif doomed:
        click.echo(_("  dry run, nothing deleted: `uploader dedupe --yes` deletes them"))


@cli.command()
@service_options()
@kb_option(required=False)
@click.option("--yes", is_flag=True, help="Delete; without it, only show what would be deleted.")
@click.option(
    "--include-extra",
    is_flag=True,
    help="Also dedupe entries not uploaded from this database, by filename and size alone.",
)
@click.option("--json", "as_json", is_flag=True, help="Print what it deleted (or would) as JSON.")
@pass_ctx
def dedupe(
    ctx: Context,
    api_key: str,
    base_url: str,
    allow_http: bool,
    kb_id: str | None,
    yes: bool,
    include_extra: bool,
    as_json: bool,
) -> None:
    """Delete provable copies from the knowledge base, in batches, and record each deletion.

    A copy is an entry registered with the S3 key a file of this database uploaded (a lost
    answer, an earlier run) while the file points to another entry: entries of different
    files are never copies, whatever their name and size. --include-extra also groups entries
    not uploaded from here by filename and size alone (keeping the oldest parsed one), never
    where a file of this database has that name and size. Without --yes it is a dry run.
    Exit codes: 0, 1 some could not be deleted, 2 bad input, 3 the service refused (bad key,
    unknown KB).
    """
    _check_service(api_key, base_url, allow_http, "dedupe")
    drawn = _read_bars(ctx)

    async def shown(_q: Queue, kb: str, result: reconcile.Dedupe) -> None:
        _print_dedupe(ctx, kb, result, yes)

    _each_kb(
        ctx,
        api_key,
        base_url,
        kb_id,
        lambda q, api, kb: reconcile.dedupe(
            q, api, kb, apply=yes, include_extra=include_extra, progress=drawn
        ),
        None if as_json else shown,
        lambda kb, result: _dedupe_json(kb, result, yes),
        lambda result: not result.errors,
    )


def _dedupe_json(kb: str, result: reconcile.Dedupe, yes: bool) -> dict[str, Any]:
    """`dedupe --json`, per knowledge base: what was (or, dry, would be) deleted, group by
    group, and what could not be."""
    doomed = {e.id for e in result.doomed}
    groups = [g for g in result.groups if any(e.id in doomed for e in g.surplus)]
    return {
        "kb_id": kb,
        "applied": yes,
        "surplus": len(doomed),
        "deleted": result.deleted,
        "spared_extra": result.spared_extra,
        "errors": result.errors,
        "groups": [
            {
                "filename": g.filename,
                "size": g.size,
                "extra": g.extra,
                "keep": g.keep,
                "delete": [e.id for e in g.surplus],
            }
            for g in groups
        ],
    }


@dataclasses.dataclass(frozen=True)
class _Repair:
    """retry-failed --remote's options for parsing again in place."""

    parser: str | None
    stuck_after: float
    timeout: float


def _retry_remote(
    ctx: Context,
    kb_id: str | None,
    kind: tuple[str, ...],
    matches: Callable[[str], bool] | None,
    options: _Repair,
    api_key: str | None,
    base_url: str,
    allow_http: bool,
) -> None:
    """retry-failed --remote: the entries last seen failed, stuck or missing."""
    if kind:
        raise UserError(_("--kind selects local failures; it does not go with --remote"))
    _check_service(api_key, base_url, allow_http, "retry-failed --remote")
    assert api_key is not None

    async def body(q: Queue, api: client.MaiAgentClient) -> parsing.Repair:
        return await parsing.repair(
            q,
            api,
            await _kbs(q, kb_id),
            matches,
            parser=options.parser,
            stuck_after=options.stuck_after,
            timeout=options.timeout,
        )

    done = on_queue_and_service(ctx, api_key, base_url, body)
    for note in done.notes.said:
        click.echo(_("warning: {note}").format(note=note), err=True)
    if done.reparsed:
        ctx.echo(
            _(
                "{n} entries parsed again in place (batch-reparse, no upload): {ok} parsed now, "
                "{failed} failed again, {waiting} still parsing"
            ).format(
                n=f"{done.reparsed:,}",
                ok=f"{done.recovered:,}",
                failed=f"{done.failed_again:,}",
                waiting=f"{done.still_parsing:,}",
            )
        )
    r = done.retry
    ctx.echo(
        _(
            "{n} files back to pending ({deleted} failed entries deleted); run `uploader run` "
            "to upload them again"
        ).format(n=f"{r.requeued:,}", deleted=f"{r.deleted:,}")
    )
    if not (r.requeued or r.busy or r.recovered or r.errors or done.reparsed):
        ctx.echo(_("(`uploader verify` finds the entries that failed or are missing)"))
    if r.busy:
        ctx.echo(
            _("{n} entries are being processed again: left as they are").format(n=f"{r.busy:,}")
        )
    if r.recovered:
        ctx.echo(
            _("{n} entries are no longer failed or missing: left as they are").format(
                n=f"{r.recovered:,}"
            )
        )
    for error in r.errors[:LIST_SHOWN]:
        click.echo(printable(_("error: {message}").format(message=error)), err=True)
    if r.errors:
        click.echo(
            _("{n} entries could not be deleted; try again later").format(n=f"{len(r.errors):,}"),
            err=True,
        )
        sys.exit(ExitCode.FAILED)


# --- kbs, check ------------------------------------------------------------------------------


@cli.command()
@service_options()
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
def kbs(api_key: str, base_url: str, allow_http: bool, as_json: bool) -> None:
    """List the knowledge bases the API key can see: the ids to pass as --kb.

    Exit codes: 0, 1 the service kept failing, 2 bad input, 3 the key was refused.
    """
    _check_service(api_key, base_url, allow_http, "kbs")

    try:
        found = ask_service(base_url, api_key, lambda api: api.list_knowledge_bases())
    except client.ApiError as exc:
        raise ServiceError(exc) from None
    if as_json:
        shown = [{"id": k.id, "name": k.name, "files_count": k.files_count} for k in found]
        click.echo(json.dumps(shown, indent=2, ensure_ascii=False))
        return
    if not found:
        click.echo(_("no knowledge base is visible to this API key"))
        return
    rows = [(printable(k.id), printable(k.name), k.files_count) for k in found]
    heads = (_("ID"), _("NAME"), _("FILES"))
    width = max(_columns(heads[0]), *(_columns(kb) for kb, _name, _n in rows))
    name_width = max(_columns(heads[1]), *(_columns(name) for _kb, name, _n in rows))
    click.echo(f"{_pad(heads[0], width)}  {_pad(heads[1], name_width)}  {_pad(heads[2], 9, True)}")
    for kb, name, count in rows:
        files = "?" if count is None else f"{count:,}"
        click.echo(f"{_pad(kb, width)}  {_pad(name, name_width)}  {files:>9}")


def _columns(text: str) -> int:
    """The columns a terminal gives `text`: a Chinese character takes two (a knowledge base
    named 合約 is as wide as `abcd`)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int, right: bool = False) -> str:
    fill = " " * max(width - _columns(text), 0)
    return fill + text if right else text + fill


def _step_line(step: checkup.StepResult) -> str:
    verdict = _("ok") if step.ok else _("FAILED")
    return f"  {str(step.step):<15} {_pad(verdict, 6)} {step.seconds:6.2f}s  {step.saw}"


@cli.command()
@service_options()
@kb_option(required=True)
@click.option("--dry-run", is_flag=True, help="Only the read calls: nothing is uploaded.")
@click.option(
    "--timeout",
    type=Finite(0.1),
    default=30.0,
    show_default=True,
    help="Seconds per request.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON only.")
@pass_ctx
def check(
    ctx: Context,
    api_key: str,
    base_url: str,
    allow_http: bool,
    kb_id: str,
    dry_run: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Prove the set-up before a first real upload, and see what the service speaks.

    Checks the key and the knowledge base, then sends tiny probe files
    (uploader-check-probe-*.txt) through presign, S3 upload, register (one, then two in one
    call), the listing and delete: each step with its time and what it saw. The probes are
    always deleted, also on Ctrl+C. Nothing goes into the jobs table; what was learned is kept
    in the database for `run --register-batch auto`. Exit codes: 0 the upload path works, 1 it
    does not, 2 bad input, 3 the service refused the key or the knowledge base, 130
    interrupted.
    """
    _check_service(api_key, base_url, allow_http, "check")
    if not as_json:
        checking = (
            _("checking knowledge base {kb} at {url} (dry run, reads only)")
            if dry_run
            else _("checking knowledge base {kb} at {url} (probe upload)")
        )
        click.echo(checking.format(kb=kb_id, url=base_url))

    def on_step(step: checkup.StepResult) -> None:
        if not as_json:
            click.echo(printable(_step_line(step)))

    result = run_async(
        checkup.run_check(
            base_url,
            api_key,
            kb_id,
            dry_run=dry_run,
            timeout=timeout,
            on_step=on_step,
            notify=lambda text: click.echo(printable(text), err=True),
        )
    )
    stored = False
    if not dry_run and "register_answer" in result.facts:
        stored = on_queue(ctx, lambda q: checkup.remember(q, result))
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
    code = result.exit_code
    if code is ExitCode.UNREACHABLE:
        assert result.error is not None
        unreachable = outage.ServiceUnreachable.at_start(result.error)
        click.echo(printable(_("Error: {message}").format(message=unreachable)), err=True)
    elif result.error is not None:
        click.echo(printable(_("Error: {message}").format(message=result.error)), err=True)
    if result.left_behind:
        click.echo(
            printable(
                _("Error: probe entries left behind in {kb}: {entries}").format(
                    kb=kb_id, entries="; ".join(result.left_behind)
                )
            ),
            err=True,
        )
    if not as_json and code == 0:
        done = (
            _("OK: the key and the knowledge base answer")
            if dry_run
            else _("OK: the upload path works")
        )
        if stored:
            done += _("; what it learned is kept in {db} for `uploader run`").format(
                db=ctx.shown_db
            )
        click.echo(done)
    if code:
        sys.exit(code)


from . import cli_sync  # noqa: E402,F401  (the sync and jobs commands, made of the above)

_accept_global_options_after(cli)


def main() -> None:
    cli(prog_name="uploader")
