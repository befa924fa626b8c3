//! `migrate.dry_run(script)` and `migrate.assert_safe(script)`: a migration run statement by
//! statement in a subtransaction that is always rolled back, measuring what each statement
//! really does (the locks this backend holds afterwards, tables whose relfilenode changed,
//! tables read in full) before anything is committed. Statements that cannot run in a
//! transaction, and statements the guard refuses, are analysed instead of run: a dry run
//! must never do on a busy table what the guard exists to prevent.

use crate::apply;
use crate::errors::{OrBookkeeping, OrRaise, Problem};
use crate::guard::command::Command;
use crate::guard::command::LockMode;
use crate::guard::findings;
use crate::guard::hooks::trigger;
use crate::guard::parsetree;
use crate::guard::policy;
use crate::guard::rule::Family;
use crate::guard::rule::SmallTable;
use crate::history;
use crate::migration::limits::Limits;
use crate::migration::phases::{self, PhaseKind};
use crate::migration::running::Running;
use crate::migration::script::Statement;
use crate::pg::subxact;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A relation as one snapshot of `pg_class` saw it.
#[derive(Debug, Clone)]
struct RelState {
    name: String,
    kind: char,
    filenode: u32,
    seq_scans: i64,
    rows: f64,
    bytes: u64,
}

type Snapshot = HashMap<u32, RelState>;

/// What one statement did, or would do.
#[derive(Debug, Default)]
struct Report {
    executed: bool,
    objects: Vec<String>,
    locks: Vec<(String, LockMode)>,
    blocks: Option<String>,
    rewrites: Vec<String>,
    rows: Option<i64>,
    duration: Duration,
    findings: Vec<String>,
    error: Option<String>,
    /// Why the statement is not safe, for `assert_safe`.
    hazards: Vec<String>,
}

/// `pg_class` before a statement ran, for the relations it turns out to have locked: a
/// snapshot taken before it, read afterwards. Reading all of `pg_class` before every
/// statement would make a dry run's cost grow with the schema instead of with what the
/// script touches.
type Before = crate::pg::spi::Registered;

const REL_STATES: &str = "SELECT c.oid, c.oid::regclass::text, c.relkind::text, c.relfilenode, \
       pg_stat_get_xact_numscans(c.oid), greatest(c.reltuples, 0)::float8, \
       c.relpages::int8 * current_setting('block_size')::int8 \
     FROM pg_class c \
     WHERE c.oid = ANY ($1) AND c.relkind IN ('r', 'p', 'm', 'i', 'v', 'S', 'f') \
       AND c.relnamespace <> ALL (ARRAY['pg_catalog'::regnamespace, \
         'information_schema'::regnamespace, 'pg_toast'::regnamespace, \
         'migrate'::regnamespace])";

/// `pg_class` for `oids`: now, or as of `before` (scan counts are not versioned: the
/// caller knows what they were).
fn snapshot(oids: &[u32], before: Option<&Before>) -> Snapshot {
    let oids: Vec<pg_sys::Oid> = oids.iter().map(|&o| pg_sys::Oid::from(o)).collect();
    let rows = crate::pg::guc::pinned(|| {
        crate::pg::spi::select_as_of(REL_STATES, oids, before, |row| {
            let kind: String = row.get(3).unwrap_or_default();
            (
                row.get::<pg_sys::Oid>(1).map_or(0, |o| o.to_u32()),
                RelState {
                    name: row.get(2).unwrap_or_default(),
                    kind: kind.chars().next().unwrap_or('?'),
                    filenode: row.get::<pg_sys::Oid>(4).map_or(0, |o| o.to_u32()),
                    seq_scans: row.get(5).unwrap_or(0),
                    rows: row.get(6).unwrap_or(0.0),
                    bytes: row.get::<i64>(7).unwrap_or(0).max(0) as u64,
                },
            )
        })
    });
    rows.into_iter().collect()
}

/// Per relation, the sequential scans this backend had counted (and not yet reported)
/// before the first statement of the dry run that used it; a statement's scans are counted
/// from there. Counts are not transactional and include earlier transactions' until the
/// backend reports them, so what a relation had before a statement cannot be read after it:
/// it is read just before, for the relations this backend had locked and those the
/// statement names, never for the whole schema. A relation a statement locks without
/// naming it (a default partition it checks, say) counts from 0: were it scanned by this
/// session in the second before, that scan would be taken for the statement's.
struct ScansBefore(HashMap<u32, i64>);

impl ScansBefore {
    fn start(locked: &Snapshot) -> Self {
        ScansBefore(locked.iter().map(|(oid, s)| (*oid, s.seq_scans)).collect())
    }

    /// The relations `command` names, before it runs.
    fn named(&mut self, command: Option<&Command>) {
        let Some(mut command) = command.cloned() else {
            return;
        };
        let names: Vec<String> = command
            .rels_mut()
            .into_iter()
            .filter(|r| !r.new)
            .map(|r| r.name.clone())
            .collect();
        if names.is_empty() {
            return;
        }
        let rows: Vec<(pg_sys::Oid, i64)> = crate::pg::guc::pinned(|| {
            Spi::connect(|client| {
                client
                    .select(
                        "SELECT r, pg_catalog.pg_stat_get_xact_numscans(r) \
                         FROM pg_catalog.unnest($1::text[]) n, \
                              LATERAL (SELECT pg_catalog.to_regclass(n)::oid AS r) c \
                         WHERE r IS NOT NULL",
                        None,
                        &[names.into()],
                    )?
                    .map(|row| {
                        Ok((
                            row.get(1)?.unwrap_or(pg_sys::InvalidOid),
                            row.get(2)?.unwrap_or(0),
                        ))
                    })
                    .collect::<Result<Vec<_>, pgrx::spi::Error>>()
            })
        })
        .or_bookkeeping("read scan counts for the dry run");
        for (oid, scans) in rows {
            self.0.entry(oid.to_u32()).or_insert(scans);
        }
    }

    fn before(&self, relation: u32) -> i64 {
        self.0.get(&relation).copied().unwrap_or(0)
    }

    /// After a statement: what it left stands for the next ones.
    fn after(&mut self, snapshot: &Snapshot) {
        self.0
            .extend(snapshot.iter().map(|(oid, s)| (*oid, s.seq_scans)));
    }
}

/// The relation locks this backend holds, strongest mode per relation.
fn held_locks() -> HashMap<u32, LockMode> {
    let rows: Vec<(pg_sys::Oid, String)> = crate::pg::guc::pinned(|| {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT l.relation, l.mode FROM pg_locks l \
                     WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted \
                       AND l.database = (SELECT oid FROM pg_database \
                                         WHERE datname = current_database())",
                    None,
                    &[],
                )?
                .map(|row| {
                    Ok((
                        row.get(1)?.unwrap_or(pg_sys::InvalidOid),
                        row.get(2)?.unwrap_or_default(),
                    ))
                })
                .collect::<Result<Vec<_>, pgrx::spi::Error>>()
        })
    })
    .or_bookkeeping("read pg_locks for the dry run");
    let mut held: HashMap<u32, LockMode> = HashMap::new();
    for (oid, mode) in rows {
        if let Some(mode) = LockMode::from_pg_locks(&mode) {
            let entry = held.entry(oid.to_u32()).or_insert(mode);
            *entry = (*entry).max(mode);
        }
    }
    held
}

/// The DDL log's rows since `after` that this transaction wrote: the objects a statement
/// created, altered or dropped. Never another session's rows, which may have committed
/// meanwhile: the DDL log is for admins, and the dry run is open to every role.
fn logged_objects(after: i64) -> Vec<String> {
    crate::pg::identity::as_owner(|| {
        crate::pg::spi::pinned_column::<String>(
            "SELECT concat_ws(' ', object_type, object_identity) FROM migrate.ddl_log \
             WHERE id > $1 AND object_identity IS NOT NULL \
               AND event IN ('ddl_command_end', 'sql_drop') \
               AND backend_pid = pg_backend_pid() \
               AND xid = pg_current_xact_id_if_assigned() ORDER BY id",
            &[after.into()],
        )
    })
    .or_bookkeeping("read migrate.ddl_log for the dry run")
}

fn last_log_id() -> i64 {
    crate::pg::identity::as_owner(|| {
        Spi::get_one::<i64>("SELECT coalesce(max(id), 0) FROM migrate.ddl_log")
    })
    .or_bookkeeping("read migrate.ddl_log for the dry run")
    .unwrap_or(0)
}

/// Runs the whole script in a subtransaction that is rolled back, one report per statement.
fn dry_run_script(
    script: &str,
    allow: Vec<String>,
    has_rollback: bool,
) -> Vec<(Statement, usize, Report)> {
    if crate::migration::running::running().is_some() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "migrate.dry_run cannot be called from inside a migration",
            "A migration's script called migrate.dry_run.",
            "Dry-run the script on its own, before applying it.",
        )
        .raise();
    }
    if crate::pg::xact::in_recovery() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "cannot dry-run a script on a standby",
            "A dry run executes the statements in a transaction it rolls back; a standby \
             cannot execute them.",
            "Run it on the primary, where it changes nothing; migrate.lint judges a script \
             on a standby too.",
        )
        .raise();
    }
    let what = "the dry-run script";
    let trees = apply::parse_for_apply(what, script).or_raise();
    let statements: Vec<Statement> = trees.iter().map(|(s, _)| s.clone()).collect();
    // Statement number -> (phase, kind), built once: a lookup per statement in the plan
    // would cost statements x phases.
    let by_statement: Vec<(usize, PhaseKind)> = phases::plan(&statements)
        .iter()
        .flat_map(|p| (p.first_statement..=p.last_statement).map(move |_| (p.number, p.kind)))
        .collect();
    let phase_of = |n: usize| {
        by_statement
            .get(n.wrapping_sub(1))
            .copied()
            .unwrap_or((1, PhaseKind::Transaction))
    };
    let small = SmallTable::from_settings();
    let limits = Limits::from_settings();
    let running = Running {
        version: "dry run".into(),
        has_rollback,
        allow,
    };
    let outcome = subxact::rolled_back(|| {
        crate::migration::running::with_running(running, || {
            let mut out = Vec::new();
            let mut held = held_locks();
            let mut before = snapshot(&held.keys().copied().collect::<Vec<_>>(), None);
            let mut scans = ScansBefore::start(&before);
            for (statement, tree) in &trees {
                pgrx::check_for_interrupts!();
                let (phase, kind) = phase_of(statement.number);
                let mut report = Report::default();
                let command = trigger::read_command(*tree, &statement.tag);
                let found = command
                    .as_ref()
                    .map(|c| findings(c, small))
                    .unwrap_or_default();
                report.findings = found
                    .iter()
                    .map(|f| format!("{}: {}", f.rule.id, f.message))
                    .collect();
                // The guard's context is built only for a statement with findings, as the
                // event trigger does.
                let decision = if found.is_empty() {
                    None
                } else {
                    trigger::context().map(|ctx| policy::decide(found.clone(), &ctx))
                };
                let refusal = decision.as_ref().and_then(|d| d.refusal.as_ref());
                let overridden = decision.as_ref().is_some_and(|d| !d.overridden.is_empty());
                if let Some(refusal) = refusal {
                    report
                        .hazards
                        .push(format!("refused by the guard: {}", refusal.message));
                }
                if let Some(refusal) = refusal {
                    report.error = Some(format!("not run: {}", refusal.message));
                }
                // What the rules foresee being rewritten, for a statement that is not run.
                let foreseen_rewrites: Vec<String> = found
                    .iter()
                    .filter(|f| f.rule.family == Family::Rewrite)
                    .filter_map(|f| f.subject.as_ref().map(|r| r.name.clone()))
                    .collect();
                if kind == PhaseKind::Backfill && refusal.is_none() {
                    // Run later by the worker in short batches, each locking only its rows:
                    // nothing here would show what those batches do.
                    out.push((statement.clone(), phase, report));
                    continue;
                }
                if kind == PhaseKind::TopLevel || refusal.is_some() {
                    report.rewrites = foreseen_rewrites;
                    // Analysed, not run: the lock it would take on the relations it names.
                    let lock =
                        parsetree::lock_needed(*tree)
                            .or((kind == PhaseKind::TopLevel)
                                .then_some(LockMode::ShareUpdateExclusive));
                    if let (Some(lock), Some(command)) = (lock, command.clone()) {
                        let mut command = command;
                        for rel in command.rels_mut() {
                            report.locks.push((rel.name.clone(), lock));
                            report.objects.push(rel.name.clone());
                            if !rel.new && !small.holds(rel) {
                                report.rows = Some(report.rows.unwrap_or(0) + rel.rows as i64);
                            }
                        }
                    }
                    out.push((statement.clone(), phase, report));
                    continue;
                }
                let log_mark = last_log_id();
                scans.named(command.as_ref());
                // What the statement locked anew, as it was before it ran: read as of a
                // snapshot taken before, while it is registered.
                let (duration, result, now_held, before_fresh) =
                    crate::pg::spi::with_snapshot(|as_of| {
                        let started = Instant::now();
                        let result = subxact::run(|| {
                            crate::migration::limits::with_limits(limits, || {
                                Spi::connect_mut(|c| {
                                    c.update(statement.text(script), None, &[]).map(|t| t.len())
                                })
                            })
                        });
                        let duration = started.elapsed();
                        let now_held = held_locks();
                        let fresh: Vec<u32> = now_held
                            .keys()
                            .copied()
                            .filter(|o| !before.contains_key(o))
                            .collect();
                        let before_fresh = snapshot(&fresh, Some(as_of));
                        (duration, result, now_held, before_fresh)
                    });
                report.duration = duration;
                report.executed = true;
                match result {
                    Ok(Ok(n)) => {
                        if matches!(
                            statement.tag.as_str(),
                            "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "SELECT"
                        ) {
                            report.rows = Some(n as i64);
                        }
                    }
                    Ok(Err(e)) => report.error = Some(e.to_string()),
                    // A cancel or a timeout stops the whole dry run, never just this statement.
                    Err(caught) if caught.code == PgSqlErrorCode::ERRCODE_QUERY_CANCELED => {
                        caught.reraise()
                    }
                    Err(caught) => report.error = Some(caught.message),
                }
                if let Some(e) = &report.error {
                    report.hazards.push(format!("fails: {e}"));
                }
                let locked: Vec<u32> = now_held.keys().copied().collect();
                let after = snapshot(&locked, None);
                // Scan counts are not versioned: the last one seen stands (a statement that
                // scanned a table took a lock, and was seen then, unless it failed and
                // released it).
                for (oid, mut state) in before_fresh {
                    state.seq_scans = scans.before(oid);
                    before.insert(oid, state);
                }
                scans.after(&after);
                report.objects = logged_objects(log_mark);
                measure(
                    &mut report,
                    &before,
                    &after,
                    &held,
                    &now_held,
                    small,
                    overridden,
                );
                before = after;
                held = now_held;
                out.push((statement.clone(), phase, report));
            }
            out
        })
    });
    match outcome {
        Ok(mut out) => {
            flag_standby_conflicts(&mut out);
            out
        }
        Err(caught) => Problem::new(
            caught.code,
            format!("the dry run stopped: {}", caught.message),
            caught
                .detail
                .unwrap_or_else(|| "Nothing of it was kept.".into()),
            caught
                .hint
                .unwrap_or_else(|| "Fix the cause and run it again.".into()),
        )
        .raise(),
    }
}

/// An ACCESS EXCLUSIVE lock is the one lock written to the WAL: each standby takes it again
/// when it replays the statement and holds it until it replays the commit. Queries of the
/// table there wait for it, and those already running when it arrives are cancelled after
/// max_standby_streaming_delay. `lock_timeout` on the primary bounds none of that.
fn flag_standby_conflicts(reports: &mut [(Statement, usize, Report)]) {
    // Physical walsenders have no database; base backups hold no lock for long.
    let standbys = crate::pg::spi::pinned_row(
        "SELECT (SELECT count(*) FROM pg_stat_replication r \
                   JOIN pg_stat_activity a ON a.pid = r.pid AND a.datid IS NULL \
                  WHERE r.state <> 'backup') \
              + (SELECT count(*) FROM pg_replication_slots s \
                  WHERE s.slot_type = 'physical' AND NOT s.active)",
        &[],
        |r| r.get::<i64>(1),
    )
    .ok()
    .flatten()
    .flatten()
    .unwrap_or(0);
    if standbys == 0 {
        return;
    }
    for (_, _, report) in reports.iter_mut() {
        let exclusive: Vec<&String> = report
            .locks
            .iter()
            .filter(|(_, mode)| *mode == LockMode::AccessExclusive)
            .map(|(name, _)| name)
            .collect();
        for name in exclusive {
            report.findings.push(format!(
                "hot standby: the ACCESS EXCLUSIVE lock on {name} is replayed on this \
                 server's {standbys} standby(s) and held there until its commit is replayed: \
                 queries of {name} there wait, and those it interrupts are cancelled after \
                 max_standby_streaming_delay"
            ));
        }
    }
}

/// Fills in the locks a statement took, the tables it rewrote or read in full, and whether
/// it held a lock that blocks writes on a populated table while reading or rewriting it.
fn measure(
    report: &mut Report,
    before: &Snapshot,
    after: &Snapshot,
    held_before: &HashMap<u32, LockMode>,
    held_after: &HashMap<u32, LockMode>,
    small: SmallTable,
    overridden: bool,
) {
    let mut strongest: Option<(LockMode, &str)> = None;
    let mut locks: Vec<(String, LockMode)> = Vec::new();
    for (oid, &mode) in held_after {
        let Some(rel) = after.get(oid) else { continue };
        if held_before.get(oid).is_some_and(|&m| m >= mode) {
            continue;
        }
        locks.push((rel.name.clone(), mode));
        if before.contains_key(oid) && strongest.is_none_or(|(m, _)| mode > m) {
            strongest = Some((mode, &rel.name));
        }
    }
    locks.sort();
    report.locks = locks;
    report.blocks =
        strongest.and_then(|(mode, name)| mode.blocked_work().map(|b| format!("{b} on {name}")));
    if report.objects.is_empty() {
        report.objects = report.locks.iter().map(|(n, _)| n.clone()).collect();
    }
    let mut rewritten_rows = 0.0;
    for (oid, old) in before {
        let Some(new) = after.get(oid) else { continue };
        let populated = !(old.rows <= small.max_rows && old.bytes <= small.max_bytes);
        let rewritten = new.filenode != old.filenode && matches!(old.kind, 'r' | 'm' | 'i');
        if rewritten {
            report.rewrites.push(new.name.clone());
            if old.kind != 'i' {
                rewritten_rows += old.rows;
            }
        }
        let scanned = new.seq_scans > old.seq_scans && matches!(old.kind, 'r' | 'm');
        let lock = held_after
            .get(oid)
            .copied()
            .filter(|m| *m >= LockMode::Share);
        if !populated || overridden || old.kind == 'i' {
            continue;
        }
        if rewritten {
            report.hazards.push(format!(
                "rewrites {} (an estimated {} rows)",
                new.name, old.rows as i64
            ));
        } else if let (true, Some(lock)) = (scanned, lock) {
            report.hazards.push(format!(
                "reads all of {} (an estimated {} rows) while holding {} on it: {}",
                new.name,
                old.rows as i64,
                lock.with_article(),
                lock.blocks()
            ));
        }
    }
    report.rewrites.sort();
    if report.rows.is_none() && rewritten_rows > 0.0 {
        report.rows = Some(rewritten_rows as i64);
    }
}

fn rule_list(allow: Option<Vec<Option<String>>>) -> Vec<String> {
    crate::guard::lint::rule_ids(allow).or_raise()
}

fn check_rollback(rollback: Option<&str>) {
    if let Some(rollback) = rollback {
        crate::migration::script::within_size("rollback", rollback).or_raise();
        apply::parse_for_apply("the rollback script", rollback).or_raise();
    }
}

#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
fn dry_run(
    script: Option<&str>,
    allow: default!(Option<Vec<Option<String>>>, "NULL"),
    rollback: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(statement, i32),
        name!(line, i32),
        name!(command, String),
        name!(phase, i32),
        name!(executed, bool),
        name!(objects, Vec<String>),
        name!(locks, Vec<String>),
        name!(blocks, Option<String>),
        name!(rewrites, Vec<String>),
        name!(rows, Option<i64>),
        name!(duration, Interval),
        name!(findings, Vec<String>),
        name!(error, Option<String>),
    ),
> {
    let script = crate::migration::script::require_script(script).or_raise();
    check_rollback(rollback);
    let reports = dry_run_script(script, rule_list(allow), rollback.is_some());
    TableIterator::new(reports.into_iter().map(|(st, phase, r)| {
        (
            st.number as i32,
            st.line as i32,
            st.tag.clone(),
            phase as i32,
            r.executed,
            r.objects,
            r.locks
                .iter()
                .map(|(name, mode)| format!("{name}: {}", mode.name()))
                .collect(),
            r.blocks,
            r.rewrites,
            r.rows,
            history::interval(r.duration),
            r.findings,
            r.error,
        )
    }))
}

/// Raises, listing every hazard, if the script would fail, break a guard rule, rewrite a
/// populated table, or read one in full while holding a lock that blocks its writes.
#[pg_extern(volatile, parallel_unsafe)]
fn assert_safe(
    script: Option<&str>,
    allow: default!(Option<Vec<Option<String>>>, "NULL"),
    rollback: default!(Option<&str>, "NULL"),
) -> String {
    let script = crate::migration::script::require_script(script).or_raise();
    check_rollback(rollback);
    let reports = dry_run_script(script, rule_list(allow), rollback.is_some());
    let hazards: Vec<String> = reports
        .iter()
        .flat_map(|(st, _, r)| {
            r.hazards
                .iter()
                .map(move |h| format!("{}: {h}", st.locator()))
        })
        .collect();
    if hazards.is_empty() {
        let run = reports.iter().filter(|(_, _, r)| r.executed).count();
        return format!(
            "safe: {} statements, {run} run and rolled back, {} analysed",
            reports.len(),
            reports.len() - run
        );
    }
    Problem::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "the migration is not safe to apply: {} hazard{}",
            hazards.len(),
            if hazards.len() == 1 { "" } else { "s" }
        ),
        hazards.join("\n"),
        "SELECT * FROM migrate.dry_run($$...$$) shows each statement's locks, rewrites and \
         findings; see migrate.rules for the safe way to make each change.",
    )
    .raise()
}
