-- The twin of SQLite's 0014: the entries that changed files' new versions replace, until
-- `run` deletes them (or keeps them: run --keep-old-versions); a verify's new item kind.
CREATE TABLE superseded (
    kb_id           text    NOT NULL,
    entry_id        text    NOT NULL,
    job_id          bigint  NOT NULL,
    filename        text,
    s3_key          text,
    superseded_at   double precision NOT NULL,
    kept            boolean NOT NULL DEFAULT false,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    PRIMARY KEY (kb_id, entry_id)
);
CREATE INDEX superseded_job ON superseded (job_id);

ALTER TABLE verification_items DROP CONSTRAINT verification_items_kind_check,
    ADD CONSTRAINT verification_items_kind_check
        CHECK (kind IN ('missing', 'failed', 'extra', 'duplicate', 'superseded'));
