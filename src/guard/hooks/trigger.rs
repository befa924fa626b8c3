//! Where the guard meets PostgreSQL: the `ddl_command_start` and `table_rewrite` event
//! triggers, and the decision shared with the ProcessUtility hook and migrate.apply.

use crate::errors::OrRaise;
use crate::guard::command::Command;
use crate::guard::findings;
use crate::guard::hooks::lock_timeout;
use crate::guard::parsetree;
use crate::guard::policy::{self, Context, Decision};
use crate::guard::rule::Family;
use crate::guard::rule::Finding;
use crate::guard::rule::SmallTable;
use crate::guard::rules::data_loss;
use crate::guard::unforeseen_rewrite;
use crate::gucs::{self, GuardMode};
use crate::history::ddl_log;
use crate::pg::event_trigger;
use crate::pg::nodes::StmtTree;
use crate::pg::subxact;
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use std::cell::Cell;

thread_local! {
    /// The statement being judged already had a rewrite finding warned about or overridden,
    /// so the table_rewrite backstop stays quiet for it.
    static REWRITE_JUDGED: Cell<bool> = const { Cell::new(false) };
    /// Likewise for data loss and the sql_drop backstop.
    static DATA_LOSS_JUDGED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the guard judges at all: not turned off, and not inside an extension's install or
/// update script. Cheap, checked before any statement is looked at.
pub fn active() -> bool {
    gucs::GUARD.get() != GuardMode::Off && !crate::pg::xact::creating_extension()
}

/// The session's guard context (who may override what), or `None` when the guard is not
/// active. Built only once a statement has findings to decide on.
pub fn context() -> Option<Context> {
    if !active() {
        return None;
    }
    let mode = gucs::GUARD.get();
    let (mut allow, stale_allow, foreign_allow) = match gucs::allowed_rules() {
        gucs::Allowed::Honoured(ids) => (ids, vec![], None),
        gucs::Allowed::Stale(ids) => (vec![], ids, None),
        gucs::Allowed::NotTheSetters(ids, setter) => (vec![], vec![], Some((ids, setter))),
    };
    let running = crate::migration::running::running();
    if let Some(r) = &running {
        allow.extend(r.allow.iter().cloned());
    }
    Some(Context {
        mode,
        allow,
        stale_allow,
        foreign_allow,
        is_admin: crate::pg::identity::is_admin(),
        role: crate::pg::identity::current_user_name(),
        apply_with_rollback: running.is_some_and(|r| r.has_rollback),
        looks_like_restore: !crate::pg::guc::check_function_bodies()
            && crate::pg::identity::is_superuser(crate::pg::identity::current_user()),
    })
}

/// The rule ids the session's `SET LOCAL migrate.allow` overrides for the current role, as
/// `migrate.apply` records them with a migration.
pub fn session_overrides() -> Vec<String> {
    match gucs::allowed_rules() {
        gucs::Allowed::Honoured(ids) => ids,
        _ => vec![],
    }
}

/// Judges one statement, when the guard is active: its timeouts, then its findings. `tag`
/// names it in messages.
pub fn judge_statement(stmt: StmtTree, tag: &str) {
    REWRITE_JUDGED.set(false);
    DATA_LOSS_JUDGED.set(false);
    if crate::migration::running::running().is_none() {
        // migrate.apply sets both timeouts for each statement itself.
        lock_timeout::enforce(parsetree::lock_needed(stmt), tag);
    }
    let Some(command) = read_command(stmt, tag) else {
        return;
    };
    let mut found = findings(&command, SmallTable::from_settings());
    if crate::migration::running::running().is_none() {
        let open = open_windows();
        if !open.is_empty() {
            let named = subxact::run(|| parsetree::guarded_names(stmt)).unwrap_or_default();
            crate::guard::rules::window::judge(&command, &named, &open, &mut found);
        }
    }
    if found.is_empty() {
        return;
    }
    if let Some(ctx) = context() {
        carry_out(policy::decide(found, &ctx), tag);
    }
}

/// (qualified table, version) of every open expand window. None while the extension's
/// tables predate windows (the new library before ALTER EXTENSION UPDATE): the read fails in
/// its subtransaction and DDL goes on.
fn open_windows() -> Vec<(String, String)> {
    subxact::run(|| {
        crate::pg::identity::as_owner(|| {
            crate::pg::spi::pinned_pairs::<String, String>(
                "SELECT t, version FROM migrate.window_history, unnest(tables || objects) t \
                 WHERE ended IS NULL \
                 UNION ALL \
                 SELECT 'schema ' || (parse_ident(t))[1], version \
                 FROM migrate.window_history, unnest(tables) t WHERE ended IS NULL",
                &[],
            )
        })
    })
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default()
}

/// What a statement does, for the rules: read in a subtransaction, because a guard that
/// cannot read a statement must not stop it (PostgreSQL will). It says so in a WARNING.
pub fn read_command(stmt: StmtTree, tag: &str) -> Option<Command> {
    match subxact::run(|| parsetree::command(stmt)) {
        Ok(command) => Some(command),
        Err(caught) => {
            crate::errors::Problem::new(
                PgSqlErrorCode::ERRCODE_WARNING,
                format!("the guard could not judge this {tag}: {}", caught.message),
                "Its catalog lookups failed; the statement is not judged.",
                "Check the names it uses; PostgreSQL reports what is wrong when it runs.",
            )
            .report(PgLogLevel::WARNING);
            None
        }
    }
}

/// Raises the refusal, or reports warnings and records what was let through.
pub fn carry_out(decision: Decision, tag: &str) {
    let Decision {
        refusal,
        warnings,
        overridden,
        warned,
    } = decision;
    for w in warnings {
        w.report(PgLogLevel::WARNING);
    }
    if let Some(p) = refusal {
        p.raise();
    }
    let let_through = |family| {
        overridden
            .iter()
            .chain(&warned)
            .any(|f| f.rule.family == family)
    };
    if let_through(Family::Rewrite) {
        REWRITE_JUDGED.set(true);
    }
    if let_through(Family::DataLoss) {
        DATA_LOSS_JUDGED.set(true);
    }
    ddl_log::record_guard("guard_override", tag, &logged(&overridden));
    ddl_log::record_guard("guard_warning", tag, &logged(&warned));
}

#[pg_extern(sql = "
    CREATE FUNCTION migrate.guard_ddl() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
")]
fn guard_ddl(fcinfo: pg_sys::FunctionCallInfo) {
    let event = event_trigger::event(fcinfo);
    if active() {
        judge_statement(event.statement(), &event.tag);
    }
}

#[pg_extern(sql = "
    CREATE FUNCTION migrate.guard_rewrite() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
")]
fn guard_rewrite(fcinfo: pg_sys::FunctionCallInfo) {
    let event = event_trigger::event(fcinfo);
    if REWRITE_JUDGED.get() {
        return;
    }
    let Some(ctx) = context() else { return };
    let (oid, reason) = crate::pg::guc::pinned(|| {
        Spi::get_two::<pg_sys::Oid, i32>(
            "SELECT pg_catalog.pg_event_trigger_table_rewrite_oid(), \
                    pg_catalog.pg_event_trigger_table_rewrite_reason()",
        )
    })
    .map_err(|e| e.to_string())
    .and_then(|(oid, reason)| {
        oid.zip(reason)
            .ok_or_else(|| "no rewrite in progress".into())
    })
    .map_err(|e| {
        crate::errors::Problem::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("the table_rewrite trigger could not read its table: {e}"),
            "pg_event_trigger_table_rewrite_oid() failed.",
            "Report this as a pg_migrate bug.",
        )
    })
    .or_raise();
    let Some(table) = crate::pg::catalog::relation(oid) else {
        return;
    };
    let what = format!("{} ({})", event.tag, rewrite_reason(reason));
    let found: Vec<Finding> = unforeseen_rewrite(table, &what, SmallTable::from_settings())
        .into_iter()
        .collect();
    carry_out(policy::decide(found, &ctx), &event.tag);
}

/// The AT_REWRITE_* bits of tablecmds.h.
fn rewrite_reason(bits: i32) -> String {
    let mut reasons = Vec::new();
    for (bit, why) in [
        (1, "persistence change"),
        (2, "column default"),
        (4, "column type change"),
        (8, "access method change"),
    ] {
        if bits & bit != 0 {
            reasons.push(why);
        }
    }
    if reasons.is_empty() {
        "rewrite".into()
    } else {
        reasons.join(", ")
    }
}

/// The data-loss backstop: what a command really dropped, CASCADE, DROP OWNED and DROP
/// DOMAIN included. Tables and columns that held committed data are refused unless the
/// statement's own data-loss findings were already weighed (overridden or warned about).
#[pg_extern(sql = "
    CREATE FUNCTION migrate.guard_drop() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
")]
fn guard_drop(fcinfo: pg_sys::FunctionCallInfo) {
    let event = event_trigger::event(fcinfo);
    // An extension's own tables go with it; that is the extension's decision.
    if DATA_LOSS_JUDGED.get() || event.tag == "DROP EXTENSION" {
        return;
    }
    let Some(ctx) = context() else { return };
    let dropped = crate::pg::identity::as_owner(|| {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT d.object_type, d.object_identity FROM pg_catalog.pg_event_trigger_dropped_objects() d \
                     WHERE NOT d.is_temporary AND d.object_type IN ('table', 'table column') \
                       AND NOT EXISTS ( \
                         SELECT FROM migrate.ddl_log l \
                         WHERE l.xid = pg_catalog.pg_current_xact_id() AND l.event = 'ddl_command_end' \
                           AND l.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO') \
                           AND l.object_identity = pg_catalog.format('%I.%I', d.address_names[1], d.address_names[2]))",
                    None,
                    &[],
                )?
                .map(|row| Ok((row.get::<String>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default())))
                .collect::<Result<Vec<(String, String)>, pgrx::spi::Error>>()
        })
    })
    .unwrap_or_else(|e| {
        // The backstop cannot see what was dropped: say so, rather than pass in silence.
        crate::errors::Problem::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("the data-loss backstop could not read what {} dropped: {e}", event.tag),
            "pg_event_trigger_dropped_objects() could not be read; the drop is not judged.",
            "Check the drop in migrate.ddl_log; report this as a pg_migrate bug.",
        )
        .report(PgLogLevel::WARNING);
        vec![]
    });
    let found: Vec<Finding> = dropped
        .into_iter()
        .map(|(kind, identity)| data_loss::dropped(&event.tag, &kind, &identity))
        .collect();
    carry_out(policy::decide(found, &ctx), &event.tag);
}

/// Findings as the DDL log records them: the rule, and the relation it was about.
fn logged(findings: &[Finding]) -> Vec<(&'static str, Option<String>)> {
    findings
        .iter()
        .map(|f| (f.rule.id, f.subject.as_ref().map(|s| s.name.clone())))
        .collect()
}
