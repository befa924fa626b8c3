-- pg_migrate: what a migration changed, and drift of the live schema from the recorded one.

-- migrate.diff's rows as one jsonb array: what migrate.history.changes holds.
CREATE FUNCTION migrate.changes(before jsonb, after jsonb)
RETURNS jsonb
-- PL/pgSQL for its cached plan: every migration calls it.
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF before IS NULL OR after IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT coalesce(jsonb_agg(jsonb_strip_nulls(to_jsonb(d))), '[]')
            FROM migrate.diff(before, after) d);
END
$$;

-- Differences between the schema recorded after the last finished migration (or baseline)
-- and the live one, each with the last DDL command logged on the object (or its table) since
-- then: who ran it, when, from which application.
CREATE FUNCTION migrate.drift()
RETURNS TABLE (kind text, object text, change text, attribute text,
               recorded jsonb, live jsonb,
               changed_at timestamptz, changed_by name, changed_as name,
               application_name text, client_addr inet, command_tag text,
               migration_version text, since_version text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    last record;
    recorded jsonb := migrate.recorded_schema();
BEGIN
    PERFORM migrate.note_if_standby();
    IF recorded IS NULL THEN
        RAISE EXCEPTION 'pg_migrate: no recorded schema to compare with'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The schema is recorded after each migration and baseline; none is recorded yet.',
                  HINT = 'Apply a migration, or record the current schema with migrate.baseline.';
    END IF;
    SELECT h.version, s.recorded_at INTO last
    FROM migrate.schema_state s
    LEFT JOIN LATERAL (SELECT h.version FROM migrate.history h
                       WHERE h.finished_at IS NOT NULL AND h.fingerprint IS NOT NULL
                       ORDER BY h.finished_at DESC LIMIT 1) h ON true;
    RETURN QUERY
    SELECT d.kind, d.object, d.change, d.attribute, d.old, d.new,
           l.logged_at, l.session_user_name, l.current_user_name, l.application_name,
           l.client_addr, l.command_tag, l.migration_version, last.version
    FROM migrate.diff(recorded, migrate.describe()) d
    LEFT JOIN LATERAL (
        SELECT *
        FROM migrate.ddl_log g
        WHERE g.logged_at > last.recorded_at
          AND g.event IN ('ddl_command_end', 'sql_drop')
          AND g.object_identity IN (d.object, d.relation)
        ORDER BY g.logged_at DESC, g.id DESC
        LIMIT 1) l ON true;
END
$$;

COMMENT ON FUNCTION migrate.drift() IS
    'pg_migrate: how the live schema differs from the one recorded after the last migration, and who changed it';
