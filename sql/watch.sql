-- pg_migrate: the health gate's signals.

-- Errors reported in this database since the server started, by kind, as the log hook
-- counted them (src/pg/error_hook.rs): what a schema change that breaks its clients, or
-- holds its locks too long, makes them raise. Counts only grow; compare two readings.
CREATE VIEW migrate.error_counts AS
SELECT signal, sqlstates, errors FROM migrate.error_counters();

COMMENT ON VIEW migrate.error_counts IS
    'pg_migrate: errors reported in this database since the server started, by kind';
