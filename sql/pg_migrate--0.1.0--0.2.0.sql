-- pg_migrate 0.1.0 to 0.2.0: ALTER EXTENSION pg_migrate UPDATE TO '0.2.0'.
--
-- Every change of a table, view or function signature between two releases goes into the
-- upgrade script between them; a test installs the previous release, fills it, upgrades, and
-- compares every object with a fresh install (pg_test/test_upgrade.py).
\echo Use "ALTER EXTENSION pg_migrate UPDATE TO '0.2.0'" to load this file. \quit

-- Error texts are shown only to roles with the privileges of the role the work ran as: the
-- tables are renamed and read through views of their old names that withhold them. Their
-- constraints, indexes and sequence take the names a fresh install gives them.
ALTER TABLE migrate.steps RENAME TO step_records;
ALTER TABLE migrate.backfills RENAME TO backfill_jobs;
ALTER SEQUENCE migrate.backfills_id_seq RENAME TO backfill_jobs_id_seq;
-- A watched migration's rollback runs as phases after its own.
ALTER TABLE migrate.step_records ADD COLUMN rollback boolean NOT NULL DEFAULT false;
-- Where each migration's and phase's commit ends in the WAL, for standbys' replay.
ALTER TABLE migrate.step_records ADD COLUMN commit_xid xid8, ADD COLUMN commit_lsn pg_lsn;
ALTER TABLE migrate.history ADD COLUMN commit_xid xid8, ADD COLUMN commit_lsn pg_lsn;
GRANT SELECT (commit_xid, commit_lsn) ON migrate.history TO PUBLIC;
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT co.conrelid::pg_catalog.regclass AS rel, co.conname,
                    pg_catalog.regexp_replace(co.conname, '^(steps|backfills)_',
                        CASE WHEN co.conname LIKE 'steps\_%' THEN 'step_records_'
                             ELSE 'backfill_jobs_' END) AS new_name
               FROM pg_catalog.pg_constraint co
              WHERE co.conrelid IN ('migrate.step_records'::pg_catalog.regclass,
                                    'migrate.backfill_jobs'::pg_catalog.regclass)
                AND co.conname ~ '^(steps|backfills)_'
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', c.rel, c.conname, c.new_name);
    END LOOP;
    -- Grants of the DBA's own on the tables would read the texts the views withhold. They
    -- are revoked, and said (as a WARNING: an extension script's NOTICEs are not sent):
    -- granted again here, they would count as the extension's own privileges, which
    -- pg_dump leaves out.
    FOR c IN SELECT DISTINCT t.oid::pg_catalog.regclass AS rel, v.name AS view,
                    a.grantee::pg_catalog.regrole AS grantee
               FROM pg_catalog.pg_class t
               JOIN (VALUES ('migrate.step_records'::pg_catalog.regclass, 'migrate.steps'),
                            ('migrate.backfill_jobs'::pg_catalog.regclass, 'migrate.backfills')) v(rel, name)
                 ON v.rel OPERATOR(pg_catalog.=) t.oid,
                    LATERAL (SELECT t.relacl AS acl
                             UNION ALL
                             SELECT at.attacl FROM pg_catalog.pg_attribute at
                              WHERE at.attrelid OPERATOR(pg_catalog.=) t.oid) acls,
                    LATERAL pg_catalog.aclexplode(acls.acl) a
              WHERE a.grantee NOT IN (t.relowner, 0, 'migrate_admin'::pg_catalog.regrole)
    LOOP
        -- CASCADE: grants it passed on (WITH GRANT OPTION) go with it, and are listed too.
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM %s CASCADE', c.rel, c.grantee);
        RAISE WARNING 'pg_migrate: the privileges of role % on % were revoked', c.grantee, c.view
            USING DETAIL = pg_catalog.format('%s is now the view %s over table %s, which only its owner reads: error texts and keys quote rows of tables that not every reader may read.',
                                             c.view, c.view, c.rel),
                  HINT = pg_catalog.format('GRANT SELECT ON %s TO %s; gives it back, error texts shown as their submitter''s privileges allow.',
                                           c.view, c.grantee);
    END LOOP;
END
$$;
COMMENT ON TABLE migrate.step_records IS
    'pg_migrate: the phases of migrations run by the background worker, with their state; read through migrate.steps';
COMMENT ON TABLE migrate.backfill_jobs IS
    'pg_migrate: backfill jobs (migrate.backfill), with the progress of their last committed batch; read through migrate.backfills';
REVOKE ALL ON migrate.step_records, migrate.backfill_jobs FROM PUBLIC, migrate_admin;

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

-- The jobs, their error texts shown as migrate.steps shows a phase's.
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

CREATE OR REPLACE VIEW migrate.backfill_progress AS
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

GRANT SELECT (version, phase, kind, first_statement, last_statement, first_line, state,
              attempts, started_at, finished_at, duration, worker_pid, target_table,
              indexes_before, built_index, error_sqlstate, commit_lsn)
    ON migrate.steps TO PUBLIC;
GRANT SELECT ON migrate.steps, migrate.backfills TO migrate_admin;
REVOKE EXECUTE ON FUNCTION migrate.may_read_as(name), migrate.quoted_data(text, name),
    migrate.quoted_data(text[], name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION migrate.may_read_as(name), migrate.quoted_data(text, name),
    migrate.quoted_data(text[], name) TO PUBLIC;

-- (IF NOT EXISTS: development builds that called themselves 0.1.0 had them already.)
-- Every migration and every worker poll looks for the unfinished versions and the highest
-- baseline: a handful of rows among thousands of applied ones, found without reading them.
CREATE INDEX IF NOT EXISTS history_unfinished ON migrate.history (version_key)
    WHERE status IN ('pending', 'running', 'failed');
CREATE INDEX IF NOT EXISTS history_baseline ON migrate.history (version_key)
    WHERE status = 'baseline';

-- Relations, indexes and constraints described natively (src/schema/describe.rs), with the
-- same text as before, and hashed there for a fingerprint; column defaults and partition
-- bounds printed without opening their relation (the same text); pg_migrate's own extension
-- and NOT NULL constraints (PostgreSQL 18 keeps them) no longer described.
DROP FUNCTION migrate.nulls_not_distinct(pg_catalog.pg_index);
DROP FUNCTION migrate.all_objects(text[]);
DROP FUNCTION migrate.describe_objects(text[], oid[], oid[], oid[], oid[], oid[], oid[], oid[], oid[], oid[]);
CREATE FUNCTION migrate.describe_table_objects(
    "schemas" text[], "extension_schemas" oid[], "relations" oid[], "indexes" oid[],
    "constraints" oid[], "hashes_only" boolean DEFAULT false)
RETURNS TABLE ("kind" text, "identity" text, "description" text, "obj_class" oid,
               "obj_oid" oid, "rel_oid" oid, "hash" bytea)
STABLE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'describe_table_objects_wrapper';

-- One row per described object among those given. An object whose schema is not described
-- or that belongs to an extension yields nothing. rel_oid is the table a constraint, index,
-- trigger or policy belongs to, which re-describing a table re-describes with it. hash is
-- the object's hash where it was computed without the description (relations, indexes,
-- constraints), which hashes_only then leaves out: a fingerprint needs no more.
CREATE FUNCTION migrate.describe_objects(
    schemas text[], relations oid[], indexes oid[], constraints oid[], triggers oid[],
    policies oid[], types oid[], functions oid[], namespaces oid[], extensions oid[],
    hashes_only boolean DEFAULT false)
RETURNS TABLE (kind text, identity text, description jsonb,
               obj_class oid, obj_oid oid, rel_oid oid, hash bytea)
-- PL/pgSQL, not SQL, one query per kind and only for the kinds asked for, each with one
-- generic plan: planning (and starting) one query over every kind took milliseconds, which
-- an SQL function would spend again on every call, every migration. The plans probe the
-- catalogs by OID, which suits 1 object and 100,000 alike.
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
-- Constants in defaults and expressions are printed under these: the same schema must
-- describe alike whatever the caller's session (or the worker's last submitter) set.
SET datestyle = 'ISO, MDY'
SET intervalstyle = 'postgres'
SET timezone = 'UTC'
SET extra_float_digits = 1
SET bytea_output = 'hex'
SET quote_all_identifiers = off
SET standard_conforming_strings = on
AS $describe$
#variable_conflict use_column
DECLARE
    -- Schemas that extensions own: a handful, read once per call.
    extension_schemas oid[] := ARRAY(SELECT d.objid FROM pg_depend d
                                     WHERE d.classid = 'pg_namespace'::regclass
                                       AND d.deptype = 'e');
    -- The tables the triggers or policies asked for belong to.
    owners oid[];
BEGIN
-- Relations, indexes and constraints: a schema has them by the tens of thousands, and
-- src/schema/describe.rs describes them natively, with the same server functions, under
-- this function's settings. Each object is asked for once (callers pass distinct OIDs).
IF cardinality(relations) > 0 OR cardinality(indexes) > 0 OR cardinality(constraints) > 0 THEN
RETURN QUERY
SELECT d.kind, d.identity, d.description::jsonb, d.obj_class, d.obj_oid, d.rel_oid, d.hash
FROM migrate.describe_table_objects(schemas, extension_schemas, relations, indexes, constraints,
                                    hashes_only) d;
END IF;
owners := ARRAY(SELECT o.tgrelid FROM unnest(triggers) x JOIN pg_trigger o ON o.oid = x
                UNION SELECT o.polrelid FROM unnest(policies) x JOIN pg_policy o ON o.oid = x);
IF cardinality(triggers) > 0 THEN
RETURN QUERY
WITH rel AS MATERIALIZED (
    SELECT * FROM migrate.described_relations(owners, schemas, extension_schemas)
)
SELECT 'triggers', quote_ident(t.tgname) || ' on ' || r.ident, jsonb_build_object(
            'table', r.ident,
            'definition', pg_get_triggerdef(t.oid),
            'enabled', CASE t.tgenabled WHEN 'O' THEN 'origin' WHEN 'D' THEN 'disabled'
                                        WHEN 'R' THEN 'replica' WHEN 'A' THEN 'always' END),
       'pg_trigger'::regclass::oid, t.oid, r.oid, NULL::bytea
FROM unnest(triggers) x JOIN pg_trigger t ON t.oid = x JOIN rel r ON r.oid = t.tgrelid
WHERE NOT t.tgisinternal;
END IF;
IF cardinality(policies) > 0 THEN
RETURN QUERY
WITH rel AS MATERIALIZED (
    SELECT * FROM migrate.described_relations(owners, schemas, extension_schemas)
)
SELECT 'policies', quote_ident(p.polname) || ' on ' || r.ident, jsonb_strip_nulls(jsonb_build_object(
            'table', r.ident,
            'command', CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT'
                                     WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE'
                                     ELSE 'ALL' END,
            'permissive', p.polpermissive,
            'roles', (SELECT jsonb_agg(CASE WHEN x = 0 THEN 'public'
                                            ELSE quote_ident(x::regrole::text) END
                                       ORDER BY 1)
                      FROM unnest(p.polroles) x),
            'using', pg_get_expr(p.polqual, p.polrelid),
            'with_check', pg_get_expr(p.polwithcheck, p.polrelid))),
       'pg_policy'::regclass::oid, p.oid, r.oid, NULL::bytea
FROM unnest(policies) x JOIN pg_policy p ON p.oid = x JOIN rel r ON r.oid = p.polrelid;
END IF;
IF cardinality(types) > 0 THEN
RETURN QUERY
SELECT 'types', format_type(t.oid, NULL), jsonb_strip_nulls(jsonb_build_object(
        'kind', CASE t.typtype WHEN 'e' THEN 'enum' WHEN 'c' THEN 'composite'
                               WHEN 'd' THEN 'domain' WHEN 'r' THEN 'range'
                               ELSE 'base' END,
        'labels', CASE WHEN t.typtype = 'e' THEN
                      (SELECT jsonb_agg(e.enumlabel ORDER BY e.enumsortorder)
                       FROM pg_enum e WHERE e.enumtypid = t.oid) END,
        'attributes', CASE WHEN t.typtype = 'c' THEN
                      (SELECT jsonb_agg(jsonb_build_array(quote_ident(a.attname),
                                                          format_type(a.atttypid, a.atttypmod))
                                        ORDER BY a.attnum)
                       FROM pg_attribute a
                       WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) END,
        'base', CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
        'not_null', CASE WHEN t.typtype = 'd' THEN t.typnotnull END,
        'default', t.typdefault,
        'constraints', CASE WHEN t.typtype = 'd' THEN
                      (SELECT jsonb_object_agg(quote_ident(c.conname), jsonb_build_object(
                                  'definition', pg_get_constraintdef(c.oid),
                                  'validated', c.convalidated))
                       FROM pg_constraint c WHERE c.contypid = t.oid) END,
        'subtype', (SELECT format_type(g.rngsubtype, NULL) FROM pg_range g
                    WHERE g.rngtypid = t.oid),
        'acl', (SELECT jsonb_agg(a::text ORDER BY a::text) FROM unnest(t.typacl) a))),
       'pg_type'::regclass::oid, t.oid, NULL::oid, NULL::bytea
FROM unnest(types) x JOIN pg_type t ON t.oid = x
JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE migrate.schema_is_described(n, schemas, extension_schemas)
  AND t.typtype IN ('b', 'e', 'c', 'd', 'r')
  AND NOT (t.typtype = 'b' AND t.typcategory = 'A')
  AND (t.typtype <> 'c' OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e');
END IF;
IF cardinality(functions) > 0 THEN
RETURN QUERY
SELECT 'functions', p.oid::regprocedure::text, jsonb_strip_nulls(jsonb_build_object(
        'kind', CASE p.prokind WHEN 'f' THEN 'function' WHEN 'p' THEN 'procedure'
                               WHEN 'a' THEN 'aggregate' WHEN 'w' THEN 'window' END,
        'returns', pg_get_function_result(p.oid),
        -- The whole CREATE statement (language, volatility, security, settings, body),
        -- hashed: bodies can be long, and a difference is all a comparison needs.
        'definition_sha256', CASE WHEN p.prokind <> 'a' THEN
                      encode(sha256(convert_to(pg_get_functiondef(p.oid), 'UTF8')), 'hex') END,
        'acl', (SELECT jsonb_agg(a::text ORDER BY a::text) FROM unnest(p.proacl) a))),
       'pg_proc'::regclass::oid, p.oid, NULL::oid, NULL::bytea
FROM unnest(functions) x JOIN pg_proc p ON p.oid = x
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE migrate.schema_is_described(n, schemas, extension_schemas)
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e');
END IF;
IF cardinality(namespaces) > 0 THEN
RETURN QUERY
SELECT 'schemas', quote_ident(n.nspname), jsonb_strip_nulls(jsonb_build_object(
           'acl', (SELECT jsonb_agg(a::text ORDER BY a::text) FROM unnest(n.nspacl) a))),
       'pg_namespace'::regclass::oid, n.oid, NULL::oid, NULL::bytea
FROM unnest(namespaces) x JOIN pg_namespace n ON n.oid = x
WHERE migrate.schema_is_described(n, schemas, extension_schemas);
END IF;
IF cardinality(extensions) > 0 THEN
RETURN QUERY
SELECT 'extensions', quote_ident(e.extname), jsonb_build_object(
           'version', e.extversion, 'schema', quote_ident(n.nspname)),
       'pg_extension'::regclass::oid, e.oid, NULL::oid, NULL::bytea
FROM unnest(extensions) x JOIN pg_extension e ON e.oid = x
JOIN pg_namespace n ON n.oid = e.extnamespace
-- Not pg_migrate itself: its own release is not the schema's, and an upgrade of it is no drift.
WHERE e.extname <> ALL ('{plpgsql,pg_migrate}'::name[]);
END IF;
END
$describe$;

-- Every object of the database that may be described, by catalog: what describe_objects
-- takes to describe the whole schema.
CREATE FUNCTION migrate.all_objects(schemas text[] DEFAULT NULL, hashes_only boolean DEFAULT false)
RETURNS TABLE (kind text, identity text, description jsonb,
               obj_class oid, obj_oid oid, rel_oid oid, hash bytea)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT d.*
    FROM migrate.describe_objects(
        schemas,
        ARRAY(SELECT c.oid FROM pg_class c WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')),
        ARRAY(SELECT i.indexrelid FROM pg_index i),
        ARRAY(SELECT c.oid FROM pg_constraint c WHERE c.conrelid <> 0),
        ARRAY(SELECT t.oid FROM pg_trigger t WHERE NOT t.tgisinternal),
        ARRAY(SELECT p.oid FROM pg_policy p),
        ARRAY(SELECT t.oid FROM pg_type t WHERE t.typtype IN ('b', 'e', 'c', 'd', 'r')
                                           AND t.typnamespace <> 'pg_catalog'::regnamespace),
        ARRAY(SELECT p.oid FROM pg_proc p WHERE p.pronamespace <> 'pg_catalog'::regnamespace),
        ARRAY(SELECT n.oid FROM pg_namespace n),
        ARRAY(SELECT e.oid FROM pg_extension e),
        hashes_only) d
$$;

CREATE OR REPLACE FUNCTION migrate.fingerprint(schemas text[] DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM migrate.note_if_standby();
    RETURN (SELECT migrate.hash_sum(coalesce(array_agg(coalesce(
                       a.hash, migrate.object_hash(a.kind, a.identity, a.description))), '{}'))
            FROM migrate.all_objects(schemas, hashes_only => true) a);
END
$$;

-- As sql/grants.sql grants them.
REVOKE EXECUTE ON FUNCTION
    migrate.describe_table_objects(text[], oid[], oid[], oid[], oid[], boolean),
    migrate.describe_objects(text[], oid[], oid[], oid[], oid[], oid[], oid[], oid[], oid[], oid[], boolean),
    migrate.all_objects(text[], boolean)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    migrate.describe_table_objects(text[], oid[], oid[], oid[], oid[], boolean),
    migrate.describe_objects(text[], oid[], oid[], oid[], oid[], oid[], oid[], oid[], oid[], oid[], boolean),
    migrate.all_objects(text[], boolean)
TO PUBLIC;

-- What DDL touched is re-described natively (src/history/record.rs, src/history/touched.rs):
-- by OID through the catalogs' indexes, with its SQL statements planned once per session.
DROP FUNCTION migrate.record_drift();
DROP FUNCTION migrate.record_changes(text);
-- Native, as the SQL one could not be inlined (convert_to is stable), and schema_objects
-- computes it for every row a migration writes.
CREATE OR REPLACE FUNCTION migrate.object_hash(kind text, identity text, description jsonb)
RETURNS bytea IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'object_hash_of_row_wrapper';
CREATE OR REPLACE FUNCTION migrate.schema_is_recorded() RETURNS boolean
STRICT STABLE
LANGUAGE c AS 'MODULE_PATHNAME', 'schema_is_recorded_wrapper';

-- The recorded schema without pg_migrate's own row, and the fingerprint without its hash.
UPDATE migrate.schema_state
SET state = migrate.hash_state_adjust(
        state,
        ARRAY(SELECT o.hash FROM migrate.schema_objects o
              WHERE o.kind = 'extensions' AND o.identity = 'pg_migrate'),
        '{}');
DELETE FROM migrate.schema_objects WHERE kind = 'extensions' AND identity = 'pg_migrate';

-- Expand/contract windows (src/window/, sql/window.sql).
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
CREATE FUNCTION migrate.window_writes("version" text)
RETURNS TABLE ("old_writes" bigint, "new_writes" bigint,
               "old_last_write" timestamp with time zone, "new_last_write" timestamp with time zone,
               "old_writes_last_minute" bigint, "new_writes_last_minute" bigint)
STRICT STABLE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'window_writes_wrapper';
CREATE FUNCTION migrate.window_sessions("version" text)
RETURNS TABLE ("pid" integer, "side" text, "writes" bigint,
               "last_write" timestamp with time zone, "last_seen" timestamp with time zone,
               "known_by" text)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'window_sessions_wrapper';
CREATE FUNCTION migrate.count_window_write() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'count_window_write_wrapper';
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

CREATE FUNCTION migrate.expand(
    "version" text, "script" text, "ttl" interval DEFAULT NULL, "description" text DEFAULT NULL,
    "dry_run" boolean DEFAULT false, "on_expiry" text DEFAULT 'alert',
    "options" jsonb DEFAULT NULL, "watch" interval DEFAULT NULL, "on_regression" text DEFAULT NULL)
RETURNS TABLE ("step" integer, "stage" text, "statement" text, "lock" text)
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'expand_wrapper';
CREATE FUNCTION migrate.contract("version" text)
RETURNS TABLE ("step" integer, "stage" text, "statement" text, "lock" text)
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'contract_wrapper';
CREATE FUNCTION migrate.abort("version" text)
RETURNS TABLE ("step" integer, "stage" text, "statement" text, "lock" text)
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'abort_wrapper';
CREATE FUNCTION migrate.extend("version" text, "extra" interval, "reason" text)
RETURNS timestamp with time zone
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'extend_wrapper';
CREATE FUNCTION migrate.writes_version("version" text, "schema" text) RETURNS boolean
STRICT STABLE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'writes_version_wrapper';
CREATE FUNCTION migrate.mirror_window_privileges("version" text) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'mirror_window_privileges_wrapper';
CREATE FUNCTION migrate.follow_window_grants() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'follow_window_grants_wrapper';
-- After a GRANT or REVOKE, open windows carry their tables' privileges again (and after an
-- ALTER TABLE, which may have turned row-level security on).
CREATE EVENT TRIGGER migrate_window_privileges ON ddl_command_end
    WHEN TAG IN ('GRANT', 'REVOKE', 'ALTER TABLE')
    EXECUTE FUNCTION migrate.follow_window_grants();
GRANT SELECT ON migrate.window_history TO migrate_admin;
GRANT SELECT ON migrate.windows TO PUBLIC;
REVOKE EXECUTE ON FUNCTION
    migrate.expand(text, text, interval, text, boolean, text, jsonb, interval, text), migrate.contract(text),
    migrate.abort(text), migrate.writes_version(text, text), migrate.window_writes(text),
    migrate.window_sessions(text), migrate.extend(text, interval, text),
    migrate.count_window_write(), migrate.mirror_window_privileges(text),
    migrate.follow_window_grants()
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    migrate.expand(text, text, interval, text, boolean, text, jsonb, interval, text), migrate.contract(text),
    migrate.abort(text), migrate.writes_version(text, text), migrate.window_writes(text),
    migrate.window_sessions(text), migrate.extend(text, interval, text)
TO PUBLIC;
GRANT EXECUTE ON FUNCTION migrate.count_window_write() TO migrate_admin;
-- A step of publish and contract, run as the window's opener.
GRANT EXECUTE ON FUNCTION migrate.mirror_window_privileges(text) TO migrate_admin;

-- The health gate's signals: errors by kind, counted by the log hook.
CREATE FUNCTION migrate.error_counters()
RETURNS TABLE ("signal" text, "sqlstates" text[], "errors" bigint)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'error_counters_wrapper';
CREATE VIEW migrate.error_counts AS
SELECT signal, sqlstates, errors FROM migrate.error_counters();
COMMENT ON VIEW migrate.error_counts IS
    'pg_migrate: errors reported in this database since the server started, by kind';
REVOKE EXECUTE ON FUNCTION migrate.error_counters() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION migrate.error_counters() TO PUBLIC;
GRANT SELECT ON migrate.error_counts TO PUBLIC;

-- The health gate: apply(..., watch => ..., on_regression => ...), accept, reject, and the
-- workload's samples.
DROP FUNCTION migrate.apply(text, text, text, text, text[], text);
CREATE FUNCTION migrate.apply(
    "version" text, "script" text, "description" text DEFAULT NULL,
    "rollback" text DEFAULT NULL, "allow" text[] DEFAULT NULL, "verify" text DEFAULT NULL,
    "watch" interval DEFAULT NULL, "on_regression" text DEFAULT NULL)
RETURNS TABLE ("status" text, "version" text, "checksum" text, "statements" integer,
               "duration" interval, "retries" integer, "lock_wait" interval)
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'apply_watched_wrapper';
CREATE FUNCTION migrate.accept("version" text, "reason" text DEFAULT NULL) RETURNS text
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'accept_wrapper';
CREATE FUNCTION migrate.reject("version" text, "reason" text DEFAULT NULL) RETURNS text
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'reject_wrapper';
CREATE FUNCTION migrate.workload_samples()
RETURNS TABLE ("taken_at" timestamp with time zone, "seconds" double precision,
               "calls" double precision, "time_ms" double precision, "statements" integer,
               "errors" bigint[])
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'workload_samples_wrapper';
REVOKE EXECUTE ON FUNCTION
    migrate.apply(text, text, text, text, text[], text, interval, text),
    migrate.accept(text, text), migrate.reject(text, text), migrate.workload_samples()
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    migrate.apply(text, text, text, text, text[], text, interval, text),
    migrate.accept(text, text), migrate.reject(text, text)
TO PUBLIC;
GRANT EXECUTE ON FUNCTION migrate.workload_samples() TO migrate_admin;

-- Watched migrations (apply(..., watch => ...)): the health gate after a change. The worker
-- samples the workload every migrate.watch_sample_interval; a watch judges the samples
-- since the change against those before it, at fixed looks, and ends complete, held, or
-- rolled back by the migration's own rollback script run forward (src/watch/).
CREATE TABLE migrate.watch_records (
    -- Checked at commit: migrate.apply records the watch (its baseline) before the
    -- migration takes its locks, and the history row after its DDL.
    version             text PRIMARY KEY REFERENCES migrate.history (version) ON DELETE CASCADE
                        DEFERRABLE INITIALLY DEFERRED,
    state               text NOT NULL DEFAULT 'waiting'
                        CHECK (state IN ('waiting', 'watching', 'complete', 'held', 'rolling back',
                                         'recovering', 'rolled back', 'rollback failed', 'rejected')),
    on_regression       text NOT NULL CHECK (on_regression IN ('hold', 'rollback')),
    watch               interval NOT NULL CHECK (watch > '0'),
    requested_at        timestamptz NOT NULL,
    -- When the migration took effect (its commit, or the worker's last phase): the looks
    -- count from here.
    started_at          timestamptz,
    -- When the rollback's last phase was done: the recovery watch's looks count from here.
    recovery_started_at timestamptz,
    -- The workload's samples before the change (the ring in shared memory when it was
    -- applied), which every look compares with.
    baseline            jsonb NOT NULL,
    looks               integer NOT NULL DEFAULT 0,
    -- Where its looks fall, as fractions of the watch (migrate.watch_looks when applied, whose
    -- default is the one): the false-alarm chance is spread over them.
    look_at             float8[] NOT NULL
                        CHECK (array_ndims(look_at) = 1 AND cardinality(look_at) BETWEEN 1 AND 20
                               AND array_position(look_at, NULL) IS NULL
                               AND look_at[cardinality(look_at)] = 1),
    failing_looks       integer NOT NULL DEFAULT 0,
    -- The last change of state, and for migrate.accept and migrate.reject, who and why.
    changed_at          timestamptz NOT NULL,
    decided_by          name,
    reason              text,
    -- The rollback's phases in migrate.steps start here.
    rollback_phase      integer,
    -- pg_stat_database.checksum_failures when the watch began (NULL: data checksums off).
    checksum_failures_at_start bigint,
    -- What the migration changed, and its tables, as the watch began: "kind identity" -> the
    -- MD5 of its description without privileges. A look that finds one otherwise sees drift
    -- no event trigger reported. NULL: not compared (more than 1,000 objects).
    objects_at_start    jsonb
);

CREATE TABLE migrate.watch_samples (
    version             text NOT NULL REFERENCES migrate.watch_records (version) ON DELETE CASCADE,
    stage               text NOT NULL CHECK (stage IN ('watch', 'recovery')),
    taken_at            timestamptz NOT NULL,
    seconds             float8 NOT NULL,
    -- The time statements took over what the same calls took in the baseline (1: no change);
    -- NULL without pg_stat_statements. coverage: the share of the calls it is measured on.
    latency             float8,
    coverage            float8,
    calls               float8,
    -- The most any one statement's time per call grew over its baseline mean (ms): what
    -- migrate.watch_latency_floor is held against.
    added_ms            float8,
    -- Errors by kind, in migrate.error_counts' order.
    errors              bigint[] NOT NULL,
    -- The longest current wait for a lock on a relation the migration changed, and the replay lag of
    -- the furthest streaming replica.
    lock_wait_ms        float8 NOT NULL,
    lag_bytes           float8 NOT NULL,
    PRIMARY KEY (version, stage, taken_at)
);

CREATE TABLE migrate.watch_looks (
    version             text NOT NULL REFERENCES migrate.watch_records (version) ON DELETE CASCADE,
    stage               text NOT NULL CHECK (stage IN ('watch', 'recovery')),
    look                integer NOT NULL,
    looked_at           timestamptz NOT NULL,
    -- One row per signal, and one ('look') with the look's verdict.
    signal              text NOT NULL,
    baseline            float8,
    now                 float8,
    shift               float8,
    upper               float8,
    p_value             float8,
    -- Latency: the most any one statement's time per call grew over its baseline (ms, the
    -- upper quartile over the samples since the change); at most migrate.watch_latency_floor, a
    -- ratio is the noise of tiny times and does not fail.
    added_ms            float8,
    verdict             text NOT NULL CHECK (verdict IN ('pass', 'fail', 'inconclusive', 'unavailable', 'alert')),
    PRIMARY KEY (version, stage, look, signal)
);

COMMENT ON TABLE migrate.watch_records IS 'pg_migrate: watched migrations and their health gates';
COMMENT ON TABLE migrate.watch_samples IS 'pg_migrate: the workload sampled since each watched change';
COMMENT ON TABLE migrate.watch_looks IS 'pg_migrate: the verdicts of each watch''s looks, by signal';

-- The latest look of each watch, signal by signal: baseline against now, the shift, its
-- upper bound and p-value, and the verdict.
CREATE VIEW migrate.watch_status AS
SELECT w.version, w.state, w.on_regression, w.started_at,
       w.started_at + w.watch AS ends_at, w.looks, l.stage, l.look, l.looked_at, l.signal,
       l.baseline, l.now, l.shift, l.upper, l.p_value, l.added_ms, l.verdict
FROM migrate.watch_records w
LEFT JOIN migrate.watch_looks l
       ON l.version OPERATOR(pg_catalog.=) w.version
      AND (l.stage, l.look) = (SELECT x.stage, x.look FROM migrate.watch_looks x
                                WHERE x.version OPERATOR(pg_catalog.=) w.version
                                ORDER BY x.looked_at DESC, x.look DESC LIMIT 1)
ORDER BY w.version, l.signal OPERATOR(pg_catalog.<>) 'look', l.signal;

COMMENT ON VIEW migrate.watch_status IS
    'pg_migrate: each watched migration''s latest look, signal by signal';

CREATE OR REPLACE VIEW migrate.status AS
SELECT h.version,
       h.description,
       h.status,
       -- A migration is complete once migrate.verify has passed, or, when watched, once its
       -- health gate has.
       CASE WHEN w.state <> 'waiting' THEN w.state
            WHEN h.status <> 'applied' THEN h.status
            WHEN w.state IS NOT NULL THEN 'watching'
            WHEN h.verification = 'passed' THEN 'complete'
            WHEN h.verification = 'failed' THEN 'applied, verification failed'
            ELSE 'applied, unverified' END AS state,
       h.finished_at AS applied_at,
       h.applied_by,
       h.duration,
       h.statements,
       h.phases,
       h.retries,
       h.lock_wait,
       left(h.checksum, 12) AS checksum,
       left(h.fingerprint, 12) AS fingerprint,
       h.verified_at,
       CASE WHEN w.state = 'complete' THEN w.changed_at
            WHEN w.state IS NULL AND h.verification = 'passed' THEN h.verified_at END AS completed_at
FROM migrate.history h
LEFT JOIN migrate.watch_records w ON w.version OPERATOR(pg_catalog.=) h.version
ORDER BY h.version_key;

COMMENT ON VIEW migrate.status IS 'pg_migrate: the history in version order, for psql';

SELECT pg_catalog.pg_extension_config_dump('migrate.watch_records', '');
SELECT pg_catalog.pg_extension_config_dump('migrate.watch_samples', '');
SELECT pg_catalog.pg_extension_config_dump('migrate.watch_looks', '');

REVOKE ALL ON migrate.watch_records, migrate.watch_samples, migrate.watch_looks,
              migrate.watch_status FROM PUBLIC;
GRANT SELECT ON migrate.watch_records, migrate.watch_samples, migrate.watch_looks,
                migrate.watch_status TO migrate_admin;

CREATE FUNCTION migrate.kept_commits()
RETURNS TABLE ("xid" text, "lsn" text)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'kept_commits_wrapper';

-- Which standbys have replayed which migrations (sql/replicas.sql).
--
-- A standby has replayed a migration once its replay position (pg_stat_replication.replay_lsn)
-- has reached the end of the migration's commit record (migrate.history.commit_lsn). Physical
-- replication slots whose standby is not connected are listed too: the WAL they keep is what
-- that standby still has to receive.

-- Where each finished migration's commit ends in the WAL: the position written down, else
-- the one kept in shared memory since the commit (the worker writes it down at its next
-- turn), else, for a committed transaction, the WAL insert position now (later than its
-- commit, never earlier). Versions applied before pg_migrate recorded positions have none.
-- Read-only: who reads it cannot hold up the worker.
CREATE FUNCTION migrate.commit_positions()
RETURNS TABLE (version text, commit_lsn pg_lsn)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT h.version,
           coalesce(h.commit_lsn, k.lsn::pg_lsn,
                    CASE WHEN h.commit_xid IS DISTINCT FROM pg_current_xact_id_if_assigned()
                         THEN pg_current_wal_insert_lsn() END)
    FROM migrate.history h
    LEFT JOIN migrate.kept_commits() k ON k.xid::xid8 = h.commit_xid
    WHERE h.commit_xid IS NOT NULL AND h.status IN ('applied', 'baseline')
$$;

-- One row per standby streaming from this server (physical replication's walsenders, not base
-- backups), and per physical slot no standby uses now ('disconnected': its position is what
-- that standby had received and flushed when it left, restart_lsn; it may have replayed
-- less): how far it has replayed, how far behind it is, the last migration it has replayed
-- and those it has not, in commit order. A walsender that reports no replay position
-- (pg_receivewal, or a standby's first moments) is behind every migration.
CREATE FUNCTION migrate.replicas()
RETURNS TABLE (standby text, slot_name name, client_addr inet, state text, sync_state text,
               replay_lsn pg_lsn, replay_lag_bytes numeric, replay_lag interval,
               replayed_version text, behind text[])
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'pg_migrate: migrate.replicas() reads the primary''s standbys, and this server is a standby'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Standbys are listed by the server they stream from.',
                  HINT = 'Run it on the primary. Here, pg_last_wal_replay_lsn() says how far this standby has replayed, and SELECT * FROM migrate.status; what it shows.';
    END IF;
    -- Without it, pg_stat_replication shows no positions, and every standby would look behind.
    IF NOT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') THEN
        RAISE EXCEPTION 'pg_migrate: reading the standbys'' replay positions needs the privileges of pg_read_all_stats'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('Role %I cannot read the positions in pg_stat_replication.', current_user),
                  HINT = format('GRANT pg_monitor TO %I; (or pg_read_all_stats).', current_user);
    END IF;
    RETURN QUERY
    WITH positions AS MATERIALIZED (
        SELECT p.version, p.commit_lsn FROM migrate.commit_positions() p WHERE p.commit_lsn IS NOT NULL
    ), standbys AS (
        SELECT r.application_name::text AS standby, sl.slot_name, r.client_addr, r.state::text AS state,
               r.sync_state::text AS sync_state, r.replay_lsn, r.replay_lag
          FROM pg_stat_replication r
          JOIN pg_stat_activity a ON a.pid = r.pid AND a.datid IS NULL
          LEFT JOIN pg_replication_slots sl ON sl.active_pid = r.pid
         WHERE r.state <> 'backup'
        UNION ALL
        SELECT sl.slot_name::text, sl.slot_name, NULL, 'disconnected', NULL, sl.restart_lsn, NULL
          FROM pg_replication_slots sl
         WHERE sl.slot_type = 'physical' AND NOT sl.active
    )
    SELECT s.standby, s.slot_name, s.client_addr, s.state, s.sync_state, s.replay_lsn,
           pg_wal_lsn_diff(pg_current_wal_lsn(), s.replay_lsn),
           s.replay_lag,
           (SELECT p.version FROM positions p
             WHERE p.commit_lsn <= s.replay_lsn
             ORDER BY p.commit_lsn DESC LIMIT 1),
           ARRAY(SELECT p.version FROM positions p
                  WHERE p.commit_lsn > s.replay_lsn OR s.replay_lsn IS NULL
                  ORDER BY p.commit_lsn)
      FROM standbys s
     ORDER BY s.state = 'disconnected', s.standby;
END
$$;

COMMENT ON FUNCTION migrate.replicas() IS
    'pg_migrate: per standby of this primary, how far it has replayed and which migrations it has not';

-- CALL migrate.wait_replicas('42', '1 min'): returns once every standby streaming from this
-- server (or each one named, by application_name or slot) has replayed version 42 (by
-- default the migration committed last); raises when one has not after `timeout`.
-- A procedure that commits between polls, like migrate.wait: a waiter holding one snapshot
-- would hold up the worker's CONCURRENTLY builds. (A procedure with a SET clause cannot
-- COMMIT, so every name here is schema-qualified instead of pinning search_path.)
CREATE PROCEDURE migrate.wait_replicas(version text DEFAULT NULL, timeout interval DEFAULT '1 min',
                                       standbys text[] DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    deadline pg_catalog.timestamptz;
    target pg_catalog.pg_lsn;
    wanted pg_catalog.text := wait_replicas.version;
    state pg_catalog.text;
    missing pg_catalog.text[];
    idle pg_catalog.text[];
    streaming pg_catalog.int8;
    pause pg_catalog.float8 := 0.001;
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RAISE EXCEPTION 'pg_migrate: this server is a standby'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Standbys are waited for on the server they stream from.',
                  HINT = 'Run CALL migrate.wait_replicas(...) on the primary.';
    END IF;
    IF timeout IS NULL OR NOT pg_catalog.isfinite(timeout) THEN
        RAISE EXCEPTION 'pg_migrate: wait_replicas needs a finite timeout, not %', coalesce(timeout::pg_catalog.text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A wait that cannot end holds its session for ever.',
                  HINT = 'Give timeout => ''10 min'' (or any finite interval); call it again to keep waiting.';
    END IF;
    deadline := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) timeout;
    IF wanted IS NULL THEN
        SELECT p.version INTO wanted FROM migrate.commit_positions() p
         WHERE p.commit_lsn IS NOT NULL ORDER BY p.commit_lsn DESC LIMIT 1;
        IF wanted IS NULL THEN
            RAISE NOTICE 'pg_migrate: no migration has committed here yet: nothing to wait for';
            RETURN;
        END IF;
    END IF;
    SELECT h.status INTO state
      FROM migrate.history h WHERE h.version OPERATOR(pg_catalog.=) wanted;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_migrate: version % is not recorded', wanted
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'No migration with that version was applied or submitted.',
                  HINT = 'SELECT * FROM migrate.status; lists the recorded versions.';
    END IF;
    IF NOT state OPERATOR(pg_catalog.=) ANY (ARRAY['applied', 'baseline']::pg_catalog.text[]) THEN
        RAISE EXCEPTION 'pg_migrate: version % is %, not applied', wanted, state
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Standbys replay a migration once it has committed on the primary.',
                  HINT = pg_catalog.format('CALL migrate.wait(%L); waits for it to be applied.', wanted);
    END IF;
    SELECT p.commit_lsn INTO target FROM migrate.commit_positions() p
     WHERE p.version OPERATOR(pg_catalog.=) wanted;
    IF target IS NULL THEN
        -- Applied before pg_migrate recorded commit positions: it committed before now.
        RAISE NOTICE 'pg_migrate: version % has no recorded commit position; waiting for the current one', wanted;
        target := pg_catalog.pg_current_wal_lsn();
    END IF;
    COMMIT;
    LOOP
        IF standbys IS NULL THEN
            -- Every walsender that reports a replay position; disconnected slots are named.
            SELECT pg_catalog.array_agg(r.standby ORDER BY r.standby) FILTER (
                       WHERE r.state OPERATOR(pg_catalog.<>) 'disconnected' AND r.replay_lsn IS NOT NULL
                         AND r.replay_lsn OPERATOR(pg_catalog.<) target),
                   pg_catalog.array_agg(r.standby ORDER BY r.standby) FILTER (
                       WHERE r.state OPERATOR(pg_catalog.=) 'disconnected'
                         AND r.replay_lsn OPERATOR(pg_catalog.<) target),
                   pg_catalog.count(*) FILTER (WHERE r.state OPERATOR(pg_catalog.<>) 'disconnected'
                                                 AND r.replay_lsn IS NOT NULL)
              INTO missing, idle, streaming
              FROM migrate.replicas() r;
            IF streaming OPERATOR(pg_catalog.=) 0 THEN
                RAISE NOTICE 'pg_migrate: no standby is streaming from this server';
            END IF;
        ELSE
            -- A name counts once a standby of that name (or slot) is connected and every one
            -- of that name has replayed it: the default name, walreceiver, may be many.
            WITH r AS MATERIALIZED (
                SELECT x.standby, x.slot_name::pg_catalog.text AS slot, x.replay_lsn
                  FROM migrate.replicas() x WHERE x.state OPERATOR(pg_catalog.<>) 'disconnected'
            )
            SELECT pg_catalog.array_agg(n.name ORDER BY n.name) INTO missing
              FROM pg_catalog.unnest(standbys) n(name)
             WHERE NOT EXISTS (SELECT FROM r WHERE n.name OPERATOR(pg_catalog.=) ANY (ARRAY[r.standby, r.slot]))
                OR EXISTS (SELECT FROM r WHERE n.name OPERATOR(pg_catalog.=) ANY (ARRAY[r.standby, r.slot])
                                         AND (r.replay_lsn IS NULL OR r.replay_lsn OPERATOR(pg_catalog.<) target));
        END IF;
        IF missing IS NULL THEN
            IF idle IS NOT NULL THEN
                RAISE WARNING 'pg_migrate: the standbys of slots % are disconnected and have not replayed version %',
                        pg_catalog.array_to_string(idle, ', '), wanted
                    USING DETAIL = 'Only the standbys streaming now were waited for.',
                          HINT = 'Name them in standbys => ARRAY[...] to wait for them too.';
            END IF;
            RETURN;
        END IF;
        IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>) deadline THEN
            RAISE EXCEPTION 'pg_migrate: version % is not replayed after %: %', wanted, timeout,
                    pg_catalog.array_to_string(missing, ', ')
                USING ERRCODE = 'query_canceled',
                      DETAIL = pg_catalog.format('Its commit ends at WAL position %s; those standbys have not replayed that far, or are not connected.', target),
                      HINT = 'SELECT * FROM migrate.replicas(); shows how far each standby is. CALL migrate.wait_replicas again to keep waiting.';
        END IF;
        COMMIT;
        -- 1 ms, doubling up to 100 ms: a standby on the same network replays in milliseconds,
        -- and a long wait polls ten times a second.
        PERFORM pg_catalog.pg_sleep(pause);
        pause := LEAST(pause OPERATOR(pg_catalog.*) 2, 0.1);
    END LOOP;
END
$$;

REVOKE EXECUTE ON FUNCTION migrate.replicas(), migrate.commit_positions(), migrate.kept_commits() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION migrate.replicas(), migrate.commit_positions(), migrate.kept_commits() TO PUBLIC;
GRANT EXECUTE ON PROCEDURE migrate.wait_replicas(text, interval, text[]) TO PUBLIC;

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
REVOKE EXECUTE ON FUNCTION migrate.note_if_standby() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION migrate.note_if_standby() TO PUBLIC;

-- Differences between the schema recorded after the last finished migration (or baseline)
-- and the live one, each with the last DDL command logged on the object (or its table) since
-- then: who ran it, when, from which application.
CREATE OR REPLACE FUNCTION migrate.drift()
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
