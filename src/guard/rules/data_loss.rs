//! Commands that destroy data. Never exempt for small tables: a small table's rows are still
//! someone's data. Overridable only inside migrate.apply, for a migration that declares a
//! rollback script.

use crate::guard::command::{Action, Command, RelKind};
use crate::guard::rule::Finding;
use crate::guard::rule::{Family, Rule};

pub const DROP_TABLE: Rule = Rule {
    id: "drop-table",
    family: Family::DataLoss,
    catches: "DROP TABLE",
    why: "The table's rows are gone at commit; only a restore brings them back, and the \
          application version still running may still query it.",
    safe: "Stop using the table, rename it to _deprecated_<name> (allowed), and drop it later \
           from a migration that declares a rollback script.",
};

pub const DROP_COLUMN: Rule = Rule {
    id: "drop-column",
    family: Family::DataLoss,
    catches: "ALTER TABLE ... DROP COLUMN",
    why: "The column's values are gone at commit, and the application version still running \
          may still read or write it.",
    safe: "Stop using the column, rename it to _deprecated_<name> (allowed), and drop it later \
           from a migration that declares a rollback script.",
};

pub const DROP_SCHEMA: Rule = Rule {
    id: "drop-schema",
    family: Family::DataLoss,
    catches: "DROP SCHEMA ... CASCADE over a schema that holds tables",
    why: "Every table in the schema is dropped with its rows.",
    safe: "Move or drop the tables one by one through migrations with rollback scripts; then \
           drop the empty schema.",
};

pub const TRUNCATE: Rule = Rule {
    id: "truncate",
    family: Family::DataLoss,
    catches: "TRUNCATE",
    why: "Every row is deleted at once, past any undo, under an ACCESS EXCLUSIVE lock.",
    safe: "DELETE in batches when rows must go; otherwise truncate from a migration that \
           declares a rollback script.",
};

pub const RULES: [&Rule; 4] = [&DROP_TABLE, &DROP_COLUMN, &DROP_SCHEMA, &TRUNCATE];

pub fn judge(command: &Command, out: &mut Vec<Finding>) {
    match command {
        Command::DropTable { tables } => {
            for t in tables {
                out.push(Finding {
                    rule: &DROP_TABLE,
                    message: format!("DROP TABLE {} destroys its data", t.name),
                    detail: format!("{} and its rows would be gone at commit.", t.describe()),
                    hint: format!(
                        "Rename it instead: ALTER TABLE {} RENAME TO _deprecated_{}; and drop it \
                         later, once nothing uses it.",
                        t.name,
                        bare_name(&t.name)
                    ),
                    subject: Some(t.clone()),
                });
            }
        }
        Command::AlterTable { table, actions } => {
            for action in actions {
                // A foreign table's columns hold no data here.
                if let (Action::DropColumn { column }, false) =
                    (action, table.kind == RelKind::Foreign)
                {
                    out.push(Finding {
                        rule: &DROP_COLUMN,
                        message: format!("dropping {}.{column} destroys its data", table.name),
                        detail: format!(
                            "Column {column} of {} and its values would be gone at commit.",
                            table.describe()
                        ),
                        hint: format!(
                            "Rename it instead: ALTER TABLE {} RENAME COLUMN {column} TO \
                             _deprecated_{column}; and drop it later, once nothing uses it.",
                            table.name
                        ),
                        subject: Some(table.clone()),
                    });
                }
            }
        }
        Command::DropSchema {
            schema,
            cascade: true,
            holds_tables: true,
        } => out.push(Finding {
            rule: &DROP_SCHEMA,
            subject: None,
            message: format!("DROP SCHEMA {schema} CASCADE destroys the tables in it"),
            detail: format!("Schema {schema} holds tables; CASCADE drops them with their rows."),
            hint: "Drop or move its tables one by one through migrations with rollback \
                   scripts, then drop the empty schema."
                .into(),
        }),
        Command::Truncate { tables, cascade } => {
            for t in tables {
                out.push(Finding {
                    rule: &TRUNCATE,
                    message: format!("TRUNCATE {} deletes every row", t.name),
                    detail: format!(
                        "Every row of {} would be gone at commit{}.",
                        t.describe(),
                        if *cascade {
                            ", and so would the rows that reference it (CASCADE)"
                        } else {
                            ""
                        }
                    ),
                    hint: format!(
                        "Delete in batches (DELETE FROM {} WHERE ctid = ANY (...)).",
                        t.name
                    ),
                    subject: Some(t.clone()),
                });
            }
        }
        _ => {}
    }
}

/// A table or column found dropped by the sql_drop backstop: reached through CASCADE, DROP
/// OWNED, DROP DOMAIN ... CASCADE and the like, which name no table themselves.
pub fn dropped(tag: &str, kind: &str, identity: &str) -> Finding {
    let (rule, what) = if kind == "table" {
        (&DROP_TABLE, "table")
    } else {
        (&DROP_COLUMN, "column")
    };
    Finding {
        rule,
        subject: None,
        message: format!("{tag} drops {what} {identity} with its data"),
        detail: format!(
            "The statement names no such {what}, but it reaches {identity} through dependencies \
             (CASCADE, ownership, inheritance, a type): its data would be gone at commit."
        ),
        hint: "Drop the dependent objects deliberately, one by one, or run the statement \
               through a migration with a rollback script."
            .into(),
    }
}

/// `s.t` → `t`, for suggested names.
pub(crate) fn bare_name(qualified: &str) -> &str {
    qualified
        .rsplit('.')
        .next()
        .unwrap_or(qualified)
        .trim_matches('"')
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::guard::rule::test_support::*;

    #[test]
    fn drops_and_truncates_are_caught_with_a_rename_hint() {
        let t = table("app.orders", 3.0);
        let mut out = vec![];
        judge(
            &Command::DropTable {
                tables: vec![t.clone()],
            },
            &mut out,
        );
        judge(
            &Command::AlterTable {
                table: t.clone(),
                actions: vec![Action::DropColumn {
                    column: "note".into(),
                }],
            },
            &mut out,
        );
        judge(
            &Command::Truncate {
                tables: vec![t],
                cascade: true,
            },
            &mut out,
        );
        judge(
            &Command::DropSchema {
                schema: "app".into(),
                cascade: true,
                holds_tables: true,
            },
            &mut out,
        );
        let ids: Vec<_> = out.iter().map(|f| f.rule.id).collect();
        assert_eq!(
            ids,
            ["drop-table", "drop-column", "truncate", "drop-schema"]
        );
        assert!(out[0].hint.starts_with(
            "Rename it instead: ALTER TABLE app.orders RENAME TO _deprecated_orders;"
        ));
        assert!(out[1]
            .hint
            .contains("RENAME COLUMN note TO _deprecated_note"));
        assert!(out[2].detail.contains("CASCADE"));
    }

    #[test]
    fn empty_schemas_and_plain_drop_schema_pass() {
        let mut out = vec![];
        judge(
            &Command::DropSchema {
                schema: "s".into(),
                cascade: true,
                holds_tables: false,
            },
            &mut out,
        );
        judge(
            &Command::DropSchema {
                schema: "s".into(),
                cascade: false,
                holds_tables: true,
            },
            &mut out,
        );
        assert!(out.is_empty());
    }
}
