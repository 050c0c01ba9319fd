"""The SQLite statements of service_facts and labels: what `check` and runs learned about a
service (its label ids by name too).

A mixin of `SqliteQueue`, which owns `_conn`, `transaction()` and `_fetchval()`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..model import ServiceFacts

if TYPE_CHECKING:
    from .sqlite import SqliteBase
else:
    SqliteBase = object

_STORE = """
INSERT INTO service_facts (base_url, kb_id, learned_at, source, batch_register, facts)
VALUES (:base_url, :kb_id, :learned_at, :source, :batch, :facts)
ON CONFLICT (base_url, kb_id) DO UPDATE SET learned_at = excluded.learned_at,
    source = excluded.source,
    facts = CASE WHEN excluded.facts = '{}' THEN service_facts.facts ELSE excluded.facts END,
    batch_register = COALESCE(excluded.batch_register, service_facts.batch_register)"""

_READ = """
SELECT learned_at, source, batch_register, facts FROM service_facts
WHERE base_url = ? AND kb_id = ?"""


class FactsMixin(SqliteBase):
    async def store_service_facts(self, facts: ServiceFacts) -> None:
        params = {
            "base_url": facts.base_url,
            "kb_id": facts.kb_id,
            "learned_at": facts.learned_at,
            "source": facts.source,
            "batch": None if facts.batch_register is None else int(facts.batch_register),
            "facts": json.dumps(facts.facts, ensure_ascii=False),
        }
        async with self.transaction() as conn:
            await conn.execute(_STORE, params)

    async def service_facts(self, base_url: str, kb_id: str) -> ServiceFacts | None:
        async with self._conn.execute(_READ, (base_url, kb_id)) as cur:
            row = await cur.fetchone()
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
        rows = await self._conn.execute_fetchall(
            "SELECT name, id FROM labels WHERE kb_id = ?", (kb_id,)
        )
        return {name: label_id for name, label_id in rows}

    async def store_labels(self, kb_id: str, labels: Sequence[tuple[str, str]]) -> None:
        async with self.transaction() as conn:
            await conn.executemany(
                "INSERT INTO labels (kb_id, name, id) VALUES (?, ?, ?)"
                " ON CONFLICT (kb_id, name) DO UPDATE SET id = excluded.id",
                [(kb_id, name, label_id) for name, label_id in labels],
            )
