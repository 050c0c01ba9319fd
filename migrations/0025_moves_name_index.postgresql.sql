-- The twin of SQLite's 0025: the uploaded files of one size and one name (the last part of
-- relpath), for enqueue's lookup of moved files, in place of 0022's by size alone.
DROP INDEX jobs_done_size;
CREATE INDEX jobs_done_name ON jobs (kb_id, size, regexp_replace(relpath, '^.*/', ''))
    WHERE state = 'done' AND content_hash IS NOT NULL;
-- The planner ignores the statistics of a partial index's expression: without these it takes
-- one name in 200 for the same, and joins the batch's names to every uploaded file (a merge
-- join over all of them at each batch) instead of probing the index once per name. ANALYZE
-- keeps them; nothing is done per insert. Statistics of an expression are PostgreSQL 14's.
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        EXECUTE 'CREATE STATISTICS jobs_name ON (regexp_replace(relpath, ''^.*/'', '''')) FROM jobs';
    END IF;
END
$$;
