"""A run owns its record: a library caller of the run (`runner.run`, not the CLI) gets the
same bookkeeping as `uploader run` does: why the run stopped, what it learned of the service,
where the queue stands after it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from tests.helpers import API_KEY, KB, queued
from uploader import queue, runner
from uploader.checkup import normal_base_url
from uploader.localserver import MaiAgentServer
from uploader.model import HostScope
from uploader.options import RunOptions
from uploader.store.facts import FactsStore
from uploader.store.runs import RunsStore


def _runs(db: Path, options: RunOptions, times: int = 1) -> list[Any]:
    """`times` library runs, then the last run's record and why it stopped; their outcomes."""

    async def go() -> list[Any]:
        scope = HostScope(socket.gethostname())
        async with queue.opened(str(db), create=False, scope=scope) as q:
            outcomes = [await runner.run(q, options, until=0.0) for _ in range(times)]
            store = RunsStore(q.engine)
            [last] = await store.runs(last=1)
            facts = await FactsStore(q.engine).service_facts(normal_base_url(options.base_url), KB)
            return [outcomes, last, await store.run_fatal(last["id"]), facts]

    return asyncio.run(go())


def test_a_library_run_refused_records_why_it_stopped(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = queued(tmp_path, 3)
    options = RunOptions(maiagent.base_url, "not-the-key", kb_id=KB, retry_delay=0.01)

    [outcome], record, fatal, _facts = _runs(db, options)

    assert outcome.run_id == record["id"] and record["exit_code"] == 3
    assert fatal is not None and fatal == str(outcome.result.fatal), fatal
    assert outcome.states["pending"] == 3


def test_a_library_run_records_what_it_learned_and_returns_the_states_after(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = queued(tmp_path, 3)
    options = RunOptions(maiagent.base_url, API_KEY, kb_id=KB, retry_delay=0.01)

    [first, second], record, fatal, facts = _runs(db, options, times=2)

    assert first.result.uploaded == 3 and first.states["done"] == 3 and first.idle is None
    assert record["id"] == first.run_id and record["exit_code"] == 0 and fatal is None
    assert record["options"]["kb_id"] == KB and "api_key" not in record["options"]
    assert facts is not None and facts.source == "run"  # the register batching it learned
    assert second.run_id is None and second.idle is not None and "done 3" in second.idle
