-- The twin of SQLite's 0016: a job whose file is gone from its folder can be `removed`
-- (enqueue --delete-removed), for `run` to delete its entry.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check,
    ADD CONSTRAINT jobs_state_check
        CHECK (state IN ('pending', 'running', 'done', 'failed', 'skipped', 'removed'));
