-- pg_migrate: a canonical description of the user schemas, and its fingerprint.
--
-- Objects are keyed by the identity pg_identify_object gives them (the DDL log's
-- object_identity), never by OID; jsonb sorts object keys itself, and the few arrays are
-- sorted here, so the description does not depend on OIDs, physical order or the order in
-- which independent objects were created. search_path is pinned to pg_catalog so that
-- pg_get_*def and format_type qualify every user object the same way whoever calls.
--
-- Covered: schemas, extensions, tables (columns with type, nullability, default, collation,
-- identity, generation; partitioning; persistence; options; row security), constraints
-- (definition, validated), indexes (definition, valid, ready), views, materialized views,
-- sequences, types (enum, composite, domain, range), functions and procedures (signature and
-- a hash of their whole definition), triggers, policies and grants (ACLs, on each object).
-- Not covered: owners and comments (environments differ in them), statistics objects, rules
-- other than views', publications, event triggers. Objects that belong to an extension are
-- described by the extension's version.

CREATE FUNCTION migrate.describe(schemas text[] DEFAULT NULL)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
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
WITH ns AS (
    SELECT n.oid, quote_ident(n.nspname) AS q, n.nspname, n.nspacl
    FROM pg_namespace n
    WHERE CASE WHEN schemas IS NULL THEN
              -- migrate is pg_migrate's own schema: its history changes with every apply.
              n.nspname NOT IN ('pg_catalog', 'information_schema', 'migrate')
              AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
              AND NOT EXISTS (SELECT 1 FROM pg_depend d
                              WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid
                                AND d.deptype = 'e')
          ELSE n.nspname = ANY (schemas) END
),
rel AS (
    SELECT c.oid, c.relkind, c.relpersistence, c.reloptions, c.relacl, c.relispartition,
           c.relrowsecurity, c.relforcerowsecurity, c.relpartbound,
           ns.q || '.' || quote_ident(c.relname) AS ident
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
      AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                        AND d.deptype = 'e')
),
cols AS (
    SELECT a.attrelid, jsonb_object_agg(quote_ident(a.attname), jsonb_build_object(
               -- The position among live columns, not attnum: a dropped column leaves a gap
               -- in attnum that a fresh build does not have.
               'position', a.position,
               'type', format_type(a.atttypid, a.atttypmod),
               'not_null', a.attnotnull,
               'default', CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END,
               'generated', CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END,
               'identity', CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by default' END,
               'collation', CASE WHEN a.attcollation <> t.typcollation
                                 THEN a.attcollation::regcollation::text END,
               'acl', (SELECT jsonb_agg(x::text ORDER BY x::text) FROM unnest(a.attacl) x))) AS columns
    FROM (SELECT a.*, row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum) AS position
          FROM pg_attribute a JOIN rel r ON r.oid = a.attrelid AND r.relkind IN ('r', 'p', 'f')
          WHERE a.attnum > 0 AND NOT a.attisdropped) a
    JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    GROUP BY a.attrelid
)
SELECT jsonb_strip_nulls(jsonb_build_object(
  'format', 1,
  'schemas', (
    SELECT coalesce(jsonb_object_agg(ns.q, jsonb_build_object(
               'acl', (SELECT jsonb_agg(a::text ORDER BY a::text) FROM unnest(ns.nspacl) a))),
           '{}')
    FROM ns),
  'extensions', (
    SELECT coalesce(jsonb_object_agg(quote_ident(e.extname), jsonb_build_object(
               'version', e.extversion, 'schema', quote_ident(n.nspname))), '{}')
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname <> 'plpgsql'),
  'tables', (
    SELECT coalesce(jsonb_object_agg(r.ident, jsonb_build_object(
        'kind', CASE r.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table'
                               ELSE 'foreign table' END,
        'unlogged', CASE WHEN r.relpersistence = 'u' THEN true END,
        'partition_of', (SELECT i.inhparent::regclass::text FROM pg_inherits i
                         WHERE i.inhrelid = r.oid AND r.relispartition),
        'partition_bound', pg_get_expr(r.relpartbound, r.oid),
        'partition_key', CASE WHEN r.relkind = 'p' THEN pg_get_partkeydef(r.oid) END,
        'inherits', (SELECT jsonb_agg(i.inhparent::regclass::text ORDER BY i.inhseqno)
                     FROM pg_inherits i WHERE i.inhrelid = r.oid AND NOT r.relispartition),
        'options', (SELECT jsonb_agg(o ORDER BY o) FROM unnest(r.reloptions) o),
        'row_security', CASE WHEN r.relrowsecurity THEN
                            CASE WHEN r.relforcerowsecurity THEN 'forced' ELSE 'enabled' END END,
        'acl', (SELECT jsonb_agg(a::text ORDER BY a::text) FROM unnest(r.relacl) a),
        'columns', cols.columns)), '{}')
    FROM rel r LEFT JOIN cols ON cols.attrelid = r.oid
    WHERE r.relkind IN ('r', 'p', 'f')),
  'views', (
    SELECT coalesce(jsonb_object_agg(r.ident, jsonb_build_object(
        'definition', pg_get_viewdef(r.oid),
        'options', (SELECT jsonb_agg(o ORDER BY o) FROM unnest(r.reloptions) o),
        'acl', (SELECT jsonb_agg(a::text ORDER BY a::text) FROM unnest(r.relacl) a))), '{}')
    FROM rel r WHERE r.relkind = 'v'),
  'materialized_views', (
    SELECT coalesce(jsonb_object_agg(r.ident, jsonb_build_object(
        'definition', pg_get_viewdef(r.oid),
        'acl', (SELECT jsonb_agg(a::text ORDER BY a::text) FROM unnest(r.relacl) a))), '{}')
    FROM rel r WHERE r.relkind = 'm'),
  'sequences', (
    SELECT coalesce(jsonb_object_agg(r.ident, jsonb_build_object(
        'type', format_type(s.seqtypid, NULL),
        'start', s.seqstart, 'increment', s.seqincrement, 'min', s.seqmin, 'max', s.seqmax,
        'cache', s.seqcache, 'cycle', s.seqcycle,
        'owned_by', (SELECT d.refobjid::regclass::text || '.' || quote_ident(a.attname)
                     FROM pg_depend d
                     JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                     WHERE d.classid = 'pg_class'::regclass AND d.objid = r.oid
                       AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                     LIMIT 1),
        'acl', (SELECT jsonb_agg(a::text ORDER BY a::text) FROM unnest(r.relacl) a))), '{}')
    FROM rel r JOIN pg_sequence s ON s.seqrelid = r.oid),
  'constraints', (
    SELECT coalesce(jsonb_object_agg(quote_ident(c.conname) || ' on ' || r.ident,
        jsonb_build_object(
            'table', r.ident,
            'type', CASE c.contype WHEN 'c' THEN 'check' WHEN 'f' THEN 'foreign key'
                                   WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique'
                                   WHEN 'x' THEN 'exclusion' WHEN 't' THEN 'trigger' END,
            'definition', pg_get_constraintdef(c.oid),
            'validated', c.convalidated)), '{}')
    FROM pg_constraint c JOIN rel r ON r.oid = c.conrelid),
  'indexes', (
    SELECT coalesce(jsonb_object_agg(ns.q || '.' || quote_ident(ic.relname),
        jsonb_build_object(
            'table', r.ident,
            'definition', pg_get_indexdef(i.indexrelid),
            'valid', i.indisvalid,
            'ready', i.indisready AND i.indislive)), '{}')
    FROM pg_index i
    JOIN rel r ON r.oid = i.indrelid
    JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN ns ON ns.oid = ic.relnamespace),
  'triggers', (
    SELECT coalesce(jsonb_object_agg(quote_ident(t.tgname) || ' on ' || r.ident,
        jsonb_build_object(
            'table', r.ident,
            'definition', pg_get_triggerdef(t.oid),
            'enabled', CASE t.tgenabled WHEN 'O' THEN 'origin' WHEN 'D' THEN 'disabled'
                                        WHEN 'R' THEN 'replica' WHEN 'A' THEN 'always' END)),
        '{}')
    FROM pg_trigger t JOIN rel r ON r.oid = t.tgrelid
    WHERE NOT t.tgisinternal),
  'policies', (
    SELECT coalesce(jsonb_object_agg(quote_ident(p.polname) || ' on ' || r.ident,
        jsonb_build_object(
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
            'with_check', pg_get_expr(p.polwithcheck, p.polrelid))), '{}')
    FROM pg_policy p JOIN rel r ON r.oid = p.polrelid),
  'types', (
    SELECT coalesce(jsonb_object_agg(format_type(t.oid, NULL), jsonb_build_object(
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
        'acl', (SELECT jsonb_agg(a::text ORDER BY a::text) FROM unnest(t.typacl) a))), '{}')
    FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
    WHERE t.typtype IN ('b', 'e', 'c', 'd', 'r')
      AND NOT (t.typtype = 'b' AND t.typcategory = 'A')
      AND (t.typtype <> 'c' OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
      AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
                        AND d.deptype = 'e')),
  'functions', (
    SELECT coalesce(jsonb_object_agg(p.oid::regprocedure::text, jsonb_build_object(
        'kind', CASE p.prokind WHEN 'f' THEN 'function' WHEN 'p' THEN 'procedure'
                               WHEN 'a' THEN 'aggregate' WHEN 'w' THEN 'window' END,
        'returns', pg_get_function_result(p.oid),
        -- The whole CREATE statement (language, volatility, security, settings, body),
        -- hashed: bodies can be long, and a difference is all a comparison needs.
        'definition_sha256', CASE WHEN p.prokind <> 'a' THEN
                      encode(sha256(convert_to(pg_get_functiondef(p.oid), 'UTF8')), 'hex') END,
        'acl', (SELECT jsonb_agg(a::text ORDER BY a::text) FROM unnest(p.proacl) a))), '{}')
    FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
    WHERE NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                        AND d.deptype = 'e'))
))
$describe$;

COMMENT ON FUNCTION migrate.describe(text[]) IS
    'pg_migrate: a canonical jsonb description of the user schemas (all but system and extension schemas when NULL)';

-- The fingerprint of a description: the SHA-256 of jsonb's own text form, which is canonical
-- (keys sorted, one spelling of every value), so equal descriptions give equal fingerprints.
CREATE FUNCTION migrate.fingerprint_of(description jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT encode(sha256(convert_to(description::text, 'UTF8')), 'hex') $$;

CREATE FUNCTION migrate.fingerprint(schemas text[] DEFAULT NULL)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT migrate.fingerprint_of(migrate.describe(schemas)) $$;

COMMENT ON FUNCTION migrate.fingerprint(text[]) IS
    'pg_migrate: the sha256 of migrate.describe(schemas); equal schemas give equal fingerprints';
