-- pg_migrate: the recorded schema (migrate.schema_objects), kept up to date object by object.
--
-- A migration must not hold its locks while the whole schema is described: it re-describes
-- the objects its DDL touched (migrate.schema_queue, written by the DDL log's triggers), the
-- tables' own constraints, indexes, triggers and policies with them, and, when it renamed or
-- moved something, every object that depends on it (they print its name). What it changed
-- is the difference between their rows before and after, and the fingerprint moves by their
-- hashes. These functions are pg_migrate's bookkeeping: they run as the extension's owner.

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

-- Whether the recorded rows belong to this database on this server: their OIDs are this
-- database's (not a restored dump's, not from before pg_upgrade).
CREATE FUNCTION migrate.schema_is_recorded()
RETURNS boolean
-- PL/pgSQL for its cached plan: it runs before every migration.
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN EXISTS (
        SELECT FROM migrate.schema_state s
        WHERE s.system_identifier = (SELECT system_identifier FROM pg_control_system())
          AND s.database_oid = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND s.server_major = current_setting('server_version_num')::int / 10000);
END
$$;

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

-- Re-describes what the queued DDL of `version` (NULL: DDL outside migrations) touched.
-- Returns what changed (migrate.changes of the touched objects' rows before and after) and
-- the fingerprint after; where nothing of this database was recorded, the whole schema is
-- recorded and what changed is unknown (NULL).
CREATE FUNCTION migrate.record_changes(version text, OUT changes jsonb, OUT fingerprint text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    t_class oid[]; t_oid oid[]; t_direct boolean[]; t_recurses boolean[];
    d_kind text[]; d_ident text[];
    whole oid[]; rels oid[]; idx oid[]; cons oid[]; trgs oid[]; pols oid[];
    typs oid[]; funs oid[]; nsps oid[]; exts oid[];
    o_kind text[]; o_ident text[]; o_desc jsonb[]; o_hash bytea[];
    n_kind text[]; n_ident text[]; n_desc jsonb[]; n_class oid[]; n_oid oid[]; n_rel oid[];
    n_hash bytea[];
BEGIN
    -- Nothing of this database recorded (a restore, pg_upgrade): the whole schema is, now.
    IF NOT migrate.schema_is_recorded() THEN
        fingerprint := migrate.record_whole_schema();
        RETURN;
    END IF;
    -- What the DDL touched; and when it renamed or moved something, everything that depends
    -- on that, transitively (a schema's tables, their indexes, the columns of other tables
    -- of a type in it).
    WITH q AS (
        DELETE FROM migrate.schema_queue q
        WHERE q.migration_version = version
           OR (version IS NULL AND q.migration_version IS NULL)
        RETURNING q.*),
    t AS (SELECT q.classid, q.objid, bool_or(q.renamed) AS renamed,
                 bool_or(q.recurses) AS recurses,
                 max(q.object_type) AS object_type, max(q.object_identity) AS object_identity
          FROM q GROUP BY 1, 2)
    SELECT array_agg(t.classid), array_agg(t.objid), array_agg(t.renamed),
           array_agg(t.recurses), array_agg(t.object_type), array_agg(t.object_identity)
    INTO t_class, t_oid, t_direct, t_recurses, d_kind, d_ident
    FROM t;
    IF t_class IS NULL THEN
        SELECT s.fingerprint INTO fingerprint FROM migrate.schema_state s;
        changes := '[]';
        RETURN;
    END IF;
    WITH RECURSIVE dep(classid, objid) AS (
        SELECT x.classid, x.objid FROM unnest(t_class, t_oid, t_direct) AS x(classid, objid, renamed)
        WHERE x.renamed
        UNION
        SELECT d.classid, d.objid
        FROM dep JOIN pg_depend d ON d.refclassid = dep.classid AND d.refobjid = dep.objid
    ),
    -- A table's or index's partitions and inheritance children, at every level: what is
    -- done to the parent (a column, a constraint, an index) is done to them, unreported.
    inh(objid) AS (
        SELECT x.objid FROM unnest(t_class, t_oid, t_recurses) AS x(classid, objid, recurses)
        WHERE x.classid = 'pg_class'::regclass AND x.recurses
        UNION
        SELECT i.inhrelid FROM inh JOIN pg_inherits i ON i.inhparent = inh.objid
    ),
    -- What PostgreSQL cloned from a touched object onto partitions (triggers, indexes,
    -- foreign keys): the clones depend on it as partition dependencies.
    clones(classid, objid) AS (
        SELECT x.classid, x.objid FROM unnest(t_class, t_oid) AS x(classid, objid)
        UNION
        SELECT d.classid, d.objid
        FROM clones JOIN pg_depend d ON d.refclassid = clones.classid AND d.refobjid = clones.objid
        WHERE d.deptype IN ('P', 'S')
    ),
    -- And the partitions recorded under a touched table: DETACH PARTITION reports the
    -- parent alone, and the catalogs no longer link the two.
    detached(objid) AS (
        SELECT o.obj_oid
        FROM unnest(t_class, t_oid) AS x(classid, objid)
        JOIN migrate.schema_objects p ON p.obj_oid = x.objid AND p.obj_class = x.classid
        JOIN migrate.schema_objects o ON o.description ->> 'partition_of' = p.identity
                                     AND o.kind = 'tables'
        WHERE x.classid = 'pg_class'::regclass AND p.kind = 'tables'
    ),
    touched AS (
        SELECT x.classid, x.objid, true AS direct FROM unnest(t_class, t_oid) AS x(classid, objid)
        UNION
        SELECT 'pg_class'::regclass, inh.objid, true FROM inh
        UNION
        SELECT clones.classid, clones.objid, true FROM clones
        UNION
        SELECT 'pg_class'::regclass, detached.objid, true FROM detached
        UNION
        SELECT dep.classid, dep.objid, false FROM dep
    )
    SELECT array_agg(t.classid ORDER BY t.classid, t.objid), array_agg(t.objid ORDER BY t.classid, t.objid),
           array_agg(t.direct ORDER BY t.classid, t.objid)
    INTO t_class, t_oid, t_direct
    FROM (SELECT u.classid, u.objid, bool_or(u.direct) AS direct FROM touched u GROUP BY 1, 2) t;

    -- The described objects they stand for. A relation DDL touched directly is re-described
    -- with its constraints, indexes, triggers and policies (ALTER TABLE rebuilds indexes
    -- under new OIDs without reporting them); one that depends on a renamed object, alone.
    WITH t AS (SELECT * FROM unnest(t_class, t_oid, t_direct) AS x(classid, objid, direct)),
    m(what, oid) AS (
        SELECT CASE WHEN c.relkind IN ('i', 'I') THEN 'index'
                    WHEN c.relkind = 'c' THEN 'type'
                    WHEN t.direct THEN 'whole' ELSE 'relation' END,
               CASE WHEN c.relkind = 'c' THEN c.reltype ELSE c.oid END
        FROM t JOIN pg_class c ON c.oid = t.objid
        WHERE t.classid = 'pg_class'::regclass
          AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S', 'i', 'I', 'c')
        UNION ALL
        SELECT 'relation', a.adrelid FROM t JOIN pg_attrdef a ON a.oid = t.objid
        WHERE t.classid = 'pg_attrdef'::regclass
        UNION ALL
        SELECT 'relation', r.ev_class FROM t JOIN pg_rewrite r ON r.oid = t.objid
        WHERE t.classid = 'pg_rewrite'::regclass
        UNION ALL
        SELECT CASE WHEN c.conrelid <> 0 THEN 'constraint' ELSE 'type' END,
               CASE WHEN c.conrelid <> 0 THEN c.oid ELSE c.contypid END
        FROM t JOIN pg_constraint c ON c.oid = t.objid
        WHERE t.classid = 'pg_constraint'::regclass
        UNION ALL
        -- Not internal triggers (foreign keys' own): they are not described, and a table
        -- that thousands of foreign keys reference has thousands of them.
        SELECT 'trigger', g.oid FROM t JOIN pg_trigger g ON g.oid = t.objid
        WHERE t.classid = 'pg_trigger'::regclass AND NOT g.tgisinternal
        UNION ALL
        SELECT CASE t.classid WHEN 'pg_policy'::regclass THEN 'policy'
                              WHEN 'pg_type'::regclass THEN 'type'
                              WHEN 'pg_proc'::regclass THEN 'function'
                              WHEN 'pg_namespace'::regclass THEN 'schema'
                              ELSE 'extension' END,
               t.objid
        FROM t
        WHERE t.classid IN ('pg_policy'::regclass, 'pg_type'::regclass,
                            'pg_proc'::regclass, 'pg_namespace'::regclass,
                            'pg_extension'::regclass)
    ),
    children(what, oid) AS (
        SELECT 'index', i.indexrelid FROM m JOIN pg_index i ON i.indrelid = m.oid WHERE m.what = 'whole'
        UNION ALL
        SELECT 'constraint', c.oid FROM m JOIN pg_constraint c ON c.conrelid = m.oid WHERE m.what = 'whole'
        UNION ALL
        -- Not the internal ones: a table referenced by thousands of foreign keys has
        -- thousands of them, and they are not described.
        SELECT 'trigger', g.oid FROM m JOIN pg_trigger g ON g.tgrelid = m.oid
        WHERE m.what = 'whole' AND NOT g.tgisinternal
        UNION ALL
        SELECT 'policy', p.oid FROM m JOIN pg_policy p ON p.polrelid = m.oid WHERE m.what = 'whole'
        UNION ALL
        -- A partition of a table that foreign keys reference gets a clone of each, on the
        -- referencing table.
        SELECT 'constraint', d.objid
        FROM m JOIN pg_class c ON c.oid = m.oid AND c.relispartition
        JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = m.oid
                        AND d.classid = 'pg_constraint'::regclass
        WHERE m.what = 'whole'
    ),
    a AS (SELECT * FROM m UNION SELECT * FROM children)
    -- Each once: describe_objects takes distinct OIDs.
    SELECT array_agg(DISTINCT a.oid) FILTER (WHERE a.what = 'whole'),
           array_agg(DISTINCT a.oid) FILTER (WHERE a.what IN ('whole', 'relation')),
           array_agg(DISTINCT a.oid) FILTER (WHERE a.what = 'index'),
           array_agg(DISTINCT a.oid) FILTER (WHERE a.what = 'constraint'),
           array_agg(DISTINCT a.oid) FILTER (WHERE a.what = 'trigger'),
           array_agg(DISTINCT a.oid) FILTER (WHERE a.what = 'policy'),
           array_agg(DISTINCT a.oid) FILTER (WHERE a.what = 'type'),
           array_agg(DISTINCT a.oid) FILTER (WHERE a.what = 'function'),
           array_agg(DISTINCT a.oid) FILTER (WHERE a.what = 'schema'),
           array_agg(DISTINCT a.oid) FILTER (WHERE a.what = 'extension')
    INTO whole, rels, idx, cons, trgs, pols, typs, funs, nsps, exts
    FROM a;

    SELECT array_agg(d.kind), array_agg(d.identity), array_agg(d.description),
           array_agg(d.obj_class), array_agg(d.obj_oid), array_agg(d.rel_oid)
    INTO n_kind, n_ident, n_desc, n_class, n_oid, n_rel
    FROM migrate.describe_objects(NULL, rels, idx, cons, trgs, pols, typs, funs, nsps, exts) d;

    -- The rows they replace: of the objects touched (dropped ones included) and of those
    -- re-described, of the tables re-described whole and of dropped tables (whatever went
    -- with them).
    WITH gone AS (
        DELETE FROM migrate.schema_objects o
        USING (SELECT x.classid, x.objid FROM unnest(t_class, t_oid) AS x(classid, objid)
               UNION
               SELECT x.classid, x.objid FROM unnest(n_class, n_oid) AS x(classid, objid)) k
        WHERE o.obj_oid = k.objid AND o.obj_class = k.classid
        RETURNING o.kind, o.identity, o.description, o.hash),
    gone_children AS (
        DELETE FROM migrate.schema_objects o
        USING (SELECT x.objid FROM unnest(t_class, t_oid) AS x(classid, objid)
               WHERE x.classid = 'pg_class'::regclass
                 AND NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = x.objid)
               UNION SELECT unnest(whole)) k
        WHERE o.rel_oid = k.objid
          AND NOT EXISTS (SELECT FROM gone g WHERE g.kind = o.kind AND g.identity = o.identity)
        RETURNING o.kind, o.identity, o.description, o.hash),
    both_ AS (SELECT * FROM gone UNION ALL SELECT * FROM gone_children)
    SELECT array_agg(b.kind), array_agg(b.identity), array_agg(b.description), array_agg(b.hash)
    INTO o_kind, o_ident, o_desc, o_hash
    FROM both_ b;
    -- Rows found by what they are, not by OID: those of dropped objects (an index REINDEX
    -- CONCURRENTLY rebuilt has an OID the recorded row does not know), and any row under an
    -- identity a re-described object now has.
    WITH dropped AS (
        DELETE FROM migrate.schema_objects o
        USING (SELECT CASE
                   WHEN x.object_type IN ('table', 'foreign table') THEN 'tables'
                   WHEN x.object_type = 'view' THEN 'views'
                   WHEN x.object_type = 'materialized view' THEN 'materialized_views'
                   WHEN x.object_type = 'sequence' THEN 'sequences'
                   WHEN x.object_type = 'index' THEN 'indexes'
                   WHEN x.object_type = 'table constraint' THEN 'constraints'
                   WHEN x.object_type = 'trigger' THEN 'triggers'
                   WHEN x.object_type = 'policy' THEN 'policies'
                   WHEN x.object_type IN ('type', 'domain', 'composite type', 'enum') THEN 'types'
                   WHEN x.object_type IN ('function', 'procedure', 'aggregate') THEN 'functions'
                   WHEN x.object_type = 'schema' THEN 'schemas'
                   WHEN x.object_type = 'extension' THEN 'extensions' END AS kind,
                      x.identity
               FROM unnest(d_kind, d_ident) AS x(object_type, identity)
               WHERE x.identity IS NOT NULL
               UNION
               SELECT x.kind, x.identity FROM unnest(n_kind, n_ident) AS x(kind, identity)) k
        WHERE o.kind = k.kind AND o.identity = k.identity
        RETURNING o.kind, o.identity, o.description, o.hash)
    SELECT coalesce(o_kind, '{}') || array_agg(g.kind), coalesce(o_ident, '{}') || array_agg(g.identity),
           coalesce(o_desc, '{}') || array_agg(g.description), coalesce(o_hash, '{}') || array_agg(g.hash)
    INTO o_kind, o_ident, o_desc, o_hash
    FROM dropped g;

    WITH added AS (
        INSERT INTO migrate.schema_objects (kind, identity, description, obj_class, obj_oid, rel_oid)
        SELECT * FROM unnest(n_kind, n_ident, n_desc, n_class, n_oid, n_rel)
        RETURNING hash)
    SELECT array_agg(a.hash) INTO n_hash FROM added a;

    UPDATE migrate.schema_state s
    SET state = a.state, recorded_at = clock_timestamp()
    FROM (SELECT migrate.hash_state_adjust(s2.state, coalesce(o_hash, '{}'),
                                           coalesce(n_hash, '{}')) AS state
          FROM migrate.schema_state s2) a
    RETURNING s.fingerprint INTO fingerprint;
    -- DDL outside migrations (version NULL) is recorded, not reported: drift() did that.
    IF version IS NOT NULL THEN
        changes := migrate.changes(migrate.description_of(o_kind, o_ident, o_desc),
                                   migrate.description_of(n_kind, n_ident, n_desc));
    END IF;
END
$$;

-- Before a migration: the recorded schema brought up to date with DDL outside migrations
-- since (or recorded afresh where it is not this database's), so that what the migration
-- changed is its own.
CREATE FUNCTION migrate.record_drift()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT migrate.schema_is_recorded() THEN
        PERFORM migrate.record_whole_schema();
    -- Most migrations follow no DDL from outside them: nothing to re-describe.
    ELSIF EXISTS (SELECT FROM migrate.schema_queue q WHERE q.migration_version IS NULL) THEN
        PERFORM migrate.record_changes(NULL);
    END IF;
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
