"""The queue's SQLite file (creation, schema, refusal of files it must not touch), the global
options, and the migrations reaching an installed copy of the package."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

import uploader
from tests.helpers import KB, ROOT, invoke, make_tree, one_line_error
from uploader.cli import cli

MIGRATIONS = sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
LATEST = int(MIGRATIONS[-1][:4])


def scalar(db: Path, sql: str) -> object:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchone()[0]


def columns(db: Path, table: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def new_queue(tmp_path: Path) -> Path:
    db = tmp_path / "q.db"
    tree = make_tree(tmp_path / "docs", {"a.txt": 1})
    assert invoke(db, "enqueue", str(tree), "--kb", KB).exit_code == 0
    return db


def test_a_new_database_is_private_in_wal_mode_and_fully_migrated(tmp_path: Path) -> None:
    db = new_queue(tmp_path)

    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert scalar(db, "PRAGMA journal_mode") == "wal"
    assert scalar(db, "PRAGMA user_version") == LATEST
    assert {"id", "kb_id", "path", "relpath", "size", "mtime_ns", "state", "attempts"} <= columns(
        db, "jobs"
    )
    assert {"last_error", "error_kind", "lease_owner", "lease_expires", "s3_key"} <= columns(
        db, "jobs"
    )
    assert {"file_id", "enqueued_at", "started_at", "finished_at", "duration"} <= columns(
        db, "jobs"
    )
    assert {"job_id", "attempt", "started_at", "ended_at", "outcome", "error"} <= columns(
        db, "attempts"
    )
    assert {"started_at", "ended_at", "options", "counts"} <= columns(db, "runs")


def test_opening_again_keeps_the_schema_and_the_rows(tmp_path: Path) -> None:
    db = new_queue(tmp_path)
    assert invoke(db, "status").exit_code == 0
    assert scalar(db, "PRAGMA user_version") == LATEST
    assert scalar(db, "SELECT COUNT(*) FROM jobs") == 1


def test_the_states_a_job_may_be_in_are_enforced(tmp_path: Path) -> None:
    db = new_queue(tmp_path)
    with (
        contextlib.closing(sqlite3.connect(db)) as conn,
        pytest.raises(sqlite3.IntegrityError),
    ):
        conn.execute("UPDATE jobs SET state = 'uploading'")


def _plan(db: Path, sql: str) -> str:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return " | ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))


def test_next_pending_rows_and_counts_per_state_come_from_indexes(tmp_path: Path) -> None:
    db = new_queue(tmp_path)
    claim = _plan(
        db,
        "SELECT id FROM jobs WHERE state = 'pending' AND next_attempt_at <= 1"
        " ORDER BY next_attempt_at, id LIMIT 100",
    )
    assert "USING" in claim and "INDEX" in claim, claim
    assert "TEMP B-TREE" not in claim, claim
    per_state = _plan(
        db, "SELECT kb_id, state, COUNT(*), SUM(size) FROM jobs GROUP BY kb_id, state"
    )
    assert "COVERING INDEX" in per_state, per_state
    assert "TEMP B-TREE" not in per_state, per_state


def test_the_database_path_comes_from_the_environment(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "docs", {"a.txt": 1})
    db = tmp_path / "from-env.db"
    result = CliRunner().invoke(
        cli, ["enqueue", str(tree), "--kb", KB], env={"UPLOADER_DB": str(db)}
    )
    assert result.exit_code == 0, result.output
    assert scalar(db, "SELECT COUNT(*) FROM jobs") == 1


def test_the_default_database_is_uploader_db_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = make_tree(tmp_path / "docs", {"a.txt": 1})
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.delenv("UPLOADER_DB", raising=False)
    result = CliRunner().invoke(cli, ["enqueue", str(tree), "--kb", KB])
    assert result.exit_code == 0, result.output
    assert scalar(here / "uploader.db", "SELECT COUNT(*) FROM jobs") == 1


def _not_sqlite(path: Path) -> None:
    path.write_bytes(b"this is a spreadsheet, not a database\n" * 200)


def _newer_schema(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, future TEXT)")
        conn.execute("INSERT INTO jobs (future) VALUES ('keep me')")
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
        conn.commit()


def _folder(path: Path) -> None:
    path.mkdir()
    (path / "inside.txt").write_text("x")


COMMANDS = {
    "enqueue": ["enqueue", "{docs}", "--kb", KB],
    "status": ["status", "--json"],
    "retry-failed": ["retry-failed"],
    "export-report": ["export-report", "-o", "-"],
}


def _snapshot(path: Path) -> dict[str, bytes]:
    """Everything at and beside `path` that an open could have created or changed."""
    found = {}
    for candidate in path.parent.iterdir():
        if candidate.name.startswith(path.name) and candidate.is_file():
            found[candidate.name] = candidate.read_bytes()
        elif candidate == path:
            found[candidate.name] = repr(sorted(os.listdir(candidate))).encode()
    return found


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize(
    "prepare", [_not_sqlite, _newer_schema, _folder], ids=["not-sqlite", "newer-schema", "folder"]
)
def test_a_bad_db_is_a_one_line_error_and_stays_untouched(
    tmp_path: Path, command: str, prepare: Callable[[Path], None]
) -> None:
    docs = make_tree(tmp_path / "docs", {"a.txt": 1})
    db = tmp_path / "state" / "q.db"
    db.parent.mkdir()
    prepare(db)
    before = _snapshot(db)

    args = [arg.format(docs=docs) for arg in COMMANDS[command]]
    line = one_line_error(invoke(db, *args))

    assert str(db) in line or db.name in line
    assert _snapshot(db) == before
    assert not (tmp_path / "state" / "reports").exists()


def test_a_newer_schema_is_named_in_the_error(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    _newer_schema(db)
    line = one_line_error(invoke(db, "status"))
    assert "newer" in line
    assert str(LATEST + 1) in line


def test_a_database_in_a_missing_folder_is_a_one_line_error(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "docs", {"a.txt": 1})
    db = tmp_path / "no-such-folder" / "q.db"
    line = one_line_error(invoke(db, "enqueue", str(tree), "--kb", KB))
    assert "no-such-folder" in line
    assert not db.parent.exists()


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert uploader.__version__ in result.stdout
    assert uploader.__version__ == importlib.metadata.version("maiagent-uploader")


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        ([], ["enqueue", "run", "status", "retry-failed", "export-report", "--db"]),
        (["enqueue"], ["--kb", "--include", "--exclude", "--max-size", "--follow-symlinks"]),
        (["run"], ["--api-key", "--workers", "--max-retries", "--retry-delay", "--kb"]),
        (["status"], ["--json"]),
        (["retry-failed"], ["--kind", "--match", "--kb"]),
        (["export-report"], ["--output", "-o"]),
    ],
)
def test_every_command_has_a_help(command: list[str], mentions: list[str]) -> None:
    for flag in ("--help", "-h"):
        result = CliRunner().invoke(cli, [*command, flag])
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("Usage: ")
        for word in mentions:
            assert word in result.stdout, (command, word)


def test_the_installed_package_finds_its_migrations() -> None:
    shipped = sorted(e.name for e in resources.files("uploader.migrations").iterdir())
    assert set(MIGRATIONS) <= set(shipped)


def test_migrations_ship_with_a_built_copy_used_from_elsewhere(tmp_path: Path) -> None:
    """What a wheel holds is what `build_py` lays out from pyproject.toml; build that from a
    copy of the project (the test venv has no `wheel`, and an isolated build needs the network),
    then run the CLI from the built copy, far from the source tree."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "pyproject.toml", project)
    for folder in ("uploader", "migrations"):
        shutil.copytree(ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__py*"))
    built = tmp_path / "lib"
    subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py"]
        + ["--build-lib", str(built)],
        cwd=project,
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert sorted(p.name for p in (built / "uploader" / "migrations").glob("*.sql")) == MIGRATIONS
    # the local MaiAgent server ships too: `python -m uploader.localserver` from an install
    assert (built / "uploader" / "localserver" / "__main__.py").is_file()

    elsewhere = tmp_path / "elsewhere"
    tree = make_tree(elsewhere / "docs", {"a.txt": 1})
    code = (
        f"import sys; sys.path.insert(0, {str(built)!r}); import uploader;"
        f" assert uploader.__file__.startswith({str(built)!r}), uploader.__file__;"
        " from uploader.cli import main; main()"
    )
    db = elsewhere / "q.db"
    done = subprocess.run(
        [sys.executable, "-c", code, "--db", str(db), "enqueue", str(tree), "--kb", KB],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert scalar(db, "PRAGMA user_version") == LATEST
