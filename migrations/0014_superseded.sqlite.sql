-- The entries that changed files' new versions replace. A changed file's job forgets its entry
-- when it is queued again; the entry is remembered here instead, until `run` has deleted it
-- (after the new version is registered: never a moment with neither), or left it on purpose
-- (`run --keep-old-versions`). One row per entry; `job_id` is the job it was the entry of.
CREATE TABLE superseded (
    kb_id           TEXT    NOT NULL,
    entry_id        TEXT    NOT NULL,
    job_id          INTEGER NOT NULL,
    filename        TEXT,
    s3_key          TEXT,
    superseded_at   REAL    NOT NULL,
    -- 1: kept on purpose (run --keep-old-versions), never deleted
    kept            INTEGER NOT NULL DEFAULT 0 CHECK (kept IN (0, 1)),
    -- failed deletes (a 409 while it is processed, a 5xx): each run tries again
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    PRIMARY KEY (kb_id, entry_id)
) WITHOUT ROWID;
CREATE INDEX superseded_job ON superseded (job_id);

-- A verify lists superseded entries still present as their own kind: the CHECK of
-- verification_items names its kinds, and SQLite changes a CHECK only by a new table.
CREATE TABLE verification_items_new (
    verification_id INTEGER NOT NULL REFERENCES verifications (id) ON DELETE CASCADE,
    kind            TEXT    NOT NULL
                    CHECK (kind IN ('missing', 'failed', 'extra', 'duplicate', 'superseded')),
    job_id          INTEGER,
    file_id         TEXT    NOT NULL,
    filename        TEXT,
    size            INTEGER,
    status          TEXT,
    -- for a duplicate: the entry of its group that is kept; superseded: the one replacing it
    kept_id         TEXT
);
INSERT INTO verification_items_new (rowid, verification_id, kind, job_id, file_id, filename,
                                    size, status, kept_id)
SELECT rowid, verification_id, kind, job_id, file_id, filename, size, status, kept_id
FROM verification_items;
DROP TABLE verification_items;
ALTER TABLE verification_items_new RENAME TO verification_items;
CREATE INDEX verification_items_kind ON verification_items (verification_id, kind);
