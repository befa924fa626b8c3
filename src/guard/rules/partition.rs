//! Partition operations that lock the whole partitioned table.

use crate::guard::command::{Action, Command, LockMode, RelKind};
use crate::guard::rule::hazard;
use crate::guard::rule::Finding;
use crate::guard::rule::{Family, Rule};

pub const INDEX_ON_PARENT: Rule = Rule {
    id: "index-partitioned-parent",
    family: Family::Partition,
    catches: "CREATE INDEX on a partitioned table without ONLY",
    why: "The index is built on every partition in one transaction, each under a SHARE lock \
          that blocks writes, and PostgreSQL cannot build it concurrently.",
    safe: "CREATE INDEX ON ONLY parent (instant, invalid until complete); CREATE INDEX \
           CONCURRENTLY on each partition; ALTER INDEX parent_idx ATTACH PARTITION each one.",
};

pub const DETACH: Rule = Rule {
    id: "detach-partition-blocking",
    family: Family::Partition,
    catches: "ALTER TABLE ... DETACH PARTITION without CONCURRENTLY",
    why: "It takes ACCESS EXCLUSIVE on the partitioned table: every query on any partition \
          waits, reads included.",
    safe: "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY, outside a transaction block.",
};

pub const RULES: [&Rule; 2] = [&INDEX_ON_PARENT, &DETACH];

pub fn judge(command: &Command, out: &mut Vec<Finding>) {
    match command {
        Command::CreateIndex {
            table,
            only: false,
            name,
            columns,
            ..
        } if table.kind == RelKind::PartitionedTable => {
            let idx = name.clone().unwrap_or_else(|| "parent_idx".into());
            out.push(Finding {
                rule: &INDEX_ON_PARENT,
                subject: Some(table.clone()),
                message: format!(
                    "CREATE INDEX on partitioned {} blocks writes to every partition",
                    table.name
                ),
                detail: hazard(
                    table,
                    LockMode::Share,
                    "It builds the index on every partition of",
                ),
                hint: format!(
                    "CREATE INDEX {idx} ON ONLY {t} {c}; then for each partition: CREATE INDEX \
                     CONCURRENTLY <part_idx> ON <partition> {c}; ALTER INDEX {idx} ATTACH \
                     PARTITION <part_idx>;",
                    t = table.name,
                    c = columns.as_deref().unwrap_or("(...)")
                ),
            });
        }
        Command::AlterTable { table, actions } => {
            for action in actions {
                if let Action::DetachPartition {
                    partition,
                    concurrent: false,
                } = action
                {
                    out.push(Finding {
                        rule: &DETACH,
                        subject: Some(table.clone()),
                        message: format!("detaching {partition} locks all of {}", table.name),
                        detail: hazard(
                            table,
                            LockMode::AccessExclusive,
                            &format!("It detaches {partition} from"),
                        ),
                        hint: format!(
                            "Outside a transaction block: ALTER TABLE {} DETACH PARTITION \
                             {partition} CONCURRENTLY;",
                            table.name
                        ),
                    });
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::guard::rule::test_support::*;

    #[test]
    fn index_on_a_partitioned_parent_needs_only() {
        let mut parent = table("public.events", BIG);
        parent.kind = RelKind::PartitionedTable;
        let create = |only| Command::CreateIndex {
            table: parent.clone(),
            name: Some("events_at".into()),
            concurrent: false,
            only,
            columns: Some("(at)".into()),
            unique: false,
        };
        let mut out = vec![];
        judge(&create(false), &mut out);
        judge(&create(true), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule.id, "index-partitioned-parent");
        assert!(out[0]
            .hint
            .starts_with("CREATE INDEX events_at ON ONLY public.events (at);"));
    }

    #[test]
    fn detach_needs_concurrently() {
        let t = table("public.events", BIG);
        let detach = |concurrent| Command::AlterTable {
            table: t.clone(),
            actions: vec![Action::DetachPartition {
                partition: "public.events_2020".into(),
                concurrent,
            }],
        };
        let mut out = vec![];
        judge(&detach(true), &mut out);
        assert!(out.is_empty());
        judge(&detach(false), &mut out);
        assert_eq!(out[0].rule.id, "detach-partition-blocking");
    }
}
