//! Renames that break the application version still running during a rollout. Renaming to
//! the `_deprecated_` prefix is the sanctioned forward-only path and is allowed.

use crate::guard::command::Command;
use crate::guard::rule::Finding;
use crate::guard::rule::{Family, Rule};

pub const DEPRECATED_PREFIX: &str = "_deprecated_";

pub const RENAME_COLUMN: Rule = Rule {
    id: "rename-column",
    family: Family::Rename,
    catches: "RENAME COLUMN, except to a name starting with _deprecated_",
    why: "The application version still running queries the old name and fails until it is \
          replaced.",
    safe: "Expand/contract: add the new column, dual-write, backfill, switch reads, then rename \
           the old one to _deprecated_<name> and drop it later; or serve the old name from a \
           view.",
};

pub const RENAME_TABLE: Rule = Rule {
    id: "rename-table",
    family: Family::Rename,
    catches: "ALTER TABLE / VIEW / MATERIALIZED VIEW ... RENAME TO, except to a name starting \
              with _deprecated_",
    why: "Queries of the application version still running name the old table and fail.",
    safe: "Rename, then create a view with the old name for the old application version (it \
           stays writable for simple views); drop the view once nothing uses it.",
};

pub const SET_SCHEMA: Rule = Rule {
    id: "set-schema",
    family: Family::Rename,
    catches: "ALTER TABLE / VIEW ... SET SCHEMA",
    why: "Queries that name the old schema, or find the table through search_path, fail.",
    safe: "Move it, then leave a view in the old schema for the old application version.",
};

pub const RULES: [&Rule; 3] = [&RENAME_COLUMN, &RENAME_TABLE, &SET_SCHEMA];

pub fn judge(command: &Command, out: &mut Vec<Finding>) {
    match command {
        Command::RenameColumn {
            rel,
            column,
            new_name,
        } if !deprecating(new_name) => out.push(Finding {
            rule: &RENAME_COLUMN,
            subject: Some(rel.clone()),
            message: format!(
                "renaming {}.{column} to {new_name} breaks running queries",
                rel.name
            ),
            detail: format!(
                "Queries of the application version still running use {column} on {} and \
                     fail once it is called {new_name}.",
                rel.name
            ),
            hint: format!(
                "ALTER TABLE {t} ADD COLUMN {new_name} ...; dual-write and backfill; switch \
                     reads; then ALTER TABLE {t} RENAME COLUMN {column} TO \
                     {DEPRECATED_PREFIX}{column};",
                t = rel.name
            ),
        }),
        Command::RenameRelation { rel, new_name } if !deprecating(new_name) => out.push(Finding {
            rule: &RENAME_TABLE,
            subject: Some(rel.clone()),
            message: format!("renaming {} to {new_name} breaks running queries", rel.name),
            detail: format!(
                "Queries of the application version still running name {} and fail once it is \
                 called {new_name}.",
                rel.name
            ),
            hint: format!(
                "In one migration: ALTER TABLE {} RENAME TO {new_name}; CREATE VIEW {} AS \
                 SELECT * FROM {new_name}; drop the view once nothing uses the old name.",
                rel.name, rel.name
            ),
        }),
        Command::SetSchema { rel, schema } => out.push(Finding {
            rule: &SET_SCHEMA,
            subject: Some(rel.clone()),
            message: format!(
                "moving {} to schema {schema} breaks running queries",
                rel.name
            ),
            detail: format!(
                "Queries that name {} (or find it through search_path) fail once it lives in \
                 {schema}.",
                rel.name
            ),
            hint: format!(
                "Move it, and in the same migration CREATE VIEW {} AS SELECT * FROM \
                 {schema}.{}; for the old application version.",
                rel.name,
                crate::guard::rules::data_loss::bare_name(&rel.name)
            ),
        }),
        _ => {}
    }
}

fn deprecating(new_name: &str) -> bool {
    new_name.starts_with(DEPRECATED_PREFIX)
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::guard::rule::test_support::*;

    #[test]
    fn renames_break_unless_deprecating() {
        let t = table("public.users", 1.0);
        let mut out = vec![];
        for new_name in ["login", "_deprecated_email"] {
            judge(
                &Command::RenameColumn {
                    rel: t.clone(),
                    column: "email".into(),
                    new_name: new_name.into(),
                },
                &mut out,
            );
            judge(
                &Command::RenameRelation {
                    rel: t.clone(),
                    new_name: new_name.replace("email", "users"),
                },
                &mut out,
            );
        }
        judge(
            &Command::SetSchema {
                rel: t,
                schema: "archive".into(),
            },
            &mut out,
        );
        let ids: Vec<_> = out.iter().map(|f| f.rule.id).collect();
        assert_eq!(ids, ["rename-column", "rename-table", "set-schema"]);
        assert!(out[0]
            .hint
            .ends_with("RENAME COLUMN email TO _deprecated_email;"));
        assert!(out[2]
            .hint
            .contains("CREATE VIEW public.users AS SELECT * FROM archive.users"));
    }
}
