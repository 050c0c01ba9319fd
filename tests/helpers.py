"""What more than one test module needs: the CLI driven in-process or as a child process (with
root's right to read any file dropped where file modes must bite), folders of files, and the
queue's SQLite file read back with nothing but the stdlib."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from uploader.cli import cli
from uploader.localserver import MaiAgentServer

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key"
KB = "kb-test"
FAST = ("--retry-delay", "0.01")
# A request timeout that a loaded machine never hits by accident, short enough that a doubtful
# register (which may take effect until the timeout has passed) settles in seconds.
TIMEOUT = ("--timeout", "8")
UPLOADER = (sys.executable, "-c", "from uploader.start import main; main()")
S3_BUCKET = "kb-bucket"
SUMMARY = re.compile(
    r"^scanned (?P<scanned>\d+): (?P<new>\d+) new, (?P<changed>\d+) changed, "
    r"(?P<unchanged>\d+) unchanged, (?P<skipped>\d+) skipped",
    re.MULTILINE,
)
_DAC_CAPS = "-dac_override,-dac_read_search"
# enqueue asks the service whether --kb exists when it has a key, at the default URL unless
# told otherwise: tests that want that check remove this (env {"UPLOADER_NO_KB_CHECK": None})
NO_KB_CHECK = {"UPLOADER_NO_KB_CHECK": "1"}

Env = Mapping[str, str | None]


# --- the CLI in-process ------------------------------------------------------------------------


def invoke(db: Path, *args: str, env: Env | None = None, catch_exceptions: bool = True) -> Result:
    """One CLI command in-process, the way a user types it, with the server's key in the
    environment (`env` adds to it; a None value removes a variable)."""
    return CliRunner().invoke(
        cli,
        ["--db", str(db), *args],
        env={"MAIAGENT_API_KEY": API_KEY, **NO_KB_CHECK, **(env or {})},
        catch_exceptions=catch_exceptions,
    )


def enqueue(db: Path, folder: Path, *args: str, kb: str = KB) -> dict[str, int]:
    """Run enqueue, insist it succeeded, and return the numbers of its summary line."""
    result = invoke(db, "enqueue", str(folder), "--kb", kb, *args)
    assert result.exit_code == 0, result.output
    return summary_of(result.stdout)


def summary_of(stdout: str) -> dict[str, int]:
    """The numbers of enqueue's one summary line."""
    found = SUMMARY.search(stdout)
    assert found, stdout
    return {name: int(value) for name, value in found.groupdict().items()}


def one_line_error(result: Result) -> str:
    """Bad input must end in exit 2 and a single `Error: ...` line, never a traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def service(server: MaiAgentServer) -> list[str]:
    return ["--base-url", server.base_url]


def run_args(server: MaiAgentServer, *extra: str) -> list[str]:
    """A quiet `run` against `server` that retries fast and names entries by relative path,
    one file per register call (what the fault knobs count: a test of batching says
    `--register-batch auto` or N in `extra`, which wins)."""
    return [
        "-q",
        "run",
        *service(server),
        *FAST,
        *TIMEOUT,
        "--max-retries",
        "10",
        "--name",
        "relpath",
        "--register-batch",
        "1",
        *extra,
    ]


def queued(tmp_path: Path, count: int = 3, kb: str = KB) -> Path:
    """`count` files of tmp_path/data enqueued into tmp_path/queue.db; the database."""
    make_flat_files(tmp_path / "data", count)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data", kb=kb)
    return db


def upload(tmp_path: Path, server: MaiAgentServer, count: int) -> tuple[Path, list[str]]:
    """Files enqueued and uploaded with the real `run`: the database and the file names."""
    names = make_flat_files(tmp_path / "data", count)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    ran = invoke(db, "-q", "run", "--api-key", API_KEY, *service(server), "--kb", KB, *FAST)
    assert ran.exit_code == 0, ran.output
    return db, names


# --- the CLI as a child process ----------------------------------------------------------------


def without_dac_override() -> tuple[str, ...]:
    """A launcher that runs the rest of a command without the capabilities that let root ignore
    file modes, so chmod 000 and read-only folders bite as they would for a user (no switch to
    `nobody`: the interpreter may live where that user cannot execute it). Empty when not root;
    the test is skipped where the capabilities cannot be dropped."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file modes cannot be enforced")
    launcher = (setpriv, f"--inh-caps={_DAC_CAPS}", f"--bounding-set={_DAC_CAPS}")
    probe = subprocess.run(
        [*launcher, sys.executable, "-c", ""], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.strip()}")
    return launcher


def child_env(env: Env | None = None) -> dict[str, str]:
    """This process's environment with the server's key, changed by `env` as `invoke` does."""
    merged = {**os.environ, "MAIAGENT_API_KEY": API_KEY, **NO_KB_CHECK, **(env or {})}
    return {name: value for name, value in merged.items() if value is not None}


def command(
    db: Path | str, *args: str, launcher: tuple[str, ...] = (), boot: str = ""
) -> list[str]:
    """`boot`: Python run in the child before the program (a fault put in, a clock set off)."""
    python, flag, entry = UPLOADER
    return [*launcher, python, flag, boot + entry, "--db", str(db), *args]


def run_cli(
    db: Path, *args: str, privileged: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process, for what must be bounded in time or run with fewer rights
    (`privileged=False`: see `without_dac_override`)."""
    launcher = () if privileged else without_dac_override()
    return subprocess.run(
        command(db, *args, launcher=launcher),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn(
    db: Path | str,
    *args: str,
    env: Env | None = None,
    launcher: tuple[str, ...] = (),
    boot: str = "",
    **popen: Any,
) -> subprocess.Popen[Any]:
    """`uploader ...` as a process of its own, for signals, crashes, memory and dropped rights;
    its output goes to pipes unless `stdout`/`stderr` say otherwise."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        command(db, *args, launcher=launcher, boot=boot), env=child_env(env), **popen
    )


# --- folders of files --------------------------------------------------------------------------


def make_tree(root: Path, files: dict[str, int]) -> Path:
    """Files of the given sizes under `root` (parents created)."""
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    return root


def make_files(root: Path, count: int, per_folder: int = 100) -> list[str]:
    """Tiny files with distinct contents, spread over subfolders; their relative paths."""
    relpaths = []
    for i in range(count):
        rel = f"d{i // per_folder:03d}/f{i:05d}.txt"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"file {i}\n".encode())
        relpaths.append(rel)
    return relpaths


def make_flat_files(root: Path, count: int) -> list[str]:
    """Files with distinct names and a few different sizes in one folder; their names."""
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"f{i:04d}.txt"
        (root / name).write_bytes(f"file {i}\n".encode() * (1 + i % 3))
        names.append(name)
    return names


# --- the SQLite file ---------------------------------------------------------------------------


def rows(db: Path, sql: str = "SELECT * FROM jobs ORDER BY id") -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql)]


def execute(db: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(sql, params)


def last_counts(db: Path) -> dict[str, Any]:
    """The counts of the latest `verify`."""
    (row,) = rows(db, "SELECT counts FROM verifications ORDER BY id DESC LIMIT 1")
    return json.loads(row["counts"])


# --- asyncio -----------------------------------------------------------------------------------


def async_test(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """Run a coroutine test on a fresh loop; pytest still sees the fixture arguments."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper
