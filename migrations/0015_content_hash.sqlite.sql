-- The SHA-256 of the bytes behind a job's S3 key (and so behind its entry once done), computed
-- while they were streamed to S3: a file whose mtime changed but whose bytes did not is known
-- for what it is by one read and no request.
ALTER TABLE jobs ADD COLUMN content_hash TEXT;
