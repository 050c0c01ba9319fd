"""`run --register-batch auto` (the default): batching learned from the run's own first
register of two files, kept in the service facts, and given up on the first answer that
does not name every file, with no file lost or doubled either way."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import KB, enqueue, invoke, make_files, rows, run_args
from uploader.localserver import DIALECTS, MaiAgentServer

BOTH = pytest.mark.parametrize("dialect", DIALECTS, indirect=True)


def facts(db: Path) -> list[tuple[str, int | None]]:
    return [(r["source"], r["batch_register"]) for r in rows(db, "SELECT * FROM service_facts")]


def assert_once(server: MaiAgentServer, db: Path, relpaths: list[str]) -> None:
    by_key = Counter(r["key"] for r in server.records(KB))
    assert [k for k, n in by_key.items() if n > 1] == []
    assert sorted(r["filename"] for r in server.records(KB)) == sorted(relpaths)
    assert Counter(j["state"] for j in rows(db)) == {"done": len(relpaths)}


@BOTH
def test_auto_learns_batching_from_the_runs_first_answers(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(latency=0.02)
    relpaths = make_files(tmp_path / "data", 300)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")

    ran = invoke(db, *run_args(server, "--workers", "10", "--register-batch", "auto"))

    assert ran.exit_code == 0, ran.output
    assert_once(server, db, relpaths)
    # one call per file before; how full the batches get depends on the machine's speed
    # against the batch's wait (`make bench` measures requests per file)
    assert server.stats()["register"] <= len(relpaths) / 4
    assert facts(db) == [("run", 1)]


@BOTH
def test_auto_gives_batching_up_on_an_answer_that_does_not_name_every_file(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """The service registers (and answers) only the first file of a call: the others are
    doubts settled by the listing, then registered alone; the next run sends one per call."""
    server = maiagent_factory(register_first_only=True)
    relpaths = make_files(tmp_path / "data", 60)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")

    ran = invoke(db, *run_args(server, "--workers", "20", "--register-batch", "auto"))

    assert ran.exit_code == 0, ran.output
    assert_once(server, db, relpaths)
    assert facts(db) == [("run", 0)]
    more = make_files(tmp_path / "more", 30)
    enqueue(db, tmp_path / "more")
    server.reset_stats()
    again = invoke(db, *run_args(server, "--workers", "20", "--register-batch", "auto"))
    assert again.exit_code == 0, again.output
    assert server.stats()["register"] == 30
    assert len(server.records(KB)) == len(relpaths) + len(more)
