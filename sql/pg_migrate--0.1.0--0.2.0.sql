-- pg_migrate 0.1.0 to 0.2.0: ALTER EXTENSION pg_migrate UPDATE TO '0.2.0'.
--
-- Every change of a table, view or function signature between two releases goes into the
-- upgrade script between them; a test installs the previous release, fills it, upgrades, and
-- compares every object with a fresh install (pg_test/test_upgrade.py).
\echo Use "ALTER EXTENSION pg_migrate UPDATE TO '0.2.0'" to load this file. \quit

-- (IF NOT EXISTS: development builds that called themselves 0.1.0 had them already.)
-- Every migration and every worker poll looks for the unfinished versions and the highest
-- baseline: a handful of rows among thousands of applied ones, found without reading them.
CREATE INDEX IF NOT EXISTS history_unfinished ON migrate.history (version_key)
    WHERE status IN ('pending', 'running', 'failed');
CREATE INDEX IF NOT EXISTS history_baseline ON migrate.history (version_key)
    WHERE status = 'baseline';

-- Column defaults and partition bounds printed without opening their relation (the same
-- text); pg_migrate's own extension and NOT NULL constraints (PostgreSQL 18 keeps them) no
-- longer described.
CREATE OR REPLACE FUNCTION migrate.describe_objects(
    schemas text[], relations oid[], indexes oid[], constraints oid[], triggers oid[],
    policies oid[], types oid[], functions oid[], namespaces oid[], extensions oid[])
RETURNS TABLE (kind text, identity text, description jsonb,
               obj_class oid, obj_oid oid, rel_oid oid)
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
    -- The tables the constraints, indexes, triggers or policies asked for belong to.
    owners oid[];
BEGIN
-- Each object is asked for once (callers pass distinct OIDs).
owners := ARRAY(SELECT o.conrelid FROM unnest(constraints) x JOIN pg_constraint o ON o.oid = x
                UNION SELECT o.indrelid FROM unnest(indexes) x JOIN pg_index o ON o.indexrelid = x
                UNION SELECT o.tgrelid FROM unnest(triggers) x JOIN pg_trigger o ON o.oid = x
                UNION SELECT o.polrelid FROM unnest(policies) x JOIN pg_policy o ON o.oid = x);
IF cardinality(relations) > 0 THEN
RETURN QUERY
WITH rel AS MATERIALIZED (
    SELECT * FROM migrate.described_relations(relations, schemas, extension_schemas)
)
SELECT 'tables', r.ident, jsonb_strip_nulls(jsonb_build_object(
        'kind', CASE r.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table'
                               ELSE 'foreign table' END,
        'unlogged', CASE WHEN r.relpersistence = 'u' THEN true END,
        'partition_of', CASE WHEN r.relispartition THEN
                            (SELECT i.inhparent::regclass::text FROM pg_inherits i
                             WHERE i.inhrelid = r.oid) END,
        'partition_bound', pg_get_expr(r.relpartbound, 0),
        'partition_key', CASE WHEN r.relkind = 'p' THEN pg_get_partkeydef(r.oid) END,
        'inherits', CASE WHEN NOT r.relispartition THEN
                        (SELECT jsonb_agg(i.inhparent::regclass::text ORDER BY i.inhseqno)
                         FROM pg_inherits i WHERE i.inhrelid = r.oid) END,
        'options', CASE WHEN r.reloptions IS NOT NULL THEN
                       (SELECT jsonb_agg(o ORDER BY o) FROM unnest(r.reloptions) o) END,
        'row_security', CASE WHEN r.relrowsecurity THEN
                            CASE WHEN r.relforcerowsecurity THEN 'forced' ELSE 'enabled' END END,
        'acl', CASE WHEN r.relacl IS NOT NULL THEN
                   (SELECT jsonb_agg(a::text ORDER BY a::text) FROM unnest(r.relacl) a) END,
        'columns', (
            SELECT jsonb_object_agg(quote_ident(a.attname), jsonb_build_object(
               -- The position among live columns, not attnum: a dropped column leaves a gap
               -- in attnum that a fresh build does not have.
               'position', a.position,
               'type', format_type(a.atttypid, a.atttypmod),
               'not_null', a.attnotnull,
               -- A default cannot refer to columns, so it needs no relation to be printed:
               -- opening one per column (what pg_get_expr does when given it) was most of
               -- the time a table took.
               'default', CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, 0) END,
               'generated', CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END,
               'identity', CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by default' END,
               'collation', CASE WHEN a.attcollation <> t.typcollation
                                 THEN a.attcollation::regcollation::text END,
               'acl', CASE WHEN a.attacl IS NOT NULL THEN
                          (SELECT jsonb_agg(x::text ORDER BY x::text) FROM unnest(a.attacl) x) END))
            FROM (SELECT a.*, row_number() OVER (ORDER BY a.attnum) AS position
                  FROM pg_attribute a
                  WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped) a
            JOIN pg_type t ON t.oid = a.atttypid
            LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum))),
       'pg_class'::regclass::oid, r.oid, NULL::oid
FROM rel r WHERE r.relkind IN ('r', 'p', 'f')
UNION ALL
SELECT CASE r.relkind WHEN 'v' THEN 'views' ELSE 'materialized_views' END, r.ident,
       jsonb_strip_nulls(jsonb_build_object(
           'definition', pg_get_viewdef(r.oid),
           'options', CASE WHEN r.relkind = 'v' THEN
                          (SELECT jsonb_agg(o ORDER BY o) FROM unnest(r.reloptions) o) END,
           'acl', (SELECT jsonb_agg(a::text ORDER BY a::text) FROM unnest(r.relacl) a))),
       'pg_class'::regclass::oid, r.oid, NULL::oid
FROM rel r WHERE r.relkind IN ('v', 'm')
UNION ALL
SELECT 'sequences', r.ident, jsonb_strip_nulls(jsonb_build_object(
        'type', format_type(s.seqtypid, NULL),
        'start', s.seqstart, 'increment', s.seqincrement, 'min', s.seqmin, 'max', s.seqmax,
        'cache', s.seqcache, 'cycle', s.seqcycle,
        'owned_by', (SELECT d.refobjid::regclass::text || '.' || quote_ident(a.attname)
                     FROM pg_depend d
                     JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                     WHERE d.classid = 'pg_class'::regclass AND d.objid = r.oid
                       AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                     LIMIT 1),
        'acl', (SELECT jsonb_agg(a::text ORDER BY a::text) FROM unnest(r.relacl) a))),
       'pg_class'::regclass::oid, r.oid, NULL::oid
FROM rel r JOIN pg_sequence s ON s.seqrelid = r.oid
;
END IF;
IF cardinality(constraints) > 0 THEN
RETURN QUERY
WITH rel AS MATERIALIZED (
    SELECT * FROM migrate.described_relations(owners, schemas, extension_schemas)
)
SELECT 'constraints', quote_ident(c.conname) || ' on ' || r.ident, jsonb_build_object(
            'table', r.ident,
            'type', CASE c.contype WHEN 'c' THEN 'check' WHEN 'f' THEN 'foreign key'
                                   WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique'
                                   WHEN 'x' THEN 'exclusion' WHEN 't' THEN 'trigger' END,
            'definition', pg_get_constraintdef(c.oid),
            'validated', c.convalidated),
       'pg_constraint'::regclass::oid, c.oid, r.oid
FROM unnest(constraints) x JOIN pg_constraint c ON c.oid = x JOIN rel r ON r.oid = c.conrelid
-- NOT NULL: a column's not_null, whether or not the server keeps a constraint for it (18 does).
WHERE c.contype <> 'n';
END IF;
IF cardinality(indexes) > 0 THEN
RETURN QUERY
WITH rel AS MATERIALIZED (
    SELECT * FROM migrate.described_relations(owners, schemas, extension_schemas)
)
-- Indexes by their parts, not by pg_get_indexdef: deciding which operator classes are a
-- column type's default (to leave them out of the text) costs a catalog scan per key column,
-- most of the time a whole description took. Every key names its operator class instead.
SELECT 'indexes', quote_ident(icn.nspname) || '.' || quote_ident(ic.relname), jsonb_strip_nulls(jsonb_build_object(
            'table', r.ident,
            'method', am.amname,
            'unique', i.indisunique,
            'nulls_not_distinct', CASE WHEN migrate.nulls_not_distinct(i) THEN true END,
            'keys', k.keys,
            'include', k.include,
            'predicate', pg_get_expr(i.indpred, i.indrelid),
            'options', CASE WHEN ic.reloptions IS NOT NULL THEN
                           (SELECT jsonb_agg(o ORDER BY o) FROM unnest(ic.reloptions) o) END,
            'valid', i.indisvalid,
            'ready', i.indisready AND i.indislive)),
       'pg_class'::regclass::oid, i.indexrelid, r.oid
FROM unnest(indexes) x
JOIN pg_index i ON i.indexrelid = x
JOIN rel r ON r.oid = i.indrelid
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_am am ON am.oid = ic.relam
JOIN pg_namespace icn ON icn.oid = ic.relnamespace
CROSS JOIN LATERAL (
    SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
               'key', c.key,
               -- By the syscache: a join would scan pg_opclass once per index.
               'opclass', (pg_identify_object('pg_opclass'::regclass,
                                              i.indclass[c.n - 1], 0)).identity,
               'collation', CASE WHEN i.indcollation[c.n - 1] <> 0
                                 THEN i.indcollation[c.n - 1]::regcollation::text END,
               'descending', CASE WHEN i.indoption[c.n - 1] & 1 = 1 THEN true END,
               'nulls_first', CASE WHEN i.indoption[c.n - 1] & 2 = 2 THEN true END))
               ORDER BY c.n) FILTER (WHERE c.n <= i.indnkeyatts) AS keys,
           jsonb_agg(c.key ORDER BY c.n) FILTER (WHERE c.n > i.indnkeyatts) AS include
    FROM (SELECT c.n,
                 -- A column by its name; an expression as PostgreSQL prints it.
                 CASE WHEN c.attnum <> 0 THEN
                     (SELECT quote_ident(a.attname) FROM pg_attribute a
                      WHERE a.attrelid = i.indrelid AND a.attnum = c.attnum)
                 ELSE pg_get_indexdef(i.indexrelid, c.n::int, true) END AS key
          FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS c(attnum, n)) c
) k;
END IF;
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
       'pg_trigger'::regclass::oid, t.oid, r.oid
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
       'pg_policy'::regclass::oid, p.oid, r.oid
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
       'pg_type'::regclass::oid, t.oid, NULL::oid
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
       'pg_proc'::regclass::oid, p.oid, NULL::oid
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
       'pg_namespace'::regclass::oid, n.oid, NULL::oid
FROM unnest(namespaces) x JOIN pg_namespace n ON n.oid = x
WHERE migrate.schema_is_described(n, schemas, extension_schemas);
END IF;
IF cardinality(extensions) > 0 THEN
RETURN QUERY
SELECT 'extensions', quote_ident(e.extname), jsonb_build_object(
           'version', e.extversion, 'schema', quote_ident(n.nspname)),
       'pg_extension'::regclass::oid, e.oid, NULL::oid
FROM unnest(extensions) x JOIN pg_extension e ON e.oid = x
JOIN pg_namespace n ON n.oid = e.extnamespace
-- Not pg_migrate itself: its own release is not the schema's, and an upgrade of it is no drift.
WHERE e.extname <> ALL ('{plpgsql,pg_migrate}'::name[]);
END IF;
END
$describe$;

-- The recorded schema without pg_migrate's own row, and the fingerprint without its hash.
UPDATE migrate.schema_state
SET state = migrate.hash_state_adjust(
        state,
        ARRAY(SELECT o.hash FROM migrate.schema_objects o
              WHERE o.kind = 'extensions' AND o.identity = 'pg_migrate'),
        '{}');
DELETE FROM migrate.schema_objects WHERE kind = 'extensions' AND identity = 'pg_migrate';
