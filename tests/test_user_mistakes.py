"""Clear words for common mistakes (issue 12, point 7) and exit codes that mean one thing
whichever command gives them (point 10): a missing key names MAIAGENT_API_KEY and where to
get one, global options work after the command, an empty or mistyped queue says so, an
unreachable host is exit 4, Ctrl+C is 130 everywhere, a closed pipe is quiet."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers import (
    API_KEY,
    FAST,
    KB,
    ROOT,
    child_env,
    command,
    enqueue,
    invoke,
    make_flat_files,
    one_line_error,
    queued,
    rows,
    run_args,
    service,
    spawn,
    upload,
)
from uploader.cli import cli
from uploader.exitcodes import ExitCode
from uploader.localserver import MaiAgentServer

UNREACHABLE = ("--base-url", "http://127.0.0.1:1/api/v1/")


@pytest.mark.parametrize("args", [["run"], ["verify"], ["kbs"], ["check", "--kb", KB]])
def test_no_key_names_the_variable_and_where_to_get_one(tmp_path: Path, args: list[str]) -> None:
    db = queued(tmp_path)

    line = one_line_error(invoke(db, *args, env={"MAIAGENT_API_KEY": None}))

    assert "set MAIAGENT_API_KEY (or pass --api-key)" in line
    assert "API Key page of your MaiAgent account" in line
    assert "Missing option" not in line


def test_a_key_with_surrounding_whitespace_is_used_stripped(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = queued(tmp_path)

    result = invoke(db, *run_args(maiagent), env={"MAIAGENT_API_KEY": f"  {API_KEY}\n"})

    assert result.exit_code == 0, result.output
    assert {job["state"] for job in rows(db)} == {"done"}


def test_db_v_and_q_are_taken_after_the_command_too(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = queued(tmp_path)
    elsewhere = tmp_path / "not-this.db"
    runner = CliRunner()
    env = {"MAIAGENT_API_KEY": API_KEY}

    late = runner.invoke(cli, ["--db", str(elsewhere), "status", "--db", str(db)], env=env)
    ran = runner.invoke(cli, ["run", *service(maiagent), *FAST, "--db", str(db), "-q"], env=env)
    verbose = runner.invoke(cli, ["kbs", *service(maiagent), "-v"], env=env)

    assert late.exit_code == 0, late.output
    assert "knowledge base kb-test: 3 files" in late.output
    assert ran.exit_code == 0, ran.output
    assert {job["state"] for job in rows(db)} == {"done"}
    assert "Progress:" not in ran.output
    assert re.search(r"DEBUG uploader\.http: GET knowledge-bases/", verbose.stderr)
    assert not elsewhere.exists()


def test_a_mistyped_kb_names_the_ones_the_queue_holds(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = queued(tmp_path, kb="kb-demo")

    line = one_line_error(invoke(db, *run_args(maiagent), "--kb", "kb-dmeo"))

    assert line == "Error: nothing pending for kb-dmeo (the queue holds: kb-demo)"
    assert {job["state"] for job in rows(db)} == {"pending"}
    assert maiagent.stats()["total"] == 0


def test_nothing_pending_says_so_and_exits_9_only_when_asked(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, _names = upload(tmp_path, maiagent, 4)
    empty = tmp_path / "empty"
    empty.mkdir()
    bare = tmp_path / "bare.db"
    enqueue(bare, empty)

    again = invoke(db, *run_args(maiagent))
    strict = invoke(db, *run_args(maiagent), "--error-on-nothing-to-do")
    nothing = invoke(bare, *run_args(maiagent), "--error-on-nothing-to-do")

    assert again.exit_code == ExitCode.OK, again.output
    assert again.stdout.strip() == f"nothing pending ({KB}: done 4)"
    assert strict.exit_code == ExitCode.NOTHING_TO_DO == 9, strict.output
    assert strict.stdout == again.stdout
    assert nothing.exit_code == 9, nothing.output
    assert nothing.stdout.startswith("nothing pending: the queue is empty")
    assert len(rows(db, "SELECT id FROM runs")) == 1


@pytest.mark.parametrize(
    "args",
    [["run", "--retry-delay", "0"], ["kbs"], ["verify"], ["dedupe"], ["check", "--kb", KB]],
)
def test_an_unreachable_host_is_exit_4_for_every_command(tmp_path: Path, args: list[str]) -> None:
    db = queued(tmp_path)

    result = invoke(db, *args, *UNREACHABLE)

    assert result.exit_code == ExitCode.UNREACHABLE == 4, result.output
    assert result.stderr.strip() == "Error: cannot reach 127.0.0.1:1 (connection refused)"


@pytest.mark.posix_only("sends a POSIX signal to a child process")
def test_ctrl_c_during_verify_wait_exits_130(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(parse_delay=600)
    db, _names = upload(tmp_path, server, 3)
    proc = spawn(db, "verify", "--wait", *service(server), text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the first "parsed 0/3" line: it is waiting now
    assert "parsed 0/3" in first, first

    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)

    assert proc.returncode == ExitCode.INTERRUPTED == 130, err
    assert err.strip().splitlines()[-1] == "Error: interrupted"
    assert "Traceback" not in err


def _into_head(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`uploader ARGS | head -c 10`, printing the uploader's own exit status last."""
    return subprocess.run(
        f"{shlex.join(command(db, *args))} | head -c 10;"
        ' status="${PIPESTATUS[0]}"; echo; echo "$status"',
        shell=True,
        executable="/bin/bash",
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_export_report_to_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    make_flat_files(tmp_path / "data", 2000)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data", "--max-size", "1")  # skipped files: listed in the report

    pipeline = _into_head(db, "export-report", "-o", "-")

    assert pipeline.stderr == ""
    assert pipeline.stdout.splitlines()[-1] == str(ExitCode.CLOSED_PIPE.value)


def test_plain_http_elsewhere_is_allowed_by_allow_http_and_insecure_is_gone(
    tmp_path: Path,
) -> None:
    db = queued(tmp_path)
    elsewhere = ("--base-url", "http://192.0.2.10/api/v1/")

    refused = one_line_error(invoke(db, "kbs", *elsewhere))
    old = invoke(db, "kbs", *elsewhere, "--insecure")

    assert "use https, or --allow-http if you really mean it" in refused
    assert old.exit_code == 2 and "No such option '--insecure'" in old.output


def test_max_size_0_is_refused_with_its_meaning(tmp_path: Path) -> None:
    make_flat_files(tmp_path / "data", 2)

    line = one_line_error(
        invoke(tmp_path / "q.db", "enqueue", str(tmp_path / "data"), "--kb", KB, "--max-size", "0")
    )

    assert "0 means zero bytes" in line and "'off'" in line


def test_the_readme_has_one_table_of_every_exit_code() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]

    for code in ExitCode:
        assert re.search(rf"^\| {code.value} \| ", table, re.MULTILINE), code


BAD_PORTS = [
    "http://127.0.0.1:99999/api/v1/",
    "http://127.0.0.1:abc/api/v1/",
    "https://api.maiagent.ai:70000/api/v1/",
]


@pytest.mark.parametrize("url", BAD_PORTS)
@pytest.mark.parametrize(
    "args",
    [
        ["run"],
        ["kbs"],
        ["check", "--kb", KB],
        ["verify"],
        ["dedupe"],
        ["retry-failed", "--remote"],
        ["enqueue", "data", "--kb", KB],
    ],
)
def test_a_bad_port_in_the_base_url_is_one_line_and_touches_no_row(
    tmp_path: Path, url: str, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = queued(tmp_path)
    before = rows(db)
    monkeypatch.chdir(tmp_path)

    flag = invoke(db, *args, "--base-url", url, env={"UPLOADER_NO_KB_CHECK": None})
    from_env = invoke(db, *args, env={"UPLOADER_NO_KB_CHECK": None, "MAIAGENT_BASE_URL": url})

    assert "port" in one_line_error(flag)
    assert one_line_error(from_env) == one_line_error(flag)
    assert rows(db) == before


def _caught(pid: int) -> set[int]:
    """The signals the process has a handler for (its SigCgt mask)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


@pytest.mark.posix_only("sends a POSIX signal to a child process")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_right_after_start_is_exit_130_in_one_line(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer], sig: signal.Signals
) -> None:
    """Sent as soon as the program has taken the signals (its first act), then a little later
    each time: during the imports, the start-up, the queue's opening. Whenever it lands: exit
    130, one line, no row left running. (Before its first act the interpreter itself is still
    starting, and a signal ends it as it ends any program: not this test's concern; on a loaded
    machine that start can take longer than a second.)"""
    server = maiagent_factory(latency=0.2)
    db = queued(tmp_path, 50)
    for later in (0.0, 0.05, 0.1, 0.2, 0.4):
        proc = spawn(db, *run_args(server), text=True)
        deadline = time.monotonic() + 20
        while signal.SIGTERM not in _caught(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.002)
        assert signal.SIGTERM in _caught(proc.pid), "the program never took the signals"
        time.sleep(later)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)

        said = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == ExitCode.INTERRUPTED, (later, proc.returncode, out, err)
        assert "Traceback" not in err, (later, err)
        assert len(said) == 1, (later, err)
        states = {row["state"] for row in rows(db)}
        assert states <= {"pending", "done"}, (later, states)


@pytest.fixture(scope="module")
def all_failed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A queue whose 2,000 files all failed (missing), made once for the module: the commands
    given it only read it, each from a copy of its own."""
    root = tmp_path_factory.mktemp("all-failed")
    names = make_flat_files(root / "data", 2000)
    db = root / "queue.db"
    enqueue(db, root / "data")
    for name in names:
        (root / "data" / name).unlink()
    with MaiAgentServer(dialect="docs").run_in_thread() as server:
        assert invoke(db, *run_args(server)).exit_code == 1  # 2,000 failed: missing
    return db


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--failed"],
        ["status", "--failed", "--json"],
        ["export-report", "-o", "-"],
    ],
)
def test_every_command_to_a_closed_pipe_ends_quietly_with_141(
    tmp_path: Path, all_failed: Path, args: list[str]
) -> None:
    db = tmp_path / "queue.db"
    shutil.copyfile(all_failed, db)

    pipeline = _into_head(db, *args)

    assert pipeline.stderr == ""
    assert pipeline.stdout.splitlines()[-1] == str(ExitCode.CLOSED_PIPE.value)


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--retry-delay", "nan"],
        ["run", "--retry-delay", "inf"],
        ["run", "--grace", "inf"],
        ["run", "--outage-timeout", "nan"],
        ["run", "--lease", "inf"],
        ["run", "--timeout", "inf"],
        ["run", "--rate-limit", "nan"],
        ["verify", "--timeout", "nan"],
        ["check", "--kb", KB, "--timeout", "inf"],
    ],
)
def test_a_number_that_is_not_finite_is_refused(tmp_path: Path, args: list[str]) -> None:
    db = queued(tmp_path)
    before = rows(db)

    result = invoke(db, *args)

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Traceback" not in result.output
    assert f"{args[-1]!r} is not a finite number" in result.stderr
    assert rows(db) == before
    assert rows(db, "SELECT id FROM runs") == []
