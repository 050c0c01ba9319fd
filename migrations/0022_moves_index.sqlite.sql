-- enqueue recognises a file moved from another path (a folder renamed) by the content hash its
-- upload recorded: the knowledge base's uploaded files of one size are looked up for each new
-- file (uploader/store/moves.py), at a lookup's cost rather than a scan of every done row.
CREATE INDEX jobs_done_size ON jobs (kb_id, size) WHERE state = 'done' AND content_hash IS NOT NULL;
