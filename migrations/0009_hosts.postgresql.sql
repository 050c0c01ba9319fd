-- The twin of SQLite's 0009: which host can read a job's file, the host that enqueued it
-- ('' for any host), unless the file is on storage every host sees at the same path.
ALTER TABLE jobs ADD COLUMN host text NOT NULL DEFAULT '',
                 ADD COLUMN shared boolean NOT NULL DEFAULT false;
