-- The job queue: one row per (knowledge base, file). Times are Unix seconds (REAL).
-- `path` is the file's absolute path as raw bytes (os.fsencode), so names that are not
-- valid UTF-8 survive; `relpath` is its display form (valid UTF-8, undecodable bytes escaped).
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY,
    kb_id           TEXT    NOT NULL,
    path            BLOB    NOT NULL,
    relpath         TEXT    NOT NULL,
    size            INTEGER NOT NULL,
    mtime_ns        INTEGER NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'running', 'done', 'failed', 'skipped')),
    -- how far the current upload got: NULL, 'uploaded' (s3_key known), 'registered'
    step            TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    error_kind      TEXT,
    next_attempt_at REAL    NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_expires   REAL,
    -- set while a register call may have taken effect without our knowing: the earliest
    -- time it may have been received; cleared once the knowledge base has been checked
    unknown_since   REAL,
    s3_key          TEXT,
    file_id         TEXT,
    filename        TEXT,
    remote_status   TEXT,
    enqueued_at     REAL    NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    duration        REAL,
    UNIQUE (kb_id, path)
);

-- "next pending rows" and "count per state" without a table scan
CREATE INDEX jobs_claim ON jobs (state, next_attempt_at, id);
CREATE INDEX jobs_kb_state ON jobs (kb_id, state, size);
CREATE INDEX jobs_lease ON jobs (lease_owner) WHERE state = 'running';
CREATE INDEX jobs_file_id ON jobs (file_id) WHERE file_id IS NOT NULL;

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    started_at  REAL NOT NULL,
    ended_at    REAL,
    owner       TEXT NOT NULL,
    options     TEXT NOT NULL,
    counts      TEXT,
    exit_code   INTEGER
);

-- The history of every attempt, kept when the job is retried or re-enqueued.
CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY,
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    run_id      INTEGER REFERENCES runs (id),
    attempt     INTEGER NOT NULL,
    started_at  REAL    NOT NULL,
    ended_at    REAL    NOT NULL,
    outcome     TEXT    NOT NULL,
    step        TEXT,
    error_kind  TEXT,
    error       TEXT
);
CREATE INDEX attempts_job ON attempts (job_id);

-- What the knowledge base's listing showed, refreshed incrementally (newest first).
CREATE TABLE remote_files (
    kb_id       TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    filename    TEXT    NOT NULL,
    size        INTEGER,
    status      TEXT,
    created_at  REAL    NOT NULL,
    seen_at     REAL    NOT NULL,
    PRIMARY KEY (kb_id, id)
) WITHOUT ROWID;
CREATE INDEX remote_files_name ON remote_files (kb_id, filename);

-- One row per verify: its counts, for `status` and the report's integrity section.
CREATE TABLE verifications (
    id          INTEGER PRIMARY KEY,
    kb_id       TEXT NOT NULL,
    started_at  REAL NOT NULL,
    ended_at    REAL NOT NULL,
    counts      TEXT NOT NULL
);
