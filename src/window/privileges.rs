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
    /// Who granted it (its oid): the owner, or a holder of a grant option.
    pub grantor: u32,
    /// As SQL: quoted, or `PUBLIC`.
    pub grantee: String,
    /// `None`: the relation's own.
    pub column: Option<String>,
    pub privilege: String,
    pub grantable: bool,
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
    /// As SQL.
    pub owner_name: String,
    pub row_security: bool,
    /// Its live columns.
    pub columns: Vec<String>,
    pub privileges: Vec<Privilege>,
}

/// What a view can be granted, of a table's privileges (REFERENCES, TRIGGER and TRUNCATE
/// mean nothing on a view).
const VIEW_PRIVILEGES: [&str; 4] = ["SELECT", "INSERT", "UPDATE", "DELETE"];

/// Statements to run as one role (its oid).
pub type AsRole = (u32, Vec<String>);

/// The statements that bring `view` and `mirror`'s copies in step with `table`'s privileges,
/// each as the owner that makes them (PostgreSQL records an owner's grants as the owner's).
/// For each role whose privileges differ, what it has is revoked (CASCADE: what it granted on
/// from them goes too) and what it should have is granted: on the view, as its owner, the
/// table's privileges whoever granted them (a view grants no grant option); on a copy, as the
/// table's owner, the owner's grants of its original, grant options included.
///
/// A table with row-level security gives the view nothing: its policies would apply to the
/// view's owner, not its reader (the planner refuses such tables; this holds if the policies
/// came later, by someone who turned the guard off).
pub fn statements(
    mirror: &Mirror,
    table: &Relation,
    view: Option<&Relation>,
    q: Quote,
) -> Vec<AsRole> {
    let mut out: Vec<AsRole> = Vec::new();
    if let Some(view) = view {
        let wanted: Vec<Privilege> = if table.row_security {
            Vec::new()
        } else {
            table
                .privileges
                .iter()
                .filter(|p| VIEW_PRIVILEGES.contains(&p.privilege.as_str()) && p.schema_usage)
                // The view's owner has every privilege on it already.
                .filter(|p| p.grantee != view.owner_name)
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
            .filter(|p| p.grantor == view.owner)
            .map(|p| Privilege {
                grantee: p.grantee.clone(),
                column: p.column.clone(),
                privilege: p.privilege.clone(),
                grantable: p.grantable,
                ..Privilege::default()
            })
            .collect();
        let mut on_view = Vec::new();
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
        out.push((view.owner, on_view));
    }
    // The copy has the owner's grants of its original. A grant made with a grant option is
    // its grantor's: it cannot be made again as that grantor (PostgreSQL records a grant as
    // made by whichever of the grantor's roles holds the most options, the owner's for a
    // superuser), so it is not carried; what such a grantor grants on the copy itself is left
    // alone (and goes with the option).
    let mut on_table = Vec::new();
    for (copy, original) in &mirror.copies {
        // A copy that is not there (a failed window's), or whose original is gone.
        if !table.columns.contains(copy) || !table.columns.contains(original) {
            continue;
        }
        let of = |column: &str| -> Vec<Privilege> {
            table
                .privileges
                .iter()
                .filter(|p| p.column.as_deref() == Some(column) && p.grantor == table.owner)
                .map(|p| Privilege {
                    grantee: p.grantee.clone(),
                    privilege: p.privilege.clone(),
                    grantable: p.grantable,
                    ..Privilege::default()
                })
                .collect()
        };
        for (grantee, has, wanted) in differing(&of(copy), &of(original)) {
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
    out.push((table.owner, on_table));
    out.retain(|(_, statements)| !statements.is_empty());
    out
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
                x.attname::text, x.privilege_type, x.is_grantable, x.grantor, \
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
                grantor: row.get::<pg_sys::Oid>(5)?.map(u32::from).unwrap_or(0),
                schema_usage: row.get::<bool>(6)?.unwrap_or(false),
            })
        },
    )
    .or_bookkeeping("read the privileges a window carries")
}

/// A relation's name, owner and live columns, read by oid.
fn relation(oid: u32, kind: &str) -> Option<Relation> {
    let (name, owner, owner_name, row_security, columns) = crate::pg::spi::pinned_row(
        "SELECT c.oid::regclass::text, c.relowner, quote_ident(r.rolname), c.relrowsecurity, \
                ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid \
                      AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) \
         FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner \
         WHERE c.oid = $1 AND c.relkind = $2::\"char\"",
        &[pg_sys::Oid::from(oid).into(), kind.into()],
        |row| {
            Ok((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<pg_sys::Oid>(2)?.map(u32::from).unwrap_or(0),
                row.get::<String>(3)?.unwrap_or_default(),
                row.get::<bool>(4)?.unwrap_or(false),
                row.get::<Vec<String>>(5)?.unwrap_or_default(),
            ))
        },
    )
    .or_bookkeeping("read pg_class")?;
    Some(Relation {
        name,
        owner,
        owner_name,
        row_security,
        columns,
        privileges: privileges_of(oid),
    })
}

/// The window's view: the view of that name, if it is one over the window's table.
fn view(name: &str, table: u32) -> Option<Relation> {
    let oid = crate::pg::spi::pinned_row(
        "SELECT v.oid FROM pg_class v \
         WHERE v.oid = to_regclass($1) AND v.relkind = 'v' \
           AND EXISTS (SELECT FROM pg_rewrite w JOIN pg_depend d \
                         ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid \
                       WHERE w.ev_class = v.oid AND d.refclassid = 'pg_class'::regclass \
                         AND d.refobjid = $2)",
        &[name.into(), pg_sys::Oid::from(table).into()],
        |row| row.get::<pg_sys::Oid>(1),
    )
    .or_bookkeeping("read pg_class")
    .flatten()?;
    relation(u32::from(oid), "v")
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

/// Carries window `version`'s privileges: what differs is changed, each statement as the
/// owner that may make it. Each owner's statements run in a subtransaction of their own, so
/// that one that fails (said in the error returned) holds up none of the others.
pub fn mirror(version: &str) -> Result<(), crate::pg::subxact::Caught> {
    let mirrors = mirrors_of(version);
    let mut first_failure = None;
    for (role, statements) in plan(version, &mirrors) {
        let ran = crate::pg::subxact::run(|| {
            identity::as_author(
                pg_sys::Oid::from(role),
                &[("search_path", "pg_catalog")],
                || {
                    for sql in &statements {
                        Spi::run(sql).or_bookkeeping("carry a window's privileges");
                    }
                },
            )
        });
        if let Err(caught) = ran {
            first_failure.get_or_insert(caught);
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// What differs now, as statements for the roles that may make them.
fn plan(version: &str, mirrors: &[Mirror]) -> Vec<AsRole> {
    // As the statement that called this left them (a GRANT's event trigger runs with the
    // snapshot its statement began with), and as the previous round did.
    crate::pg::spi::with_current_snapshot(|| {
        identity::as_owner(|| {
            let mut planned = Vec::new();
            for m in mirrors {
                let Some(table) = relation(m.table_oid, "r") else {
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
                planned.extend(statements(
                    m,
                    &table,
                    view.as_ref(),
                    crate::pg::catalog::quote_ident,
                ));
            }
            planned
        })
    })
}

/// `SELECT migrate.mirror_window_privileges(version)`: a step of publish and contract.
#[pg_extern(volatile, parallel_unsafe)]
fn mirror_window_privileges(version: &str) {
    if let Err(caught) = mirror(version) {
        Problem::new(
            caught.code,
            format!("window {version}'s new version could not take its tables' privileges"),
            caught.message,
            "See what stopped it, then run SELECT migrate.mirror_window_privileges again.",
        )
        .raise();
    }
}

/// The open windows that carry privileges.
const OPEN_MIRRORED: &str = "SELECT version FROM migrate.window_history \
     WHERE ended IS NULL AND mirrors <> '[]' ORDER BY version";

/// After a GRANT, REVOKE or ALTER TABLE, each open window carries its tables' privileges
/// again. One that cannot is said in a WARNING and does not undo the statement: a REVOKE must
/// never be refused for it.
#[pg_extern(sql = "
    CREATE FUNCTION migrate.follow_window_grants() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
")]
fn follow_window_grants(fcinfo: pg_sys::FunctionCallInfo) {
    let event = crate::pg::event_trigger::event(fcinfo);
    if MIRRORING.get() {
        return;
    }
    // A GRANT or REVOKE may name anything (a schema, a role's column): every open window is
    // looked at. An ALTER TABLE matters only on a window's table (turning row-level security
    // on), which the guard refuses outside pg_migrate: only those it changed, so that other
    // tables' DDL pays one query while it holds its lock.
    let sql = if event.tag == "ALTER TABLE" {
        "SELECT DISTINCT w.version FROM migrate.window_history w \
         CROSS JOIN LATERAL jsonb_array_elements(w.mirrors) m \
         JOIN pg_event_trigger_ddl_commands() c \
           ON c.classid = 'pg_class'::regclass AND c.objid = (m->>'table_oid')::oid \
         WHERE w.ended IS NULL ORDER BY 1"
    } else {
        OPEN_MIRRORED
    };
    let open: Vec<String> =
        identity::as_owner(|| crate::pg::spi::pinned_column::<String>(sql, &[]))
            .or_bookkeeping("read migrate.window_history");
    // A window's own steps (publish, contract) carry its privileges in a step of their own,
    // where its columns are as the step expects them.
    let own = crate::migration::running::running().map(|r| r.version);
    let open: Vec<String> = open
        .into_iter()
        .filter(|v| own.as_ref() != Some(v))
        .collect();
    for (version, caught) in carry(&open) {
        Problem::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!(
                "window {version}'s new version did not take the privileges its tables have now"
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

/// Carries each window's privileges, each in a subtransaction of its own (the GRANTs it makes
/// do not set the event trigger off again); the windows that could not, and why.
fn carry(versions: &[String]) -> Vec<(String, crate::pg::subxact::Caught)> {
    let mut failed = Vec::new();
    for version in versions {
        MIRRORING.set(true);
        let carried = crate::pg::subxact::run(|| mirror(version)).and_then(|r| r);
        MIRRORING.set(false);
        if let Err(caught) = carried {
            failed.push((version.clone(), caught));
        }
    }
    failed
}

/// The worker's round, every few seconds while windows carry privileges: what a table's
/// privileges give a role through the view depends on whether the role may use the table's
/// schema, which a role's membership decides too, and `GRANT role TO role` (cluster-wide)
/// sets off no event trigger. Writes nothing when the windows are in step. Whether any window
/// carries privileges (the worker comes back for them).
pub fn follow_roles() -> bool {
    let open: Vec<String> =
        identity::as_owner(|| crate::pg::spi::pinned_column::<String>(OPEN_MIRRORED, &[]))
            .or_bookkeeping("read migrate.window_history");
    // A view or table locked by someone else's transaction (a contract, a GRANT) is carried
    // next round: the worker's other work does not wait for it.
    let _limit = crate::pg::guc::SettingScope::set(&[("lock_timeout", "1s")]);
    for (version, caught) in carry(&open) {
        crate::pg::simple_query::log(&format!(
            "window {version}'s new version did not take the privileges its tables have now: {}",
            caught.message
        ));
    }
    !open.is_empty()
}

#[cfg(test)]
mod unit {
    use super::*;

    const OWNER: u32 = 10;
    const BOB: u32 = 20;

    fn q(s: &str) -> String {
        s.to_string()
    }

    fn p(column: Option<&str>, grantee: &str, privilege: &str) -> Privilege {
        Privilege {
            grantor: OWNER,
            grantee: grantee.into(),
            column: column.map(str::to_string),
            privilege: privilege.into(),
            grantable: false,
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
            owner: OWNER,
            owner_name: "owner".into(),
            columns: [
                "id",
                "amount",
                "old_status",
                "legacy_note",
                "_migrate_43_amount",
            ]
            .map(str::to_string)
            .to_vec(),
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
                // The view's owner has it all already.
                p(Some("amount"), "owner", "SELECT"),
            ],
        );
        let view = relation(
            "public_v43.orders",
            vec![p(None, "gone", "SELECT"), p(Some("id"), "gone", "SELECT")],
        );
        assert_eq!(
            statements(&orders(), &table, Some(&view), q),
            [
                (
                    OWNER,
                    vec![
                        "GRANT SELECT ON public_v43.orders TO app".to_string(),
                        "GRANT USAGE ON SCHEMA public_v43 TO app".into(),
                        "REVOKE ALL ON public_v43.orders FROM gone CASCADE".into(),
                        "GRANT SELECT (amount) ON public_v43.orders TO reader".into(),
                        "GRANT UPDATE (status) ON public_v43.orders TO reader".into(),
                        "GRANT USAGE ON SCHEMA public_v43 TO reader".into(),
                    ]
                ),
                (
                    OWNER,
                    vec![
                        "REVOKE ALL (_migrate_43_amount) ON public.orders FROM gone CASCADE"
                            .to_string(),
                        "GRANT SELECT (_migrate_43_amount) ON public.orders TO owner".into(),
                        "GRANT REFERENCES (_migrate_43_amount) ON public.orders TO reader".into(),
                        "GRANT SELECT (_migrate_43_amount) ON public.orders TO reader".into(),
                    ]
                ),
            ]
        );
    }

    #[test]
    fn a_copy_has_the_owners_grants_of_its_original_and_nothing_is_written_in_step() {
        let bobs = |column: &str, grantee: &str| Privilege {
            grantor: BOB,
            grantable: true,
            ..p(Some(column), grantee, "SELECT")
        };
        let optioned = |column: &str| Privilege {
            grantable: true,
            ..p(Some(column), "bob", "SELECT")
        };
        let in_step = relation(
            "public.orders",
            vec![
                p(None, "app", "SELECT"),
                optioned("amount"),
                optioned("_migrate_43_amount"),
                // bob's grants (with his option) are his: not carried, not taken back.
                bobs("amount", "carol"),
                bobs("_migrate_43_amount", "dave"),
            ],
        );
        let view = relation(
            "public_v43.orders",
            vec![
                p(None, "app", "SELECT"),
                p(Some("amount"), "bob", "SELECT"),
                p(Some("amount"), "carol", "SELECT"),
            ],
        );
        assert_eq!(statements(&orders(), &in_step, Some(&view), q), []);
        // bob's option changed on the original: the copy follows, as the owner.
        let mut changed = in_step.clone();
        changed.privileges.push(Privilege {
            privilege: "REFERENCES".into(),
            ..optioned("amount")
        });
        assert_eq!(
            statements(&orders(), &changed, Some(&view), q),
            [(
                OWNER,
                vec![
                    "REVOKE ALL (_migrate_43_amount) ON public.orders FROM bob CASCADE".to_string(),
                    "GRANT REFERENCES (_migrate_43_amount) ON public.orders TO bob WITH GRANT OPTION"
                        .into(),
                    "GRANT SELECT (_migrate_43_amount) ON public.orders TO bob WITH GRANT OPTION"
                        .into(),
                ]
            )]
        );
    }

    #[test]
    fn before_the_view_exists_only_the_copies_are_carried_and_policies_empty_the_view() {
        let table = relation("public.orders", vec![p(Some("amount"), "reader", "SELECT")]);
        assert_eq!(
            statements(&orders(), &table, None, q),
            [(
                OWNER,
                vec!["GRANT SELECT (_migrate_43_amount) ON public.orders TO reader".to_string()]
            )]
        );
        // A failed window's copy is not there: nothing to carry.
        let mut failed = table.clone();
        failed.columns.retain(|c| c != "_migrate_43_amount");
        assert_eq!(statements(&orders(), &failed, None, q), []);
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
            statements(&orders(), &guarded, Some(&view), q),
            [(
                OWNER,
                vec!["REVOKE ALL ON public_v43.orders FROM app CASCADE".to_string()]
            )]
        );
    }
}
