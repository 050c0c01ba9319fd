-- The twin of SQLite's 0015: the SHA-256 of the bytes behind a job's S3 key, as streamed.
ALTER TABLE jobs ADD COLUMN content_hash text;
