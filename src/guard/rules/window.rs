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

/// `open`: (object, version) of every open window: its tables (qualified) and its own
/// objects (bridge functions and view schemas, by bare name). `named`: what the statement
/// changes beside the relations its command names (a trigger's table, a function, a schema).
pub fn judge(
    command: &Command,
    named: &[String],
    open: &[(String, String)],
    out: &mut Vec<Finding>,
) {
    let mut command = command.clone();
    let rels: Vec<String> = command.rels_mut().iter().map(|r| r.name.clone()).collect();
    for name in rels.iter().chain(named) {
        let Some((_, version)) = open.iter().find(|(object, _)| object == name) else {
            continue;
        };
        if out.iter().any(|f| f.rule == &WINDOW_OPEN) {
            break;
        }
        out.push(Finding {
            rule: &WINDOW_OPEN,
            // Never exempt as a small table: the window's bridges matter on any size.
            subject: None,
            message: format!("{name} is inside the open expand window of version {version}"),
            detail: format!(
                "Until the window ends, {name} serves the old and the new application \
                 version through pg_migrate's bridges and views; DDL beside them can break \
                 either."
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
            &[],
            &open,
            &mut out,
        );
        judge(
            &Command::AlterTable {
                table: rel("public.other"),
                actions: vec![Action::Other],
            },
            &[],
            &open,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let mut trigger = Vec::new();
        judge(
            &Command::Other,
            &["public.orders".into()],
            &open,
            &mut trigger,
        );
        assert_eq!(trigger.len(), 1);
        assert!(out[0].message.contains("window of version 43"));
        assert!(out[0].hint.contains("migrate.contract('43')"));
    }
}
