-- pg_migrate: the recorded schema (migrate.schema_objects), kept up to date object by object.
--
-- A migration must not hold its locks while the whole schema is described: it re-describes
-- the objects its DDL touched (migrate.schema_queue, written by the DDL log's triggers), the
-- tables' own constraints, indexes, triggers and policies with them, and, when it renamed or
-- moved something, every object that depends on it (they print its name). What it changed
-- is the difference between their rows before and after, and the fingerprint moves by their
-- hashes. src/history/record.rs does that, as the extension's owner, with the functions
-- here.

-- The schema as recorded after the last migration or baseline, one row per described object
-- (migrate.describe_objects). A migration re-describes the objects it touched, and those
-- that print their names when it renamed something; schema_state keeps the sum of the
-- rows' hashes, which is the recorded fingerprint. OIDs say which rows an object's DDL
-- makes stale; they hold only in the database and server the rows were recorded in
-- (schema_state says which), and anywhere else the whole schema is recorded afresh.
CREATE TABLE migrate.schema_objects (
    kind               text NOT NULL,
    identity           text NOT NULL,
    description        jsonb NOT NULL,
    obj_class          oid NOT NULL,
    obj_oid            oid NOT NULL,
    -- The table a constraint, index, trigger or policy belongs to.
    rel_oid            oid,
    hash               bytea NOT NULL
                       GENERATED ALWAYS AS (migrate.object_hash(kind, identity, description)) STORED,
    PRIMARY KEY (kind, identity)
);

CREATE INDEX schema_objects_object ON migrate.schema_objects (obj_oid, obj_class);
CREATE INDEX schema_objects_relation ON migrate.schema_objects (rel_oid);
CREATE INDEX schema_objects_partition_of ON migrate.schema_objects ((description ->> 'partition_of'));

COMMENT ON TABLE migrate.schema_objects IS
    'pg_migrate: the schema recorded after the last migration, one row per object';

CREATE TABLE migrate.schema_state (
    one                boolean PRIMARY KEY DEFAULT true CHECK (one),
    -- The sum of the objects' expanded hashes (migrate.hash_state), and its fingerprint.
    state              bytea NOT NULL,
    fingerprint        text NOT NULL GENERATED ALWAYS AS (migrate.state_fingerprint(state)) STORED,
    system_identifier  bigint NOT NULL,
    database_oid       oid NOT NULL,
    server_major       integer NOT NULL,
    recorded_at        timestamptz NOT NULL
);

COMMENT ON TABLE migrate.schema_state IS
    'pg_migrate: the recorded schema''s fingerprint, and where it was recorded';

-- Objects DDL touched since they were last described, written by the DDL log's event
-- triggers in the DDL's own transaction: migration_version for a migration's DDL, NULL for
-- DDL outside migrations (drift, which the next migration records first).
CREATE TABLE migrate.schema_queue (
    classid            oid NOT NULL,
    objid              oid NOT NULL,
    -- The command renamed or moved something: objects that print its name change too.
    renamed            boolean NOT NULL,
    -- The command may have done to a table's partitions and children what it did to the
    -- table (all but ALTER TABLE ... ATTACH or DETACH PARTITION).
    recurses           boolean NOT NULL DEFAULT true,
    -- For a dropped object, what it was: its row in the recorded schema is found by these
    -- even when its OID is not the recorded one (REINDEX CONCURRENTLY swaps OIDs unseen).
    object_type        text,
    object_identity    text,
    migration_version  text
);

CREATE INDEX schema_queue_migration ON migrate.schema_queue (migration_version);

COMMENT ON TABLE migrate.schema_queue IS
    'pg_migrate: objects changed by DDL and not yet re-described in migrate.schema_objects';

-- Restored elsewhere, the recorded schema still compares with the live one (drift); its OIDs
-- are not used there (schema_state tells), the next migration records the schema afresh.
SELECT pg_catalog.pg_extension_config_dump('migrate.schema_objects', '');
SELECT pg_catalog.pg_extension_config_dump('migrate.schema_state', '');

-- Records the whole schema afresh, and returns its fingerprint. Once per database (the first
-- migration or baseline), and after a restore elsewhere.
CREATE FUNCTION migrate.record_whole_schema()
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    total bytea;
    fingerprint text;
BEGIN
    DELETE FROM migrate.schema_queue WHERE migration_version IS NULL;
    DELETE FROM migrate.schema_objects;
    INSERT INTO migrate.schema_objects (kind, identity, description, obj_class, obj_oid, rel_oid)
    SELECT a.kind, a.identity, a.description, a.obj_class, a.obj_oid, a.rel_oid
    FROM migrate.all_objects() a;
    SELECT migrate.hash_state(coalesce(array_agg(o.hash), '{}')) INTO total FROM migrate.schema_objects o;
    -- Statistics now, not at autovacuum's leisure: without them the planner takes a table's
    -- few rows for hundreds and reads all of them, in every migration, under its locks.
    ANALYZE migrate.schema_objects;
    INSERT INTO migrate.schema_state AS s
        (state, system_identifier, database_oid, server_major, recorded_at)
    VALUES (total, (SELECT system_identifier FROM pg_control_system()),
            (SELECT oid FROM pg_database WHERE datname = current_database()),
            current_setting('server_version_num')::int / 10000, clock_timestamp())
    ON CONFLICT (one) DO UPDATE
        SET state = EXCLUDED.state, system_identifier = EXCLUDED.system_identifier,
            database_oid = EXCLUDED.database_oid, server_major = EXCLUDED.server_major,
            recorded_at = EXCLUDED.recorded_at
    RETURNING s.fingerprint INTO fingerprint;
    RETURN fingerprint;
END
$$;

-- The recorded schema as one description, as migrate.describe() gives the live one.
CREATE FUNCTION migrate.recorded_schema()
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN EXISTS (SELECT FROM migrate.schema_state) THEN
        (SELECT migrate.description_of(array_agg(o.kind), array_agg(o.identity),
                                       array_agg(o.description))
         FROM migrate.schema_objects o)
    END
$$;

COMMENT ON FUNCTION migrate.recorded_schema() IS
    'pg_migrate: the schema recorded after the last migration, as migrate.describe() describes the live one';
