"""`uploader status [--json]`: files and bytes per state and per knowledge base, the last run."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import child_env, command, execute, invoke, make_tree, one_line_error

EMPTY = {"files": 0, "bytes": 0}
STATES = ("pending", "running", "done", "failed", "skipped")


def two_knowledge_bases(tmp_path: Path) -> Path:
    """kb-one: 2 pending (300 B), 1 done (300 B); kb-two: 2 failed (3000 B), 1 skipped."""
    db = tmp_path / "q.db"
    one = make_tree(tmp_path / "one", {"a.txt": 100, "b.txt": 200, "c.pdf": 300})
    two = make_tree(tmp_path / "two", {"x.pdf": 1000, "y.pdf": 2000, "big.pdf": 5000})
    assert invoke(db, "enqueue", str(one), "--kb", "kb-one").exit_code == 0
    assert invoke(db, "enqueue", str(two), "--kb", "kb-two", "--max-size", "4k").exit_code == 0
    execute(db, "UPDATE jobs SET state = 'done', duration = 1 WHERE relpath = 'c.pdf'")
    execute(
        db,
        "UPDATE jobs SET state = 'failed', attempts = 4, last_error = 'boom',"
        " error_kind = CASE relpath WHEN 'x.pdf' THEN 'transient' ELSE 'permanent' END"
        " WHERE relpath IN ('x.pdf', 'y.pdf')",
    )
    return db


def add_run(db: Path, ended: bool, exit_code: int | None, counts: dict[str, int]) -> None:
    execute(
        db,
        "INSERT INTO runs (started_at, ended_at, owner, options, counts, exit_code)"
        " VALUES (1700000000, ?, 'host:1', '{\"workers\": 4}', ?, ?)",
        (1700000060 if ended else None, json.dumps(counts) if ended else None, exit_code),
    )


def status_json(db: Path) -> dict[str, Any]:
    result = invoke(db, "status", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def per_state(knowledge_bases: dict[str, Any]) -> dict[str, dict[str, dict[str, int]]]:
    """Every state of every knowledge base, a state with no rows as zero files and bytes."""
    return {
        kb: {state: states.get(state, EMPTY) for state in STATES}
        for kb, states in knowledge_bases.items()
    }


def test_json_counts_files_and_bytes_per_state_and_knowledge_base(tmp_path: Path) -> None:
    data = status_json(two_knowledge_bases(tmp_path))

    assert per_state(data["knowledge_bases"]) == {
        "kb-one": {
            **dict.fromkeys(STATES, EMPTY),
            "pending": {"files": 2, "bytes": 300},
            "done": {"files": 1, "bytes": 300},
        },
        "kb-two": {
            **dict.fromkeys(STATES, EMPTY),
            "failed": {"files": 2, "bytes": 3000},
            "skipped": {"files": 1, "bytes": 5000},
        },
    }
    assert data["failed_by_kind"] == {"transient": 1, "permanent": 1}
    assert data["last_run"] is None


LINE = re.compile(r"^\s+(?P<state>\w+)\s+(?P<files>[\d,]+) files\s+(?P<size>\S+ \S+)$")
HEADER = re.compile(r"^knowledge base (?P<kb>\S+): (?P<files>[\d,]+) files$")


def parse_text(stdout: str) -> dict[str, dict[str, tuple[int, str]]]:
    """{kb: {state: (files, human size)}} from the text form."""
    found: dict[str, dict[str, tuple[int, str]]] = {}
    current = None
    for line in stdout.splitlines():
        if header := HEADER.match(line):
            current = found.setdefault(header["kb"], {})
        elif (row := LINE.match(line)) and current is not None:
            current[row["state"]] = (int(row["files"].replace(",", "")), row["size"])
    return found


def test_text_shows_each_knowledge_base_with_human_sizes(tmp_path: Path) -> None:
    result = invoke(two_knowledge_bases(tmp_path), "status")
    assert result.exit_code == 0, result.output

    assert "knowledge base kb-one: 3 files" in result.stdout
    assert "knowledge base kb-two: 3 files" in result.stdout
    shown = parse_text(result.stdout)
    assert shown["kb-one"]["pending"] == (2, "300 B")
    assert shown["kb-one"]["done"] == (1, "300 B")
    assert shown["kb-one"]["failed"][0] == 0
    assert shown["kb-two"]["failed"] == (2, "3.0 KB")
    assert shown["kb-two"]["skipped"] == (1, "5.0 KB")
    assert "failed by kind: permanent 1, transient 1" in result.stdout


def test_the_last_run_is_shown(tmp_path: Path) -> None:
    db = two_knowledge_bases(tmp_path)
    add_run(db, ended=True, exit_code=0, counts={"uploaded": 9})
    add_run(db, ended=True, exit_code=1, counts={"uploaded": 1, "failed": 2})

    run = status_json(db)["last_run"]
    assert run["id"] == 2
    assert run["exit_code"] == 1
    assert run["counts"] == {"uploaded": 1, "failed": 2}
    assert run["options"] == {"workers": 4}

    text = invoke(db, "status").stdout
    assert re.search(r"^last run #2: .*exit 1: uploaded 1, failed 2 in 0.0s$", text, re.M), text


def test_attempts_a_run_put_back_are_not_said_to_be_left_pending(tmp_path: Path) -> None:
    """A run counts the attempts it put back (a lost answer waiting to settle, the run's stop);
    the same rows were often done later in that run, as in `make demo`'s."""
    db = two_knowledge_bases(tmp_path)
    add_run(db, ended=True, exit_code=0, counts={"uploaded": 30, "released": 2})

    text = invoke(db, "status").stdout

    assert "left pending" not in text, text
    assert re.search(
        r"^last run #1: .*uploaded 30, failed 0 in 0.0s, 2 attempts put back", text, re.M
    )


def test_an_unfinished_run_says_so(tmp_path: Path) -> None:
    db = two_knowledge_bases(tmp_path)
    add_run(db, ended=False, exit_code=None, counts={})
    assert status_json(db)["last_run"]["ended_at"] is None
    assert "still running or interrupted" in invoke(db, "status").stdout


def test_an_empty_queue_says_what_to_do(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    (tmp_path / "empty").mkdir()
    assert invoke(db, "enqueue", str(tmp_path / "empty"), "--kb", "kb-one").exit_code == 0

    data = status_json(db)
    assert (data["knowledge_bases"], data["failed_by_kind"], data["last_run"]) == ({}, {}, None)
    result = invoke(db, "status")
    assert result.exit_code == 0
    assert "uploader enqueue" in result.stdout


def test_status_without_a_database_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "missing.db"
    for args in (["status"], ["status", "--json"]):
        line = one_line_error(invoke(db, *args))
        assert "no database" in line
        assert "missing.db" in line
    assert not db.exists()


# Said by the child as it exits: which of the libraries only other commands need were imported.
_IMPORTED = (
    "import atexit, sys; atexit.register(lambda: print(sorted(m for m in ('aiohttp', "
    "'asyncpg', 'openpyxl') if m in sys.modules), file=sys.stderr)); "
)


def test_status_imports_no_http_or_postgresql_library(tmp_path: Path) -> None:
    """`status` never talks to the service: aiohttp (a sixth of a second to import), asyncpg
    and openpyxl are left to the commands that use them, so that it starts at once."""
    db = two_knowledge_bases(tmp_path)
    for args in (["status"], ["status", "--json"]):
        done = subprocess.run(
            command(db, *args, boot=_IMPORTED),
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip().splitlines()[-1] == "[]"
