-- What the last verify of each knowledge base found wrong, one row per file, so `export-report`
-- can stream the lists after later commands have changed the jobs and the listing. Only the
-- newest verification of a knowledge base keeps its items; `verifications` keeps every count.
CREATE TABLE verification_items (
    verification_id INTEGER NOT NULL REFERENCES verifications (id) ON DELETE CASCADE,
    kind            TEXT    NOT NULL
                    CHECK (kind IN ('missing', 'failed', 'extra', 'duplicate')),
    job_id          INTEGER,
    file_id         TEXT    NOT NULL,
    filename        TEXT,
    size            INTEGER,
    status          TEXT,
    -- for a duplicate: the entry of its group that is kept
    kept_id         TEXT
);
CREATE INDEX verification_items_kind ON verification_items (verification_id, kind);

-- `retry-failed --remote` finds its rows without reading every job.
CREATE INDEX jobs_remote_bad ON jobs (kb_id) WHERE remote_status IN ('failed', 'missing');
