-- pg_migrate: the guard's rule catalog, and the event triggers of the guard and the DDL log.

CREATE VIEW migrate.rules AS
SELECT * FROM migrate.rule_catalog();

COMMENT ON VIEW migrate.rules IS
    'pg_migrate: every guard rule, what it catches, why, and the safe alternative';

-- The guard judges every DDL statement before it takes its locks; the rewrite trigger is a
-- backstop for rewrites no rule foresaw.
CREATE EVENT TRIGGER migrate_guard ON ddl_command_start
    EXECUTE FUNCTION migrate.guard_ddl();
CREATE EVENT TRIGGER migrate_guard_rewrite ON table_rewrite
    EXECUTE FUNCTION migrate.guard_rewrite();
-- The data-loss backstop: what CASCADE, DROP OWNED or DROP DOMAIN reach.
CREATE EVENT TRIGGER migrate_guard_drop ON sql_drop
    EXECUTE FUNCTION migrate.guard_drop();

CREATE EVENT TRIGGER migrate_ddl_log ON ddl_command_end
    EXECUTE FUNCTION migrate.log_ddl_command();
CREATE EVENT TRIGGER migrate_ddl_log_drop ON sql_drop
    EXECUTE FUNCTION migrate.log_sql_drop();
