//! The privileges a window carries from its tables ([`Mirror`]): a copy column has those of
//! the column it replaces, and a view that checks the table's privileges as its owner (the
//! table has column privileges, which a view checking them as its reader cannot honour) has
//! the table's, column by column under the new version's names. They are carried when the
//! window publishes, when it contracts, and after every GRANT or REVOKE while it is open:
//! a privilege revoked on the table is gone from the new version too.

use super::plan::{literal, Mirror, Quote};
use crate::errors::{OrBookkeeping, Problem};
use crate::pg::identity;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// One privilege of a relation or of one of its columns, to a role other than its owner.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Privilege {
    /// `None`: the relation's own.
    pub column: Option<String>,
    /// As SQL: quoted, or `PUBLIC`.
    pub grantee: String,
    pub privilege: String,
    pub grantable: bool,
}

/// A relation's privileges, and whether row-level security is enabled on it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub privileges: Vec<Privilege>,
    pub row_security: bool,
}

/// What a view can be granted, of a table's privileges (REFERENCES, TRIGGER and TRUNCATE
/// mean nothing on a view).
const VIEW_PRIVILEGES: [&str; 4] = ["SELECT", "INSERT", "UPDATE", "DELETE"];

/// The statements that give `mirror`'s copies and view the privileges its table has now
/// (`table`, which holds the copies' own too), taking back what they have beyond them
/// (`view_now`: the view's, `None` while it does not exist).
///
/// A table with row-level security gives such a view nothing: its policies would apply to the
/// view's owner, not its reader (the planner refuses such tables; this holds if the policies
/// came later, by someone who turned the guard off).
pub fn statements(
    mirror: &Mirror,
    table: &Table,
    view_now: Option<&[Privilege]>,
    q: Quote,
) -> Vec<String> {
    let (row_security, table) = (table.row_security, &table.privileges[..]);
    let mut out = Vec::new();
    let t = &mirror.table;
    for (copy, original) in &mirror.copies {
        let mut revoked: Vec<&str> = Vec::new();
        for p in table.iter().filter(|p| p.column.as_deref() == Some(copy)) {
            if !revoked.contains(&p.grantee.as_str()) {
                revoked.push(&p.grantee);
                out.push(format!(
                    "REVOKE ALL ({}) ON {t} FROM {}",
                    q(copy),
                    p.grantee
                ));
            }
        }
        for p in table
            .iter()
            .filter(|p| p.column.as_deref() == Some(original))
        {
            let option = if p.grantable {
                " WITH GRANT OPTION"
            } else {
                ""
            };
            out.push(format!(
                "GRANT {} ({}) ON {t} TO {}{option}",
                p.privilege,
                q(copy),
                p.grantee
            ));
        }
    }
    let (Some(view), Some(view_now)) = (&mirror.view, view_now) else {
        return out;
    };
    let mut revoked: Vec<&str> = Vec::new();
    for p in view_now {
        if !revoked.contains(&p.grantee.as_str()) {
            revoked.push(&p.grantee);
            // On a table, revoking a privilege revokes it from its columns too.
            out.push(format!("REVOKE ALL ON {view} FROM {}", p.grantee));
        }
    }
    if row_security {
        return out;
    }
    let mut grantees: Vec<&str> = Vec::new();
    for p in table
        .iter()
        .filter(|p| VIEW_PRIVILEGES.contains(&p.privilege.as_str()))
    {
        let on = match &p.column {
            None => view.clone(),
            Some(column) => match mirror.columns.iter().find(|(_, c)| c == column) {
                Some((shown, _)) => format!("({}) ON {view}", q(shown)),
                // Not the new version's: dropped, or a copy.
                None => continue,
            },
        };
        let on = if p.column.is_none() {
            format!("ON {on}")
        } else {
            on
        };
        out.push(format!("GRANT {} {on} TO {}", p.privilege, p.grantee));
        if !grantees.contains(&p.grantee.as_str()) {
            grantees.push(&p.grantee);
        }
    }
    out.extend(
        grantees
            .iter()
            .map(|g| format!("GRANT USAGE ON SCHEMA {} TO {g}", q(&mirror.view_schema))),
    );
    out
}

/// The privileges of a relation (by its qualified, quoted name) and of its columns, to roles
/// other than its owner; `None` when it does not exist.
fn privileges_of(relation: &str) -> Option<Table> {
    let row_security = crate::pg::spi::pinned_row(
        "SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass($1)",
        &[relation.into()],
        |row| row.get::<bool>(1),
    )
    .or_bookkeeping("read pg_class")?
    .unwrap_or(false);
    let privileges = crate::pg::spi::pinned_rows(
        "SELECT x.attname::text, \
                CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, \
                x.privilege_type, x.is_grantable \
         FROM pg_class c \
         CROSS JOIN LATERAL ( \
             SELECT NULL::name AS attname, e.* FROM aclexplode(c.relacl) e \
             UNION ALL \
             SELECT a.attname, e.* FROM pg_attribute a CROSS JOIN LATERAL aclexplode(a.attacl) e \
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) x \
         LEFT JOIN pg_roles r ON r.oid = x.grantee \
         WHERE c.oid = to_regclass($1) AND x.grantee <> c.relowner \
         ORDER BY 1 NULLS FIRST, 2, 3",
        &[relation.into()],
        |row| {
            Ok(Privilege {
                column: row.get::<String>(1)?,
                grantee: row.get::<String>(2)?.unwrap_or_default(),
                privilege: row.get::<String>(3)?.unwrap_or_default(),
                grantable: row.get::<bool>(4)?.unwrap_or(false),
            })
        },
    )
    .or_bookkeeping("read the privileges a window carries");
    Some(Table {
        privileges,
        row_security,
    })
}

/// Carries window `version`'s privileges, as the role that opened it (who owns its views and
/// may grant on its tables).
pub fn mirror(version: &str) {
    let found: Option<(String, Option<pgrx::JsonB>)> = identity::as_owner(|| {
        crate::pg::spi::pinned_row(
            "SELECT opened_by::text, mirrors FROM migrate.window_history WHERE version = $1",
            &[version.into()],
            |row| {
                Ok((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<pgrx::JsonB>(2)?,
                ))
            },
        )
    })
    .or_bookkeeping("read migrate.window_history");
    let Some((opener, mirrors)) = found else {
        return;
    };
    let mirrors: Vec<Mirror> = mirrors
        .and_then(|j| serde_json::from_value(j.0).ok())
        .unwrap_or_default();
    if mirrors.is_empty() {
        return;
    }
    let Some(role) = identity::role_oid(&opener) else {
        Problem::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("role {opener} that opened window {version} no longer exists"),
            "A window's views and copies take its tables' privileges from the role that \
             opened it, who owns them.",
            "Grant on the window's views and copy columns by hand, or end the window.",
        )
        .raise();
    };
    // As the statement that called this left them (a GRANT's event trigger runs with the
    // snapshot its statement began with).
    let statements: Vec<String> = crate::pg::spi::with_current_snapshot(|| {
        identity::as_owner(|| {
            mirrors
                .iter()
                .flat_map(|m| {
                    let table = privileges_of(&m.table).unwrap_or_default();
                    if table.row_security && m.view.is_some() {
                        Problem::new(
                            PgSqlErrorCode::ERRCODE_WARNING,
                            format!(
                                "the new version of {} grants nothing: the table has \
                                 row-level security",
                                m.table
                            ),
                            format!(
                                "Window {version}'s view checks the table's privileges as its \
                                 owner, so the policies would apply to the owner rather than \
                                 the reader."
                            ),
                            "Turn row-level security off for the window's time, or abort it.",
                        )
                        .report(pgrx::PgLogLevel::WARNING);
                    }
                    let view = m.view.as_deref().and_then(privileges_of);
                    let view = view.map(|v| v.privileges);
                    statements(m, &table, view.as_deref(), crate::pg::catalog::quote_ident)
                })
                .collect()
        })
    });
    identity::as_author(role, &[("search_path", "pg_catalog")], || {
        for sql in &statements {
            Spi::run(sql).or_bookkeeping("carry a window's privileges");
        }
    });
}

/// `SELECT migrate.mirror_window_privileges(version)`: a step of publish and contract.
#[pg_extern(volatile, parallel_unsafe)]
fn mirror_window_privileges(version: &str) {
    mirror(version)
}

thread_local! {
    /// The privileges are being carried: their own GRANTs and REVOKEs are not followed.
    static MIRRORING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// After a GRANT or REVOKE, each open window carries its tables' privileges again. One that
/// cannot (its opener has lost the right) is said in a WARNING and does not undo the
/// statement: a REVOKE must never be refused for it.
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
                     migrate.mirror_window_privileges({}) as a role that may.",
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
            column: column.map(str::to_string),
            grantee: grantee.into(),
            privilege: privilege.into(),
            grantable: false,
        }
    }

    fn orders() -> Mirror {
        Mirror {
            table: "public.orders".into(),
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

    #[test]
    fn the_view_and_the_copy_get_what_the_table_has_now_and_lose_the_rest() {
        let table = vec![
            p(None, "app", "SELECT"),
            p(None, "app", "TRUNCATE"),
            p(Some("_migrate_43_amount"), "gone", "SELECT"),
            p(Some("amount"), "reader", "SELECT"),
            p(Some("amount"), "reader", "REFERENCES"),
            p(Some("legacy_note"), "reader", "SELECT"),
            p(Some("old_status"), "reader", "UPDATE"),
        ];
        let view_now = vec![p(None, "gone", "SELECT"), p(Some("id"), "gone", "SELECT")];
        let table = Table {
            privileges: table,
            row_security: false,
        };
        assert_eq!(
            statements(&orders(), &table, Some(&view_now), q),
            [
                "REVOKE ALL (_migrate_43_amount) ON public.orders FROM gone",
                "GRANT SELECT (_migrate_43_amount) ON public.orders TO reader",
                "GRANT REFERENCES (_migrate_43_amount) ON public.orders TO reader",
                "REVOKE ALL ON public_v43.orders FROM gone",
                "GRANT SELECT ON public_v43.orders TO app",
                "GRANT SELECT (amount) ON public_v43.orders TO reader",
                "GRANT UPDATE (status) ON public_v43.orders TO reader",
                "GRANT USAGE ON SCHEMA public_v43 TO app",
                "GRANT USAGE ON SCHEMA public_v43 TO reader",
            ]
        );
    }

    #[test]
    fn before_the_view_exists_only_the_copies_are_carried() {
        let table = Table {
            privileges: vec![p(Some("amount"), "reader", "SELECT")],
            row_security: false,
        };
        assert_eq!(
            statements(&orders(), &table, None, q),
            ["GRANT SELECT (_migrate_43_amount) ON public.orders TO reader"]
        );
        // Row-level security turned on later: the view grants nothing more.
        let guarded = Table {
            row_security: true,
            ..table
        };
        let view_now = vec![p(None, "app", "SELECT")];
        assert_eq!(
            statements(&orders(), &guarded, Some(&view_now), q),
            [
                "GRANT SELECT (_migrate_43_amount) ON public.orders TO reader",
                "REVOKE ALL ON public_v43.orders FROM app"
            ]
        );
    }
}
