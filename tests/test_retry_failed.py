"""`uploader retry-failed [--kind] [--match] [--kb]`: failed rows back to pending, a clean slate."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import KB, execute, invoke, make_tree, one_line_error, run_args
from uploader.exitcodes import ExitCode
from uploader.localserver import MaiAgentServer

FAILURES = {
    ("kb-one", "a.txt"): "http_5xx",
    ("kb-one", "b.pdf"): "http_4xx",
    ("kb-one", "sub/c.pdf"): "http_5xx",
    ("kb-one", "sub/d.txt"): "timeout",
    ("kb-two", "e.pdf"): "http_5xx",
    ("kb-two", "f.txt"): "http_4xx",
}
ALL_FAILED = set(FAILURES)


def failed_queue(tmp_path: Path) -> Path:
    """Six failed rows (three attempts each, with history) across two knowledge bases, plus a
    done and a pending row that retry-failed must not touch."""
    db = tmp_path / "q.db"
    one = make_tree(
        tmp_path / "one",
        {"a.txt": 1, "b.pdf": 1, "sub/c.pdf": 1, "sub/d.txt": 1, "done.txt": 1, "todo.txt": 1},
    )
    two = make_tree(tmp_path / "two", {"e.pdf": 1, "f.txt": 1})
    assert invoke(db, "enqueue", str(one), "--kb", "kb-one").exit_code == 0
    assert invoke(db, "enqueue", str(two), "--kb", "kb-two").exit_code == 0
    execute(
        db,
        "UPDATE jobs SET state = 'done', attempts = 1, file_id = 'file-1', duration = 2"
        " WHERE relpath = 'done.txt'",
    )
    for (kb, rel), kind in FAILURES.items():
        execute(
            db,
            "UPDATE jobs SET state = 'failed', attempts = 3, last_error = 'HTTP 500',"
            " error_kind = ?, next_attempt_at = 99, finished_at = 5, duration = 4"
            " WHERE kb_id = ? AND relpath = ?",
            (kind, kb, rel),
        )
    execute(
        db,
        "INSERT INTO attempts (job_id, attempt, started_at, ended_at, outcome, error_kind, error)"
        " SELECT jobs.id, n.value, 1, 2, 'failed', error_kind, last_error"
        " FROM jobs, json_each('[1, 2, 3]') AS n WHERE state = 'failed'",
    )
    return db


def rows(db: Path) -> dict[tuple[str, str], dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return {(r["kb_id"], r["relpath"]): dict(r) for r in conn.execute("SELECT * FROM jobs")}


def retry(db: Path, *options: str) -> int:
    """Run retry-failed and return the count it printed."""
    result = invoke(db, "retry-failed", *options)
    assert result.exit_code == 0, result.output
    found = re.search(r"^(\d+) failed files? back to pending", result.stdout, re.MULTILINE)
    assert found, result.stdout
    return int(found.group(1))


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], ALL_FAILED),
        (["--kind", "http_5xx"], {k for k, v in FAILURES.items() if v == "http_5xx"}),
        (
            ["--kind", "http_5xx", "--kind", "timeout"],
            {k for k, v in FAILURES.items() if v in ("http_5xx", "timeout")},
        ),
        (["--match", "*.pdf"], {k for k in FAILURES if k[1].endswith(".pdf")}),
        (["--match", "sub/**"], {("kb-one", "sub/c.pdf"), ("kb-one", "sub/d.txt")}),
        (["--match", "/a.txt", "--match", "f.txt"], {("kb-one", "a.txt"), ("kb-two", "f.txt")}),
        (["--kb", "kb-two"], {("kb-two", "e.pdf"), ("kb-two", "f.txt")}),
        (["--kb", "kb-one", "--kind", "http_5xx", "--match", "*.pdf"], {("kb-one", "sub/c.pdf")}),
        (["--kind", "tls"], set()),
    ],
    ids=[
        "all",
        "kind",
        "two-kinds",
        "match-any-depth",
        "match-folder",
        "match-anchored-or-name",
        "kb",
        "kb-kind-and-match",
        "kind-with-no-failures",
    ],
)
def test_failed_rows_go_back_to_pending_with_attempts_reset(
    tmp_path: Path, options: list[str], expected: set[tuple[str, str]]
) -> None:
    db = failed_queue(tmp_path)
    before = rows(db)

    assert retry(db, *options) == len(expected)

    after = rows(db)
    for key in expected:
        row = after[key]
        assert row["state"] == "pending", key
        assert row["attempts"] == 0, key
        assert row["last_error"] is None and row["error_kind"] is None, key
        assert row["next_attempt_at"] == 0, key
        assert row["finished_at"] is None and row["duration"] is None, key
    for key in set(after) - expected:
        assert after[key] == before[key], key


def test_the_history_of_attempts_is_kept(tmp_path: Path) -> None:
    db = failed_queue(tmp_path)
    assert retry(db) == len(FAILURES)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 3 * len(FAILURES)


def test_a_second_retry_finds_nothing_left(tmp_path: Path) -> None:
    db = failed_queue(tmp_path)
    assert retry(db, "--kind", "http_4xx") == 2
    assert retry(db, "--kind", "http_4xx") == 0
    assert retry(db) == len(FAILURES) - 2


def test_retry_failed_without_a_database_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "missing.db"
    assert "no database" in one_line_error(invoke(db, "retry-failed"))
    assert not db.exists()


def test_kind_offers_the_real_error_kinds(tmp_path: Path) -> None:
    db = failed_queue(tmp_path)
    wrong = invoke(db, "retry-failed", "--kind", "transient")
    assert wrong.exit_code == 2
    assert "'transient' is not one of" in wrong.stderr
    assert rows(db)[("kb-one", "a.txt")]["state"] == "failed"
    shown = invoke(db, "retry-failed", "--help").stdout
    for kind in ("http_5xx", "timeout", "missing", "unreadable", "changed"):
        assert kind in shown, kind


@pytest.mark.parametrize("kind", ["method_not_allowed", "label_exists"])
def test_kind_takes_a_kind_only_the_client_named(tmp_path: Path, kind: str) -> None:
    """A register answered 405 fails its file as `method_not_allowed`; --kind took only the
    kinds ErrorKind listed, so that row could not be chosen by its own kind."""
    db = failed_queue(tmp_path)
    execute(db, "UPDATE jobs SET error_kind = ? WHERE relpath = 'a.txt'", (kind,))

    assert retry(db, "--kind", kind) == 1
    assert rows(db)[("kb-one", "a.txt")]["state"] == "pending"


def test_a_name_the_service_refuses_says_so_and_the_next_run_names_it_its_own_way(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """A refused name is the file's permanent failure, which names it and the other --name;
    the run after retry-failed decides the name afresh (none sticks from the failed one), and
    in a batch only the refused file fails."""
    server = maiagent_factory(refuse_names="/")
    data = make_tree(tmp_path / "data", {"a/x.txt": 3, "b/y.txt": 4, "top.txt": 5})
    db = tmp_path / "q.db"
    assert invoke(db, "enqueue", str(data), "--kb", KB).exit_code == 0

    first = invoke(db, *run_args(server, "--register-batch", "3"))

    assert first.exit_code == ExitCode.FAILED, first.output
    failed = {relpath: j for (_kb, relpath), j in rows(db).items() if j["state"] == "failed"}
    assert set(failed) == {"a/x.txt", "b/y.txt"}
    for relpath, job in failed.items():
        assert job["error_kind"] == "name_refused"
        assert f"refused the name {relpath!r}" in job["last_error"]
        assert "--name folders" in job["last_error"]  # keeps the folders, without a /
        assert "--name basename" in job["last_error"]
        assert job["attempts"] == 1
    assert [e["filename"] for e in server.entries(KB)] == ["top.txt"]

    assert invoke(db, "retry-failed").exit_code == 0
    basename = run_args(server)[: run_args(server).index("--name")]
    second = invoke(db, *basename, "--name", "basename")

    assert second.exit_code == 0, second.output
    assert sorted(e["filename"] for e in server.entries(KB)) == ["top.txt", "x.txt", "y.txt"]
