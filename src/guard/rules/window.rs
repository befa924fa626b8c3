//! Tables inside an open expand window: their bridges, copies and views are pg_migrate's to
//! change until the window ends; DDL from elsewhere would break one of the two versions.

use crate::guard::command::Command;
use crate::guard::rule::{Family, Finding, Rule};

pub const WINDOW_OPEN: Rule = Rule {
    id: "window-open",
    family: Family::Rename,
    catches: "DDL outside pg_migrate on a table inside an open expand window",
    why: "During a window the table serves two application versions through bridge triggers \
          and the new version's views; a change made beside them (a dropped trigger, a \
          renamed or retyped column) leaves one version reading or writing wrong data.",
    safe: "Make the change in a migration (migrate.apply), or end the window first \
           (migrate.contract or migrate.abort).",
};

pub const RULES: [&Rule; 1] = [&WINDOW_OPEN];

/// `open`: (qualified table, version) of every open window.
pub fn judge(command: &Command, open: &[(String, String)], out: &mut Vec<Finding>) {
    let mut command = command.clone();
    for rel in command.rels_mut() {
        let Some((_, version)) = open.iter().find(|(table, _)| *table == rel.name) else {
            continue;
        };
        out.push(Finding {
            rule: &WINDOW_OPEN,
            subject: Some(rel.clone()),
            message: format!(
                "{} is inside the open expand window of version {version}",
                rel.name
            ),
            detail: format!(
                "Until the window ends, {} serves the old and the new application version \
                 through pg_migrate's bridges and views; DDL beside them can break either.",
                rel.name
            ),
            hint: format!(
                "Run it through migrate.apply, or first SELECT migrate.contract('{version}') \
                 (or migrate.abort('{version}'))."
            ),
        });
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::guard::command::Action;
    use crate::guard::rule::test_support::table;

    #[test]
    fn ddl_on_a_table_of_an_open_window_is_found_and_others_are_not() {
        let rel = |name: &str| table(name, 10.0);
        let open = [("public.orders".to_string(), "43".to_string())];
        let mut out = Vec::new();
        judge(
            &Command::AlterTable {
                table: rel("public.orders"),
                actions: vec![Action::Other],
            },
            &open,
            &mut out,
        );
        judge(
            &Command::AlterTable {
                table: rel("public.other"),
                actions: vec![Action::Other],
            },
            &open,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert!(out[0].message.contains("window of version 43"));
        assert!(out[0].hint.contains("migrate.contract('43')"));
    }
}
