//! The rule catalog: every rule with its id, family, what it catches, why and the safe
//! alternative. `migrate.rules` shows it.

use pgrx::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Index,
    Rewrite,
    Scan,
    DataLoss,
    Rename,
    Partition,
    Timeout,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Index => "index",
            Family::Rewrite => "rewrite",
            Family::Scan => "scan",
            Family::DataLoss => "data-loss",
            Family::Rename => "rename",
            Family::Partition => "partition",
            Family::Timeout => "timeout",
        }
    }

    /// Lock and scan hazards do not matter on small tables; lost data and broken
    /// application queries do.
    pub fn small_tables_exempt(self) -> bool {
        !matches!(self, Family::DataLoss | Family::Rename)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: &'static str,
    pub family: Family,
    pub catches: &'static str,
    pub why: &'static str,
    pub safe: &'static str,
}

/// Not a refusal: the guard sets timeouts for DDL that takes strong locks.
pub const LOCK_TIMEOUT: Rule = Rule {
    id: "lock-timeout",
    family: Family::Timeout,
    catches: "DDL that needs a lock stronger than SHARE UPDATE EXCLUSIVE, in a session whose \
              lock_timeout is 0 or longer than migrate.lock_timeout",
    why: "While it waits for its lock, every later query on the table queues behind it; \
          without statement_timeout it can also run unbounded.",
    safe: "Not refused: pg_migrate sets lock_timeout (and statement_timeout when unset) for \
           the rest of the transaction and says so in a NOTICE.",
};

pub fn all() -> Vec<&'static Rule> {
    use super::{data_loss, index, partition, rename, rewrite, scan};
    let mut rules: Vec<&'static Rule> = Vec::new();
    rules.extend(index::RULES);
    rules.extend(rewrite::RULES);
    rules.extend(scan::RULES);
    rules.extend(data_loss::RULES);
    rules.extend(rename::RULES);
    rules.extend(partition::RULES);
    rules.push(&LOCK_TIMEOUT);
    rules
}

pub fn find(id: &str) -> Option<&'static Rule> {
    all().into_iter().find(|r| r.id == id)
}

/// Rows of `migrate.rules`.
#[allow(clippy::type_complexity)]
#[pg_extern(immutable, parallel_safe)]
fn rule_catalog() -> TableIterator<
    'static,
    (
        name!(id, String),
        name!(family, String),
        name!(catches, String),
        name!(why, String),
        name!(safe_alternative, String),
        name!(small_tables_exempt, bool),
    ),
> {
    TableIterator::new(all().into_iter().map(|r| {
        (
            r.id.to_string(),
            r.family.name().to_string(),
            r.catches.to_string(),
            r.why.to_string(),
            r.safe.to_string(),
            r.family.small_tables_exempt(),
        )
    }))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn rule_ids_are_unique_kebab_case_and_documented() {
        let rules = all();
        let mut ids: Vec<&str> = rules.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), rules.len());
        for r in rules {
            assert!(
                r.id.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                "{}",
                r.id
            );
            assert!(
                !r.catches.is_empty() && !r.why.is_empty() && !r.safe.is_empty(),
                "{}",
                r.id
            );
            assert_eq!(find(r.id), Some(r));
        }
        assert_eq!(find("no-such-rule"), None);
    }
}
