"""The run's log, for an operator (issue 12, point 5): one file per run named with its id, every
line with an ISO time and a level, WARNING for retries and ERROR for failures and fatal stops,
readable options and never the key, --log-file, --log-level, -v lines in the file too, the
fatal reason kept for `status`, and a log that cannot be written costing the run nothing."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import (
    API_KEY,
    enqueue,
    invoke,
    make_flat_files,
    rows,
    run_args,
    run_cli,
    service,
)
from uploader.localserver import MaiAgentServer

LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (DEBUG|INFO|NOTICE|WARNING|ERROR) \S+: "
)


def _queued(tmp_path: Path, count: int, folder: str = "data") -> Path:
    make_flat_files(tmp_path / folder, count)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / folder)
    return db


def _logs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "logs").glob("*.log"))


def _levels(text: str) -> set[str]:
    return {LINE.match(line).group(1) for line in text.splitlines()}  # type: ignore[union-attr]


def test_each_run_has_its_own_log_named_with_its_id(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = _queued(tmp_path, 3)
    first = invoke(db, *run_args(maiagent))
    make_flat_files(tmp_path / "more", 2)
    enqueue(db, tmp_path / "more")
    second = invoke(db, *run_args(maiagent))

    assert first.exit_code == second.exit_code == 0, first.output + second.output
    logs = _logs(tmp_path)
    assert [re.search(r"_run(\d+)\.log$", p.name).group(1) for p in logs] == ["1", "2"]  # type: ignore[union-attr]
    for log in logs:
        text = log.read_text()
        assert all(LINE.match(line) for line in text.splitlines()), text
        assert API_KEY not in text
        assert re.search(r"INFO uploader\.run: run \d started \(log .*\): .*\bworkers=10\b", text)
        assert "{'" not in text
        assert oct(log.stat().st_mode & 0o777) == "0o600"


def test_retries_are_warnings_and_failures_errors_in_the_file_only(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(error_rate=0.25, seed=3)
    db = _queued(tmp_path, 20)
    (tmp_path / "data" / "f0003.txt").unlink()  # vanished: fails at once

    result = invoke(db, *run_args(server), "--workers", "2")

    assert result.exit_code == 1, result.output
    (log,) = _logs(tmp_path)
    text = log.read_text()
    assert re.search(r" WARNING uploader\.attempt: retry 1/10 of f\d+\.txt", text), text
    assert re.search(r" ERROR uploader\.attempt: failed f0003\.txt after 1 attempt", text), text
    assert "uploader.attempt" not in result.stderr


def test_a_fatal_stop_is_in_the_log_and_in_status(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    db = _queued(tmp_path, 3)

    result = invoke(db, "run", *service(maiagent), env={"MAIAGENT_API_KEY": "sk-wrong-123"})
    status = invoke(db, "status")

    assert result.exit_code == 3, result.output
    assert result.stderr.strip().splitlines() == [
        "Error: API key rejected (HTTP 401): Invalid API key"
    ]
    (log,) = _logs(tmp_path)
    text = log.read_text()
    assert re.search(r" ERROR uploader\.run: run 1 stopped: API key rejected \(HTTP 401\)", text)
    assert "sk-wrong-123" not in text
    (run,) = rows(db, "SELECT fatal FROM runs")
    assert run["fatal"] == "API key rejected (HTTP 401): Invalid API key"
    assert "exit 3: " in status.stdout
    assert "stopped: API key rejected (HTTP 401): Invalid API key" in status.stdout


def test_log_file_and_log_level_choose_where_and_what(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = _queued(tmp_path, 4)
    (tmp_path / "data" / "f0001.txt").unlink()
    errors = tmp_path / "elsewhere" / "errors.log"
    verbose = tmp_path / "verbose.log"

    quiet = invoke(db, *run_args(maiagent), "--log-file", str(errors), "--log-level", "ERROR")
    execute_retry = invoke(db, "retry-failed")
    (tmp_path / "data" / "f0001.txt").write_text("back\n")
    chatty = invoke(db, "-v", *run_args(maiagent), "--log-file", str(verbose))

    assert quiet.exit_code == 1 and execute_retry.exit_code == 0 and chatty.exit_code == 0
    assert _logs(tmp_path) == []
    assert _levels(errors.read_text()) == {"ERROR"}
    assert "failed f0001.txt" in errors.read_text()
    text = verbose.read_text()
    assert re.search(r" DEBUG uploader\.http: POST upload-presigned-url/ 200 ", text), text
    assert re.search(r" DEBUG uploader\.http: POST knowledge-bases/kb-test/files/ 20\d ", text)
    assert API_KEY not in text


def test_notice_is_rclones_level_between_info_and_error(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = _queued(tmp_path, 2)
    target = tmp_path / "notice.log"

    result = invoke(db, *run_args(maiagent), "--log-file", str(target), "--log-level", "notice")
    bad = invoke(db, *run_args(maiagent), "--log-level", "LOUD")

    assert result.exit_code == 0, result.output
    assert "INFO" not in target.read_text()
    assert bad.exit_code == 2 and "'debug', 'info', 'notice', 'error'" in bad.output.lower()


def test_a_file_named_logs_is_one_warning_and_the_run_goes_on(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = _queued(tmp_path, 3)
    (tmp_path / "logs").write_text("not a folder\n")

    result = invoke(db, *run_args(maiagent)[1:])  # not -q: warnings are shown

    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"warning: cannot write the log {tmp_path / 'logs'}/")
    assert lines[0].endswith(": logging to stderr only")
    assert {job["state"] for job in rows(db)} == {"done"}


@pytest.mark.posix_only("needs file modes that bind (chmod)")
def test_a_read_only_logs_folder_is_one_warning_and_no_logging_traceback(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = _queued(tmp_path, 3)
    (tmp_path / "logs").mkdir(mode=0o500)
    os.chmod(tmp_path / "logs", 0o500)

    result = run_cli(db, *run_args(maiagent)[1:], privileged=False)

    assert result.returncode == 0, result.stderr
    assert "Logging error" not in result.stderr and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "Permission denied" in line and line.endswith("logging to stderr only")
    assert {job["state"] for job in rows(db)} == {"done"}
