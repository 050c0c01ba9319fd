"""The database layer's layout rules (uploader/store/__init__.py): nothing in one backend
imports the other, and no storage contract is wider than about 25 methods."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from uploader.queue.base import Queue
from uploader.store import facts, listing, runs, status, superseded

BACKENDS = {
    "sqlite": ["uploader/store/sqlite.py", "uploader/queue/sqlite.py"]
    + [str(p.relative_to(ROOT)) for p in (ROOT / "uploader/queue").glob("sqlite_*.py")],
    "postgres": ["uploader/store/postgres.py", "uploader/queue/postgres.py"],
}


def _imports(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.add(node.module or "")
            found.update(f"{node.module or ''}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize(("backend", "other"), [("sqlite", "postgres"), ("postgres", "sqlite")])
def test_no_backend_imports_the_other(backend: str, other: str) -> None:
    for path in BACKENDS[backend]:
        names = _imports(path)
        if other == "sqlite":
            crossing = {n for n in names if "sqlite" in n}
        else:
            crossing = {n for n in names if "postgres" in n or n.startswith("asyncpg")}
        assert not crossing, (path, crossing)


@pytest.mark.parametrize(
    "contract",
    [
        Queue,
        facts.FactsStore,
        listing.ListingStore,
        runs.RunsStore,
        status.StatusStore,
        superseded.SupersededStore,
    ],
)
def test_no_storage_contract_is_wider_than_25_methods(contract: type) -> None:
    methods = [
        name
        for name, member in inspect.getmembers(contract, inspect.isfunction)
        if not name.startswith("_")
    ]
    assert len(methods) <= 25, (contract.__name__, len(methods))


OPEN_A_QUEUE = """
import asyncio, sys
from uploader import queue
from uploader.model import HostScope

async def main():
    async with queue.opened(sys.argv[1], create=True, scope=HostScope("h")) as q:
        await q.pending_totals(None)

asyncio.run(main())
print(sorted(m for m in sys.modules if m.split(".")[0] == "aiohttp"))
"""


def test_opening_a_sqlite_queue_does_not_import_the_http_library(tmp_path: Path) -> None:
    """The store retries a busy database with `retrying`, which once imported the client (and
    so aiohttp, a second of start-up on a slow disk) for its backoff."""
    done = subprocess.run(
        [sys.executable, "-c", OPEN_A_QUEUE, str(tmp_path / "q.db")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert (tmp_path / "q.db").exists()
