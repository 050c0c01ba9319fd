-- Which host can read a job's file: the host that enqueued it ('' for rows made before hosts
-- were recorded: any host), unless the file is on storage every host sees at the same path.
ALTER TABLE jobs ADD COLUMN host TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN shared INTEGER NOT NULL DEFAULT 0;
