-- The hot path, lighter. A claim reads pending rows only: as a partial index, the claim index
-- takes no new entry when a row leaves pending (PostgreSQL writes a new entry into every index
-- of a changed row), so a claim and its completion maintain three indexes, not seven; the
-- per-state counts of `status` read the table instead of an index every state change feeds.
-- The attempts log is appended to by every outcome and its jobs and runs are never deleted:
-- its two foreign-key checks were a third of a completion's cost.
DROP INDEX jobs_claim;
CREATE INDEX jobs_claim ON jobs (next_attempt_at, id) WHERE state = 'pending';
DROP INDEX jobs_kb_state;
ALTER TABLE attempts DROP CONSTRAINT attempts_job_id_fkey,
                     DROP CONSTRAINT attempts_run_id_fkey;
