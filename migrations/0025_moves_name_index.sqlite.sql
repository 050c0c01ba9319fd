-- enqueue recognises a moved file by its size, its own name (the last part of relpath) and the
-- content hash its upload recorded (uploader/store/moves.py). 0022's index found the uploaded
-- files of a size only, and every batch read all of them to keep those of its names: where
-- most files have one size (a million files of 16 bytes beside a run uploading them), each
-- batch cost more as the run went on. This one leads to the files of one size and one name.
-- The name is an expression of relpath (no column to backfill); the lookup spells it the same
-- way, character for character, or SQLite does not use the index. Partial, as 0022's: the
-- enqueue's insert of a pending row does not maintain it.
DROP INDEX jobs_done_size;
CREATE INDEX jobs_done_name ON jobs (kb_id, size, substr(relpath, length(rtrim(relpath, replace(relpath, '/', ''))) + 1))
    WHERE state = 'done' AND content_hash IS NOT NULL;
