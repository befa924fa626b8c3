//! What a rule is and what it finds: the types every rule family, the policy and the hooks
//! share, below all of them.

use crate::guard::command::{LockMode, Rel};

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

/// A finding's standard DETAIL: what the statement does to whom while holding what.
pub(crate) fn hazard(rel: &Rel, lock: LockMode, doing: &str) -> String {
    format!(
        "{doing} {} while holding {} on it: {}.",
        rel.describe(),
        lock.with_article(),
        lock.blocks()
    )
}

/// "a, b and 3 more": a long list (one name per partition) shortened for a message.
pub(crate) fn listed(names: impl Iterator<Item = String>) -> String {
    let names: Vec<String> = names.collect();
    const SHOWN: usize = 5;
    if names.len() <= SHOWN {
        return names.join(", ");
    }
    format!(
        "{} and {} more",
        names[..SHOWN].join(", "),
        names.len() - SHOWN
    )
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::SmallTable;
    use crate::guard::command::{Rel, RelKind};

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
