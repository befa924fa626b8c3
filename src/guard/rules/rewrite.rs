//! Commands that rewrite a whole table (or its files) under ACCESS EXCLUSIVE.

use crate::guard::command::{Action, Command, Generated, LockMode, NewColumn, Rel, RelKind};
use crate::guard::rule::hazard;
use crate::guard::rule::Finding;
use crate::guard::rule::{Family, Rule};

const AEL: LockMode = LockMode::AccessExclusive;

pub const VOLATILE_DEFAULT: Rule = Rule {
    id: "add-column-volatile-default",
    family: Family::Rewrite,
    catches: "ADD COLUMN with a volatile default: random(), clock_timestamp(), \
              gen_random_uuid(), nextval(), or any user function declared VOLATILE",
    why: "Every existing row needs its own value, so PostgreSQL rewrites the whole table under \
          an ACCESS EXCLUSIVE lock. Non-volatile defaults (constants, now()) are instant.",
    safe: "Add the column without a default, set the default with ALTER COLUMN ... SET DEFAULT \
           (new rows only), then backfill existing rows in batches.",
};

pub const SERIAL: Rule = Rule {
    id: "add-column-serial",
    family: Family::Rewrite,
    catches: "ADD COLUMN of type serial, bigserial or smallserial",
    why: "A serial column's default is nextval(), so every existing row gets its own value: a \
          full rewrite under ACCESS EXCLUSIVE.",
    safe: "Add a plain bigint column, create a sequence and make it the column's default, \
           backfill existing rows in batches, then add NOT NULL through a validated CHECK.",
};

pub const IDENTITY: Rule = Rule {
    id: "add-column-identity",
    family: Family::Rewrite,
    catches: "ADD COLUMN ... GENERATED { ALWAYS | BY DEFAULT } AS IDENTITY",
    why: "Every existing row is given a value from the identity sequence: a full rewrite under \
          ACCESS EXCLUSIVE.",
    safe: "Add a nullable bigint column whose default is a sequence, backfill existing rows in \
           batches, then make it NOT NULL through a validated CHECK.",
};

pub const GENERATED_STORED: Rule = Rule {
    id: "add-column-generated-stored",
    family: Family::Rewrite,
    catches: "ADD COLUMN ... GENERATED ALWAYS AS (...) STORED",
    why: "The value is computed and stored for every existing row: a full rewrite under \
          ACCESS EXCLUSIVE.",
    safe: if crate::pg::MAJOR >= 18 {
        "A VIRTUAL generated column (PostgreSQL 18's default) is added instantly; or add a \
         plain nullable column kept current by a trigger and backfill it in batches."
    } else {
        "Add a plain nullable column kept current by a trigger and backfill it in batches, \
         or compute the value in a view."
    },
};

pub const SET_EXPRESSION: Rule = Rule {
    id: "alter-column-set-expression",
    family: Family::Rewrite,
    catches: "ALTER COLUMN ... SET EXPRESSION AS (...) of a STORED generated column, or of a \
              VIRTUAL one declared NOT NULL (PostgreSQL 17 and later)",
    why: "A stored column's new value is computed and written for every row: a full rewrite \
          under ACCESS EXCLUSIVE. A virtual NOT NULL column's new value is checked on every \
          row under the same lock.",
    safe: "Add a new column with the new expression beside the old one (expand/contract), \
           switch reads to it, then drop the old column.",
};

pub const CONSTRAINED_DOMAIN: Rule = Rule {
    id: "add-column-constrained-domain",
    family: Family::Rewrite,
    catches: "ADD COLUMN whose type is a domain with constraints",
    why: "PostgreSQL rewrites the table to check the domain's constraints against every row, \
          under ACCESS EXCLUSIVE.",
    safe: "Add the column with the domain's base type, backfill it, add a CHECK NOT VALID and \
           VALIDATE it, then switch to the domain in a later expand/contract step.",
};

pub const TYPE_CHANGE: Rule = Rule {
    id: "alter-column-type-rewrite",
    family: Family::Rewrite,
    catches: "ALTER COLUMN ... TYPE that PostgreSQL cannot do without rewriting: any change that \
              is not binary-coercible (judged by PostgreSQL's own coercion rules; timestamp to \
              timestamptz counts as coercible only when the session TimeZone is UTC)",
    why: "Every row is converted and the table and its indexes are rebuilt under ACCESS \
          EXCLUSIVE.",
    safe: "Add a column of the new type, keep it current with a trigger, backfill in batches, \
           switch reads, and drop the old column later (expand/contract).",
};

pub const TYPE_CHANGE_INDEXES: Rule = Rule {
    id: "alter-column-type-index-rebuild",
    family: Family::Rewrite,
    catches: "ALTER COLUMN ... TYPE that keeps the rows but not an index on the column: a new \
              collation or operator class, or any expression or partial index that reads the \
              column",
    why: "PostgreSQL keeps such an index only when its definition comes out the same for the \
          new type; otherwise it builds it again, reading the whole table, under the \
          statement's ACCESS EXCLUSIVE lock.",
    safe: "DROP INDEX CONCURRENTLY each such index before the change and CREATE INDEX \
           CONCURRENTLY it after (a plain index can instead be built first with the new \
           collation or class written out, which PostgreSQL keeps); for an index behind a \
           constraint, expand/contract with a new column.",
};

pub const SET_LOGGED: Rule = Rule {
    id: "set-logged-unlogged",
    family: Family::Rewrite,
    catches: "ALTER TABLE ... SET LOGGED or SET UNLOGGED",
    why: "The table is rewritten (with SET LOGGED, also written to WAL in full) under ACCESS \
          EXCLUSIVE.",
    safe: "Create a new table with the wanted persistence and copy rows in batches, or do it \
           in a maintenance window.",
};

pub const SET_TABLESPACE: Rule = Rule {
    id: "set-tablespace",
    family: Family::Rewrite,
    catches: "ALTER TABLE / ALTER INDEX / ALTER MATERIALIZED VIEW ... SET TABLESPACE",
    why: "The relation's files are copied to the new tablespace under ACCESS EXCLUSIVE.",
    safe: "pg_repack --tablespace (tables) or a new index built CONCURRENTLY in the target \
           tablespace, then drop the old one.",
};

pub const SET_ACCESS_METHOD: Rule = Rule {
    id: "set-access-method",
    family: Family::Rewrite,
    catches: "ALTER TABLE ... SET ACCESS METHOD",
    why: "The table is rewritten into the new access method under ACCESS EXCLUSIVE.",
    safe: "Create a new table with the access method, copy rows in batches and swap names in a \
           short transaction.",
};

pub const VACUUM_FULL: Rule = Rule {
    id: "vacuum-full",
    family: Family::Rewrite,
    catches: "VACUUM FULL",
    why: "Each table is rewritten under ACCESS EXCLUSIVE: every query on it waits for the whole \
          copy.",
    safe: "Plain VACUUM (it does not block); to give space back to the OS, pg_repack.",
};

pub const CLUSTER: Rule = Rule {
    id: "cluster",
    family: Family::Rewrite,
    catches: "CLUSTER",
    why: "The table is rewritten in index order under ACCESS EXCLUSIVE.",
    safe: "pg_repack --order-by, which reorders without long locks.",
};

pub const REFRESH_MATVIEW: Rule = Rule {
    id: "refresh-matview-blocking",
    family: Family::Rewrite,
    catches: "REFRESH MATERIALIZED VIEW without CONCURRENTLY",
    why: "The view is rebuilt under ACCESS EXCLUSIVE: every query on it waits for the whole \
          refresh.",
    safe: "REFRESH MATERIALIZED VIEW CONCURRENTLY (it needs a unique index on the view).",
};

pub const TABLE_REWRITE: Rule = Rule {
    id: "table-rewrite",
    family: Family::Rewrite,
    catches: "any other command that PostgreSQL announces will rewrite a populated table \
              (the table_rewrite event trigger, a backstop for what the other rules miss)",
    why: "A rewrite copies every row under ACCESS EXCLUSIVE: every query on the table waits.",
    safe: "Expand/contract: add what is new beside the old, fill it in batches, switch over, \
           drop the old later.",
};

pub const RULES: [&Rule; 15] = [
    &VOLATILE_DEFAULT,
    &SERIAL,
    &IDENTITY,
    &GENERATED_STORED,
    &SET_EXPRESSION,
    &CONSTRAINED_DOMAIN,
    &TYPE_CHANGE,
    &TYPE_CHANGE_INDEXES,
    &SET_LOGGED,
    &SET_TABLESPACE,
    &SET_ACCESS_METHOD,
    &VACUUM_FULL,
    &CLUSTER,
    &REFRESH_MATVIEW,
    &TABLE_REWRITE,
];

pub fn judge(command: &Command, out: &mut Vec<Finding>) {
    match command {
        Command::MoveAllTablespace { from, to } => out.push(Finding {
            rule: &SET_TABLESPACE,
            subject: None,
            message: format!("moving everything in tablespace {from} to {to} copies every file"),
            detail: format!(
                "Each relation in {from} is copied to {to} in turn under an ACCESS EXCLUSIVE \
                 lock: every query on it waits until its copy is done."
            ),
            hint: format!("Move tables one by one with pg_repack --tablespace={to}."),
        }),
        Command::AlterTable { table, actions } => {
            for action in actions {
                if let Some(f) = judge_action(table, action) {
                    out.push(f);
                }
            }
        }
        Command::VacuumFull { tables } if tables.is_empty() => out.push(Finding {
            rule: &VACUUM_FULL,
            subject: None,
            message: "VACUUM FULL rewrites every table in the database".into(),
            detail: "Each table is rewritten in turn under an ACCESS EXCLUSIVE lock: every \
                     query on it waits until its copy is done."
                .into(),
            hint: "Run plain VACUUM; reclaim space table by table with pg_repack.".into(),
        }),
        Command::VacuumFull { tables } => {
            for t in tables {
                out.push(rewrites(
                    &VACUUM_FULL,
                    t,
                    "VACUUM FULL",
                    format!(
                        "Plain VACUUM does not block: VACUUM {}; to give space back to the \
                         operating system, use pg_repack.",
                        t.name
                    ),
                ));
            }
        }
        Command::Cluster { table: Some(t) } => out.push(rewrites(
            &CLUSTER,
            t,
            "CLUSTER",
            format!("pg_repack --table={} --order-by=...", t.name),
        )),
        Command::Cluster { table: None } => out.push(Finding {
            rule: &CLUSTER,
            subject: None,
            message: "CLUSTER rewrites every previously clustered table".into(),
            detail: "Each table is rewritten in index order under an ACCESS EXCLUSIVE lock.".into(),
            hint: "Reorder tables with pg_repack --order-by instead.".into(),
        }),
        Command::RefreshMatView {
            view,
            concurrent: false,
        } => out.push(rewrites(
            &REFRESH_MATVIEW,
            view,
            "REFRESH MATERIALIZED VIEW",
            format!("REFRESH MATERIALIZED VIEW CONCURRENTLY {};", view.name),
        )),
        _ => {}
    }
}

fn judge_action(table: &Rel, action: &Action) -> Option<Finding> {
    match action {
        Action::AddColumn(column) => add_column(table, column),
        Action::AlterType {
            column,
            type_name,
            rewrites: Some(false),
            rebuilds_indexes,
            ..
        } if !rebuilds_indexes.is_empty() => Some(Finding {
            rule: &TYPE_CHANGE_INDEXES,
            message: format!(
                "changing {}.{column} to {type_name} rebuilds {}",
                table.name,
                crate::guard::rule::listed(rebuilds_indexes.iter().cloned())
            ),
            detail: hazard(
                table,
                AEL,
                "The rows are kept, but the index definitions on the column change (collation, \
                 operator class, or an expression or predicate that reads it), so each is built \
                 again over",
            ),
            hint: format!(
                "For each index, one at a time: DROP INDEX CONCURRENTLY it before the change and \
                 CREATE INDEX CONCURRENTLY it again after ALTER TABLE {t} ALTER COLUMN {column} \
                 TYPE {type_name}; (for a plain index on the column, building its replacement \
                 first with the new collation or class written out also works: PostgreSQL keeps \
                 an index that already matches). An index behind a PRIMARY KEY, UNIQUE or \
                 EXCLUDE constraint cannot be dropped so: expand/contract with a new column.",
                t = table.name
            ),
            subject: Some(table.clone()),
        }),
        Action::AlterType {
            column,
            type_name,
            rewrites: Some(true),
            ..
        } => Some(Finding {
            rule: &TYPE_CHANGE,
            message: format!(
                "changing {}.{column} to {type_name} rewrites the table",
                table.name
            ),
            detail: hazard(
                table,
                AEL,
                &format!("The change to {type_name} is not binary-coercible, so it rewrites"),
            ),
            hint: format!(
                "Expand/contract: ALTER TABLE {t} ADD COLUMN {column}_new {type_name}; keep it \
                 current with a trigger, backfill in batches, switch reads, then drop {column}.",
                t = table.name
            ),
            subject: Some(table.clone()),
        }),
        Action::SetExpression {
            column,
            generated,
            not_null,
        } if *generated == Generated::Stored || *not_null => {
            let t = &table.name;
            let what = if *generated == Generated::Stored {
                "writes its new value into every row of"
            } else {
                "checks its new value for NULL in every row of"
            };
            Some(Finding {
                rule: &SET_EXPRESSION,
                message: format!("SET EXPRESSION on {t}.{column} {what} {t}"),
                detail: hazard(
                    table,
                    AEL,
                    &format!("The new expression of {column} is computed for every row of"),
                ),
                hint: format!(
                    "Expand/contract: ALTER TABLE {t} ADD COLUMN {column}_new ... GENERATED \
                     ALWAYS AS (<new expression>){}; switch reads to it, then drop {column}.",
                    if crate::pg::MAJOR >= 18 {
                        " VIRTUAL (instant)"
                    } else {
                        ""
                    }
                ),
                subject: Some(table.clone()),
            })
        }
        Action::SetLogged(logged) if matches!(table.kind, RelKind::Table) => Some(rewrites(
            &SET_LOGGED,
            table,
            if *logged {
                "SET LOGGED"
            } else {
                "SET UNLOGGED"
            },
            "Create the new table with the wanted persistence and copy rows in batches.".into(),
        )),
        Action::SetTablespace(space)
            if matches!(
                table.kind,
                RelKind::Table | RelKind::Index | RelKind::MatView
            ) =>
        {
            Some(rewrites(
                &SET_TABLESPACE,
                table,
                "SET TABLESPACE",
                format!("pg_repack --tablespace={space} (or build a new index CONCURRENTLY there)"),
            ))
        }
        Action::SetAccessMethod(method)
            if matches!(table.kind, RelKind::Table | RelKind::MatView) =>
        {
            Some(rewrites(
                &SET_ACCESS_METHOD,
                table,
                "SET ACCESS METHOD",
                format!("CREATE TABLE ... USING {method}, copy rows in batches, swap names."),
            ))
        }
        _ => None,
    }
}

fn add_column(table: &Rel, c: &NewColumn) -> Option<Finding> {
    let t = &table.name;
    let (rule, why, hint) =
        if c.identity {
            (
                &IDENTITY,
                "an identity column",
                format!(
            "ALTER TABLE {t} ADD COLUMN {n} bigint; CREATE SEQUENCE {n}_seq; ALTER TABLE {t} \
             ALTER COLUMN {n} SET DEFAULT nextval('{n}_seq'); then backfill existing rows in \
             batches.", n = c.name),
            )
        } else if c.serial {
            (
                &SERIAL,
                "a serial column",
                format!(
            "ALTER TABLE {t} ADD COLUMN {n} bigint; CREATE SEQUENCE {n}_seq OWNED BY {t}.{n}; \
             ALTER TABLE {t} ALTER COLUMN {n} SET DEFAULT nextval('{n}_seq'); then backfill \
             existing rows in batches.", n = c.name),
            )
        } else if c.generated == Some(Generated::Stored) {
            (
                &GENERATED_STORED,
                "a stored generated column",
                if crate::pg::MAJOR >= 18 {
                    format!(
            "ALTER TABLE {t} ADD COLUMN {n} {ty} GENERATED ALWAYS AS (...) VIRTUAL; (instant: \
             computed when read), or a plain column kept current by a trigger and backfilled \
             in batches.", n = c.name, ty = c.type_name)
                } else {
                    format!(
            "ALTER TABLE {t} ADD COLUMN {n} {ty}; keep it current with a trigger and backfill \
             existing rows in batches.", n = c.name, ty = c.type_name)
                },
            )
        } else if c.volatile_default == Some(true) {
            (
                &VOLATILE_DEFAULT,
                "a volatile default",
                format!(
            "ALTER TABLE {t} ADD COLUMN {n} {ty}; ALTER TABLE {t} ALTER COLUMN {n} SET DEFAULT \
             {d}; then backfill existing rows in batches.",
            n = c.name, ty = c.type_name, d = c.default_sql.as_deref().unwrap_or("...")),
            )
        } else if c.constrained_domain == Some(true) {
            (
                &CONSTRAINED_DOMAIN,
                "a domain with constraints",
                format!(
            "Add {n} with the domain's base type, backfill, add a CHECK NOT VALID and VALIDATE \
             it; switch to {ty} later.", n = c.name, ty = c.type_name),
            )
        } else {
            return None;
        };
    Some(Finding {
        rule,
        message: format!("adding column {} with {why} rewrites {t}", c.name),
        detail: hazard(
            table,
            AEL,
            &format!("Adding {} with {why} rewrites", c.name),
        ),
        hint,
        subject: Some(table.clone()),
    })
}

fn rewrites(rule: &'static Rule, rel: &Rel, what: &str, hint: String) -> Finding {
    Finding {
        rule,
        message: format!("{what} rewrites {}", rel.name),
        detail: hazard(rel, AEL, &format!("{what} rewrites")),
        hint,
        subject: Some(rel.clone()),
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::guard::rule::test_support::*;

    fn alter(actions: Vec<Action>) -> Vec<Finding> {
        let mut out = vec![];
        judge(
            &Command::AlterTable {
                table: table("public.t", BIG),
                actions,
            },
            &mut out,
        );
        out
    }

    fn column() -> NewColumn {
        NewColumn {
            name: "c".into(),
            type_name: "int".into(),
            ..Default::default()
        }
    }

    fn ids(f: &[Finding]) -> Vec<&'static str> {
        f.iter().map(|f| f.rule.id).collect()
    }

    #[test]
    fn a_virtual_column_is_instant_and_a_new_expression_is_judged_by_its_kind() {
        let virtual_column = NewColumn {
            generated: Some(Generated::Virtual),
            ..column()
        };
        assert!(ids(&alter(vec![Action::AddColumn(virtual_column)])).is_empty());
        let set = |generated, not_null| Action::SetExpression {
            column: "g".into(),
            generated,
            not_null,
        };
        assert_eq!(
            ids(&alter(vec![set(Generated::Stored, false)])),
            ["alter-column-set-expression"]
        );
        assert_eq!(
            ids(&alter(vec![set(Generated::Virtual, true)])),
            ["alter-column-set-expression"]
        );
        assert!(ids(&alter(vec![set(Generated::Virtual, false)])).is_empty());
    }

    #[test]
    fn each_add_column_hazard_has_its_rule() {
        let cases = [
            (
                NewColumn {
                    identity: true,
                    ..column()
                },
                "add-column-identity",
            ),
            (
                NewColumn {
                    serial: true,
                    ..column()
                },
                "add-column-serial",
            ),
            (
                NewColumn {
                    generated: Some(Generated::Stored),
                    ..column()
                },
                "add-column-generated-stored",
            ),
            (
                NewColumn {
                    volatile_default: Some(true),
                    default_sql: Some("random()".into()),
                    ..column()
                },
                "add-column-volatile-default",
            ),
            (
                NewColumn {
                    constrained_domain: Some(true),
                    ..column()
                },
                "add-column-constrained-domain",
            ),
        ];
        for (c, id) in cases {
            let f = alter(vec![Action::AddColumn(c)]);
            assert_eq!(ids(&f), [id]);
            assert!(f[0].detail.contains("ACCESS EXCLUSIVE"));
        }
        let f = alter(vec![Action::AddColumn(NewColumn {
            volatile_default: Some(true),
            default_sql: Some("gen_random_uuid()".into()),
            type_name: "uuid".into(),
            ..column()
        })]);
        assert_eq!(
            f[0].hint,
            "ALTER TABLE public.t ADD COLUMN c uuid; ALTER TABLE public.t ALTER COLUMN c SET \
             DEFAULT gen_random_uuid(); then backfill existing rows in batches."
        );
    }

    #[test]
    fn safe_add_columns_pass() {
        for c in [
            column(),
            NewColumn {
                volatile_default: Some(false),
                default_sql: Some("now()".into()),
                ..column()
            },
            NewColumn {
                volatile_default: None,
                ..column()
            },
            NewColumn {
                constrained_domain: Some(false),
                ..column()
            },
        ] {
            assert!(alter(vec![Action::AddColumn(c)]).is_empty());
        }
    }

    #[test]
    fn type_changes_follow_postgresqls_verdict() {
        let change = |rewrites, rebuilds_indexes: &[&str]| Action::AlterType {
            column: "c".into(),
            type_name: "bigint".into(),
            rewrites,
            rebuilds_indexes: rebuilds_indexes.iter().map(|i| i.to_string()).collect(),
            checks_again: vec![],
        };
        assert_eq!(
            ids(&alter(vec![change(Some(true), &[])])),
            ["alter-column-type-rewrite"]
        );
        assert!(alter(vec![change(Some(false), &[]), change(None, &[])]).is_empty());
        assert_eq!(
            ids(&alter(vec![change(Some(false), &["public.t_c_lower"])])),
            ["alter-column-type-index-rebuild"]
        );
    }

    #[test]
    fn storage_changes_rewrite_tables_but_not_partitioned_parents() {
        let f = alter(vec![
            Action::SetLogged(true),
            Action::SetTablespace("fast".into()),
            Action::SetAccessMethod("heap".into()),
        ]);
        assert_eq!(
            ids(&f),
            ["set-logged-unlogged", "set-tablespace", "set-access-method"]
        );
        let mut parent = table("public.p", BIG);
        parent.kind = RelKind::PartitionedTable;
        let mut out = vec![];
        judge(
            &Command::AlterTable {
                table: parent,
                actions: vec![Action::SetTablespace("fast".into())],
            },
            &mut out,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn vacuum_full_cluster_and_refresh() {
        let mut out = vec![];
        let t = table("public.t", BIG);
        judge(
            &Command::VacuumFull {
                tables: vec![t.clone()],
            },
            &mut out,
        );
        judge(
            &Command::Cluster {
                table: Some(t.clone()),
            },
            &mut out,
        );
        judge(&Command::Cluster { table: None }, &mut out);
        judge(
            &Command::RefreshMatView {
                view: t.clone(),
                concurrent: false,
            },
            &mut out,
        );
        judge(
            &Command::RefreshMatView {
                view: t,
                concurrent: true,
            },
            &mut out,
        );
        assert_eq!(
            ids(&out),
            [
                "vacuum-full",
                "cluster",
                "cluster",
                "refresh-matview-blocking"
            ]
        );
        assert_eq!(
            out[3].hint,
            "REFRESH MATERIALIZED VIEW CONCURRENTLY public.t;"
        );
    }
}
