-- Labels, user-defined metadata, a parser and the name shown, asked for at enqueue (issue 14).
-- `tags` is what the entry should carry, as canonical JSON {"labels": [names, sorted],
-- "metadata": {...}} (NULL: nothing was asked); `tags_applied` is what the entry was last
-- given, by its register or an update-metadata call. Where they differ on a done row,
-- enqueue puts the row back to pending at step 'metadata': the next run sends only
-- update-metadata, no upload.
ALTER TABLE jobs ADD COLUMN tags TEXT;
ALTER TABLE jobs ADD COLUMN tags_applied TEXT;
ALTER TABLE jobs ADD COLUMN parser TEXT;
ALTER TABLE jobs ADD COLUMN display_name TEXT;

-- What a listing showed of an entry's labels and metadata, in the same canonical form (label
-- names where the listing gives them), for verify to compare with its job's `tags`.
ALTER TABLE remote_files ADD COLUMN tags TEXT;

-- Label names resolved to ids per knowledge base (get-or-create), so a run lists or creates
-- a label once, not once per file.
CREATE TABLE labels (
    kb_id   TEXT NOT NULL,
    name    TEXT NOT NULL,
    id      TEXT NOT NULL,
    PRIMARY KEY (kb_id, name)
) WITHOUT ROWID;
