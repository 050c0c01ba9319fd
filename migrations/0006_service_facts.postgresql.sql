-- The twin of SQLite's 0006: what `uploader check` (or a run's register answers) learned
-- about a service, per API base URL and knowledge base.
CREATE TABLE service_facts (
    base_url        text NOT NULL,
    kb_id           text NOT NULL,
    learned_at      double precision NOT NULL,
    source          text NOT NULL CHECK (source IN ('check', 'run')),
    batch_register  boolean,
    facts           text NOT NULL DEFAULT '{}',
    PRIMARY KEY (base_url, kb_id)
);
