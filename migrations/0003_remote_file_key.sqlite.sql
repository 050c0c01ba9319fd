-- The S3 key of a listed entry, when the listing shows it: adopting a doubtful register by its
-- key cannot mistake two files of the same name and size for each other.
ALTER TABLE remote_files ADD COLUMN file_key TEXT;
CREATE INDEX remote_files_key ON remote_files (kb_id, file_key) WHERE file_key IS NOT NULL;
