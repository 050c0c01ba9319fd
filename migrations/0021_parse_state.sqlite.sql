-- The parse state of each uploaded file's entry, kept (issue 26): when its remote_status was
-- last seen, why its parsing failed (the service's latest-failed-reason, else its status
-- message), and since when it has been parsing (set by a reparse; before that, the job's
-- finished_at), so that one still initial/processing long after is known as stuck.
-- any_type: queued with `enqueue --any-type`, so a run does not skip it for its type.
ALTER TABLE jobs ADD COLUMN remote_seen_at REAL;
ALTER TABLE jobs ADD COLUMN remote_error TEXT;
ALTER TABLE jobs ADD COLUMN parse_since REAL;
ALTER TABLE jobs ADD COLUMN any_type INTEGER NOT NULL DEFAULT 0;
