-- enqueue DIR --delete-removed marks the jobs of DIR whose file is gone `removed` (their entry
-- goes to the superseded record, for `run` to delete). The CHECK of jobs.state names the states,
-- and SQLite changes a CHECK only by editing the schema's text (the jobs table cannot be
-- rebuilt in a migration: attempts refers to it with ON DELETE CASCADE, and foreign keys cannot
-- be switched off inside the migration's transaction). The edit touches no stored row; RESET
-- reloads the schema, so this connection checks the new CHECK at once.
PRAGMA writable_schema = ON;
UPDATE sqlite_master
SET sql = replace(sql, '''failed'', ''skipped''))', '''failed'', ''skipped'', ''removed''))')
WHERE type = 'table' AND name = 'jobs';
PRAGMA writable_schema = RESET;
