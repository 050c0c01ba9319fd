-- Every entry this database deleted from a knowledge base, whatever deleted it (dedupe, the
-- replacement of a changed file, --delete-removed, retry-failed --remote), kept for the report:
-- a deleted entry cannot be read back, so this is the only account of what went and why.
CREATE TABLE deletions (
    id          INTEGER PRIMARY KEY,
    kb_id       TEXT NOT NULL,
    entry_id    TEXT NOT NULL,
    filename    TEXT,
    -- the DeletionReason (uploader/model.py) and what it refers to (e.g. the entry kept)
    reason      TEXT NOT NULL,
    detail      TEXT,
    command     TEXT NOT NULL,
    deleted_at  REAL NOT NULL,
    -- the job whose file the entry was (or was a copy of), when known
    job_id      INTEGER
);
CREATE INDEX deletions_kb ON deletions (kb_id, deleted_at);
