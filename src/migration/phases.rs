//! A migration with statements that cannot run inside a transaction becomes a sequence of
//! phases: each run of consecutive transactional statements is one phase, run in its own
//! transaction; each other statement is a phase of its own, run top-level. The background
//! worker runs the phases in order.

use crate::migration::script::{Kind, Statement};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// Statements run together in one transaction, with lock timeouts and retries.
    Transaction,
    /// One statement run top-level, outside any transaction block (CONCURRENTLY, VACUUM).
    TopLevel,
    /// A backfill (`SELECT migrate.backfill(...)`): the phase is done when its job is.
    Backfill,
}

impl PhaseKind {
    pub fn name(self) -> &'static str {
        match self {
            PhaseKind::Transaction => "transaction",
            PhaseKind::TopLevel => "top-level",
            PhaseKind::Backfill => "backfill",
        }
    }

    /// The inverse of `name`, for a kind read back from migrate.steps.
    pub fn from_name(name: &str) -> PhaseKind {
        [PhaseKind::TopLevel, PhaseKind::Backfill]
            .into_iter()
            .find(|k| k.name() == name)
            .unwrap_or(PhaseKind::Transaction)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    /// 1-based.
    pub number: usize,
    pub kind: PhaseKind,
    /// The statements it runs, by their numbers in the migration.
    pub first_statement: usize,
    pub last_statement: usize,
    /// Line of its first statement in the migration's script.
    pub first_line: usize,
    /// Byte range of its statements in the script.
    pub start: usize,
    pub end: usize,
}

impl Phase {
    pub fn text<'a>(&self, script: &'a str) -> &'a str {
        &script[self.start..self.end]
    }
}

/// Whether `statements` need phases at all: one runs outside a transaction, or a
/// VALIDATE CONSTRAINT follows a statement whose locks it must not scan under.
pub fn needed(statements: &[Statement]) -> bool {
    statements
        .iter()
        .any(|s| matches!(s.kind, Kind::NonTransactional | Kind::Backfill))
        || (validates_apart(statements)
            && statements
                .windows(2)
                .any(|w| w[1].kind == Kind::Validate && w[0].kind != Kind::Validate))
}

/// Whether a VALIDATE CONSTRAINT may get a transaction of its own: not in a script that sets
/// session state (SET, RESET), which a later phase would not see, so that the VALIDATE could
/// validate another table of the same name.
fn validates_apart(statements: &[Statement]) -> bool {
    !statements
        .iter()
        .any(|s| matches!(s.tag.as_str(), "SET" | "RESET"))
}

/// Groups `statements` into phases, in order.
pub fn plan(statements: &[Statement]) -> Vec<Phase> {
    let mut phases: Vec<Phase> = Vec::new();
    // In a script that runs in phases anyway, each VALIDATE CONSTRAINT gets a transaction of
    // its own: none scans under another statement's locks, none holds its snapshot through
    // another's scan, and a failed one repeats only its own scan when retried.
    let apart = validates_apart(statements) && needed(statements);
    for st in statements {
        let kind = match st.kind {
            Kind::NonTransactional => PhaseKind::TopLevel,
            Kind::Backfill => PhaseKind::Backfill,
            _ => PhaseKind::Transaction,
        };
        let own_transaction = apart && st.kind == Kind::Validate;
        match phases.last_mut() {
            Some(last)
                if kind == PhaseKind::Transaction
                    && last.kind == PhaseKind::Transaction
                    && !own_transaction =>
            {
                last.last_statement = st.number;
                last.end = st.end;
            }
            _ => phases.push(Phase {
                number: phases.len() + 1,
                kind,
                first_statement: st.number,
                last_statement: st.number,
                first_line: st.line,
                start: st.start,
                end: st.end,
            }),
        }
    }
    phases
}

#[cfg(test)]
mod unit {
    use super::*;

    fn st(number: usize, kind: Kind, start: usize, end: usize) -> Statement {
        Statement {
            number,
            start,
            end,
            line: number * 10,
            tag: "X".into(),
            form: "X".into(),
            kind,
        }
    }

    #[test]
    fn transactional_runs_group_and_top_level_statements_and_backfills_stand_alone() {
        use Kind::*;
        let statements = [
            st(1, Transactional, 0, 5),
            st(2, Transactional, 7, 12),
            st(3, NonTransactional, 14, 20),
            st(4, NonTransactional, 22, 30),
            st(5, Transactional, 32, 40),
            st(6, Backfill, 42, 50),
            st(7, Transactional, 52, 60),
        ];
        assert!(needed(&statements));
        let phases = plan(&statements);
        let shape: Vec<_> = phases
            .iter()
            .map(|p| {
                (
                    p.number,
                    p.kind,
                    p.first_statement,
                    p.last_statement,
                    p.first_line,
                    p.start,
                    p.end,
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (1, PhaseKind::Transaction, 1, 2, 10, 0, 12),
                (2, PhaseKind::TopLevel, 3, 3, 30, 14, 20),
                (3, PhaseKind::TopLevel, 4, 4, 40, 22, 30),
                (4, PhaseKind::Transaction, 5, 5, 50, 32, 40),
                (5, PhaseKind::Backfill, 6, 6, 60, 42, 50),
                (6, PhaseKind::Transaction, 7, 7, 70, 52, 60),
            ]
        );
        assert_eq!(phases[0].text("abcde;\nfghij;\n"), "abcde;\nfghij");
    }

    #[test]
    fn validate_after_a_statement_that_locks_runs_in_a_transaction_of_its_own() {
        use Kind::*;
        let statements = [
            st(1, Transactional, 0, 5),
            st(2, Validate, 7, 12),
            st(3, Validate, 14, 20),
            st(4, Transactional, 22, 30),
            st(5, Validate, 32, 40),
        ];
        assert!(needed(&statements));
        let shape: Vec<_> = plan(&statements)
            .iter()
            .map(|p| (p.first_statement, p.last_statement))
            .collect();
        // Each VALIDATE on its own, with what follows it.
        assert_eq!(shape, [(1, 1), (2, 2), (3, 4), (5, 5)]);
        let alone = [st(1, Validate, 0, 5), st(2, Validate, 7, 12)];
        assert!(!needed(&alone));
        assert_eq!(plan(&alone).len(), 1);
        let after_backfill = [st(1, Backfill, 0, 5), st(2, Validate, 7, 12)];
        assert_eq!(plan(&after_backfill).len(), 2);
        // A SET would not reach a later phase: the VALIDATE stays where it was written.
        let mut set = st(1, Transactional, 0, 5);
        set.tag = "SET".into();
        let with_set = [set, st(2, Transactional, 7, 12), st(3, Validate, 14, 20)];
        assert!(!needed(&with_set));
        assert_eq!(plan(&with_set).len(), 1);
    }

    #[test]
    fn a_wholly_transactional_script_needs_no_phases() {
        let statements = [st(1, Kind::Transactional, 0, 5)];
        assert!(!needed(&statements));
        assert_eq!(plan(&statements).len(), 1);
    }
}
