"""The queue backends the contract tests run against: `BACKENDS` names them, `queue_target`
makes a fresh, empty target for one test (a SQLite file; the PostgreSQL backend adds a fresh
database or schema here at merge time)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

BACKENDS = ["sqlite"]


def _target(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield str(tmp_path / "queue.db")
        return
    raise AssertionError(f"no such backend {backend}")


@pytest.fixture(params=BACKENDS)
def queue_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """What `open_queue` opens: a new, empty queue per test."""
    yield from _target(request.param, tmp_path)
