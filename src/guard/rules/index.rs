//! Index builds, drops and reindexes that block the table.

use crate::guard::command::{Command, LockMode, RelKind};
use crate::guard::rule::hazard;
use crate::guard::rule::Finding;
use crate::guard::rule::{Family, Rule};

pub const CREATE_INDEX: Rule = Rule {
    id: "index-create-blocking",
    family: Family::Index,
    catches: "CREATE INDEX without CONCURRENTLY on an existing table",
    why: "The build holds a SHARE lock on the table from start to end: every INSERT, UPDATE \
          and DELETE waits for the whole build.",
    safe: "CREATE INDEX CONCURRENTLY, outside a transaction block; a failed build leaves an \
           INVALID index to drop and retry.",
};

pub const DROP_INDEX: Rule = Rule {
    id: "index-drop-blocking",
    family: Family::Index,
    catches: "DROP INDEX without CONCURRENTLY",
    why: "DROP INDEX takes an ACCESS EXCLUSIVE lock on the index's table: every query on the \
          table, reads included, queues behind it and behind whatever it waits for.",
    safe: "DROP INDEX CONCURRENTLY, outside a transaction block.",
};

pub const REINDEX: Rule = Rule {
    id: "reindex-blocking",
    family: Family::Index,
    catches: "REINDEX without CONCURRENTLY",
    why: "REINDEX holds a SHARE lock on the table and an ACCESS EXCLUSIVE lock on each index it \
          rebuilds: writes wait, and so do reads that would use the index.",
    safe: "REINDEX ... CONCURRENTLY, outside a transaction block.",
};

pub const RULES: [&Rule; 3] = [&CREATE_INDEX, &DROP_INDEX, &REINDEX];

pub fn judge(command: &Command, out: &mut Vec<Finding>) {
    match command {
        Command::CreateIndex {
            table,
            name,
            concurrent: false,
            columns,
            unique,
            ..
        } if table.kind != RelKind::PartitionedTable => {
            out.push(Finding {
                rule: &CREATE_INDEX,
                message: format!(
                    "CREATE INDEX on {} blocks writes while it builds",
                    table.name
                ),
                detail: hazard(table, LockMode::Share, "It builds the index over"),
                hint: format!(
                    "Build it without blocking writes, outside a transaction block: CREATE \
                     {}INDEX CONCURRENTLY {}ON {} {};",
                    if *unique { "UNIQUE " } else { "" },
                    name.as_ref().map(|n| format!("{n} ")).unwrap_or_default(),
                    table.name,
                    columns.as_deref().unwrap_or("(...)")
                ),
                subject: Some(table.clone()),
            });
        }
        Command::DropIndex {
            indexes,
            concurrent: false,
        } => {
            for (index, table) in indexes {
                out.push(Finding {
                    rule: &DROP_INDEX,
                    message: format!(
                        "DROP INDEX {index} locks {} against all queries",
                        table.name
                    ),
                    detail: hazard(table, LockMode::AccessExclusive, "It drops an index of"),
                    hint: format!("Outside a transaction block: DROP INDEX CONCURRENTLY {index};"),
                    subject: Some(table.clone()),
                });
            }
        }
        Command::Reindex {
            target,
            table,
            concurrent: false,
        } => out.push(Finding {
            rule: &REINDEX,
            message: format!("REINDEX {target} blocks writes while it rebuilds"),
            detail: match table {
                Some(t) => hazard(t, LockMode::Share, "It rebuilds the indexes of"),
                None => format!(
                    "It rebuilds every index in {target}, locking each table SHARE (writes \
                     wait) and each index ACCESS EXCLUSIVE in turn."
                ),
            },
            hint: format!("Outside a transaction block: REINDEX ... CONCURRENTLY {target};"),
            subject: table.clone(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::guard::rule::test_support::*;

    fn create(concurrent: bool) -> Command {
        Command::CreateIndex {
            table: table("public.orders", BIG),
            name: Some("orders_total_idx".into()),
            concurrent,
            only: false,
            columns: Some("(total)".into()),
            unique: false,
        }
    }

    #[test]
    fn plain_create_index_is_caught_with_the_concurrent_sql() {
        let mut out = vec![];
        judge(&create(false), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule.id, "index-create-blocking");
        assert_eq!(
            out[0].hint,
            "Build it without blocking writes, outside a transaction block: CREATE INDEX \
             CONCURRENTLY orders_total_idx ON public.orders (total);"
        );
        assert!(out[0].detail.contains("SHARE lock"));
    }

    #[test]
    fn concurrent_forms_are_allowed() {
        let mut out = vec![];
        judge(&create(true), &mut out);
        let t = table("public.orders", BIG);
        judge(
            &Command::DropIndex {
                indexes: vec![("i".into(), t.clone())],
                concurrent: true,
            },
            &mut out,
        );
        judge(
            &Command::Reindex {
                target: "TABLE t".into(),
                table: Some(t),
                concurrent: true,
            },
            &mut out,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn plain_drop_and_reindex_are_caught() {
        let mut out = vec![];
        let t = table("public.orders", BIG);
        judge(
            &Command::DropIndex {
                indexes: vec![
                    ("public.small_i".into(), table("public.s", 1.0)),
                    ("public.i".into(), t.clone()),
                ],
                concurrent: false,
            },
            &mut out,
        );
        judge(
            &Command::Reindex {
                target: "SCHEMA s".into(),
                table: None,
                concurrent: false,
            },
            &mut out,
        );
        let ids: Vec<_> = out.iter().map(|f| f.rule.id).collect();
        // Every index of a multi-index DROP is judged (exemptions are applied later).
        assert_eq!(
            ids,
            [
                "index-drop-blocking",
                "index-drop-blocking",
                "reindex-blocking"
            ]
        );
        out.remove(0);
        assert_eq!(
            out[0].hint,
            "Outside a transaction block: DROP INDEX CONCURRENTLY public.i;"
        );
    }

    #[test]
    fn partitioned_parents_are_left_to_the_partition_rules() {
        let mut t = table("public.events", BIG);
        t.kind = RelKind::PartitionedTable;
        let mut out = vec![];
        judge(
            &Command::CreateIndex {
                table: t,
                name: None,
                concurrent: false,
                only: false,
                columns: None,
                unique: false,
            },
            &mut out,
        );
        assert!(out.is_empty());
    }
}
