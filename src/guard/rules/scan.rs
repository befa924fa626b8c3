//! Validating scans (and index builds) that run while a strong lock blocks the table.

use crate::guard::command::{Action, Command, ConstraintKind, DomainChange, LockMode, Rel};
use crate::guard::rule::Finding;
use crate::guard::rule::{hazard, listed};
use crate::guard::rule::{Family, Rule};

pub const SET_NOT_NULL: Rule = Rule {
    id: "set-not-null-scan",
    family: Family::Scan,
    catches: "ALTER COLUMN ... SET NOT NULL without a validated CHECK (col IS NOT NULL) that \
              proves it",
    why: "PostgreSQL scans the whole table for NULLs while holding ACCESS EXCLUSIVE. A \
          validated CHECK that implies the column is not null lets it skip the scan.",
    safe: if crate::pg::MAJOR >= 18 {
        "ADD CONSTRAINT c NOT NULL col NOT VALID (instant; new rows are checked); then VALIDATE \
         CONSTRAINT c in its own transaction (reads and writes continue)."
    } else {
        "ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID; VALIDATE CONSTRAINT c in its own \
         transaction; then SET NOT NULL (instant); then drop the CHECK."
    },
};

pub const VALIDATING_CONSTRAINT: Rule = Rule {
    id: "add-constraint-validating",
    family: Family::Scan,
    catches: "ADD CONSTRAINT ... CHECK or FOREIGN KEY without NOT VALID",
    why: "Every row is checked while the table is locked: ACCESS EXCLUSIVE for a CHECK, SHARE \
          ROW EXCLUSIVE on both tables (writes blocked) for a FOREIGN KEY.",
    safe: "ADD CONSTRAINT ... NOT VALID (instant), then VALIDATE CONSTRAINT in a transaction of \
           its own: it takes SHARE UPDATE EXCLUSIVE, so reads and writes continue.",
};

pub const INLINE_CONSTRAINT: Rule = Rule {
    id: "add-column-inline-constraint",
    family: Family::Scan,
    catches: "ADD COLUMN with an inline CHECK, REFERENCES, UNIQUE or PRIMARY KEY",
    why: "The constraint is validated, or its index built, under the ADD COLUMN's ACCESS \
          EXCLUSIVE lock.",
    safe: "Add the column plain; add a CHECK or FOREIGN KEY as NOT VALID and VALIDATE it \
           separately; for UNIQUE, build the index CONCURRENTLY and add the constraint USING \
           INDEX.",
};

pub const UNIQUE_WITHOUT_INDEX: Rule = Rule {
    id: "add-unique-without-index",
    family: Family::Scan,
    catches: "ADD UNIQUE, PRIMARY KEY or EXCLUDE constraint without USING INDEX",
    why: "The index is built while the table is locked ACCESS EXCLUSIVE: every query waits for \
          the whole build.",
    safe: "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... UNIQUE USING INDEX (or \
           PRIMARY KEY USING INDEX): only a brief lock.",
};

pub const VALIDATE_LOCKED: Rule = Rule {
    id: "validate-in-locking-transaction",
    family: Family::Scan,
    catches: "VALIDATE CONSTRAINT in a transaction that already holds a lock blocking writes \
              on the table (typically taken by ADD CONSTRAINT ... NOT VALID in the same \
              transaction), or in one ALTER TABLE with subcommands that take such a lock",
    why: "VALIDATE itself needs only SHARE UPDATE EXCLUSIVE, but the lock this transaction \
          already holds keeps blocking the table for the whole validating scan.",
    safe: "Commit after ADD CONSTRAINT ... NOT VALID; run VALIDATE CONSTRAINT in a transaction \
           (or migration version) of its own.",
};

pub const ATTACH_SCAN: Rule = Rule {
    id: "attach-partition-scan",
    family: Family::Scan,
    catches: "ATTACH PARTITION without a validated CHECK constraint on the partition that \
              implies its partition bound (and, with a default partition, one that excludes \
              the bound from it)",
    why: "PostgreSQL scans the partition under ACCESS EXCLUSIVE to prove every row fits the \
          bound, and scans the default partition too.",
    safe: "Add a CHECK constraint matching the bound NOT VALID, VALIDATE it, ATTACH (the scan \
           is skipped), then drop the CHECK.",
};

pub const ENFORCE_FOREIGN_KEY: Rule = Rule {
    id: "enforce-foreign-key",
    family: Family::Scan,
    catches: "ALTER CONSTRAINT ... ENFORCED of a foreign key that is NOT ENFORCED (PostgreSQL \
              18)",
    why: "Every row is checked against the referenced table while ALTER CONSTRAINT holds \
          ACCESS EXCLUSIVE on the table.",
    safe: "Drop the unenforced constraint and add it again with NOT VALID (instant), then \
           VALIDATE CONSTRAINT in a transaction of its own: SHARE UPDATE EXCLUSIVE, so reads \
           and writes continue.",
};

pub const TYPE_CHANGE_CHECKS: Rule = Rule {
    id: "alter-column-type-check-scan",
    family: Family::Scan,
    catches: "ALTER COLUMN ... TYPE that keeps the rows, on a column a validated CHECK \
              constraint reads",
    why: "PostgreSQL adds the constraint again after the change and checks it against every \
          row, under the statement's ACCESS EXCLUSIVE lock.",
    safe: "Drop the CHECK, change the type, add the CHECK back NOT VALID in the same \
           transaction, and VALIDATE it in a transaction of its own.",
};

pub const DOMAIN_VALIDATE: Rule = Rule {
    id: "domain-validate-blocking",
    family: Family::Scan,
    catches: "ALTER DOMAIN ... VALIDATE CONSTRAINT on a domain that columns of existing tables \
              use",
    why: "PostgreSQL checks the domain's columns in every row of every such table while holding \
          a SHARE lock on it: writes wait for the whole scan (unlike a table's VALIDATE \
          CONSTRAINT).",
    safe: "Leave the domain's constraint NOT VALID (it checks every new and updated value); \
           prove the existing rows with a table CHECK ... NOT VALID per column, validated in a \
           transaction of its own under SHARE UPDATE EXCLUSIVE.",
};

pub const CREATE_PARTITION_SCAN: Rule = Rule {
    id: "create-partition-default-scan",
    family: Family::Scan,
    catches: "CREATE TABLE ... PARTITION OF a table with a DEFAULT partition whose validated \
              constraints do not prove it holds no row of the new bound",
    why: "PostgreSQL scans the default partition for rows that belong to the new one, holding \
          ACCESS EXCLUSIVE on it and on the parent: every query on the partitioned table waits.",
    safe: "Give the default partition a CHECK constraint that excludes the new bound (NOT \
           VALID, then VALIDATE in a transaction of its own): PostgreSQL then skips the scan.",
};

pub const RULES: [&Rule; 10] = [
    &SET_NOT_NULL,
    &VALIDATING_CONSTRAINT,
    &ENFORCE_FOREIGN_KEY,
    &INLINE_CONSTRAINT,
    &UNIQUE_WITHOUT_INDEX,
    &VALIDATE_LOCKED,
    &ATTACH_SCAN,
    &TYPE_CHANGE_CHECKS,
    &DOMAIN_VALIDATE,
    &CREATE_PARTITION_SCAN,
];

const AEL: LockMode = LockMode::AccessExclusive;

pub fn judge(command: &Command, out: &mut Vec<Finding>) {
    match command {
        Command::AlterTable { table, actions } => {
            for action in actions {
                judge_action(table, action, out);
            }
        }
        Command::AlterDomain {
            domain,
            change,
            tables,
        } => {
            for table in tables {
                out.push(domain_check(domain, *change, table));
            }
        }
        Command::CreatePartition {
            parent,
            default_partition: default,
            proven: Some(false),
        } => out.push(Finding {
            rule: &CREATE_PARTITION_SCAN,
            subject: Some(default.clone()),
            message: format!(
                "creating a partition of {parent} scans its default partition {}",
                default.name
            ),
            detail: format!(
                "{} {parent} is locked ACCESS EXCLUSIVE too: every query on it waits.",
                hazard(
                    default,
                    AEL,
                    "To prove no row belongs to the new partition, PostgreSQL scans",
                ),
            ),
            hint: format!(
                "ALTER TABLE {d} ADD CONSTRAINT excludes_new_bound CHECK (NOT (<the new \
                 bound>)) NOT VALID; then, in a transaction of its own, ALTER TABLE {d} VALIDATE \
                 CONSTRAINT excludes_new_bound; then CREATE TABLE ... PARTITION OF {p} (no \
                 scan).",
                d = default.name,
                p = parent
            ),
        }),
        _ => {}
    }
}

/// ALTER DOMAIN checks every column of the domain, table by table, under a SHARE lock.
fn domain_check(domain: &str, change: DomainChange, table: &Rel) -> Finding {
    // Validating a domain's constraint takes the same SHARE lock on every table as adding it:
    // the safe way never validates the domain itself, it proves each table's rows with a
    // table CHECK, validated under SHARE UPDATE EXCLUSIVE.
    let per_table = format!(
        "To prove the rows already there, per table and column: ALTER TABLE {t} ADD CONSTRAINT \
         ... CHECK (...) NOT VALID; then, in its own transaction, ALTER TABLE {t} VALIDATE \
         CONSTRAINT ...; (writes continue).",
        t = table.name
    );
    let (rule, what, hint) = match change {
        DomainChange::AddCheck => (
            &VALIDATING_CONSTRAINT,
            "adding a CHECK constraint to",
            format!(
                "ALTER DOMAIN {domain} ADD CONSTRAINT ... CHECK (...) NOT VALID; it checks every \
                 new and updated value from then on. {per_table}"
            ),
        ),
        DomainChange::SetNotNull => (
            &SET_NOT_NULL,
            "SET NOT NULL on",
            format!(
                "ALTER DOMAIN {domain} ADD CONSTRAINT {domain}_not_null CHECK (VALUE IS NOT NULL) \
                 NOT VALID; it checks every new and updated value from then on. {per_table}"
            ),
        ),
        DomainChange::Validate => (
            &DOMAIN_VALIDATE,
            "validating a constraint of",
            format!(
                "Leave the domain's constraint NOT VALID: it already checks every new and updated \
                 value. {per_table}"
            ),
        ),
    };
    Finding {
        rule,
        subject: Some(table.clone()),
        message: format!("{what} domain {domain} scans {}", table.name),
        detail: hazard(
            table,
            LockMode::Share,
            &format!("It checks the {domain} columns of"),
        ),
        hint,
    }
}

fn judge_action(table: &Rel, action: &Action, out: &mut Vec<Finding>) {
    let t = &table.name;
    let finding = |rule, message: String, detail: String, hint: String| Finding {
        rule,
        subject: Some(table.clone()),
        message,
        detail,
        hint,
    };
    match action {
        Action::SetNotNull {
            column,
            proven: false,
            unvalidated,
        } => out.push(finding(
            &SET_NOT_NULL,
            format!("SET NOT NULL on {t}.{column} scans the table"),
            hazard(
                table,
                AEL,
                &format!("It scans for NULLs in {column} across"),
            ),
            match unvalidated {
                Some(c) => format!(
                    "Validate the column's NOT VALID constraint in a transaction of its own: \
                     ALTER TABLE {t} VALIDATE CONSTRAINT {c}; (reads and writes continue)"
                ),
                None => not_null_hint(t, column),
            },
        )),
        Action::EnforceForeignKey { name } => out.push(finding(
            &ENFORCE_FOREIGN_KEY,
            format!("enforcing foreign key {name} on {t} checks every row under lock"),
            format!(
                "{} The referenced table is locked SHARE ROW EXCLUSIVE meanwhile (writes wait).",
                hazard(table, AEL, "It checks every row of")
            ),
            format!(
                "ALTER TABLE {t} DROP CONSTRAINT {name}; ALTER TABLE {t} ADD CONSTRAINT {name} \
                 FOREIGN KEY (...) REFERENCES ... NOT VALID; then, in its own transaction: ALTER \
                 TABLE {t} VALIDATE CONSTRAINT {name};"
            ),
        )),
        Action::AddConstraint {
            name,
            kind,
            not_valid: false,
            references,
            ..
        } if matches!(kind, ConstraintKind::Check | ConstraintKind::ForeignKey) => {
            let lock = if *kind == ConstraintKind::Check {
                AEL
            } else {
                LockMode::ShareRowExclusive
            };
            let mut detail = hazard(table, lock, "It checks every row of");
            if let Some(r) = references {
                detail.push_str(&format!(
                    " The referenced table {} is locked SHARE ROW EXCLUSIVE meanwhile.",
                    r.name
                ));
            }
            let c = name.clone().unwrap_or_else(|| "the_constraint".into());
            out.push(finding(
                &VALIDATING_CONSTRAINT,
                format!(
                    "adding a {} constraint to {t} validates every row under lock",
                    kind.sql()
                ),
                detail,
                format!(
                    "Add it with NOT VALID (instant), then validate it in a transaction of its \
                     own: ALTER TABLE {t} ADD CONSTRAINT {c} ... NOT VALID; then ALTER TABLE \
                     {t} VALIDATE CONSTRAINT {c};"
                ),
            ))
        }
        Action::AddConstraint {
            kind,
            using_index: false,
            name,
            ..
        } if matches!(
            kind,
            ConstraintKind::Unique | ConstraintKind::PrimaryKey | ConstraintKind::Exclusion
        ) =>
        {
            let c = name.clone().unwrap_or_else(|| "the_index".into());
            out.push(finding(
                &UNIQUE_WITHOUT_INDEX,
                format!(
                    "adding a {} constraint to {t} builds its index under lock",
                    kind.sql()
                ),
                hazard(table, AEL, "It builds the constraint's index over"),
                if *kind == ConstraintKind::Exclusion {
                    "Exclusion constraints cannot use an existing index; add it while the \
                     table is small, or in a maintenance window."
                        .into()
                } else {
                    format!(
                        "CREATE UNIQUE INDEX CONCURRENTLY {c} ON {t} (...); then ALTER TABLE \
                         {t} ADD CONSTRAINT {c} {} USING INDEX {c};",
                        kind.sql()
                    )
                },
            ))
        }
        Action::AddColumn(column) if !column.inline_constraints.is_empty() => {
            let kinds: Vec<&str> = column.inline_constraints.iter().map(|k| k.sql()).collect();
            out.push(finding(
                &INLINE_CONSTRAINT,
                format!(
                    "adding column {} with an inline {} validates {t} under lock",
                    column.name,
                    kinds.join(" and ")
                ),
                hazard(
                    table,
                    AEL,
                    &format!("It checks (or indexes) {} over", column.name),
                ),
                format!(
                    "ALTER TABLE {t} ADD COLUMN {} {} ...; then add the constraint separately: \
                     NOT VALID and VALIDATE for CHECK, FOREIGN KEY{}, CREATE UNIQUE INDEX \
                     CONCURRENTLY and USING INDEX for UNIQUE and PRIMARY KEY.",
                    column.name,
                    column.type_name,
                    if crate::pg::MAJOR >= 18 {
                        " and NOT NULL"
                    } else {
                        ""
                    }
                ),
            ))
        }
        Action::ValidateConstraint {
            name,
            beside: Some(lock),
        } if lock.blocked_work().is_some() => out.push(finding(
            &VALIDATE_LOCKED,
            format!(
                "validating {name} on {t} in a statement that also locks it {}",
                lock.name()
            ),
            format!(
                "The statement's other subcommands take {} on {}, held for the whole \
                 statement: the validating scan runs under it, and {} for the scan.",
                lock.with_article(),
                table.describe(),
                lock.blocks()
            ),
            format!(
                "Run the other subcommands in a statement of their own and commit; then ALTER \
                 TABLE {t} VALIDATE CONSTRAINT {name}; in a transaction (or migration version) \
                 of its own."
            ),
        )),
        Action::ValidateConstraint { name, .. } if table.write_locked_by_us => out.push(finding(
            &VALIDATE_LOCKED,
            format!("validating {name} on {t} in a transaction that already locks it"),
            format!(
                "This transaction already holds a lock on {} that blocks writes; the \
                 validating scan runs while it is held, so every write waits for the scan.",
                table.describe()
            ),
            format!(
                "Commit first, then run ALTER TABLE {t} VALIDATE CONSTRAINT {name}; in a \
                 transaction (or migration version) of its own."
            ),
        )),
        Action::AlterType {
            column,
            type_name,
            rewrites: Some(false),
            checks_again,
            ..
        } if !checks_again.is_empty() => {
            let checks = listed(checks_again.iter().map(|(on, c)| {
                if on == t {
                    c.clone()
                } else {
                    format!("{c} (on {on})")
                }
            }));
            let verb = if checks_again.len() == 1 { "is" } else { "are" };
            let each = |what: &dyn Fn(&str, &str) -> String| {
                checks_again
                    .iter()
                    .map(|(on, c)| what(on, c))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            out.push(finding(
                &TYPE_CHANGE_CHECKS,
                format!("changing {t}.{column} to {type_name} checks {checks} on every row"),
                hazard(
                    table,
                    AEL,
                    &format!(
                        "The rows are kept, but {checks} {verb} added again and checked against"
                    ),
                ),
                format!(
                    "In one transaction: {} ALTER TABLE {t} ALTER COLUMN {column} TYPE \
                     {type_name}; {} Then, each in a transaction of its own: {}",
                    each(&|on, c| format!("ALTER TABLE {on} DROP CONSTRAINT {c};")),
                    each(&|on, c| format!(
                        "ALTER TABLE {on} ADD CONSTRAINT {c} CHECK (...) NOT VALID;"
                    )),
                    each(&|on, c| format!("ALTER TABLE {on} VALIDATE CONSTRAINT {c};")),
                ),
            ))
        }
        Action::AttachPartition {
            partition,
            proven,
            default_partition,
        } => {
            if *proven == Some(false) {
                out.push(Finding {
                    rule: &ATTACH_SCAN,
                    subject: Some(partition.clone()),
                    message: format!("attaching {} to {t} scans it", partition.name),
                    detail: hazard(
                        partition,
                        AEL,
                        "No validated CHECK constraint implies the partition bound, so \
                         PostgreSQL scans",
                    ),
                    hint: format!(
                        "ALTER TABLE {p} ADD CONSTRAINT {pn}_bound CHECK (<the bound>) NOT \
                         VALID; ALTER TABLE {p} VALIDATE CONSTRAINT {pn}_bound; then ATTACH \
                         (no scan); then drop the CHECK.",
                        p = partition.name,
                        pn = partition.name.rsplit('.').next().unwrap_or("p")
                    ),
                });
            }
            if let Some((default, Some(false))) = default_partition {
                out.push(Finding {
                    rule: &ATTACH_SCAN,
                    subject: Some(default.clone()),
                    message: format!(
                        "attaching {} to {t} scans the default partition {}",
                        partition.name, default.name
                    ),
                    detail: hazard(
                        default,
                        AEL,
                        "To prove no row belongs to the new partition, PostgreSQL scans",
                    ),
                    hint: format!(
                        "Give {} a validated CHECK constraint that excludes the new bound \
                         before attaching.",
                        default.name
                    ),
                });
            }
        }
        _ => {}
    }
}

/// The safe way to make `column` NOT NULL: PostgreSQL 18 validates a NOT NULL constraint
/// itself; before it, a validated CHECK lets SET NOT NULL skip its scan.
fn not_null_hint(t: &str, column: &str) -> String {
    // A quoted column name gives a quoted constraint name.
    let c = match column.strip_prefix('"').and_then(|c| c.strip_suffix('"')) {
        Some(inner) => format!("\"{inner}_not_null\""),
        None => format!("{column}_not_null"),
    };
    if crate::pg::MAJOR >= 18 {
        format!(
            "ALTER TABLE {t} ADD CONSTRAINT {c} NOT NULL {column} NOT VALID; then, in its own \
             transaction: ALTER TABLE {t} VALIDATE CONSTRAINT {c}; (reads and writes continue)"
        )
    } else {
        format!(
            "ALTER TABLE {t} ADD CONSTRAINT {c} CHECK ({column} IS NOT NULL) NOT VALID; then, \
             in its own transaction: ALTER TABLE {t} VALIDATE CONSTRAINT {c}; then ALTER TABLE \
             {t} ALTER COLUMN {column} SET NOT NULL; (instant, proven by the CHECK)"
        )
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::guard::command::NewColumn;
    use crate::guard::rule::test_support::*;

    fn ids(table: Rel, actions: Vec<Action>) -> Vec<&'static str> {
        let mut out = vec![];
        judge(&Command::AlterTable { table, actions }, &mut out);
        out.iter().map(|f| f.rule.id).collect()
    }

    fn big() -> Rel {
        table("public.t", BIG)
    }

    fn constraint(kind: ConstraintKind, not_valid: bool, using_index: bool) -> Action {
        Action::AddConstraint {
            name: Some("c".into()),
            kind,
            not_valid,
            using_index,
            references: None,
        }
    }

    #[test]
    fn set_not_null_needs_a_proof() {
        assert_eq!(
            ids(
                big(),
                vec![Action::SetNotNull {
                    column: "c".into(),
                    proven: false,
                    unvalidated: None,
                }]
            ),
            ["set-not-null-scan"]
        );
        assert!(ids(
            big(),
            vec![Action::SetNotNull {
                column: "c".into(),
                proven: true,
                unvalidated: None,
            }]
        )
        .is_empty());
    }

    #[test]
    fn the_not_null_hint_is_the_way_this_version_has() {
        let mut out = vec![];
        judge_action(
            &big(),
            &Action::SetNotNull {
                column: "c".into(),
                proven: false,
                unvalidated: None,
            },
            &mut out,
        );
        let hint = &out[0].hint;
        if crate::pg::MAJOR >= 18 {
            assert!(
                hint.contains("ADD CONSTRAINT c_not_null NOT NULL c NOT VALID"),
                "{hint}"
            );
            assert!(!hint.contains("CHECK"), "{hint}");
        } else {
            assert!(hint.contains("CHECK (c IS NOT NULL) NOT VALID"), "{hint}");
            assert!(hint.contains("SET NOT NULL"), "{hint}");
        }
    }

    #[test]
    fn a_quoted_column_gives_a_quoted_constraint_name() {
        let hint = not_null_hint("public.t", "\"My Col\"");
        assert!(hint.contains("CONSTRAINT \"My Col_not_null\""), "{hint}");
    }

    #[test]
    fn enforcing_a_foreign_key_scans_and_a_virtual_not_null_column_is_checked() {
        assert_eq!(
            ids(big(), vec![Action::EnforceForeignKey { name: "fk".into() }]),
            ["enforce-foreign-key"]
        );
        let virtual_not_null = NewColumn {
            name: "v".into(),
            type_name: "int".into(),
            generated: Some(crate::guard::command::Generated::Virtual),
            inline_constraints: vec![ConstraintKind::NotNull],
            ..Default::default()
        };
        assert_eq!(
            ids(big(), vec![Action::AddColumn(virtual_not_null)]),
            ["add-column-inline-constraint"]
        );
    }

    #[test]
    fn constraints_need_not_valid_or_using_index() {
        assert_eq!(
            ids(big(), vec![constraint(ConstraintKind::Check, false, false)]),
            ["add-constraint-validating"]
        );
        assert_eq!(
            ids(
                big(),
                vec![constraint(ConstraintKind::ForeignKey, false, false)]
            ),
            ["add-constraint-validating"]
        );
        assert_eq!(
            ids(
                big(),
                vec![constraint(ConstraintKind::Unique, false, false)]
            ),
            ["add-unique-without-index"]
        );
        assert_eq!(
            ids(
                big(),
                vec![constraint(ConstraintKind::PrimaryKey, false, false)]
            ),
            ["add-unique-without-index"]
        );
        assert!(ids(
            big(),
            vec![
                constraint(ConstraintKind::Check, true, false),
                constraint(ConstraintKind::ForeignKey, true, false),
                constraint(ConstraintKind::Unique, false, true),
                constraint(ConstraintKind::PrimaryKey, false, true),
            ]
        )
        .is_empty());
    }

    #[test]
    fn inline_constraints_in_add_column_are_caught() {
        let c = NewColumn {
            name: "code".into(),
            type_name: "text".into(),
            inline_constraints: vec![ConstraintKind::Unique],
            ..Default::default()
        };
        assert_eq!(
            ids(big(), vec![Action::AddColumn(c)]),
            ["add-column-inline-constraint"]
        );
    }

    #[test]
    fn validate_is_fine_unless_this_transaction_locks_the_table() {
        let v = || {
            vec![Action::ValidateConstraint {
                name: "c".into(),
                beside: None,
            }]
        };
        assert!(ids(big(), v()).is_empty());
        let mut locked = big();
        locked.write_locked_by_us = true;
        assert_eq!(ids(locked, v()), ["validate-in-locking-transaction"]);
    }

    #[test]
    fn a_type_change_that_keeps_the_rows_is_refused_for_the_checks_it_repeats() {
        let change = |rewrites, checks: &[&str]| Action::AlterType {
            column: "c".into(),
            type_name: "varchar(40)".into(),
            rewrites,
            rebuilds_indexes: vec![],
            checks_again: checks
                .iter()
                .map(|c| ("public.t".into(), c.to_string()))
                .collect(),
        };
        assert_eq!(
            ids(big(), vec![change(Some(false), &["c_len"])]),
            ["alter-column-type-check-scan"]
        );
        assert!(ids(big(), vec![change(Some(false), &[])]).is_empty());
        // A rewrite is refused by its own rule.
        assert!(ids(big(), vec![change(Some(true), &["c_len"])]).is_empty());
    }

    #[test]
    fn validating_a_domain_constraint_is_refused_for_each_table_using_it() {
        let mut out = vec![];
        let command = Command::AlterDomain {
            domain: "public.code".into(),
            change: DomainChange::Validate,
            tables: vec![big(), table("public.u", BIG)],
        };
        judge(&command, &mut out);
        let found: Vec<_> = out
            .iter()
            .map(|f| (f.rule.id, f.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "domain-validate-blocking",
                    "validating a constraint of domain public.code scans public.t"
                ),
                (
                    "domain-validate-blocking",
                    "validating a constraint of domain public.code scans public.u"
                ),
            ]
        );
        assert!(
            !out[0].hint.contains("ALTER DOMAIN public.code VALIDATE"),
            "{}",
            out[0].hint
        );
    }

    #[test]
    fn a_new_partition_is_refused_while_the_default_one_would_be_scanned() {
        let create = |proven| {
            let mut out = vec![];
            judge(
                &Command::CreatePartition {
                    parent: "public.events".into(),
                    default_partition: table("public.events_default", BIG),
                    proven,
                },
                &mut out,
            );
            out.iter().map(|f| f.rule.id).collect::<Vec<_>>()
        };
        assert_eq!(create(Some(false)), ["create-partition-default-scan"]);
        assert!(create(Some(true)).is_empty());
        assert!(create(None).is_empty()); // locked elsewhere: the lock timeout answers
    }

    #[test]
    fn validate_is_refused_beside_subcommands_that_block_writes() {
        let v = |beside| {
            vec![Action::ValidateConstraint {
                name: "c".into(),
                beside: Some(beside),
            }]
        };
        for lock in [
            LockMode::AccessExclusive,
            LockMode::ShareRowExclusive,
            LockMode::Share,
        ] {
            assert_eq!(
                ids(big(), v(lock)),
                ["validate-in-locking-transaction"],
                "{lock:?}"
            );
        }
        // SET (fillfactor = ...) beside it: the statement's lock lets writes go on.
        assert!(ids(big(), v(LockMode::ShareUpdateExclusive)).is_empty());
    }

    #[test]
    fn attach_needs_a_proven_bound_for_the_partition_and_the_default() {
        let p = table("public.p2026", BIG);
        let d = table("public.p_default", BIG);
        let attach = |proven, default| Action::AttachPartition {
            partition: p.clone(),
            proven,
            default_partition: default,
        };
        assert_eq!(
            ids(big(), vec![attach(Some(false), None)]),
            ["attach-partition-scan"]
        );
        assert!(ids(big(), vec![attach(Some(true), None), attach(None, None)]).is_empty());
        assert_eq!(
            ids(
                big(),
                vec![attach(Some(true), Some((d.clone(), Some(false))))]
            ),
            ["attach-partition-scan"]
        );
        assert!(ids(big(), vec![attach(Some(true), Some((d, Some(true))))]).is_empty());
    }
}
