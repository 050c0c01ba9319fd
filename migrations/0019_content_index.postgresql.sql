-- The twin of SQLite's 0019: run --skip-same-content's lookup of a file's content hash
-- (XXH3-128, uploader/content.py).
CREATE INDEX jobs_content ON jobs (kb_id, content_hash) WHERE state = 'done' AND content_hash IS NOT NULL;
