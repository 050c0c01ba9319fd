-- Saved sync jobs: what the first `uploader sync DIR --kb KB ...` asked (filters, labels,
-- metadata, manifest, parser, name mode, delete policy, as JSON by option name), so that the
-- next `uploader sync DIR` (or `uploader sync`) repeats it. One job per folder and knowledge
-- base; the folder is its real path as bytes, as the walk names it.
CREATE TABLE saved_jobs (
    id          INTEGER PRIMARY KEY,
    folder      BLOB NOT NULL,
    kb_id       TEXT NOT NULL,
    options     TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    UNIQUE (folder, kb_id)
);
