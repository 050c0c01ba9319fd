-- What `uploader check` (or a run's register answers) learned about a service, per API base
-- URL and knowledge base: `run --register-batch auto` batches only where batching was proven.
CREATE TABLE service_facts (
    base_url        TEXT NOT NULL,
    kb_id           TEXT NOT NULL,
    learned_at      REAL NOT NULL,
    source          TEXT NOT NULL CHECK (source IN ('check', 'run')),
    -- 1: a register of several files in one call named every file; 0: it did not; NULL: unknown
    batch_register  INTEGER CHECK (batch_register IN (0, 1)),
    -- JSON: the shapes `check` saw (register answer, file, status, createdAt, page size, order)
    facts           TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (base_url, kb_id)
) WITHOUT ROWID;
