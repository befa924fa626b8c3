-- pg_migrate: the log of DDL commands, from every session.

-- No primary key on purpose: restoring a dump replays the DDL, which these triggers log
-- (with fresh ids) before the dumped rows are copied back with their original ids.
-- Both are true records; order by (logged_at, id).
CREATE TABLE migrate.ddl_log (
    id                 bigint GENERATED ALWAYS AS IDENTITY,
    logged_at          timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    -- ddl_command_end, sql_drop: DDL commands; guard_override, guard_warning: unsafe DDL that
    -- the guard let through (an override used, or migrate.guard = warn), one row per rule.
    event              text NOT NULL
                       CHECK (event IN ('ddl_command_end', 'sql_drop', 'guard_override', 'guard_warning')),
    command_tag        text NOT NULL,
    object_type        text,
    schema_name        text,
    object_identity    text,
    session_user_name  name NOT NULL,
    current_user_name  name NOT NULL,
    application_name   text,
    client_addr        inet,
    backend_pid        integer NOT NULL,
    xid                xid8,
    -- Set when the command ran inside migrate.apply, or in a phase the worker ran.
    migration_version  text,
    guard_rule         text
);

CREATE INDEX ddl_log_id ON migrate.ddl_log (id);
CREATE INDEX ddl_log_logged_at ON migrate.ddl_log (logged_at);
CREATE INDEX ddl_log_object ON migrate.ddl_log (object_identity);

COMMENT ON TABLE migrate.ddl_log IS
    'pg_migrate: every DDL command in this database, from any session; written by event triggers';

-- pg_dump keeps its contents.
SELECT pg_catalog.pg_extension_config_dump('migrate.ddl_log', '');
SELECT pg_catalog.pg_extension_config_dump('migrate.ddl_log_id_seq', '');
