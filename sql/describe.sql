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
-- (definition, validated), indexes (method, keys with their operator classes, collations and
-- ordering, included columns, predicate, options, valid, ready), views, materialized views,
-- sequences, types (enum, composite, domain, range), functions and procedures (signature and
-- a hash of their whole definition), triggers, policies and grants (ACLs, on each object).
-- Not covered: owners and comments (environments differ in them), statistics objects, rules
-- other than views', publications, event triggers. Objects that belong to an extension are
-- described by the extension's version.
--
-- The description is made of one row per object (migrate.describe_objects), so that a
-- migration re-describes only the objects it touched (sql/record.sql), and the fingerprint
-- is a sum of per-object hashes, which the same rows keep up to date.

-- One row per described object among those given. An object whose schema is not described
-- (system schemas, pg_migrate's own, extensions' own; with `schemas`, any other) or that
-- belongs to an extension yields nothing. rel_oid is the table a constraint, index, trigger
-- or policy belongs to, which re-describing a table re-describes with it.
CREATE FUNCTION migrate.describe_objects(
    schemas text[], relations oid[], indexes oid[], constraints oid[], triggers oid[],
    policies oid[], types oid[], functions oid[], namespaces oid[], extensions oid[])
RETURNS TABLE (kind text, identity text, description jsonb,
               obj_class oid, obj_oid oid, rel_oid oid)
LANGUAGE sql STABLE
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
    SELECT n.oid, quote_ident(n.nspname) AS q, n.nspacl
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
-- The relations asked for, and the tables of the other objects asked for (their identity
-- names the table).
wanted AS (
    SELECT x AS oid FROM unnest(relations) x
    UNION SELECT i.indrelid FROM unnest(indexes) x JOIN pg_index i ON i.indexrelid = x
    UNION SELECT c.conrelid FROM unnest(constraints) x JOIN pg_constraint c ON c.oid = x
    UNION SELECT t.tgrelid FROM unnest(triggers) x JOIN pg_trigger t ON t.oid = x
    UNION SELECT p.polrelid FROM unnest(policies) x JOIN pg_policy p ON p.oid = x
),
rel AS MATERIALIZED (
    SELECT c.oid, c.relkind, c.relpersistence, c.reloptions, c.relacl, c.relispartition,
           c.relrowsecurity, c.relforcerowsecurity, c.relpartbound,
           ns.q || '.' || quote_ident(c.relname) AS ident
    FROM wanted w
    JOIN pg_class c ON c.oid = w.oid
    JOIN ns ON ns.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
      AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                        AND d.deptype = 'e')
),
asked AS (
    SELECT r.* FROM rel r WHERE r.oid IN (SELECT unnest(relations))
)
SELECT 'tables', r.ident, jsonb_strip_nulls(jsonb_build_object(
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
        'columns', (
            SELECT jsonb_object_agg(quote_ident(a.attname), jsonb_strip_nulls(jsonb_build_object(
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
               'acl', (SELECT jsonb_agg(x::text ORDER BY x::text) FROM unnest(a.attacl) x))))
            FROM (SELECT a.*, row_number() OVER (ORDER BY a.attnum) AS position
                  FROM pg_attribute a
                  WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped) a
            JOIN pg_type t ON t.oid = a.atttypid
            LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum))),
       'pg_class'::regclass::oid, r.oid, NULL::oid
FROM asked r WHERE r.relkind IN ('r', 'p', 'f')
UNION ALL
SELECT CASE r.relkind WHEN 'v' THEN 'views' ELSE 'materialized_views' END, r.ident,
       jsonb_strip_nulls(jsonb_build_object(
           'definition', pg_get_viewdef(r.oid),
           'options', CASE WHEN r.relkind = 'v' THEN
                          (SELECT jsonb_agg(o ORDER BY o) FROM unnest(r.reloptions) o) END,
           'acl', (SELECT jsonb_agg(a::text ORDER BY a::text) FROM unnest(r.relacl) a))),
       'pg_class'::regclass::oid, r.oid, NULL::oid
FROM asked r WHERE r.relkind IN ('v', 'm')
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
FROM asked r JOIN pg_sequence s ON s.seqrelid = r.oid
UNION ALL
SELECT 'constraints', quote_ident(c.conname) || ' on ' || r.ident, jsonb_build_object(
            'table', r.ident,
            'type', CASE c.contype WHEN 'c' THEN 'check' WHEN 'f' THEN 'foreign key'
                                   WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique'
                                   WHEN 'x' THEN 'exclusion' WHEN 't' THEN 'trigger' END,
            'definition', pg_get_constraintdef(c.oid),
            'validated', c.convalidated),
       'pg_constraint'::regclass::oid, c.oid, r.oid
FROM unnest(constraints) x JOIN pg_constraint c ON c.oid = x JOIN rel r ON r.oid = c.conrelid
UNION ALL
-- Indexes by their parts, not by pg_get_indexdef: deciding which operator classes are a
-- column type's default (to leave them out of the text) costs a catalog scan per key column,
-- most of the time a whole description took. Every key names its operator class instead.
SELECT 'indexes', ns.q || '.' || quote_ident(ic.relname), jsonb_strip_nulls(jsonb_build_object(
            'table', r.ident,
            'method', am.amname,
            'unique', i.indisunique,
            -- PostgreSQL 15's NULLS NOT DISTINCT, read so that older versions describe too.
            'nulls_not_distinct', CASE WHEN to_jsonb(i) ->> 'indnullsnotdistinct' = 'true'
                                       THEN true END,
            'keys', (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                          'key', pg_get_indexdef(i.indexrelid, k, true),
                          'opclass', (SELECT quote_ident(n.nspname) || '.' || quote_ident(o.opcname)
                                      FROM pg_opclass o JOIN pg_namespace n ON n.oid = o.opcnamespace
                                      WHERE o.oid = i.indclass[k - 1]),
                          'collation', CASE WHEN i.indcollation[k - 1] <> 0
                                            THEN i.indcollation[k - 1]::regcollation::text END,
                          'descending', CASE WHEN i.indoption[k - 1] & 1 = 1 THEN true END,
                          'nulls_first', CASE WHEN i.indoption[k - 1] & 2 = 2 THEN true END))
                          ORDER BY k)
                     FROM generate_series(1, i.indnkeyatts) k),
            'include', (SELECT jsonb_agg(pg_get_indexdef(i.indexrelid, k, true) ORDER BY k)
                        FROM generate_series(i.indnkeyatts + 1, i.indnatts) k),
            'predicate', pg_get_expr(i.indpred, i.indrelid),
            'options', (SELECT jsonb_agg(o ORDER BY o) FROM unnest(ic.reloptions) o),
            'valid', i.indisvalid,
            'ready', i.indisready AND i.indislive)),
       'pg_class'::regclass::oid, i.indexrelid, r.oid
FROM unnest(indexes) x
JOIN pg_index i ON i.indexrelid = x
JOIN rel r ON r.oid = i.indrelid
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_am am ON am.oid = ic.relam
JOIN ns ON ns.oid = ic.relnamespace
UNION ALL
SELECT 'triggers', quote_ident(t.tgname) || ' on ' || r.ident, jsonb_build_object(
            'table', r.ident,
            'definition', pg_get_triggerdef(t.oid),
            'enabled', CASE t.tgenabled WHEN 'O' THEN 'origin' WHEN 'D' THEN 'disabled'
                                        WHEN 'R' THEN 'replica' WHEN 'A' THEN 'always' END),
       'pg_trigger'::regclass::oid, t.oid, r.oid
FROM unnest(triggers) x JOIN pg_trigger t ON t.oid = x JOIN rel r ON r.oid = t.tgrelid
WHERE NOT t.tgisinternal
UNION ALL
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
FROM unnest(policies) x JOIN pg_policy p ON p.oid = x JOIN rel r ON r.oid = p.polrelid
UNION ALL
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
FROM unnest(types) x JOIN pg_type t ON t.oid = x JOIN ns ON ns.oid = t.typnamespace
WHERE t.typtype IN ('b', 'e', 'c', 'd', 'r')
  AND NOT (t.typtype = 'b' AND t.typcategory = 'A')
  AND (t.typtype <> 'c' OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
UNION ALL
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
FROM unnest(functions) x JOIN pg_proc p ON p.oid = x JOIN ns ON ns.oid = p.pronamespace
WHERE NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
UNION ALL
SELECT 'schemas', ns.q, jsonb_strip_nulls(jsonb_build_object(
           'acl', (SELECT jsonb_agg(a::text ORDER BY a::text) FROM unnest(ns.nspacl) a))),
       'pg_namespace'::regclass::oid, ns.oid, NULL::oid
FROM unnest(namespaces) x JOIN ns ON ns.oid = x
UNION ALL
SELECT 'extensions', quote_ident(e.extname), jsonb_build_object(
           'version', e.extversion, 'schema', quote_ident(n.nspname)),
       'pg_extension'::regclass::oid, e.oid, NULL::oid
FROM unnest(extensions) x JOIN pg_extension e ON e.oid = x
JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname <> 'plpgsql'
$describe$;

-- Every object of the database that may be described, by catalog: what describe_objects
-- takes to describe the whole schema.
CREATE FUNCTION migrate.all_objects(schemas text[] DEFAULT NULL)
RETURNS TABLE (kind text, identity text, description jsonb,
               obj_class oid, obj_oid oid, rel_oid oid)
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
        ARRAY(SELECT e.oid FROM pg_extension e)) d
$$;

-- The hash one object adds to a fingerprint: of its kind, identity and description (jsonb's
-- text form is canonical: keys sorted, one spelling of every value).
CREATE FUNCTION migrate.object_hash(kind text, identity text, description jsonb)
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT sha256(convert_to(kind || E'\n' || identity || E'\n' || description::text, 'UTF8')) $$;

-- Objects as a description: {"format": 2, kind: {identity: description}}, with every kind
-- present (an empty object when there is none of it).
CREATE FUNCTION migrate.description_of(kinds text[], identities text[], descriptions jsonb[])
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object('format', 2) || jsonb_object_agg(k.kind, coalesce(o.objects, '{}'))
    FROM unnest(ARRAY['schemas', 'extensions', 'tables', 'views', 'materialized_views',
                      'sequences', 'constraints', 'indexes', 'triggers', 'policies', 'types',
                      'functions']) AS k(kind)
    LEFT JOIN (SELECT x.kind, jsonb_object_agg(x.identity, x.description) AS objects
               FROM unnest(kinds, identities, descriptions) AS x(kind, identity, description)
               GROUP BY x.kind) o ON o.kind = k.kind
$$;

CREATE FUNCTION migrate.describe(schemas text[] DEFAULT NULL)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT migrate.description_of(array_agg(a.kind), array_agg(a.identity),
                                  array_agg(a.description))
    FROM migrate.all_objects(schemas) a
$$;

COMMENT ON FUNCTION migrate.describe(text[]) IS
    'pg_migrate: a canonical jsonb description of the user schemas (all but system and extension schemas when NULL)';

-- The fingerprint of a description: the sum, modulo 2^256, of the hashes of its objects (and
-- of its format), as hex. A sum does not depend on order, and a migration updates it with
-- the hashes of the objects it changed alone: equal schemas give equal fingerprints.
CREATE FUNCTION migrate.fingerprint_of(description jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT migrate.hash_sum(coalesce(array_agg(migrate.object_hash(o.kind, o.identity, o.description)), '{}'))
    FROM (SELECT k.key AS kind, e.key AS identity, e.value AS description
          FROM jsonb_each(description) k, jsonb_each(k.value) e
          WHERE jsonb_typeof(k.value) = 'object') o
$$;

CREATE FUNCTION migrate.fingerprint(schemas text[] DEFAULT NULL)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT migrate.hash_sum(coalesce(array_agg(migrate.object_hash(a.kind, a.identity, a.description)), '{}'))
    FROM migrate.all_objects(schemas) a
$$;

COMMENT ON FUNCTION migrate.fingerprint(text[]) IS
    'pg_migrate: the fingerprint of migrate.describe(schemas); equal schemas give equal fingerprints';
