"""The API key stays in memory: it never reaches the database, the logs, the report, an error
message or --verbose output; presigned policies are not logged; the files are owner-only; and
the key is only ever sent over https or to this machine."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner

from tests.helpers import KB, child_env, command, enqueue, invoke, make_files, one_line_error, rows
from uploader.cli import cli
from uploader.localserver import Faults, MaiAgentServer

SECRET = "sk-SECRET-1234567890"
WRONG = "sk-WRONG-0987654321"
# a presigned POST policy is base64 of '{"expiration":...'; its signature is 64 hex digits
POLICY = re.compile(rb"eyJleHBpcmF0aW9u")
SIGNATURE = re.compile(rb"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


def uploader(db: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A real process, so stdout, stderr and the log file are exactly what a user gets."""
    proc = subprocess.run(
        command(db, *args),
        env=child_env({"MAIAGENT_API_KEY": None, **(env or {})}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=120,
    )
    return proc.returncode, proc.stdout


def files_under(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file())


Snapshot = tuple[bytes, dict[str, tuple[bytes, int]]]


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snapshot]:
    """A verbose run with retries, doubtful registers and final failures, a bad-key run on the
    failed files, the report: what was printed, and each file of the database folder (db, the
    -wal an open reader keeps, logs, reports) as (bytes, mode)."""
    faults = Faults(error_rate=0.15, lost_register_rate=0.1, drop_rate=0.03, seed=11)
    with MaiAgentServer(api_key=SECRET, faults=faults).run_in_thread() as server:
        yield _noisy_run(tmp_path_factory.mktemp("noisy"), server)


def _noisy_run(tmp_path: Path, server: MaiAgentServer) -> Snapshot:
    make_files(tmp_path / "data", 200)
    work = tmp_path / "work"
    work.mkdir()
    db = work / "queue.db"
    enqueue(db, tmp_path / "data")
    reader = sqlite3.connect(db)  # keeps the -wal file from being removed at the end
    reader.execute("SELECT COUNT(*) FROM jobs").fetchone()
    try:
        code, printed = uploader(
            db,
            "-v",
            "run",
            "--api-key",
            SECRET,
            "--base-url",
            server.base_url,
            "--retry-delay",
            "0.01",
            "--max-retries",
            "1",
        )
        assert code == 1, printed.decode()  # some files failed for good
        failed = reader.execute("SELECT COUNT(*) FROM jobs WHERE state = 'failed'").fetchone()
        assert failed[0] > 0
        assert uploader(db, "retry-failed")[0] == 0
        bad_code, bad = uploader(
            db, "-v", "run", "--base-url", server.base_url, env={"MAIAGENT_API_KEY": WRONG}
        )
        assert bad_code == 3, bad.decode()
        report_code, report = uploader(db, "export-report")
        assert report_code == 0, report.decode()
        files = {
            str(p.relative_to(work)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in files_under(work)
        }
    finally:
        reader.close()
    return printed + bad + report, files


def test_the_key_is_nowhere(noisy_run: Snapshot) -> None:
    printed, files = noisy_run
    assert {"queue.db", "queue.db-wal"} <= set(files)
    assert any(name.startswith("logs/") for name in files)
    assert any(name.startswith("reports/") for name in files)
    places = {"output": printed, **{name: data for name, (data, _mode) in files.items()}}
    for key in (SECRET, WRONG):
        found = [name for name, data in places.items() if key.encode() in data]
        assert found == [], f"{key} found in {found}"


def test_presigned_policies_are_not_logged(noisy_run: Snapshot) -> None:
    printed, files = noisy_run
    logs = {name: data for name, (data, _mode) in files.items() if name.startswith("logs/")}
    assert logs
    for name, data in {"output": printed, **logs}.items():
        assert not POLICY.search(data), f"a presigned policy in {name}"
        assert not SIGNATURE.search(data), f"a signature in {name}"
        assert b"AKIAMAIAGENTTEST" not in data, f"a presigned credential in {name}"


def test_database_logs_and_reports_are_owner_only(noisy_run: Snapshot) -> None:
    _printed, files = noisy_run
    assert {name: oct(mode) for name, (_data, mode) in files.items() if mode != 0o600} == {}


# --- --base-url --------------------------------------------------------------------------------


@pytest.fixture
def empty_queue(tmp_path: Path) -> Path:
    """A database with nothing to upload: `run` then makes no request, so a base URL that
    points nowhere is never contacted."""
    (tmp_path / "empty").mkdir()
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "empty")
    return db


@pytest.mark.parametrize(
    "url", ["http://192.0.2.10/api/v1/", "http://maiagent.example.com/api/v1/", "http://10.0.0.1/"]
)
def test_plain_http_to_another_host_is_refused(empty_queue: Path, url: str) -> None:
    result = invoke(empty_queue, "run", "--api-key", SECRET, "--base-url", url)

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "https" in result.output and "--allow-http" in result.output
    assert SECRET not in result.output
    assert _runs(empty_queue) == 0


def test_allow_http_allows_plain_http_with_a_warning(empty_queue: Path) -> None:
    result = invoke(
        empty_queue, "run", "--api-key", SECRET, "--base-url", "http://192.0.2.10/", "--allow-http"
    )

    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "plain http" in line]
    assert len(warnings) == 1, result.stderr
    assert SECRET not in result.output


@pytest.mark.parametrize("url", ["https://192.0.2.10/api/v1/", "http://localhost:1/api/v1/"])
def test_https_and_loopback_need_no_flag(empty_queue: Path, url: str) -> None:
    result = invoke(empty_queue, "run", "--base-url", url, env={"MAIAGENT_API_KEY": SECRET})

    assert result.exit_code == 0, result.output
    assert "warning" not in result.output


def test_loopback_by_name_reaches_the_local_server(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(api_key=SECRET)
    make_files(tmp_path / "data", 3)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    url = server.base_url.replace("127.0.0.1", "localhost")

    result = invoke(db, "run", "--api-key", SECRET, "--base-url", url)

    assert result.exit_code == 0, result.output
    assert len(server.entries(KB)) == 3


def _runs(db: Path) -> int:
    return len(rows(db, "SELECT id FROM runs"))


# --- a service that echoes part of the key ------------------------------------------------------


@contextlib.contextmanager
def echoing_gateway(cut: int) -> Iterator[str]:
    """A stand-in for a gateway in front of the service (aiohttp on a free port of 127.0.0.1)
    whose 401 quotes the first `cut` characters of the Authorization header it got, as header
    parsers and proxies do: its base URL."""
    ready = threading.Event()
    where: list[str] = []
    stop: list[Callable[[], None]] = []

    async def refuse(request: web.Request) -> web.Response:
        quoted = request.headers.get("Authorization", "")[:cut]
        return web.json_response(
            {"detail": f"Invalid credentials: {quoted}... (truncated)"}, status=401
        )

    async def serve() -> None:
        # headers up to 64 KB: the 8 KB key reaches the handler, which quotes its start
        app = web.Application(handler_args={"max_field_size": 65536})
        app.router.add_route("*", "/{tail:.*}", refuse)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        where.append(f"http://127.0.0.1:{port}/api/v1/")
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop.append(lambda: loop.call_soon_threadsafe(stopping.set))
        ready.set()
        await stopping.wait()
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield where[0]
    finally:
        stop[0]()
        thread.join(10)


LONG_KEY = "SECRET-" + "s3cr3t" * 1400  # 8 KB: a header parser quotes only its start


@pytest.mark.parametrize(
    ("key", "cut"),
    [("mk-live-0123456789abcdef", 20), (LONG_KEY, 90)],
    ids=["first-20-of-the-header", "start-of-an-8kb-key"],
)
def test_a_truncated_key_echoed_by_the_service_is_nowhere(
    tmp_path: Path, key: str, cut: int
) -> None:
    echoed = f"Api-Key {key}"[:cut].removeprefix("Api-Key ")
    assert len(echoed) >= 8 and echoed != key  # a prefix of the key, not the key
    make_files(tmp_path / "data", 3)
    work = tmp_path / "work"
    work.mkdir()
    db = work / "queue.db"
    with echoing_gateway(cut) as base_url:
        env = {"MAIAGENT_API_KEY": key, "MAIAGENT_BASE_URL": base_url}
        printed = b""
        for args, code in [
            (("enqueue", str(tmp_path / "data"), "--kb", KB), 0),  # its check only warns
            (("run",), 3),
            (("kbs",), 3),
            (("check", "--kb", KB), 3),
            (("verify",), 3),
        ]:
            got, out = uploader(db, *args, env={**env, "UPLOADER_NO_KB_CHECK": None})
            assert got == code, out.decode()
            printed += out
    assert b"API key rejected (HTTP 401)" in printed
    fatal = rows(db, "SELECT * FROM runs")
    assert fatal and "API key rejected" in str(fatal)
    places = {"output": printed, **{str(p): p.read_bytes() for p in files_under(work)}}
    assert any("logs" in name for name in places)
    found = [name for name, data in places.items() if echoed.encode() in data]
    assert found == [], f"the key's first {len(echoed)} characters in {found}"
    with sqlite3.connect(db) as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        cells = [
            str(value)
            for table in tables
            for row in conn.execute(f"SELECT * FROM {table}")
            for value in row
        ]
    assert [cell for cell in cells if echoed in cell] == []


# --- a PostgreSQL URL that cannot be parsed -----------------------------------------------------

PG_PASSWORD = "pgs3cretpw"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{PG_PASSWORD}@127.0.0.1:99999/db",
        f"postgresql://u:{PG_PASSWORD}@127.0.0.1:abc/db",
        f"postgresql://u:{PG_PASSWORD}@[::1/db",
        f"postgres://u:{PG_PASSWORD}@[::1]:70000/db",
    ],
)
@pytest.mark.parametrize("args", [["status"], ["run"], ["enqueue", ".", "--kb", KB]])
def test_a_postgresql_url_with_a_bad_host_or_port_is_one_line_without_its_password(
    tmp_path: Path, url: str, args: list[str]
) -> None:
    result = invoke(tmp_path / "unused.db", *args, "--db", url)

    line = one_line_error(result)
    assert "--db" in line, line
    assert PG_PASSWORD not in result.output
    from_env = CliRunner().invoke(
        cli, args, env={"UPLOADER_DB": url, "MAIAGENT_API_KEY": SECRET, "UPLOADER_NO_KB_CHECK": "1"}
    )
    assert one_line_error(from_env) == line
    assert PG_PASSWORD not in from_env.output
