"""The store of service facts and labels (uploader/store/facts.py), on every backend."""

from __future__ import annotations

from tests.helpers import async_test
from tests.queue_backends import queue_target
from uploader.model import ServiceFacts
from uploader.store import open_engine
from uploader.store.facts import FactsStore

__all__ = ["queue_target"]  # the fixture, imported for pytest

KB = "kb-contract"


@async_test
async def test_service_facts_are_kept_per_base_url_and_kb(queue_target: str) -> None:
    base = "https://api.example/api/v1/"
    async with await open_engine(queue_target) as db:
        facts = FactsStore(db)
        assert await facts.service_facts(base, KB) is None
        checked = ServiceFacts(base, KB, 100.0, "check", True, {"newest_first": True})
        await facts.store_service_facts(checked)
        assert await facts.service_facts(base, KB) == checked
        assert await facts.service_facts(base, "kb-other") is None
        assert await facts.service_facts("https://other/api/v1/", KB) is None
        # A run that did not batch keeps what check proved; one that did replaces it, and
        # keeps the shapes check saw.
        await facts.store_service_facts(ServiceFacts(base, KB, 200.0, "run", None, {}))
        assert (await facts.service_facts(base, KB)).batch_register is True  # type: ignore[union-attr]
        await facts.store_service_facts(ServiceFacts(base, KB, 300.0, "run", False, {}))
        assert await facts.service_facts(base, KB) == ServiceFacts(
            base, KB, 300.0, "run", False, {"newest_first": True}
        )


@async_test
async def test_label_ids_are_kept_per_knowledge_base(queue_target: str) -> None:
    async with await open_engine(queue_target) as db:
        facts = FactsStore(db)
        assert await facts.label_ids(KB) == {}
        await facts.store_labels(KB, [("hr", "id-1"), ("ops", "id-2")])
        await facts.store_labels("kb-other", [("hr", "id-9")])
        await facts.store_labels(KB, [("hr", "id-3"), ("hr", "id-3")])
        assert await facts.label_ids(KB) == {"hr": "id-3", "ops": "id-2"}
        assert await facts.label_ids("kb-other") == {"hr": "id-9"}


@async_test
async def test_a_failed_write_in_a_transaction_leaves_nothing(queue_target: str) -> None:
    """The engine's transactions as a store uses them: nested, one rolled back alone."""
    async with await open_engine(queue_target) as db:
        facts = FactsStore(db)
        async with db.transaction():
            await facts.store_labels(KB, [("kept", "id-1")])
            try:
                async with db.transaction():
                    await facts.store_labels(KB, [("dropped", "id-2")])
                    raise RuntimeError("rolled back alone")
            except RuntimeError:
                pass
        assert await facts.label_ids(KB) == {"kept": "id-1"}
