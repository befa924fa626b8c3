-- pg_migrate: backfill jobs, run in batches by the background worker.

-- One row per job. The worker updates it in the same transaction as each batch, so the
-- recorded progress (last_key, rows_updated) is exactly what has committed: a crash or a
-- restart resumes after the last committed batch, and no row is updated twice or skipped.
CREATE TABLE migrate.backfill_jobs (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The table, and its name when submitted (schema-qualified, quoted), kept for the record
    -- of a job whose table was dropped.
    table_oid          oid NOT NULL,
    table_name         text NOT NULL,
    set_clause         text NOT NULL,
    -- NULL: every row in the key range the job walks (no final check is possible then).
    where_clause       text,
    -- The key walked in order (quoted column names and their types); NULL for a table with
    -- no primary key or unique NOT NULL key, walked in ranges of pages (ctid) instead.
    key_columns        text[],
    key_types          text[],
    state              text NOT NULL DEFAULT 'running'
                       CHECK (state IN ('running', 'paused', 'done', 'failed', 'cancelled')),
    -- Why it is paused (asked to, replication lag) or failed; auto_paused: the worker paused
    -- it (replication lag) and resumes it by itself.
    state_reason       text,
    auto_paused        boolean NOT NULL DEFAULT false,
    -- A pass walks the key range bounded when it began (upper_key; '{}' for an empty
    -- table); it is over when last_key reaches upper_key. Rows the final check still finds
    -- make another pass, up to three.
    pass               integer NOT NULL DEFAULT 1,
    upper_key          text[],
    last_key           text[],
    rows_scanned       bigint NOT NULL DEFAULT 0,   -- keys walked in this pass
    rows_estimated     bigint,                      -- keys to walk in this pass
    rows_updated       bigint NOT NULL DEFAULT 0,   -- rows the set clause changed, all passes
    batches            bigint NOT NULL DEFAULT 0,
    batch_size         integer NOT NULL,
    min_batch_size     integer NOT NULL,
    max_batch_size     integer NOT NULL,
    batch_time         interval NOT NULL,
    pause              interval NOT NULL,
    max_replication_lag bigint NOT NULL,            -- bytes; 0: no limit
    lock_timeouts      bigint NOT NULL DEFAULT 0,
    -- Lock timeouts in a row on the batch now being tried: retry, then split, then fail.
    failed_attempts    integer NOT NULL DEFAULT 0,
    rows_per_second    double precision,
    -- Rows the final check found still matching the where clause.
    remaining          bigint,
    -- Who submitted it: batches run with that role's rights and these settings.
    role               name NOT NULL,
    settings           jsonb NOT NULL DEFAULT '{}',
    submitted_by       name NOT NULL,
    submitted_at       timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    -- Set when it is a phase of a migration: later phases wait for it.
    version            text,
    phase              integer,
    started_at         timestamptz,
    last_batch_at      timestamptz,
    next_batch_at      timestamptz,
    finished_at        timestamptz,
    error_sqlstate     text,
    error_message      text,
    error_detail       text,
    FOREIGN KEY (version, phase) REFERENCES migrate.step_records (version, phase) ON DELETE CASCADE,
    CHECK (batch_size BETWEEN min_batch_size AND max_batch_size),
    CHECK ((key_columns IS NULL) = (key_types IS NULL))
);

COMMENT ON TABLE migrate.backfill_jobs IS
    'pg_migrate: backfill jobs (migrate.backfill), with the progress of their last committed batch; read through migrate.backfills';

SELECT pg_catalog.pg_extension_config_dump('migrate.backfill_jobs', '');
SELECT pg_catalog.pg_extension_config_dump('migrate.backfill_jobs_id_seq', '');

-- The jobs, their error texts and keys shown as migrate.steps shows a phase's errors.
CREATE VIEW migrate.backfills AS
SELECT b.id, b.table_oid, b.table_name, b.set_clause, b.where_clause, b.key_columns,
       b.key_types, b.state, b.state_reason, b.auto_paused, b.pass,
       migrate.quoted_data(b.upper_key, b.role) COLLATE pg_catalog."default" AS upper_key,
       migrate.quoted_data(b.last_key, b.role) COLLATE pg_catalog."default" AS last_key,
       b.rows_scanned, b.rows_estimated, b.rows_updated, b.batches, b.batch_size,
       b.min_batch_size, b.max_batch_size, b.batch_time, b.pause, b.max_replication_lag,
       b.lock_timeouts, b.failed_attempts, b.rows_per_second, b.remaining, b.role, b.settings,
       b.submitted_by, b.submitted_at, b.version, b.phase, b.started_at, b.last_batch_at,
       b.next_batch_at, b.finished_at, b.error_sqlstate,
       migrate.quoted_data(b.error_message, b.role) COLLATE pg_catalog."default" AS error_message,
       migrate.quoted_data(b.error_detail, b.role) COLLATE pg_catalog."default" AS error_detail
FROM migrate.backfill_jobs b;

COMMENT ON VIEW migrate.backfills IS
    'pg_migrate: backfill jobs (migrate.backfill), with the progress of their last committed batch';

-- What pg_stat_progress_* views are to a DBA: one row per job.
CREATE VIEW migrate.backfill_progress AS
SELECT b.id AS job,
       -- Its name now (renames follow); the name it had, once it is dropped.
       CASE WHEN c.oid IS NULL THEN b.table_name
            ELSE pg_catalog.format('%I.%I', n.nspname, c.relname) END AS "table",
       b.state,
       b.state_reason AS reason,
       b.pass,
       b.rows_updated AS rows_done,
       b.rows_scanned,
       b.rows_estimated,
       CASE WHEN b.state = 'done' THEN 100.0
            WHEN b.rows_estimated > 0
            THEN pg_catalog.round(100.0 * LEAST(b.rows_scanned, b.rows_estimated) / b.rows_estimated, 1)
       END AS percent,
       b.batch_size,
       pg_catalog.round(b.rows_per_second::numeric) AS rows_per_second,
       CASE WHEN b.state IN ('running', 'paused') AND b.rows_per_second > 0
            THEN pg_catalog.make_interval(secs => pg_catalog.round(
                     GREATEST(b.rows_estimated - b.rows_scanned, 0) / b.rows_per_second))
       END AS eta,
       b.remaining,
       b.lock_timeouts,
       b.error_sqlstate AS last_error_sqlstate,
       migrate.quoted_data(b.error_message, b.role) COLLATE pg_catalog."default" AS last_error,
       b.version,
       b.phase,
       b.submitted_by,
       b.started_at,
       b.last_batch_at,
       b.finished_at
FROM migrate.backfill_jobs b
LEFT JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) b.table_oid
LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
ORDER BY b.id;

COMMENT ON VIEW migrate.backfill_progress IS
    'pg_migrate: backfill jobs with rows done, percent, rate and ETA, for psql';
