//! The catalog facts a window's plan needs about a table: its columns, what depends on each,
//! and the grants its views carry over. Read with `search_path` pinned.

use crate::errors::OrBookkeeping;
use crate::window::plan::{Column, Table};
use pgrx::pg_sys;

/// The table `oid` as the plan needs it; `None` when it no longer exists.
/// `indexes` are the names of the indexes the window would build in the table's schema.
pub fn table(
    oid: pg_sys::Oid,
    view_schema: impl Fn(&str) -> String,
    indexes: &[String],
) -> Option<Table> {
    let head = crate::pg::spi::pinned_row(
        "SELECT n.nspname::text, c.relname::text, c.relkind = 'r', \
                EXISTS (SELECT FROM pg_inherits i WHERE i.inhparent = c.oid), \
                c.relrowsecurity, \
                EXISTS (SELECT FROM pg_constraint k WHERE k.conrelid = c.oid \
                        AND k.contype = 'p') \
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
            ))
        },
    )
    .or_bookkeeping("read the table migrate.expand plans for")?;
    let (schema, name, plain, has_children, row_security, primary_key) = head;
    let wanted = view_schema(&schema);
    Some(Table {
        primary_key,
        existing_relations: crate::pg::spi::pinned_column::<String>(
            "SELECT c.relname::text FROM pg_class c \
             WHERE c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = $1) \
               AND c.relname = ANY ($2)",
            &[oid.into(), indexes.to_vec().into()],
        )
        .or_bookkeeping("read pg_class"),
        columns: columns(oid),
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

/// Live columns in order. A column's dependents are what would have to move with it to a
/// copy: indexes, constraints (but PostgreSQL 18's NOT NULL ones), views and rules,
/// sequences, statistics, policies, other columns' generation expressions; not its own
/// default.
fn columns(oid: pg_sys::Oid) -> Vec<Column> {
    let rows: Vec<Column> = crate::pg::guc::pinned(|| {
        pgrx::Spi::connect(|client| {
            client
                .select(
                    "SELECT a.attname::text, a.attnotnull, pg_get_expr(d.adbin, d.adrelid), \
                            a.attidentity <> '' OR a.attgenerated <> '', \
                            format_type(a.atttypid, a.atttypmod), \
                            ARRAY(SELECT pg_describe_object(p.classid, p.objid, p.objsubid) \
                                  FROM pg_depend p \
                                  WHERE p.refclassid = 'pg_class'::regclass \
                                    AND p.refobjid = a.attrelid AND p.refobjsubid = a.attnum \
                                    AND p.deptype IN ('n', 'a') \
                                    AND NOT (p.classid = 'pg_attrdef'::regclass \
                                             AND p.objid IS NOT DISTINCT FROM d.oid) \
                                    AND NOT EXISTS (SELECT FROM pg_constraint k \
                                                    WHERE p.classid = 'pg_constraint'::regclass \
                                                      AND k.oid = p.objid AND k.contype = 'n') \
                                  ORDER BY 1) \
                     FROM pg_attribute a \
                     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                     ORDER BY a.attnum",
                    None,
                    &[oid.into()],
                )?
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

/// Whether any column of the table has privileges of its own.
fn column_grants(oid: pg_sys::Oid) -> bool {
    crate::pg::spi::pinned_row(
        "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 \
                        AND NOT attisdropped AND attacl IS NOT NULL)",
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
