//! The rule catalog: every rule with its id, family, what it catches, why and the safe
//! alternative. `migrate.rules` shows it.

use crate::guard::rule::{Rule, LOCK_TIMEOUT};
use pgrx::prelude::*;

pub mod data_loss;
pub mod index;
pub mod partition;
pub mod rename;
pub mod rewrite;
pub mod scan;
pub mod window;

pub fn all() -> Vec<&'static Rule> {
    let mut rules: Vec<&'static Rule> = Vec::new();
    rules.extend(index::RULES);
    rules.extend(rewrite::RULES);
    rules.extend(scan::RULES);
    rules.extend(data_loss::RULES);
    rules.extend(rename::RULES);
    rules.extend(partition::RULES);
    rules.extend(window::RULES);
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
