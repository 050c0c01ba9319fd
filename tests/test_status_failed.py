"""Which files failed, and why (issue 12, point 6): `status --failed` lists them (path, kind,
last error, attempts; --json too), a run's summary names the first few with the command for
the rest, and `retry-failed --kind` takes only the real kinds, which its --help lists."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import KB, enqueue, invoke, make_flat_files, rows, run_args
from uploader.localserver import MaiAgentServer
from uploader.model import FAILURE_KINDS, ErrorKind


def _with_vanished(tmp_path: Path, count: int, gone: int) -> Path:
    """`count` files queued, the first `gone` of them deleted before the run."""
    names = make_flat_files(tmp_path / "data", count)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    for name in names[:gone]:
        (tmp_path / "data" / name).unlink()
    return db


def test_status_failed_lists_path_kind_last_error_and_attempts(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = _with_vanished(tmp_path, 5, 2)
    assert invoke(db, *run_args(maiagent)).exit_code == 1

    text = invoke(db, "status", "--failed")
    as_json = invoke(db, "status", "--failed", "--json")

    assert text.exit_code == 0, text.output
    data = tmp_path / "data"
    assert sorted(text.stdout.splitlines()) == [
        f"{data / 'f0000.txt'}  [missing, 1 attempt] file no longer exists",
        f"{data / 'f0001.txt'}  [missing, 1 attempt] file no longer exists",
    ]
    assert sorted(json.loads(as_json.stdout), key=lambda item: item["path"]) == [
        {
            "path": str(data / name),
            "kb_id": KB,
            "kind": "missing",
            "last_error": "file no longer exists",
            "attempts": 1,
        }
        for name in ("f0000.txt", "f0001.txt")
    ]
    other = invoke(db, "status", "--failed", "--kb", "kb-other", "--json")
    assert json.loads(other.stdout) == []


def test_status_failed_with_nothing_failed_says_so(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = _with_vanished(tmp_path, 2, 0)
    assert invoke(db, *run_args(maiagent)).exit_code == 0

    assert invoke(db, "status", "--failed").stdout == "no file failed\n"


def test_a_run_summary_names_the_first_failed_and_the_command_for_the_rest(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = _with_vanished(tmp_path, 10, 7)

    result = invoke(db, *run_args(maiagent))

    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    start = lines.index("7 files failed:")
    shown = lines[start + 1 : start + 6]
    paths = {line.split("  [")[0].strip() for line in shown}
    assert len(paths) == 5
    assert paths <= {str(tmp_path / "data" / f"f{i:04d}.txt") for i in range(7)}
    assert all("[missing, 1 attempt] file no longer exists" in line for line in shown)
    assert lines[start + 6] == f"all of them: uploader --db {db} status --failed"


def test_retry_failed_kind_takes_only_real_kinds_and_lists_them(tmp_path: Path) -> None:
    db = _with_vanished(tmp_path, 1, 0)

    helped = invoke(db, "retry-failed", "--help")
    wrong = invoke(db, "retry-failed", "--kind", "netwrok")

    assert (
        tuple(k.value for k in ErrorKind if k not in (ErrorKind.SKIPPED, ErrorKind.LOST))
        == FAILURE_KINDS
    )
    flat = " ".join(helped.stdout.split())
    assert all(kind in flat for kind in FAILURE_KINDS), helped.stdout
    assert wrong.exit_code == 2 and "'netwrok' is not one of" in wrong.output
    assert {job["state"] for job in rows(db)} == {"pending"}
