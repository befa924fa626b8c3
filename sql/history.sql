-- pg_migrate: the history of applied versions, the phases the background worker runs, and
-- the status view over them.

CREATE TABLE migrate.history (
    version            text PRIMARY KEY,
    -- Natural order (1 < 1.2 < 2 < 10); also makes '1' and '1.0' one version.
    version_key        numeric[] NOT NULL UNIQUE
                       GENERATED ALWAYS AS (migrate.version_key(version)) STORED,
    description        text,
    -- applied, baseline; and for migrations run by the background worker: pending, running,
    -- failed, cancelled (applied once every phase is done).
    status             text NOT NULL
                       CHECK (status IN ('applied', 'baseline', 'pending', 'running', 'failed', 'cancelled')),
    script             text,
    -- sha256 of the normalised script (see checksum_algorithm), and of its raw bytes.
    checksum           text,
    checksum_raw       text,
    checksum_algorithm smallint,
    rollback_script    text,
    rollback_checksum  text,
    statements         integer NOT NULL DEFAULT 0,
    applied_by         name NOT NULL,          -- session_user
    applied_role       name NOT NULL,          -- current_user when applying
    application_name   text,
    client_addr        inet,
    xid                xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    started_at         timestamptz NOT NULL,
    finished_at        timestamptz,
    duration           interval GENERATED ALWAYS AS (finished_at - started_at) STORED,
    -- Time spent by statements that gave up waiting for a lock (the waits behind `retries`).
    lock_wait          interval NOT NULL DEFAULT '0',
    retries            integer NOT NULL DEFAULT 0,
    extension_version  text NOT NULL,
    -- Guard rules the migration overrode (allow => ARRAY[...]).
    allowed_rules      text[] NOT NULL DEFAULT '{}',
    -- Phases run by the background worker (1 for a migration applied in the caller's
    -- transaction); cancel_requested stops one at its next phase boundary.
    phases             integer NOT NULL DEFAULT 1,
    -- The caller's search_path and migrate.* limits (lock_timeout, statement_timeout,
    -- retries and backoff) when applying: the background worker runs the phases under them.
    settings           jsonb NOT NULL DEFAULT '{}',
    cancel_requested   boolean NOT NULL DEFAULT false,
    -- The fingerprint of the schema after the migration (migrate.fingerprint()), and what
    -- the migration changed in it (migrate.diff of the objects it touched, before and after).
    fingerprint        text,
    changes            jsonb,
    -- Queries that must return no rows for the migration to count as complete
    -- (apply(..., verify => ...)), and the last migrate.verify's verdict and report.
    verify_script      text,
    verification       text CHECK (verification IN ('passed', 'failed')),
    verified_at        timestamptz,
    verification_report jsonb,
    -- The transaction that made it applied (the caller's, or the worker's last phase), and
    -- where its commit record ends in the WAL: a standby whose replay_lsn has reached it has
    -- replayed the migration. Written just after the commit (it is only known then); when
    -- that was missed (a restart in between), a WAL position read after the commit.
    commit_xid         xid8,
    commit_lsn         pg_lsn,
    CHECK ((verification IS NULL) = (verified_at IS NULL)),
    CHECK ((status IN ('applied', 'baseline')) = (finished_at IS NOT NULL)),
    CHECK (status = 'baseline'
           OR (script IS NOT NULL AND checksum IS NOT NULL AND checksum_algorithm IS NOT NULL)),
    CHECK ((rollback_script IS NULL) = (rollback_checksum IS NULL))
);

-- Every migration and every worker poll looks for the unfinished versions and the highest
-- baseline: a handful of rows among thousands of applied ones, found without reading them.
CREATE INDEX history_unfinished ON migrate.history (version_key)
    WHERE status IN ('pending', 'running', 'failed');
CREATE INDEX history_baseline ON migrate.history (version_key) WHERE status = 'baseline';

CREATE TABLE migrate.step_records (
    version            text NOT NULL REFERENCES migrate.history (version) ON DELETE CASCADE,
    phase              integer NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('transaction', 'top-level', 'backfill')),
    first_statement    integer NOT NULL,
    last_statement     integer NOT NULL,
    first_line         integer NOT NULL,
    sql                text NOT NULL,
    state              text NOT NULL DEFAULT 'pending'
                       CHECK (state IN ('pending', 'running', 'done', 'failed', 'cancelled')),
    attempts           integer NOT NULL DEFAULT 0,
    started_at         timestamptz,
    finished_at        timestamptz,
    duration           interval GENERATED ALWAYS AS (finished_at - started_at) STORED,
    worker_pid         integer,
    -- For a top-level statement that builds or drops indexes: the table, and its indexes
    -- when the attempt began; what it built (schema-qualified names, which a dump and
    -- restore keeps). They tell an interrupted build from a finished one.
    target_table       text,
    indexes_before     text[],
    built_index        text,
    -- For a backfill phase: its job in migrate.backfills, once the phase has submitted it.
    backfill_id        bigint,
    error_sqlstate     text,
    error_message      text,
    error_detail       text,
    -- A phase of the migration's rollback script, added when its health gate failed.
    rollback           boolean NOT NULL DEFAULT false,
    -- As migrate.history's: the transaction that marked the phase done, and its commit.
    commit_xid         xid8,
    commit_lsn         pg_lsn,
    PRIMARY KEY (version, phase)
);

COMMENT ON TABLE migrate.step_records IS
    'pg_migrate: the phases of migrations run by the background worker, with their state; read through migrate.steps';

-- Error texts (and a backfill's keys) may quote the rows the work failed on (a duplicate
-- key's value, a failing row) of a table the reader may not read, or rows its policies
-- hide. As PostgreSQL leaves key values out of errors for those who may not read them, and
-- pg_stat_activity hides another role's query, they are shown only to roles with the
-- privileges of the role the work ran as (a superuser's, once that role is dropped).
-- Callers collate a text shown as the database does: it would otherwise take the role
-- name's collation, "C".
CREATE FUNCTION migrate.may_read_as(run_as name)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT COALESCE((SELECT pg_catalog.pg_has_role(r.oid, 'USAGE')
                       FROM pg_catalog.pg_roles r
                      WHERE r.rolname OPERATOR(pg_catalog.=) run_as),
                    (SELECT r.rolsuper FROM pg_catalog.pg_roles r
                      WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER),
                    false)
$$;

CREATE FUNCTION migrate.quoted_data(value text, run_as name)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN value IS NULL OR migrate.may_read_as(run_as) THEN value
                ELSE '<insufficient privilege>' END
$$;

-- A backfill's keys (the last one it reached, the end of its pass) are rows' values too.
CREATE FUNCTION migrate.quoted_data(value text[], run_as name)
RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN value IS NULL OR migrate.may_read_as(run_as) THEN value
                ELSE ARRAY['<insufficient privilege>'] END
$$;

-- On a standby, the functions that read the schema or the history say so: what they show is
-- the primary's, as far as this standby has replayed it.
CREATE FUNCTION migrate.note_if_standby() RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE NOTICE 'pg_migrate: this server is a standby: it shows the primary''s schema and migrations as replayed up to %',
                pg_last_wal_replay_lsn()
            USING DETAIL = pg_catalog.format('Its last replayed transaction committed at %s.',
                                             coalesce(pg_last_xact_replay_timestamp()::text, 'an unknown time'));
    END IF;
END
$$;

CREATE VIEW migrate.steps AS
SELECT s.version, s.phase, s.kind, s.first_statement, s.last_statement, s.first_line, s.sql,
       s.state, s.attempts, s.started_at, s.finished_at, s.duration, s.worker_pid,
       s.target_table, s.indexes_before, s.built_index, s.backfill_id, s.error_sqlstate,
       migrate.quoted_data(s.error_message, h.applied_role) COLLATE pg_catalog."default" AS error_message,
       migrate.quoted_data(s.error_detail, h.applied_role) COLLATE pg_catalog."default" AS error_detail,
       s.rollback, s.commit_lsn
FROM migrate.step_records s
LEFT JOIN migrate.history h ON h.version OPERATOR(pg_catalog.=) s.version;

COMMENT ON VIEW migrate.steps IS
    'pg_migrate: the phases of migrations run by the background worker, with their state';

COMMENT ON TABLE migrate.history IS
    'pg_migrate: one row per applied or baselined version; written only by migrate.apply and migrate.baseline';

-- pg_dump keeps the contents of these tables.
SELECT pg_catalog.pg_extension_config_dump('migrate.history', '');
SELECT pg_catalog.pg_extension_config_dump('migrate.step_records', '');
