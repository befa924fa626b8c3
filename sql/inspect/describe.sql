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
-- other than views', publications, event triggers, pg_migrate itself. Objects that belong to
-- an extension are described by the extension's version.
--
-- The description is made of one row per object (migrate.describe_objects), so that a
-- migration re-describes only the objects it touched (sql/record.sql), and the fingerprint
-- is a sum of per-object hashes, which the same rows keep up to date.

-- Whether objects in this schema are described: with `schemas`, those named; otherwise all
-- but system schemas, pg_migrate's own (its history changes with every apply) and the
-- extensions' own (`extension_schemas`). No subquery, so that the planner inlines it.
CREATE FUNCTION migrate.schema_is_described(n pg_catalog.pg_namespace, schemas text[],
                                            extension_schemas oid[])
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE WHEN schemas IS NULL THEN
        n.nspname OPERATOR(pg_catalog.<>) ALL ('{pg_catalog,information_schema,migrate}'::pg_catalog.name[])
        AND n.nspname OPERATOR(pg_catalog.!~) '^pg_(toast|temp_|toast_temp_)'
        AND n.oid OPERATOR(pg_catalog.<>) ALL (extension_schemas)
    ELSE n.nspname OPERATOR(pg_catalog.=) ANY (schemas::pg_catalog.name[]) END
$$;

-- The described relations among `relations`, with what describe_objects prints of them.
-- No subquery in its arguments at the call and no SET clause, so that the planner inlines it.
CREATE FUNCTION migrate.described_relations(relations oid[], schemas text[],
                                            extension_schemas oid[])
RETURNS TABLE (oid oid, relkind "char", relpersistence "char", reloptions text[],
               relacl aclitem[], relispartition boolean, relrowsecurity boolean,
               relforcerowsecurity boolean, relpartbound pg_node_tree, ident text)
LANGUAGE sql STABLE
AS $$
    SELECT c.oid, c.relkind, c.relpersistence, c.reloptions, c.relacl, c.relispartition,
           c.relrowsecurity, c.relforcerowsecurity, c.relpartbound,
           pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.'
             OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname)
    FROM pg_catalog.unnest(relations) AS w(oid)
    JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) w.oid
    JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
    WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,f,v,m,S}'::"char"[])
      AND migrate.schema_is_described(n, schemas, extension_schemas)
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                      WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                        AND d.objid OPERATOR(pg_catalog.=) c.oid
                        AND d.deptype OPERATOR(pg_catalog.=) 'e')
$$;

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

-- Objects as a description: {"format": 2, kind: {identity: description}}, with every kind
-- present (an empty object when there is none of it).
CREATE FUNCTION migrate.description_of(kinds text[], identities text[], descriptions jsonb[])
RETURNS jsonb
-- PL/pgSQL for its cached plan: every migration calls it twice.
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT jsonb_build_object('format', 2) || jsonb_object_agg(k.kind, coalesce(o.objects, '{}'))
    FROM unnest(ARRAY['schemas', 'extensions', 'tables', 'views', 'materialized_views',
                      'sequences', 'constraints', 'indexes', 'triggers', 'policies', 'types',
                      'functions']) AS k(kind)
    LEFT JOIN (SELECT x.kind, jsonb_object_agg(x.identity, x.description) AS objects
               FROM unnest(kinds, identities, descriptions) AS x(kind, identity, description)
               GROUP BY x.kind) o ON o.kind = k.kind);
END
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

-- The fingerprint of a description: the SHA-256 of the sum, modulo 2^2048, of its objects'
-- hashes (src/fingerprint.rs), as hex. A sum does not depend on order, and a migration
-- updates it with the hashes of the objects it changed alone: equal schemas give equal
-- fingerprints.
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

COMMENT ON FUNCTION migrate.fingerprint(text[]) IS
    'pg_migrate: the fingerprint of migrate.describe(schemas); equal schemas give equal fingerprints';
