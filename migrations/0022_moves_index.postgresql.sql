-- The twin of SQLite's 0022: enqueue's lookup of uploaded files by size, to recognise a move.
CREATE INDEX jobs_done_size ON jobs (kb_id, size) WHERE state = 'done' AND content_hash IS NOT NULL;
