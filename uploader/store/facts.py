"""What the service was seen to speak: the facts `check` and runs learned about a service
(per API base URL and knowledge base), and its label ids by name (so that a second run asks
the service for none it already resolved). Tables: `service_facts` (migration 0006) and
`labels` (0011)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..model import ServiceFacts
from .engine import Engine

# A None batch_register or empty facts keep what is known: a run learns about batching only,
# and only when it batched.
_STORE = """
INSERT INTO service_facts (base_url, kb_id, learned_at, source, batch_register, facts)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (base_url, kb_id) DO UPDATE SET learned_at = excluded.learned_at,
    source = excluded.source,
    facts = CASE WHEN excluded.facts = '{}' THEN service_facts.facts ELSE excluded.facts END,
    batch_register = COALESCE(excluded.batch_register, service_facts.batch_register)"""

_READ = """
SELECT learned_at, source, batch_register, facts FROM service_facts
WHERE base_url = ? AND kb_id = ?"""

_STORE_LABEL = """
INSERT INTO labels (kb_id, name, id) VALUES (?, ?, ?)
ON CONFLICT (kb_id, name) DO UPDATE SET id = excluded.id"""


class FactsStore:
    def __init__(self, engine: Engine) -> None:
        self._db = engine

    async def store_service_facts(self, facts: ServiceFacts) -> None:
        """Replace what is known of (base_url, kb_id) by `facts`, except that a None
        `batch_register` or empty `facts` keep what is already known."""
        await self._db.execute(
            _STORE,
            (
                facts.base_url,
                facts.kb_id,
                facts.learned_at,
                facts.source,
                facts.batch_register,
                json.dumps(facts.facts, ensure_ascii=False),
            ),
        )

    async def service_facts(self, base_url: str, kb_id: str) -> ServiceFacts | None:
        """What is known of (base_url, kb_id), or None."""
        row = await self._db.fetchrow(_READ, (base_url, kb_id))
        if row is None:
            return None
        learned_at, source, batch, facts = row
        return ServiceFacts(
            base_url,
            kb_id,
            learned_at,
            source,
            None if batch is None else bool(batch),
            json.loads(facts),
        )

    async def label_ids(self, kb_id: str) -> dict[str, str]:
        """The label ids of `kb_id` by name, as `store_labels` kept them."""
        rows = await self._db.fetch("SELECT name, id FROM labels WHERE kb_id = ?", (kb_id,))
        return {name: label_id for name, label_id in rows}

    async def store_labels(self, kb_id: str, labels: Sequence[tuple[str, str]]) -> None:
        """(name, id) pairs of `kb_id`'s labels, replacing the id a name had; the last pair of
        a name wins."""
        by_name = dict(labels)
        await self._db.executemany(_STORE_LABEL, [(kb_id, n, i) for n, i in by_name.items()])
