"""Rows of another host id (issue 23): with a database copied from another machine, or after
the host name changed, `run` said `nothing pending (kb-x: pending 20)` and exited 0 with nothing
uploaded. It now says whose rows they are and how to take them, and exits 2; a host whose run is
going on now (one queue shared by several hosts) is left to it. `--host-id` is taken after the
command too, as --db, -v and -q are."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import FAST, invoke, make_flat_files, one_line_error, rows, service
from uploader.localserver import MaiAgentServer


def _queued_by(tmp_path: Path, host: str) -> Path:
    make_flat_files(tmp_path / "data", 5)
    db = tmp_path / "queue.db"
    queued = invoke(db, "--host-id", host, "enqueue", str(tmp_path / "data"), "--kb", "kb-test")
    assert queued.exit_code == 0, queued.output
    return db


def test_rows_of_another_host_are_named_with_the_way_to_take_them(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = _queued_by(tmp_path, "old-pc")

    result = invoke(db, "--host-id", "new-pc", "run", *service(maiagent))

    line = one_line_error(result)
    assert "5 pending files" in line and "old-pc" in line, line
    assert "--host-id old-pc" in line and "--shared" in line, line
    assert {r["state"] for r in rows(db)} == {"pending"}
    assert maiagent.stats()["total"] == 0


def test_host_id_after_the_command_takes_them(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    db = _queued_by(tmp_path, "old-pc")

    result = invoke(db, "-q", "run", *service(maiagent), *FAST, "--host-id", "old-pc")

    assert result.exit_code == 0, result.output
    assert {r["state"] for r in rows(db)} == {"done"}
