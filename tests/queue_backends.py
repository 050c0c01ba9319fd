"""The queue backends the contract tests run against: `BACKENDS` names them, `queue_target`
makes a fresh, empty target for one test: a SQLite file, or a new schema on the session's
PostgreSQL server (tests/pg_server.py), named by the URL's search_path."""

from __future__ import annotations

from pathlib import Path

import pytest

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def queue_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What `open_queue` opens: a new, empty queue per test."""
    if request.param == "sqlite":
        return str(tmp_path / "queue.db")
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    raise AssertionError(f"no such backend {request.param}")
