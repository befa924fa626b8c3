//! The guard: DDL judged against a catalog of rules (locks, rewrites, scans, lost data),
//! from every session.
//!
//! `findings` asks each rule family what a [`Command`] would do; `policy` turns findings into
//! refusals, warnings or recorded overrides. The families are pure functions of the command,
//! so they are unit-tested without a server; the event triggers, the ProcessUtility hook and
//! `migrate.lint` feed them commands built from real parse trees and catalogs.

pub mod command;
pub mod hooks;
pub mod lint;
pub mod parsetree;
pub mod policy;
pub mod rule;
pub mod rules;

use crate::guard::command::{Command, LockMode, Rel};
use crate::guard::rule::{Finding, SmallTable};
use crate::guard::rules::{data_loss, index, partition, rename, rewrite, scan};

/// Every finding for `command`, exemptions applied: relations created in this transaction
/// are exempt from every rule; small ones from the lock and scan rules but never from the
/// data-loss and rename rules.
pub fn findings(command: &Command, small: SmallTable) -> Vec<Finding> {
    let mut all = Vec::new();
    index::judge(command, &mut all);
    rewrite::judge(command, &mut all);
    scan::judge(command, &mut all);
    data_loss::judge(command, &mut all);
    rename::judge(command, &mut all);
    partition::judge(command, &mut all);
    all.retain(|f| !exempt(f, small));
    all
}

fn exempt(finding: &Finding, small: SmallTable) -> bool {
    let Some(subject) = &finding.subject else {
        return false;
    };
    subject.new || (finding.rule.family.small_tables_exempt() && small.holds(subject))
}

/// The `table_rewrite` backstop: a rewrite PostgreSQL announced that no rule foresaw.
pub fn unforeseen_rewrite(table: Rel, reason: &str, small: SmallTable) -> Option<Finding> {
    let finding = Finding {
        rule: &rewrite::TABLE_REWRITE,
        message: format!("{reason} rewrites {}", table.name),
        detail: format!(
            "PostgreSQL is about to rewrite {} under an ACCESS EXCLUSIVE lock: {} until \
             every row has been copied.",
            table.describe(),
            LockMode::AccessExclusive.blocks()
        ),
        hint: rewrite::TABLE_REWRITE.safe.into(),
        subject: Some(table),
    };
    (!exempt(&finding, small)).then_some(finding)
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::guard::command::{Action, NewColumn};
    use crate::guard::rule::hazard;
    use crate::guard::rule::test_support::*;

    fn add_serial(table: Rel) -> Command {
        Command::AlterTable {
            table,
            actions: vec![Action::AddColumn(NewColumn {
                name: "n".into(),
                type_name: "bigserial".into(),
                serial: true,
                ..Default::default()
            })],
        }
    }

    #[test]
    fn a_relation_of_unknown_size_is_never_small() {
        let mut rel = table("public.t", 0.0);
        assert!(SMALL.holds(&rel));
        rel.size_known = false;
        assert!(!SMALL.holds(&rel));
        assert!(rel.describe().contains("size unknown"));
    }

    #[test]
    fn new_tables_are_exempt_from_everything() {
        let mut t = table("public.t", BIG);
        t.new = true;
        assert!(findings(
            &Command::DropTable {
                tables: vec![t.clone()]
            },
            SMALL
        )
        .is_empty());
        assert!(findings(&add_serial(t), SMALL).is_empty());
    }

    #[test]
    fn small_tables_are_exempt_from_lock_rules_but_not_data_loss() {
        let t = table("public.t", 10.0);
        assert!(findings(&add_serial(t.clone()), SMALL).is_empty());
        let drop = findings(&Command::DropTable { tables: vec![t] }, SMALL);
        assert_eq!(drop.len(), 1);
        assert_eq!(drop[0].rule.id, "drop-table");
    }

    #[test]
    fn size_alone_makes_a_table_big() {
        let mut t = table("public.t", 10.0);
        t.bytes = 11 << 20;
        assert_eq!(findings(&add_serial(t), SMALL).len(), 1);
    }

    #[test]
    fn whole_database_forms_are_never_exempt() {
        let f = findings(&Command::VacuumFull { tables: vec![] }, SMALL);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule.id, "vacuum-full");
    }

    #[test]
    fn the_backstop_respects_exemptions() {
        assert!(unforeseen_rewrite(table("public.t", 5.0), "ALTER TABLE", SMALL).is_none());
        let f = unforeseen_rewrite(table("public.t", BIG), "ALTER TABLE", SMALL).unwrap();
        assert_eq!(f.rule.id, "table-rewrite");
        assert!(f.detail.contains("an estimated 5,000,000 rows"));
    }

    #[test]
    fn hazard_reads_naturally() {
        let d = hazard(
            &table("public.t", BIG),
            LockMode::Share,
            "It builds the index on",
        );
        assert!(d.starts_with("It builds the index on public.t (an estimated 5,000,000 rows"));
        assert!(d.contains("while holding a SHARE lock on it: every INSERT"));
    }
}
