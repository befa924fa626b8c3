//! The catalog facts a window's plan needs about a table: its columns, what depends on each,
//! and the grants its views carry over. Read with `search_path` pinned.

use crate::errors::OrBookkeeping;
use crate::window::plan::{Column, Table};
use pgrx::pg_sys;

/// The table `oid` as the plan needs it; `None` when it no longer exists.
/// `relations` are the names the window would give relations (indexes, a renamed table) in the
/// table's schema.
pub fn table(
    oid: pg_sys::Oid,
    view_schema: impl Fn(&str) -> String,
    relations: &[String],
    constraints: &[String],
) -> Option<Table> {
    let head = crate::pg::spi::pinned_row(
        "SELECT n.nspname::text, c.relname::text, c.relkind = 'r', \
                EXISTS (SELECT FROM pg_inherits i WHERE i.inhparent = c.oid), \
                c.relrowsecurity AND row_security_active(c.oid), \
                EXISTS (SELECT FROM pg_constraint k WHERE k.conrelid = c.oid \
                        AND k.contype = 'p'), \
                c.relrowsecurity \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[oid.into()],
        |row| {
            Ok((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<bool>(3)?.unwrap_or(false),
                row.get::<bool>(4)?.unwrap_or(false),
                row.get::<bool>(5)?.unwrap_or(false),
                row.get::<bool>(6)?.unwrap_or(false),
                row.get::<bool>(7)?.unwrap_or(false),
            ))
        },
    )
    .or_bookkeeping("read the table migrate.expand plans for")?;
    let (schema, name, plain, has_children, policies_apply, primary_key, row_security) = head;
    let wanted = view_schema(&schema);
    Some(Table {
        oid: u32::from(oid),
        primary_key,
        existing_constraints: crate::pg::spi::pinned_column::<String>(
            "SELECT conname::text FROM pg_constraint WHERE conrelid = $1 AND conname = ANY ($2)",
            &[oid.into(), constraints.to_vec().into()],
        )
        .or_bookkeeping("read pg_constraint"),
        existing_relations: crate::pg::spi::pinned_column::<String>(
            "SELECT c.relname::text FROM pg_class c \
             WHERE c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = $1) \
               AND c.relname = ANY ($2)",
            &[oid.into(), relations.to_vec().into()],
        )
        .or_bookkeeping("read pg_class"),
        columns: columns(oid),
        policies_apply,
        row_security,
        plain,
        has_children,
        grants: grants(oid),
        column_grants: column_grants(oid),
        before_triggers: before_triggers(oid),
        existing_schemas: crate::pg::spi::pinned_column::<String>(
            "SELECT nspname::text FROM pg_namespace WHERE nspname = $1",
            &[wanted.as_str().into()],
        )
        .or_bookkeeping("read pg_namespace"),
        schema,
        name,
    })
}

/// What a `jsonb` column of [`COLUMNS`] holds; empty when NULL. The JSON is built by the
/// query from catalog values, so it always reads back.
fn json<T: serde::de::DeserializeOwned + Default>(value: Option<pgrx::JsonB>) -> T {
    value
        .and_then(|j| serde_json::from_value(j.0).ok())
        .unwrap_or_default()
}

/// Live columns in order, with what would have to move with each to a copy. A copy rebuilds
/// its plain btree indexes (and their PRIMARY KEY or UNIQUE constraints), its foreign keys
/// either way, and takes its owned sequence (7 to 9); anything else that depends on it is
/// listed (6): other indexes and constraints (but PostgreSQL 18's NOT NULL ones), views and
/// rules, statistics, policies, other columns' generation expressions; not its own default.
const COLUMNS: &str = "\
WITH a AS (
    SELECT a.*, d.oid AS default_oid, pg_get_expr(d.adbin, d.adrelid) AS default_sql
    FROM pg_attribute a
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped),
movable_index AS (
    SELECT a.attnum, i.indexrelid, k.oid AS constraint_oid,
           jsonb_build_object(
               'name', ic.relname::text, 'unique', i.indisunique,
               'constraint', k.conname::text, 'primary', i.indisprimary,
               'columns', (SELECT jsonb_agg(x.attname::text ORDER BY u.ord)
                           FROM unnest(i.indkey::int2[]) WITH ORDINALITY u(n, ord)
                           JOIN pg_attribute x ON x.attrelid = i.indrelid AND x.attnum = u.n))
               AS description
    FROM a
    JOIN pg_index i ON i.indrelid = a.attrelid AND a.attnum = ANY (i.indkey::int2[])
    JOIN pg_class ic ON ic.oid = i.indexrelid
    LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid
                             AND k.contype IN ('p', 'u')
    WHERE ic.relam = (SELECT oid FROM pg_am WHERE amname = 'btree')
      AND i.indexprs IS NULL AND i.indpred IS NULL AND i.indnkeyatts = i.indnatts
      AND NOT i.indisexclusion AND i.indimmediate AND i.indisvalid
      AND ic.reloptions IS NULL AND ic.reltablespace = 0
      AND NOT i.indisreplident AND NOT i.indnullsnotdistinct
      AND NOT (0 = ANY (i.indkey::int2[]))
      AND NOT EXISTS (SELECT FROM unnest(i.indoption::int2[]) o WHERE o <> 0)
      AND NOT EXISTS (SELECT FROM unnest(i.indclass::oid[]) c
                      JOIN pg_opclass oc ON oc.oid = c WHERE NOT oc.opcdefault)
      AND NOT EXISTS (SELECT FROM unnest(i.indkey::int2[], i.indcollation::oid[]) u(n, coll)
                      JOIN pg_attribute x ON x.attrelid = i.indrelid AND x.attnum = u.n
                      WHERE u.coll <> x.attcollation)),
movable_fk AS (
    SELECT a.attnum, k.oid,
           jsonb_build_object(
               'name', k.conname::text,
               'schema', n.nspname::text, 'table', c.relname::text,
               'columns', (SELECT jsonb_agg(x.attname::text ORDER BY u.ord)
                           FROM unnest(k.conkey) WITH ORDINALITY u(n, ord)
                           JOIN pg_attribute x ON x.attrelid = k.conrelid AND x.attnum = u.n),
               'ref_schema', rn.nspname::text, 'ref_table', rc.relname::text,
               'ref_columns', (SELECT jsonb_agg(x.attname::text ORDER BY u.ord)
                               FROM unnest(k.confkey) WITH ORDINALITY u(n, ord)
                               JOIN pg_attribute x ON x.attrelid = k.confrelid
                                                  AND x.attnum = u.n),
               'options',
                   CASE k.confmatchtype WHEN 'f' THEN ' MATCH FULL' ELSE '' END
                   || CASE k.confupdtype WHEN 'r' THEN ' ON UPDATE RESTRICT'
                          WHEN 'c' THEN ' ON UPDATE CASCADE' WHEN 'n' THEN ' ON UPDATE SET NULL'
                          WHEN 'd' THEN ' ON UPDATE SET DEFAULT' ELSE '' END
                   || CASE k.confdeltype WHEN 'r' THEN ' ON DELETE RESTRICT'
                          WHEN 'c' THEN ' ON DELETE CASCADE' WHEN 'n' THEN ' ON DELETE SET NULL'
                          WHEN 'd' THEN ' ON DELETE SET DEFAULT' ELSE '' END
                   || CASE WHEN k.condeferrable THEN ' DEFERRABLE' ELSE '' END
                   || CASE WHEN k.condeferred THEN ' INITIALLY DEFERRED' ELSE '' END)
               AS description
    FROM a
    JOIN pg_constraint k ON k.contype = 'f' AND k.convalidated
         AND ((k.conrelid = a.attrelid AND a.attnum = ANY (k.conkey))
              OR (k.confrelid = a.attrelid AND a.attnum = ANY (k.confkey)))
    JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_class rc ON rc.oid = k.confrelid JOIN pg_namespace rn ON rn.oid = rc.relnamespace
    WHERE k.conparentid = 0 AND c.relkind = 'r' AND rc.relkind = 'r'
      AND k.confdelsetcols IS NULL),
owned_sequence AS (
    SELECT a.attnum, s.oid,
           jsonb_build_object('name', format('%I.%I', sn.nspname, s.relname),
                              'type', format_type(q.seqtypid, NULL)) AS description
    FROM a
    JOIN pg_depend p ON p.refclassid = 'pg_class'::regclass AND p.refobjid = a.attrelid
                    AND p.refobjsubid = a.attnum AND p.classid = 'pg_class'::regclass
                    AND p.deptype = 'a'
    JOIN pg_class s ON s.oid = p.objid AND s.relkind = 'S'
    JOIN pg_namespace sn ON sn.oid = s.relnamespace
    JOIN pg_sequence q ON q.seqrelid = s.oid)
SELECT a.attname::text, a.attnotnull, a.default_sql,
       a.attidentity <> '' OR a.attgenerated <> '',
       format_type(a.atttypid, a.atttypmod),
       ARRAY(SELECT pg_describe_object(p.classid, p.objid, p.objsubid)
             FROM pg_depend p
             WHERE p.refclassid = 'pg_class'::regclass
               AND p.refobjid = a.attrelid AND p.refobjsubid = a.attnum
               AND p.deptype IN ('n', 'a')
               AND NOT (p.classid = 'pg_attrdef'::regclass
                        AND p.objid IS NOT DISTINCT FROM a.default_oid)
               AND NOT EXISTS (SELECT FROM pg_constraint k
                               WHERE p.classid = 'pg_constraint'::regclass
                                 AND k.oid = p.objid AND k.contype = 'n')
               AND NOT (p.classid = 'pg_class'::regclass AND p.objid IN
                        (SELECT indexrelid FROM movable_index m WHERE m.attnum = a.attnum
                         UNION ALL
                         SELECT oid FROM owned_sequence o WHERE o.attnum = a.attnum))
               AND NOT (p.classid = 'pg_constraint'::regclass AND p.objid IN
                        (SELECT constraint_oid FROM movable_index m WHERE m.attnum = a.attnum
                         UNION ALL
                         SELECT oid FROM movable_fk f WHERE f.attnum = a.attnum))
             ORDER BY 1),
       (SELECT jsonb_agg(description ORDER BY description->>'name') FROM movable_index m
        WHERE m.attnum = a.attnum),
       (SELECT jsonb_agg(description ORDER BY description->>'name') FROM movable_fk f
        WHERE f.attnum = a.attnum),
       (SELECT description FROM owned_sequence o WHERE o.attnum = a.attnum)
FROM a
ORDER BY a.attnum";
fn columns(oid: pg_sys::Oid) -> Vec<Column> {
    let rows: Vec<Column> = crate::pg::guc::printing(|| {
        pgrx::Spi::connect(|client| {
            client
                .select(COLUMNS, None, &[oid.into()])?
                .map(|row| {
                    Ok(Column {
                        name: row.get::<String>(1)?.unwrap_or_default(),
                        not_null: row.get::<bool>(2)?.unwrap_or(false),
                        default_sql: row.get::<String>(3)?,
                        identity_or_generated: row.get::<bool>(4)?.unwrap_or(false),
                        type_sql: row.get::<String>(5)?.unwrap_or_default(),
                        dependents: row
                            .get::<Vec<Option<String>>>(6)?
                            .unwrap_or_default()
                            .into_iter()
                            .flatten()
                            .collect(),
                        indexes: json(row.get::<pgrx::JsonB>(7)?),
                        foreign_keys: json(row.get::<pgrx::JsonB>(8)?),
                        sequence: json(row.get::<pgrx::JsonB>(9)?),
                    })
                })
                .collect::<Result<Vec<_>, pgrx::spi::Error>>()
        })
    })
    .or_bookkeeping("read the columns migrate.expand plans for");
    rows
}

/// The table's SELECT, INSERT, UPDATE and DELETE grants to roles other than its owner, for
/// its views (which check the caller's rights on the table too: security_invoker).
fn grants(oid: pg_sys::Oid) -> Vec<(String, String)> {
    crate::pg::spi::pinned_pairs::<String, String>(
        "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, \
                a.privilege_type \
         FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a \
         LEFT JOIN pg_roles r ON r.oid = a.grantee \
         WHERE c.oid = $1 AND a.grantee <> c.relowner \
           AND a.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE') \
         ORDER BY 1, 2",
        &[oid.into()],
    )
    .or_bookkeeping("read the grants migrate.expand carries over")
}

/// Whether any column of the table has privileges of its own (to a role other than its
/// owner).
fn column_grants(oid: pg_sys::Oid) -> bool {
    crate::pg::spi::pinned_row(
        "SELECT EXISTS (SELECT FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid \
                        CROSS JOIN LATERAL aclexplode(a.attacl) x \
                        WHERE c.oid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                          AND x.grantee <> c.relowner)",
        &[oid.into()],
        |row| row.get::<bool>(1),
    )
    .or_bookkeeping("read pg_attribute")
    .flatten()
    .unwrap_or(false)
}

/// The table's own (not internal) row triggers that fire BEFORE an INSERT or UPDATE.
fn before_triggers(oid: pg_sys::Oid) -> Vec<String> {
    // tgtype bits (trigger.h): 1 ROW, 2 BEFORE, 4 INSERT, 16 UPDATE.
    crate::pg::spi::pinned_column::<String>(
        "SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal \
           AND tgtype & 3 = 3 AND tgtype & 20 <> 0 ORDER BY 1",
        &[oid.into()],
    )
    .or_bookkeeping("read pg_trigger")
}

/// Whether `schema.table` has a live column `column` now.
pub fn column_exists(schema: &str, table: &str, column: &str) -> bool {
    crate::pg::spi::pinned_row(
        "SELECT EXISTS (SELECT FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                        JOIN pg_namespace n ON n.oid = c.relnamespace \
                        WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 \
                          AND a.attnum > 0 AND NOT a.attisdropped)",
        &[schema.into(), table.into(), column.into()],
        |row| row.get::<bool>(1),
    )
    .or_bookkeeping("read pg_attribute")
    .flatten()
    .unwrap_or(false)
}
