//! `migrate.lint(script)`: the guard's rules over a script's parse trees, with live catalog
//! context, without running anything. What a CI pipeline runs against a staging database, and
//! what `migrate.apply` runs before it executes a migration's first statement.

use crate::errors::{OrRaise, Problem};
use crate::guard::findings;
use crate::guard::hooks::trigger;
use crate::guard::parsetree;
use crate::guard::policy::{self, Context};
use crate::guard::rule::Finding;
use crate::guard::rule::SmallTable;
use crate::gucs::GuardMode;
use crate::migration::parse;
use crate::migration::script::Statement;
use crate::pg::nodes::StmtTree;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::collections::HashSet;

/// Each statement's findings, relations created by earlier statements counting as new.
pub fn findings_in(trees: &[(Statement, StmtTree)]) -> Vec<(Statement, Finding)> {
    let small = SmallTable::from_settings();
    let mut created: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for (statement, tree) in trees {
        pgrx::check_for_interrupts!();
        if let Some(mut command) = trigger::read_command(*tree, &statement.tag) {
            for rel in command.rels_mut() {
                rel.new |= created.contains(&rel.name);
            }
            out.extend(
                findings(&command, small)
                    .into_iter()
                    .map(|f| (statement.clone(), f)),
            );
        }
        created.extend(parsetree::created_relation(*tree));
    }
    out
}

/// The refusal `migrate.apply` raises before running anything, if the guard enforces and a
/// statement breaks a rule that is not overridden.
pub fn refusal_before_apply(
    what: &str,
    trees: &[(Statement, StmtTree)],
    ctx: &Context,
) -> Option<Problem> {
    if ctx.mode != GuardMode::Enforce {
        return None;
    }
    for (statement, finding) in findings_in(trees) {
        pgrx::check_for_interrupts!();
        if let Some(mut p) = policy::decide(vec![finding], ctx).refusal {
            p.message = format!("{what}: {}: {}", statement.locator(), p.message);
            return Some(p);
        }
    }
    None
}

#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
fn lint(
    script: Option<&str>,
    allow: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(statement, i32),
        name!(line, i32),
        name!(rule_id, String),
        name!(message, String),
        name!(detail, String),
        name!(hint, String),
        name!(allowed, bool),
    ),
> {
    let script = crate::migration::script::require_script(script).or_raise();
    let allow = rule_ids(allow).or_raise();
    let trees = parse::parse(script)
        .map_err(|e| e.problem("the script", script))
        .or_raise();
    let ctx = trigger::context().unwrap_or_else(|| Context {
        mode: GuardMode::Enforce,
        allow: vec![],
        stale_allow: vec![],
        foreign_allow: None,
        is_admin: true,
        role: String::new(),
        apply_with_rollback: false,
        looks_like_restore: false,
    });
    let rows: Vec<_> = findings_in(&trees)
        .into_iter()
        .map(|(statement, finding)| {
            let p = policy::problem(&finding);
            (
                statement.number as i32,
                statement.line as i32,
                finding.rule.id.to_string(),
                p.full_message(),
                p.detail,
                p.hint,
                allow
                    .iter()
                    .chain(&ctx.allow)
                    .any(|id| id == finding.rule.id),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Validates an `allow` array: known rule ids, no NULLs.
pub fn rule_ids(allow: Option<Vec<Option<String>>>) -> Result<Vec<String>, Problem> {
    let mut ids = Vec::new();
    for id in allow.unwrap_or_default() {
        let Some(id) = id else {
            return Err(Problem::new(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                "allow must not contain NULL",
                "allow lists the ids of guard rules to override.",
                "Pass rule ids from migrate.rules, e.g. ARRAY['index-create-blocking'].",
            ));
        };
        if crate::guard::rules::find(&id).is_none() {
            return Err(Problem::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("unknown guard rule \"{id}\""),
                "allow lists the ids of guard rules to override.",
                "SELECT id FROM migrate.rules; lists them.",
            ));
        }
        ids.push(id);
    }
    Ok(ids)
}
