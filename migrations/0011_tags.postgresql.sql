-- The twin of SQLite's 0011: labels, metadata, parser and the name shown, asked for at
-- enqueue (`tags` wanted, `tags_applied` last given to the entry, both canonical JSON text),
-- a listing's labels and metadata, and label names resolved to ids per knowledge base.
ALTER TABLE jobs ADD COLUMN tags text,
                 ADD COLUMN tags_applied text,
                 ADD COLUMN parser text,
                 ADD COLUMN display_name text;

ALTER TABLE remote_files ADD COLUMN tags text;

CREATE TABLE labels (
    kb_id   text NOT NULL,
    name    text NOT NULL,
    id      text NOT NULL,
    PRIMARY KEY (kb_id, name)
);
