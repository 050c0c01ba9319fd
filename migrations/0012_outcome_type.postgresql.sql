-- One row of a batch of outcomes, as `record_outcomes` sends it (uploader/queue/postgres.py,
-- _OUTCOMES): the batch goes as one array of these instead of one array per column, a
-- quarter less client CPU per job in case 9 (asyncpg checks every element of every array
-- for being a nested array; a row of this type is one element).
CREATE TYPE job_outcome AS (
    id              bigint,
    outcome         text,
    run_id          bigint,
    attempt         integer,
    started         double precision,
    ended           double precision,
    step            text,
    error_kind      text,
    error           text,
    file_id         text,
    s3_key          text,
    filename        text,
    next            double precision,
    unknown         double precision,
    size            bigint,
    mtime_ns        bigint,
    applied         text,
    content_hash    text
);
