-- Expand/contract windows (src/window/): one row per window, written only by pg_migrate as
-- the extension's owner. The window's expand script is the migration of the same version in
-- migrate.history (its statements, phases and backfills are recorded there and in
-- migrate.steps); this row keeps what only a window has: the DDL as the DBA wrote it, the
-- statements that contract or abort it, and its time-to-live.
CREATE TABLE migrate.window_history (
    version          text PRIMARY KEY,
    description      text,
    -- The DDL as given (admins only: it may quote data), and its checksum, by which running
    -- the same expand again is recognised.
    source           text NOT NULL,
    source_checksum  text NOT NULL,
    -- migrate.expand's options (a type change's conversion back), part of the checksum.
    options          jsonb,
    -- Qualified names of the tables changed, and the schemas of the new version's views.
    tables           text[] NOT NULL,
    schemas          text[] NOT NULL,
    -- [{"sql": ..., "needs_column": [schema, table, column] | null}, ...]
    contract_steps   jsonb NOT NULL,
    abort_steps      jsonb NOT NULL,
    -- [{"table", "trigger", "out_of_step"}, ...]: what contract checks before the swap.
    checks           jsonb NOT NULL DEFAULT '[]',
    -- The window's own objects beside its tables (bridge functions, view schemas), which
    -- the guard keeps DDL outside pg_migrate away from.
    objects          text[] NOT NULL DEFAULT '{}',
    ttl              interval NOT NULL,
    opened_at        timestamptz NOT NULL,
    opened_by        name NOT NULL,
    expires_at       timestamptz NOT NULL,
    -- The last time-to-live alert sent, in percent of the ttl (50, 90, 100; 0: none).
    alerts_sent      integer NOT NULL DEFAULT 0,
    -- What the worker does once the window expires: alert only; contract once the old
    -- version has not written for migrate.window_quiet_time; abort if the new version never
    -- wrote.
    on_expiry        text NOT NULL DEFAULT 'alert'
                     CHECK (on_expiry IN ('alert', 'contract', 'abort')),
    -- Write statements to the window's tables by each version, as the worker took them from
    -- shared memory (migrate.windows adds those counted since), and the last of each.
    old_writes       bigint NOT NULL DEFAULT 0,
    new_writes       bigint NOT NULL DEFAULT 0,
    old_last_write   timestamptz,
    new_last_write   timestamptz,
    -- [[schema, table, column], ...]: the columns contract or abort sets aside, which the
    -- worker drops migrate.deprecated_retention after the window ends (when it did).
    deprecated       jsonb NOT NULL DEFAULT '[]',
    deprecated_dropped_at timestamptz,
    -- After a failed drop: how many, and not before when the worker tries again.
    deprecated_attempts integer NOT NULL DEFAULT 0,
    deprecated_retry_at timestamptz,
    -- [{"at", "by", "extra", "reason", "expires_at"}, ...]: each migrate.extend, in order.
    extensions       jsonb NOT NULL DEFAULT '[]',
    -- [{"table", "copies", "view", "view_schema", "columns"}, ...]: the privileges the
    -- window carries from its tables to its copy columns and views, after every GRANT or
    -- REVOKE while it is open (src/window/privileges.rs).
    mirrors          jsonb NOT NULL DEFAULT '[]',
    ended            text CHECK (ended IN ('contracted', 'aborted')),
    ended_at         timestamptz,
    ended_by         name,
    CHECK ((ended IS NULL) = (ended_at IS NULL))
);
-- Every expand looks for open windows on its tables.
CREATE INDEX window_history_open ON migrate.window_history (version) WHERE ended IS NULL;
SELECT pg_catalog.pg_extension_config_dump('migrate.window_history', '');

-- What a DBA follows a window by. state: expanding (the worker runs its phases), published
-- (the new version's views exist: both versions work), failed or cancelled (a phase did not
-- finish: retry, or abort), contracted, aborted.
CREATE VIEW migrate.windows AS
SELECT w.version,
       CASE WHEN w.ended IS NOT NULL THEN w.ended
            WHEN h.status = 'applied' THEN 'published'
            WHEN h.status IN ('pending', 'running') THEN 'expanding'
            ELSE h.status END AS state,
       w.tables,
       w.schemas,
       b.rows_done AS backfill_rows_done,
       b.percent AS backfill_percent,
       w.opened_at,
       w.opened_by,
       w.expires_at,
       w.ended IS NULL AND now() > w.expires_at AS expired,
       w.alerts_sent,
       w.on_expiry,
       w.extensions,
       w.old_writes + coalesce(c.old_writes, 0) AS old_writes,
       w.new_writes + coalesce(c.new_writes, 0) AS new_writes,
       coalesce(c.old_writes_last_minute, 0) AS old_writes_last_minute,
       coalesce(c.new_writes_last_minute, 0) AS new_writes_last_minute,
       greatest(w.old_last_write, c.old_last_write) AS old_last_write,
       greatest(w.new_last_write, c.new_last_write) AS new_last_write,
       coalesce(n.old_sessions, 0) AS old_sessions,
       coalesce(n.new_sessions, 0) AS new_sessions,
       w.ended_at,
       w.ended_by,
       w.deprecated_dropped_at,
       w.description
FROM migrate.window_history w
LEFT JOIN migrate.history h ON h.version = w.version
LEFT JOIN LATERAL (
    SELECT sum(p.rows_done)::bigint AS rows_done,
           round(avg(p.percent), 1) AS percent
    FROM migrate.step_records s JOIN migrate.backfill_progress p ON p.job = s.backfill_id
    WHERE s.version = w.version) b ON true
LEFT JOIN LATERAL migrate.window_writes(w.version) c ON w.ended IS NULL
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE s.side = 'old') AS old_sessions,
           count(*) FILTER (WHERE s.side = 'new') AS new_sessions
    FROM migrate.window_sessions(w.version) s) n ON w.ended IS NULL;

-- After a GRANT or REVOKE, open windows carry their tables' privileges again (and after an
-- ALTER TABLE, which may have turned row-level security on).
CREATE EVENT TRIGGER migrate_window_privileges ON ddl_command_end
    WHEN TAG IN ('GRANT', 'REVOKE', 'ALTER TABLE')
    EXECUTE FUNCTION migrate.follow_window_grants();
