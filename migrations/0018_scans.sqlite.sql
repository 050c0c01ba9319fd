-- Scans in progress, so that a run started while an enqueue is still walking keeps claiming
-- until the walk ends instead of stopping at the first empty moment. One row per enqueue,
-- deleted when it ends; `seen_at` is renewed at every batch. A row of a dead process is
-- stale: on the run's own host its pid says so, elsewhere a row not seen for ten minutes.
CREATE TABLE scans (
    id          INTEGER PRIMARY KEY,
    owner       TEXT NOT NULL,  -- host:pid:token, as a run's lease owner
    kb_id       TEXT NOT NULL,
    started_at  REAL NOT NULL,
    seen_at     REAL NOT NULL
);
