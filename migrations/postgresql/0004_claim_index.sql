-- A claim reads pending rows only. As a partial index, the claim index takes no new entry
-- when a row leaves pending (PostgreSQL writes a new entry into every index a changed row is
-- in): a claim and its completion then maintain three indexes, not seven. The per-state
-- counts of `status` read the table instead of an index every state change would feed.
DROP INDEX jobs_claim;
CREATE INDEX jobs_claim ON jobs (next_attempt_at, id) WHERE state = 'pending';
DROP INDEX jobs_kb_state;
