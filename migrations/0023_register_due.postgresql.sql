-- The twin of SQLite's 0023: the deadline of the register a row's doubt is about (its
-- write-ahead plus the sender's --timeout), by the database's clock like every time it keeps.
ALTER TABLE jobs ADD COLUMN register_due double precision;
