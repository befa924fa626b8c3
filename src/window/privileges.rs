//! The privileges a window carries from its tables ([`Mirror`]): a copy column has those of
//! the column it replaces, and a view that checks the table's privileges as its owner (the
//! table has column privileges, which a view checking them as its reader cannot honour) has
//! the table's, column by column under the new version's names. They are carried when the
//! window publishes, when it contracts, and after every GRANT, REVOKE or ALTER TABLE while it
//! is open: a privilege revoked on the table is gone from the new version too.
//!
//! Only what differs is changed: a GRANT anywhere in the database reads the windows'
//! privileges and writes nothing when they are in step, so it neither waits for nor blocks
//! anyone. The statements run as the owners of the view and the table (never as whoever set
//! them off), and name both by what they are now: the table by its oid, the view only when it
//! is the one over that table.

use super::plan::{literal, Mirror, Quote};
use crate::errors::{OrBookkeeping, Problem};
use crate::pg::identity;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;

/// One privilege of a relation or of one of its columns, to a role other than its owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Privilege {
    /// As SQL: quoted, or `PUBLIC`.
    pub grantee: String,
    /// `None`: the relation's own.
    pub column: Option<String>,
    pub privilege: String,
    pub grantable: bool,
    /// Granted by the relation's owner (what the window gives and takes back; a grant made
    /// with a grant option is its grantor's).
    pub by_owner: bool,
    /// The grantee may use the relation's schema (a table's privileges reach a view in
    /// another schema only for a role that could name the table).
    pub schema_usage: bool,
}

/// A relation as it is now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Relation {
    /// Qualified and quoted.
    pub name: String,
    pub owner: u32,
    pub row_security: bool,
    pub privileges: Vec<Privilege>,
}

/// What a view can be granted, of a table's privileges (REFERENCES, TRIGGER and TRUNCATE
/// mean nothing on a view).
const VIEW_PRIVILEGES: [&str; 4] = ["SELECT", "INSERT", "UPDATE", "DELETE"];

/// The statements that bring `view` (as its owner) and `mirror`'s copies (as the table's
/// owner) in step with `table`'s privileges: for each role whose privileges differ, what it
/// has is revoked (CASCADE: what it granted on from them goes too) and what it should have is
/// granted.
///
/// A table with row-level security gives the view nothing: its policies would apply to the
/// view's owner, not its reader (the planner refuses such tables; this holds if the policies
/// came later, by someone who turned the guard off).
pub fn statements(
    mirror: &Mirror,
    table: &Relation,
    view: Option<&Relation>,
    q: Quote,
) -> (Vec<String>, Vec<String>) {
    let mut on_view = Vec::new();
    if let Some(view) = view {
        let wanted: Vec<Privilege> = if table.row_security {
            Vec::new()
        } else {
            table
                .privileges
                .iter()
                .filter(|p| VIEW_PRIVILEGES.contains(&p.privilege.as_str()) && p.schema_usage)
                .filter_map(|p| {
                    let column = match &p.column {
                        None => None,
                        // Not the new version's: dropped, or a copy.
                        Some(c) => Some(mirror.columns.iter().find(|(_, t)| t == c)?.0.clone()),
                    };
                    Some(Privilege {
                        grantee: p.grantee.clone(),
                        column,
                        privilege: p.privilege.clone(),
                        ..Privilege::default()
                    })
                })
                .collect()
        };
        let has: Vec<Privilege> = view
            .privileges
            .iter()
            .filter(|p| p.by_owner)
            .map(|p| Privilege {
                grantee: p.grantee.clone(),
                column: p.column.clone(),
                privilege: p.privilege.clone(),
                grantable: p.grantable,
                ..Privilege::default()
            })
            .collect();
        for (grantee, has, wanted) in differing(&has, &wanted) {
            if has {
                // On a table, revoking a privilege revokes it from its columns too.
                on_view.push(format!(
                    "REVOKE ALL ON {} FROM {grantee} CASCADE",
                    view.name
                ));
            }
            for p in wanted.iter() {
                let on = match &p.column {
                    None => format!("ON {}", view.name),
                    Some(c) => format!("({}) ON {}", q(c), view.name),
                };
                on_view.push(format!("GRANT {} {on} TO {grantee}", p.privilege));
            }
            if !wanted.is_empty() {
                on_view.push(format!(
                    "GRANT USAGE ON SCHEMA {} TO {grantee}",
                    q(&mirror.view_schema)
                ));
            }
        }
    }
    let mut on_table = Vec::new();
    for (copy, original) in &mirror.copies {
        let of = |column: &str, owner_only: bool| -> Vec<Privilege> {
            table
                .privileges
                .iter()
                .filter(|p| p.column.as_deref() == Some(column) && (p.by_owner || !owner_only))
                .map(|p| Privilege {
                    grantee: p.grantee.clone(),
                    privilege: p.privilege.clone(),
                    grantable: p.grantable,
                    ..Privilege::default()
                })
                .collect()
        };
        for (grantee, has, wanted) in differing(&of(copy, true), &of(original, false)) {
            if has {
                on_table.push(format!(
                    "REVOKE ALL ({}) ON {} FROM {grantee} CASCADE",
                    q(copy),
                    table.name
                ));
            }
            for p in wanted {
                let option = if p.grantable {
                    " WITH GRANT OPTION"
                } else {
                    ""
                };
                on_table.push(format!(
                    "GRANT {} ({}) ON {} TO {grantee}{option}",
                    p.privilege,
                    q(copy),
                    table.name
                ));
            }
        }
    }
    (on_view, on_table)
}

/// Each grantee whose privileges in `has` are not those in `wanted`: whether it has any, and
/// what it should have.
fn differing(has: &[Privilege], wanted: &[Privilege]) -> Vec<(String, bool, Vec<Privilege>)> {
    let mut grantees: Vec<&str> = has
        .iter()
        .chain(wanted)
        .map(|p| p.grantee.as_str())
        .collect();
    grantees.sort();
    grantees.dedup();
    grantees
        .into_iter()
        .filter_map(|g| {
            let of = |list: &[Privilege]| {
                let mut mine: Vec<Privilege> =
                    list.iter().filter(|p| p.grantee == g).cloned().collect();
                mine.sort();
                mine.dedup();
                mine
            };
            let (now, then) = (of(has), of(wanted));
            (now != then).then(|| (g.to_string(), !now.is_empty(), then))
        })
        .collect()
}

/// The privileges of a relation and of its columns to roles other than its owner.
fn privileges_of(oid: u32) -> Vec<Privilege> {
    crate::pg::spi::pinned_rows(
        "SELECT CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, \
                x.attname::text, x.privilege_type, x.is_grantable, x.grantor = c.relowner, \
                CASE WHEN x.grantee = 0 \
                     THEN EXISTS (SELECT FROM aclexplode(coalesce(n.nspacl, \
                                                                 acldefault('n', n.nspowner))) u \
                                  WHERE u.grantee = 0 AND u.privilege_type = 'USAGE') \
                     ELSE has_schema_privilege(x.grantee, c.relnamespace, 'USAGE') END \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         CROSS JOIN LATERAL ( \
             SELECT NULL::name AS attname, e.* FROM aclexplode(c.relacl) e \
             UNION ALL \
             SELECT a.attname, e.* FROM pg_attribute a CROSS JOIN LATERAL aclexplode(a.attacl) e \
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) x \
         LEFT JOIN pg_roles r ON r.oid = x.grantee \
         WHERE c.oid = $1 AND x.grantee <> c.relowner \
         ORDER BY 1, 2 NULLS FIRST, 3",
        &[pg_sys::Oid::from(oid).into()],
        |row| {
            Ok(Privilege {
                grantee: row.get::<String>(1)?.unwrap_or_default(),
                column: row.get::<String>(2)?,
                privilege: row.get::<String>(3)?.unwrap_or_default(),
                grantable: row.get::<bool>(4)?.unwrap_or(false),
                by_owner: row.get::<bool>(5)?.unwrap_or(false),
                schema_usage: row.get::<bool>(6)?.unwrap_or(false),
            })
        },
    )
    .or_bookkeeping("read the privileges a window carries")
}

/// The window's table, by its oid (a table of the same name elsewhere is not it).
fn table(oid: u32) -> Option<Relation> {
    let head = crate::pg::spi::pinned_row(
        "SELECT oid::regclass::text, relowner, relrowsecurity FROM pg_class \
         WHERE oid = $1 AND relkind = 'r'",
        &[pg_sys::Oid::from(oid).into()],
        |row| {
            Ok((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<pg_sys::Oid>(2)?.map(u32::from).unwrap_or(0),
                row.get::<bool>(3)?.unwrap_or(false),
            ))
        },
    )
    .or_bookkeeping("read pg_class")?;
    Some(Relation {
        name: head.0,
        owner: head.1,
        row_security: head.2,
        privileges: privileges_of(oid),
    })
}

/// The window's view: the view of that name, if it is one over the window's table.
fn view(name: &str, table: u32) -> Option<Relation> {
    let (oid, name, owner) = crate::pg::spi::pinned_row(
        "SELECT v.oid, v.oid::regclass::text, v.relowner FROM pg_class v \
         WHERE v.oid = to_regclass($1) AND v.relkind = 'v' \
           AND EXISTS (SELECT FROM pg_rewrite w JOIN pg_depend d \
                         ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid \
                       WHERE w.ev_class = v.oid AND d.refclassid = 'pg_class'::regclass \
                         AND d.refobjid = $2)",
        &[name.into(), pg_sys::Oid::from(table).into()],
        |row| {
            Ok((
                row.get::<pg_sys::Oid>(1)?.map(u32::from).unwrap_or(0),
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<pg_sys::Oid>(3)?.map(u32::from).unwrap_or(0),
            ))
        },
    )
    .or_bookkeeping("read pg_class")?;
    Some(Relation {
        name,
        owner,
        row_security: false,
        privileges: privileges_of(oid),
    })
}

thread_local! {
    /// A window being opened, whose row is written after its steps ran (a window with
    /// nothing for the worker publishes in expand's own call).
    static PENDING: RefCell<Option<(String, Vec<Mirror>)>> = const { RefCell::new(None) };
    /// The privileges are being carried: their own GRANTs and REVOKEs are not followed.
    static MIRRORING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (a window's expand) with its mirrors known before its row is written.
pub fn with_pending<T>(version: &str, mirrors: &[Mirror], f: impl FnOnce() -> T) -> T {
    struct Clear;
    impl Drop for Clear {
        // Also as an ERROR unwinds.
        fn drop(&mut self) {
            PENDING.set(None);
        }
    }
    PENDING.set(Some((version.to_string(), mirrors.to_vec())));
    let _clear = Clear;
    f()
}

/// A window's mirrors: recorded, or being opened.
fn mirrors_of(version: &str) -> Vec<Mirror> {
    if let Some(mirrors) = PENDING.with_borrow(|p| {
        p.as_ref()
            .filter(|(v, _)| v == version)
            .map(|(_, m)| m.clone())
    }) {
        return mirrors;
    }
    let recorded: Option<Option<pgrx::JsonB>> = identity::as_owner(|| {
        crate::pg::spi::pinned_row(
            "SELECT mirrors FROM migrate.window_history WHERE version = $1",
            &[version.into()],
            |row| row.get::<pgrx::JsonB>(1),
        )
    })
    .or_bookkeeping("read migrate.window_history");
    recorded
        .flatten()
        .and_then(|j| serde_json::from_value(j.0).ok())
        .unwrap_or_default()
}

/// Carries window `version`'s privileges: what differs is changed, on a view as its owner,
/// on a table's copy columns as the table's owner.
pub fn mirror(version: &str) {
    let mirrors = mirrors_of(version);
    // As the statement that called this left them (a GRANT's event trigger runs with the
    // snapshot its statement began with).
    let planned: Vec<(u32, Vec<String>)> = crate::pg::spi::with_current_snapshot(|| {
        identity::as_owner(|| {
            let mut planned = Vec::new();
            for m in &mirrors {
                let Some(table) = table(m.table_oid) else {
                    continue;
                };
                let view = m.view.as_deref().and_then(|v| view(v, m.table_oid));
                if table.row_security && view.is_some() {
                    Problem::new(
                        PgSqlErrorCode::ERRCODE_WARNING,
                        format!(
                            "the new version of {} grants nothing: the table has row-level \
                             security",
                            table.name
                        ),
                        format!(
                            "Window {version}'s view checks the table's privileges as its \
                             owner, so the policies would apply to the owner rather than the \
                             reader."
                        ),
                        "Turn row-level security off for the window's time, or abort it.",
                    )
                    .report(pgrx::PgLogLevel::WARNING);
                }
                let (on_view, on_table) =
                    statements(m, &table, view.as_ref(), crate::pg::catalog::quote_ident);
                // The view first: nothing the copies meet holds it up.
                if let Some(view) = &view {
                    planned.push((view.owner, on_view));
                }
                planned.push((table.owner, on_table));
            }
            planned
        })
    });
    for (owner, statements) in planned.into_iter().filter(|(_, s)| !s.is_empty()) {
        identity::as_author(
            pg_sys::Oid::from(owner),
            &[("search_path", "pg_catalog")],
            || {
                for sql in &statements {
                    Spi::run(sql).or_bookkeeping("carry a window's privileges");
                }
            },
        );
    }
}

/// `SELECT migrate.mirror_window_privileges(version)`: a step of publish and contract.
#[pg_extern(volatile, parallel_unsafe)]
fn mirror_window_privileges(version: &str) {
    mirror(version)
}

/// After a GRANT, REVOKE or ALTER TABLE, each open window carries its tables' privileges
/// again. One that cannot is said in a WARNING and does not undo the statement: a REVOKE must
/// never be refused for it.
#[pg_extern(sql = "
    CREATE FUNCTION migrate.follow_window_grants() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
")]
fn follow_window_grants(_fcinfo: pg_sys::FunctionCallInfo) {
    if MIRRORING.get() {
        return;
    }
    let open: Vec<String> = identity::as_owner(|| {
        crate::pg::spi::pinned_column::<String>(
            "SELECT version FROM migrate.window_history \
             WHERE ended IS NULL AND mirrors <> '[]' ORDER BY version",
            &[],
        )
    })
    .or_bookkeeping("read migrate.window_history");
    // A window's own steps (publish, contract) carry its privileges in a step of their own,
    // where its columns are as the step expects them.
    let own = crate::migration::running::running().map(|r| r.version);
    for version in open.into_iter().filter(|v| own.as_ref() != Some(v)) {
        MIRRORING.set(true);
        let carried = crate::pg::subxact::run(|| mirror(&version));
        MIRRORING.set(false);
        if let Err(caught) = carried {
            Problem::new(
                PgSqlErrorCode::ERRCODE_WARNING,
                format!(
                    "window {version}'s new version did not take the privileges its tables \
                     have now"
                ),
                caught.message,
                format!(
                    "Grant or revoke on its views as on its tables, or run SELECT \
                     migrate.mirror_window_privileges({}) once what stopped it is gone.",
                    literal(&version)
                ),
            )
            .report(pgrx::PgLogLevel::WARNING);
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn q(s: &str) -> String {
        s.to_string()
    }

    fn p(column: Option<&str>, grantee: &str, privilege: &str) -> Privilege {
        Privilege {
            grantee: grantee.into(),
            column: column.map(str::to_string),
            privilege: privilege.into(),
            grantable: false,
            by_owner: true,
            schema_usage: true,
        }
    }

    fn orders() -> Mirror {
        Mirror {
            table: "public.orders".into(),
            table_oid: 1,
            copies: vec![("_migrate_43_amount".into(), "amount".into())],
            view: Some("public_v43.orders".into()),
            view_schema: "public_v43".into(),
            columns: vec![
                ("id".into(), "id".into()),
                ("amount".into(), "amount".into()),
                ("status".into(), "old_status".into()),
            ],
        }
    }

    fn relation(name: &str, privileges: Vec<Privilege>) -> Relation {
        Relation {
            name: name.into(),
            privileges,
            ..Relation::default()
        }
    }

    #[test]
    fn the_view_and_the_copy_get_what_the_table_has_now_and_lose_the_rest() {
        let table = relation(
            "public.orders",
            vec![
                p(None, "app", "SELECT"),
                p(None, "app", "TRUNCATE"),
                p(Some("_migrate_43_amount"), "gone", "SELECT"),
                p(Some("amount"), "reader", "SELECT"),
                p(Some("amount"), "reader", "REFERENCES"),
                p(Some("legacy_note"), "reader", "SELECT"),
                p(Some("old_status"), "reader", "UPDATE"),
                // Cannot name the table: gets nothing through another schema.
                Privilege {
                    schema_usage: false,
                    ..p(None, "stranger", "SELECT")
                },
            ],
        );
        let view = relation(
            "public_v43.orders",
            vec![p(None, "gone", "SELECT"), p(Some("id"), "gone", "SELECT")],
        );
        let (on_view, on_table) = statements(&orders(), &table, Some(&view), q);
        assert_eq!(
            on_view,
            [
                "GRANT SELECT ON public_v43.orders TO app",
                "GRANT USAGE ON SCHEMA public_v43 TO app",
                "REVOKE ALL ON public_v43.orders FROM gone CASCADE",
                "GRANT SELECT (amount) ON public_v43.orders TO reader",
                "GRANT UPDATE (status) ON public_v43.orders TO reader",
                "GRANT USAGE ON SCHEMA public_v43 TO reader",
            ]
        );
        assert_eq!(
            on_table,
            [
                "REVOKE ALL (_migrate_43_amount) ON public.orders FROM gone CASCADE",
                "GRANT REFERENCES (_migrate_43_amount) ON public.orders TO reader",
                "GRANT SELECT (_migrate_43_amount) ON public.orders TO reader",
            ]
        );
    }

    #[test]
    fn nothing_is_written_when_they_are_in_step() {
        let table = relation(
            "public.orders",
            vec![
                p(None, "app", "SELECT"),
                Privilege {
                    grantable: true,
                    ..p(Some("amount"), "bob", "SELECT")
                },
                Privilege {
                    grantable: true,
                    ..p(Some("_migrate_43_amount"), "bob", "SELECT")
                },
                // bob's own grant on the copy, made with his grant option: his to keep.
                Privilege {
                    by_owner: false,
                    ..p(Some("_migrate_43_amount"), "carol", "SELECT")
                },
            ],
        );
        let view = relation(
            "public_v43.orders",
            vec![p(None, "app", "SELECT"), p(Some("amount"), "bob", "SELECT")],
        );
        assert_eq!(
            statements(&orders(), &table, Some(&view), q),
            (vec![], vec![])
        );
    }

    #[test]
    fn before_the_view_exists_only_the_copies_are_carried_and_policies_empty_the_view() {
        let table = relation("public.orders", vec![p(Some("amount"), "reader", "SELECT")]);
        assert_eq!(
            statements(&orders(), &table, None, q),
            (
                vec![],
                vec!["GRANT SELECT (_migrate_43_amount) ON public.orders TO reader".to_string()]
            )
        );
        // Row-level security turned on later: the view grants nothing more.
        let guarded = Relation {
            row_security: true,
            ..relation(
                "public.orders",
                vec![
                    p(None, "app", "SELECT"),
                    p(Some("_migrate_43_amount"), "reader", "SELECT"),
                    p(Some("amount"), "reader", "SELECT"),
                ],
            )
        };
        let view = relation("public_v43.orders", vec![p(None, "app", "SELECT")]);
        assert_eq!(
            statements(&orders(), &guarded, Some(&view), q).0,
            ["REVOKE ALL ON public_v43.orders FROM app CASCADE"]
        );
    }
}
