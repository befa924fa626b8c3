//! The guard: unsafe DDL judged against a catalog of rules, from every session.
//!
//! `findings` asks each rule family what a [`Command`] would do; `policy` turns findings into
//! refusals, warnings or recorded overrides. The families are pure functions of the command,
//! so they are unit-tested without a server; the event triggers, the ProcessUtility hook and
//! `migrate.lint` feed them commands built from real parse trees and catalogs.

pub mod data_loss;
pub mod index;
mod lock_timeout;
pub mod partition;
pub mod policy;
pub mod rename;
pub mod rewrite;
pub mod rules;
pub mod scan;
pub mod trigger;
pub mod utility_hook;

use crate::command::{Command, LockMode, Rel};
use rules::Rule;

/// One way a command breaks one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub rule: &'static Rule,
    /// The relation whose size and age decide exemptions; `None` for whole-database forms,
    /// which are never exempt.
    pub subject: Option<Rel>,
    /// "CREATE INDEX on public.orders blocks writes while it builds"
    pub message: String,
    /// What would happen: lock, rewrite or scan, table, rows.
    pub detail: String,
    /// The safe way, as SQL where possible.
    pub hint: String,
}

/// Where a table stops being small enough for lock and scan hazards not to matter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmallTable {
    pub max_rows: f64,
    pub max_bytes: u64,
}

impl SmallTable {
    pub fn from_settings() -> SmallTable {
        SmallTable {
            max_rows: f64::from(crate::gucs::SMALL_TABLE_THRESHOLD.get().max(0)),
            max_bytes: u64::try_from(crate::gucs::SMALL_TABLE_MAX_SIZE_KB.get().max(0))
                .unwrap_or(0)
                * 1024,
        }
    }

    pub fn holds(&self, rel: &Rel) -> bool {
        rel.size_known && rel.rows <= self.max_rows && rel.bytes <= self.max_bytes
    }
}

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

/// A finding's standard DETAIL: what the statement does to whom while holding what.
pub(crate) fn hazard(rel: &Rel, lock: LockMode, doing: &str) -> String {
    format!(
        "{doing} {} while holding {} on it: {}.",
        rel.describe(),
        lock.with_article(),
        lock.blocks()
    )
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::SmallTable;
    use crate::command::{Rel, RelKind};

    /// The default small-table limits.
    pub const SMALL: SmallTable = SmallTable {
        max_rows: 10_000.0,
        max_bytes: 10 << 20,
    };

    pub fn table(name: &str, rows: f64) -> Rel {
        Rel {
            name: name.into(),
            kind: RelKind::Table,
            new: false,
            rows,
            bytes: (rows * 100.0) as u64,
            size_known: true,
            write_locked_by_us: false,
        }
    }

    pub const BIG: f64 = 5_000_000.0;
}

#[cfg(test)]
mod unit {
    use super::test_support::*;
    use super::*;
    use crate::command::{Action, NewColumn};

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
