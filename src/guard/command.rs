//! What a DDL statement will do, as plain data: the statement's shape from its parse tree plus
//! the facts about its targets that only the live catalogs know (size, created in this
//! transaction, whether a type change rewrites, ...). `parsetree` builds it; the guard's rules
//! judge it without touching the server, which keeps them testable.

/// PostgreSQL's table lock modes, weakest first (the numbering of lockdefs.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockMode {
    AccessShare = 1,
    RowShare = 2,
    RowExclusive = 3,
    ShareUpdateExclusive = 4,
    Share = 5,
    ShareRowExclusive = 6,
    Exclusive = 7,
    AccessExclusive = 8,
}

impl LockMode {
    pub fn from_pg(mode: i32) -> Option<LockMode> {
        use LockMode::*;
        Some(match mode {
            1 => AccessShare,
            2 => RowShare,
            3 => RowExclusive,
            4 => ShareUpdateExclusive,
            5 => Share,
            6 => ShareRowExclusive,
            7 => Exclusive,
            8 => AccessExclusive,
            _ => return None,
        })
    }

    /// A mode as `pg_locks.mode` spells it ("AccessExclusiveLock").
    pub fn from_pg_locks(name: &str) -> Option<LockMode> {
        use LockMode::*;
        [
            AccessShare,
            RowShare,
            RowExclusive,
            ShareUpdateExclusive,
            Share,
            ShareRowExclusive,
            Exclusive,
            AccessExclusive,
        ]
        .into_iter()
        .find(|m| m.pg_locks_name() == name)
    }

    fn pg_locks_name(self) -> String {
        let words: String = self
            .name()
            .split(' ')
            .map(|w| w[..1].to_string() + &w[1..].to_lowercase())
            .collect();
        format!("{words}Lock")
    }

    /// What other sessions cannot do while it is held, in a word or two; `None` when their
    /// reads and writes go on.
    pub fn blocked_work(self) -> Option<&'static str> {
        if self == LockMode::AccessExclusive {
            Some("reads and writes")
        } else if self >= LockMode::Share {
            Some("writes")
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        use LockMode::*;
        match self {
            AccessShare => "ACCESS SHARE",
            RowShare => "ROW SHARE",
            RowExclusive => "ROW EXCLUSIVE",
            ShareUpdateExclusive => "SHARE UPDATE EXCLUSIVE",
            Share => "SHARE",
            ShareRowExclusive => "SHARE ROW EXCLUSIVE",
            Exclusive => "EXCLUSIVE",
            AccessExclusive => "ACCESS EXCLUSIVE",
        }
    }

    /// "an ACCESS EXCLUSIVE lock", "a SHARE lock"
    pub fn with_article(self) -> String {
        let article = match self {
            LockMode::AccessShare | LockMode::AccessExclusive | LockMode::Exclusive => "an",
            _ => "a",
        };
        format!("{article} {} lock", self.name())
    }

    /// What the lock stops other sessions from doing while it is held.
    pub fn blocks(self) -> &'static str {
        if self == LockMode::AccessExclusive {
            "every query on the table, reads included, waits"
        } else if self >= LockMode::Share {
            "every INSERT, UPDATE and DELETE on the table waits"
        } else {
            "other schema changes on the table wait"
        }
    }
}

pub use crate::pg::catalog::{Rel, RelKind};

impl Rel {
    /// "public.orders (an estimated 1,000,000 rows, 73 MB)"
    pub fn describe(&self) -> String {
        if !self.size_known {
            return format!(
                "{} (size unknown: never analysed, and locked by another session)",
                self.name
            );
        }
        format!(
            "{} (an estimated {} rows, {})",
            self.name,
            group_digits(self.rows),
            bytes(self.bytes)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintKind {
    Check,
    ForeignKey,
    Unique,
    PrimaryKey,
    Exclusion,
    NotNull,
}

impl ConstraintKind {
    pub fn sql(self) -> &'static str {
        match self {
            ConstraintKind::Check => "CHECK",
            ConstraintKind::ForeignKey => "FOREIGN KEY",
            ConstraintKind::Unique => "UNIQUE",
            ConstraintKind::PrimaryKey => "PRIMARY KEY",
            ConstraintKind::Exclusion => "EXCLUDE",
            ConstraintKind::NotNull => "NOT NULL",
        }
    }
}

/// A column added by ALTER TABLE ... ADD COLUMN.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewColumn {
    pub name: String,
    pub type_name: String,
    /// The default expression as written, for hints.
    pub default_sql: Option<String>,
    /// Whether the default (after coercion to the column type) calls a volatile function,
    /// as `contain_volatile_functions` sees it; `None` when it could not be analysed.
    pub volatile_default: Option<bool>,
    pub serial: bool,
    pub identity: bool,
    pub generated: Option<Generated>,
    /// The column's type is a domain with constraints; `None` when unknown.
    pub constrained_domain: Option<bool>,
    /// Constraints written inline that make PostgreSQL scan or index the table.
    pub inline_constraints: Vec<ConstraintKind>,
}

/// How a generated column's value is kept: written into every row, or computed when read
/// (PostgreSQL 18's VIRTUAL, its default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generated {
    Stored,
    Virtual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainChange {
    AddCheck,
    SetNotNull,
    /// VALIDATE CONSTRAINT: the same check of every row, under the same SHARE lock.
    Validate,
}

/// One subcommand of ALTER TABLE.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    AddColumn(NewColumn),
    AlterType {
        column: String,
        type_name: String,
        /// PostgreSQL's own verdict (coercion, planner simplification, rewrite check);
        /// `None` when it could not be reached, e.g. an unknown type.
        rewrites: Option<bool>,
        /// When it keeps the rows: the indexes PostgreSQL still builds again (a new collation
        /// or operator class, an expression or partial index on the column), by name.
        rebuilds_indexes: Vec<String>,
        /// When it keeps the rows: the validated CHECK constraints on the column, which
        /// PostgreSQL adds again and checks against every row, as (table, constraint).
        checks_again: Vec<(String, String)>,
    },
    /// SET NOT NULL, or (PostgreSQL 18) ADD CONSTRAINT ... NOT NULL without NOT VALID.
    SetNotNull {
        column: String,
        /// A validated CHECK (or the column's own NOT NULL) already proves it.
        proven: bool,
        /// The column's NOT VALID NOT NULL constraint (PostgreSQL 18), which SET NOT NULL
        /// validates and which the safe way validates on its own.
        unvalidated: Option<String>,
    },
    /// ALTER COLUMN ... SET EXPRESSION AS (PostgreSQL 17 and later).
    #[cfg_attr(not(any(feature = "pg17", feature = "pg18")), allow(dead_code))]
    SetExpression {
        column: String,
        generated: Generated,
        /// A virtual column declared NOT NULL: every row's new value is checked.
        not_null: bool,
    },
    /// ALTER CONSTRAINT ... ENFORCED of a foreign key that is not enforced (PostgreSQL 18):
    /// every row is checked.
    #[cfg_attr(not(feature = "pg18"), allow(dead_code))]
    EnforceForeignKey {
        name: String,
    },
    AddConstraint {
        name: Option<String>,
        kind: ConstraintKind,
        not_valid: bool,
        using_index: bool,
        references: Option<Rel>,
    },
    ValidateConstraint {
        name: String,
        /// The lock the statement's other subcommands take on the table, held while this one
        /// scans it (`ADD CONSTRAINT c ... NOT VALID, VALIDATE CONSTRAINT c` in one statement).
        beside: Option<LockMode>,
    },
    DropColumn {
        column: String,
    },
    SetLogged(bool),
    SetTablespace(String),
    SetAccessMethod(String),
    AttachPartition {
        partition: Rel,
        /// The partition's validated constraints prove its bound (no scan); `None` unknown.
        proven: Option<bool>,
        /// The parent's default partition, and whether its constraints prove it holds no row
        /// of the new bound.
        default_partition: Option<(Rel, Option<bool>)>,
    },
    DetachPartition {
        partition: String,
        concurrent: bool,
    },
    /// Anything else: judged by its lock level only.
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    CreateIndex {
        table: Rel,
        name: Option<String>,
        concurrent: bool,
        /// `ON ONLY parent`: no recursion into partitions.
        only: bool,
        /// `(col, ...)` when every key is a plain column, for the hint.
        columns: Option<String>,
        unique: bool,
    },
    DropIndex {
        /// Each index with the table it belongs to.
        indexes: Vec<(String, Rel)>,
        concurrent: bool,
    },
    Reindex {
        target: String,
        table: Option<Rel>,
        concurrent: bool,
    },
    AlterTable {
        table: Rel,
        actions: Vec<Action>,
    },
    DropTable {
        tables: Vec<Rel>,
    },
    DropSchema {
        schema: String,
        cascade: bool,
        holds_tables: bool,
    },
    Truncate {
        tables: Vec<Rel>,
        cascade: bool,
    },
    VacuumFull {
        /// Empty: the whole database.
        tables: Vec<Rel>,
    },
    Cluster {
        table: Option<Rel>,
    },
    RefreshMatView {
        view: Rel,
        concurrent: bool,
    },
    RenameRelation {
        rel: Rel,
        new_name: String,
    },
    RenameColumn {
        rel: Rel,
        column: String,
        new_name: String,
    },
    SetSchema {
        rel: Rel,
        schema: String,
    },
    /// ALTER DOMAIN ... ADD CONSTRAINT ... CHECK / SET NOT NULL: every table with a column of
    /// the domain is checked.
    AlterDomain {
        domain: String,
        change: DomainChange,
        tables: Vec<Rel>,
    },
    /// ALTER TABLE / INDEX / MATERIALIZED VIEW ALL IN TABLESPACE ... SET TABLESPACE.
    MoveAllTablespace {
        from: String,
        to: String,
    },
    /// CREATE TABLE ... PARTITION OF a table that has a DEFAULT partition: the default one,
    /// and whether its validated constraints prove it holds no row of the new bound
    /// (`None`: locked by another session, unknown).
    CreatePartition {
        /// Its name.
        parent: String,
        default_partition: Rel,
        proven: Option<bool>,
    },
    /// A command no rule concerns.
    Other,
}

impl Command {
    /// Every relation the command names, to adjust facts that only a script knows (a table
    /// created by an earlier statement of it is new, whatever the catalogs say now).
    pub fn rels_mut(&mut self) -> Vec<&mut Rel> {
        match self {
            Command::CreateIndex { table, .. } => vec![table],
            Command::DropIndex { indexes, .. } => indexes.iter_mut().map(|(_, t)| t).collect(),
            Command::Reindex { table, .. } | Command::Cluster { table } => {
                table.iter_mut().collect()
            }
            Command::AlterTable { table, actions } => {
                let mut rels = vec![table];
                for action in actions {
                    match action {
                        Action::AddConstraint {
                            references: Some(r),
                            ..
                        } => rels.push(r),
                        Action::AttachPartition {
                            partition,
                            default_partition,
                            ..
                        } => {
                            rels.push(partition);
                            rels.extend(default_partition.as_mut().map(|(d, _)| d));
                        }
                        _ => {}
                    }
                }
                rels
            }
            Command::DropTable { tables }
            | Command::Truncate { tables, .. }
            | Command::VacuumFull { tables }
            | Command::AlterDomain { tables, .. } => tables.iter_mut().collect(),
            Command::CreatePartition {
                default_partition, ..
            } => vec![default_partition],
            Command::RefreshMatView { view: rel, .. }
            | Command::RenameRelation { rel, .. }
            | Command::RenameColumn { rel, .. }
            | Command::SetSchema { rel, .. } => vec![rel],
            Command::DropSchema { .. } | Command::MoveAllTablespace { .. } | Command::Other => {
                vec![]
            }
        }
    }
}

fn group_digits(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds the way SHOW writes a timeout: `500ms`, `2s`, `10min`, `1h`.
pub fn millis(ms: i64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("min", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Sizes the way `pg_size_pretty` writes them.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "kB", "MB", "GB", "TB"];
    let mut value = n;
    let mut unit = 0;
    while unit < UNITS.len() - 1 && value >= 10 * 1024 {
        value = (value + 512) / 1024;
        unit += 1;
    }
    format!("{value} {}", UNITS[unit])
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn pg_locks_mode_names_are_read() {
        assert_eq!(
            LockMode::from_pg_locks("AccessExclusiveLock"),
            Some(LockMode::AccessExclusive)
        );
        assert_eq!(
            LockMode::from_pg_locks("ShareUpdateExclusiveLock"),
            Some(LockMode::ShareUpdateExclusive)
        );
        assert_eq!(
            LockMode::from_pg_locks("RowShareLock"),
            Some(LockMode::RowShare)
        );
        assert_eq!(LockMode::from_pg_locks("SIReadLock"), None);
        assert_eq!(LockMode::Share.blocked_work(), Some("writes"));
        assert_eq!(LockMode::RowExclusive.blocked_work(), None);
    }

    #[test]
    fn timeouts_read_like_show() {
        assert_eq!(millis(500), "500ms");
        assert_eq!(millis(2_000), "2s");
        assert_eq!(millis(2_500), "2500ms");
        assert_eq!(millis(600_000), "10min");
        assert_eq!(millis(3_600_000), "1h");
        assert_eq!(millis(0), "0ms");
    }

    #[test]
    fn sizes_and_counts_read_like_psql() {
        assert_eq!(group_digits(1_234_567.4), "1,234,567");
        assert_eq!(group_digits(999.0), "999");
        assert_eq!(group_digits(-1.0), "0");
        assert_eq!(bytes(8192), "8192 bytes");
        assert_eq!(bytes(73 * 1024 * 1024), "73 MB");
        assert_eq!(bytes(20 * 1024), "20 kB");
    }

    #[test]
    fn lock_modes_order_and_say_what_they_block() {
        assert!(LockMode::AccessExclusive > LockMode::ShareUpdateExclusive);
        assert_eq!(LockMode::from_pg(5), Some(LockMode::Share));
        assert_eq!(LockMode::from_pg(9), None);
        assert!(LockMode::Share
            .blocks()
            .contains("INSERT, UPDATE and DELETE"));
        assert!(LockMode::AccessExclusive
            .blocks()
            .contains("reads included"));
    }
}
