-- run --skip-same-content looks a file's content hash up among the knowledge base's uploaded
-- files. The hash is XXH3-128 (uploader/content.py: SHA-256, which 0015 names, was measured too
-- slow for the streaming upload and not taken).
CREATE INDEX jobs_content ON jobs (kb_id, content_hash) WHERE state = 'done' AND content_hash IS NOT NULL;
