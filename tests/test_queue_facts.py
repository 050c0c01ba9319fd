"""The queue contract for service facts (what `check` and runs learned about a service),
on every backend."""

from __future__ import annotations

from tests.helpers import async_test
from tests.queue_backends import queue_target
from uploader.model import ServiceFacts
from uploader.queue import open_queue

__all__ = ["queue_target"]  # the fixture, imported for pytest

KB = "kb-contract"


@async_test
async def test_service_facts_are_kept_per_base_url_and_kb(queue_target: str) -> None:
    base = "https://api.example/api/v1/"
    async with await open_queue(queue_target) as q:
        assert await q.service_facts(base, KB) is None
        checked = ServiceFacts(base, KB, 100.0, "check", True, {"newest_first": True})
        await q.store_service_facts(checked)
        assert await q.service_facts(base, KB) == checked
        assert await q.service_facts(base, "kb-other") is None
        assert await q.service_facts("https://other/api/v1/", KB) is None
        # A run that did not batch keeps what check proved; one that did replaces it, and
        # keeps the shapes check saw.
        await q.store_service_facts(ServiceFacts(base, KB, 200.0, "run", None, {}))
        assert (await q.service_facts(base, KB)).batch_register is True  # type: ignore[union-attr]
        await q.store_service_facts(ServiceFacts(base, KB, 300.0, "run", False, {}))
        assert await q.service_facts(base, KB) == ServiceFacts(
            base, KB, 300.0, "run", False, {"newest_first": True}
        )
