//! `migrate.apply`: a versioned migration applied entirely, with its history row, in the
//! caller's transaction, or not at all.

pub mod attempt;

use crate::errors::{self, OrRaise, Problem};
use crate::history::lock::{lock_history, refuse_unsafe_context};
use crate::history::record;
use crate::history::steps;
use crate::history::{self, interval, NewEntry, Recorded};
use crate::migration::checksum::Checksums;
use crate::migration::limits::Policy;
use crate::migration::parse;
use crate::migration::phases;
use crate::migration::running::{self, Running};
use crate::migration::script::{self, require_script, within_size, Statement};
use crate::migration::status::{OnRegression, Skipped, Status};
use crate::migration::version::Version;
use crate::pg::nodes::StmtTree;
use crate::pg::shmem;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::time::Duration;

/// `migrate.apply` as the objects of pg_migrate 0.1.0 declare it (six arguments, this
/// symbol): after a package upgrade and before `ALTER EXTENSION pg_migrate UPDATE`, calls
/// through them get the stale-objects refusal, not a failure to read arguments they do not
/// pass. No SQL of its own.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false, volatile, parallel_unsafe)]
fn apply(
    version: Option<&str>,
    script: Option<&str>,
    description: Option<&str>,
    rollback: Option<&str>,
    allow: Option<Vec<Option<String>>>,
    verify: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(version, String),
        name!(checksum, Option<String>),
        name!(statements, i32),
        name!(duration, Interval),
        name!(retries, i32),
        name!(lock_wait, Interval),
    ),
> {
    apply_watched(
        version,
        script,
        description,
        rollback,
        allow,
        verify,
        None,
        None,
    )
}

#[allow(clippy::type_complexity, clippy::too_many_arguments)]
#[pg_extern(name = "apply", volatile, parallel_unsafe)]
fn apply_watched(
    version: Option<&str>,
    script: Option<&str>,
    description: default!(Option<&str>, "NULL"),
    rollback: default!(Option<&str>, "NULL"),
    allow: default!(Option<Vec<Option<String>>>, "NULL"),
    verify: default!(Option<&str>, "NULL"),
    watch: default!(Option<Interval>, "NULL"),
    on_regression: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(version, String),
        name!(checksum, Option<String>),
        name!(statements, i32),
        name!(duration, Interval),
        name!(retries, i32),
        name!(lock_wait, Interval),
    ),
> {
    crate::pg::identity::require_admin("apply migrations").or_raise();
    let version = Version::parse(version).or_raise();
    let script = require_script(script).or_raise();
    let watch = crate::watch::request(watch.as_ref(), on_regression, rollback.is_some()).or_raise();
    let mut allow = crate::guard::lint::rule_ids(allow).or_raise();
    // Overrides the caller set for this transaction (SET LOCAL migrate.allow) let the
    // migration through as much as allow => does: both are recorded with it, and both
    // hold for the phases the worker runs.
    for id in crate::guard::hooks::trigger::session_overrides() {
        if crate::guard::rules::find(&id).is_some() && !allow.contains(&id) {
            allow.push(id);
        }
    }
    TableIterator::once(apply_script(
        &version,
        script,
        description,
        rollback,
        allow,
        verify,
        watch,
    ))
}

/// Applies `script` as `version` (or submits it to the worker), once the caller's right to
/// and the rules it overrides are settled: `migrate.apply`, and `migrate.expand` with the
/// script it planned.
pub(crate) fn apply_script(
    version: &Version,
    script: &str,
    description: Option<&str>,
    rollback: Option<&str>,
    allow: Vec<String>,
    verify: Option<&str>,
    watch: Option<crate::watch::Request>,
) -> ApplyRow {
    let version = version.clone();
    refuse_unsafe_context().or_raise();
    let what = format!("migration {version}");
    let trees = parse_for_apply(&what, script).or_raise();
    let statements: Vec<Statement> = trees.iter().map(|(s, _)| s.clone()).collect();
    let rollback_trees = match rollback {
        Some(rollback) => {
            within_size("rollback", rollback).or_raise();
            parse_for_apply(&format!("the rollback script of {what}"), rollback).or_raise()
        }
        None => Vec::new(),
    };
    if let Some(verify) = verify {
        within_size("verify", verify).or_raise();
        crate::migration::parse::parse_queries(&format!("the verify queries of {what}"), verify)
            .or_raise();
    }
    let checksums = Checksums::of(script);

    lock_history();
    let decision = decide(
        &version,
        script,
        history::find(&version),
        history::highest_baseline(),
    )
    .and_then(|d| match d {
        Decision::Apply => check_order(
            &version,
            history::highest(),
            crate::gucs::OUT_OF_ORDER.get(),
        )
        .map(|()| d),
        other => Ok(other),
    })
    .or_raise();
    let row = match decision {
        Decision::Submitted(recorded) => {
            errors::notice(format!(
                "version {version} was submitted to the background worker (at {}) and is {}; \
                 nothing to do (see migrate.steps)",
                recorded.finished_at, recorded.status
            ));
            recorded_row(recorded.status.to_string(), recorded)
        }
        Decision::AlreadyApplied(recorded) => {
            errors::notice(format!(
                "version {version} is already applied (at {}); nothing to do",
                recorded.finished_at
            ));
            recorded_row(Skipped::AlreadyApplied.to_string(), recorded)
        }
        Decision::BelowBaseline(baseline) => {
            errors::notice(format!(
                "version {version} is covered by baseline {}; nothing to do",
                baseline.version
            ));
            (
                Skipped::BelowBaseline.to_string(),
                version.to_string(),
                Some(checksums.normalized),
                statements.len() as i32,
                interval(Duration::ZERO),
                0,
                interval(Duration::ZERO),
            )
        }
        Decision::Apply => {
            crate::watch::refuse_while_open(version.as_str()).or_raise();
            crate::watch::refuse_without_baseline(watch.as_ref()).or_raise();
            let running = Running {
                version: version.to_string(),
                has_rollback: rollback.is_some(),
                allow: allow.clone(),
            };
            refuse_unsafe_statements(&what, &trees, &running).or_raise();
            // A rollback the health gate may run on its own is judged now, by the same rules
            // and overrides its phases will run under: refused when it is needed, it would
            // leave the regression in place.
            if watch.is_some_and(|w| w.on_regression == OnRegression::Rollback) {
                refuse_unsafe_statements(
                    &format!("the rollback script of {what}"),
                    &rollback_trees,
                    &running,
                )
                .or_raise();
            }
            // Versions run in order: behind one the worker has not finished, even a wholly
            // transactional migration waits its turn there.
            let behind = history::lowest_unfinished();
            if phases::needed(&statements) || behind.is_some() {
                return submit(
                    &version,
                    description,
                    script,
                    &checksums,
                    rollback,
                    &statements,
                    &allow,
                    verify,
                    behind.as_ref(),
                    watch.as_ref(),
                );
            }
            let started_at = history::clock_now();
            // Before the migration takes its locks: what it changes must be its own, and its
            // watch's baseline (a few kilobytes of JSON) must not make readers of its tables
            // wait. The history row it references comes after the DDL (its foreign key is
            // checked at commit).
            record::drift();
            // A script that sets constraints immediate would check that key at once.
            let sets_constraints = statements.iter().any(|s| s.tag == "SET CONSTRAINTS");
            if let Some(watch) = watch.as_ref().filter(|_| !sets_constraints) {
                crate::watch::record(version.as_str(), watch);
            }
            let outcome = running::with_running(running, || {
                attempt::run(&what, script, &statements, Policy::from_settings())
            });
            // Only what the migration touched is described, while it holds its locks.
            let schema = record::applied(version.as_str());
            let duration = history::insert(&NewEntry {
                version: &version,
                description,
                status: Status::Applied,
                script: Some(script),
                checksums: Some(&checksums),
                rollback,
                statements: statements.len() as i32,
                started_at,
                lock_wait: outcome.lock_wait,
                retries: outcome.retries as i32,
                allowed_rules: &allow,
                phases: 1,
                verify,
                schema: Some(schema),
            });
            if let Some(watch) = watch.as_ref().filter(|_| sets_constraints) {
                crate::watch::record(version.as_str(), watch);
            }
            (
                Status::Applied.to_string(),
                version.to_string(),
                Some(checksums.normalized),
                statements.len() as i32,
                interval(duration),
                outcome.retries as i32,
                interval(outcome.lock_wait),
            )
        }
    };
    row
}

/// A migration with statements that cannot run in a transaction, or one behind a migration
/// the worker has not finished: recorded as pending, with its phases, for the background
/// worker to run once the caller commits.
#[allow(clippy::too_many_arguments)]
fn submit(
    version: &Version,
    description: Option<&str>,
    script: &str,
    checksums: &Checksums,
    rollback: Option<&str>,
    statements: &[Statement],
    allow: &[String],
    verify: Option<&str>,
    behind: Option<&Recorded>,
    watch: Option<&crate::watch::Request>,
) -> ApplyRow {
    if !shmem::available() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("migration {version} needs the background worker, which is not running"),
            "Statements such as CREATE INDEX CONCURRENTLY cannot run inside a transaction; \
             pg_migrate's background worker runs them, and it exists only when pg_migrate is \
             in shared_preload_libraries.",
            "Add pg_migrate to shared_preload_libraries in postgresql.conf and restart the \
             server; or run those statements yourself outside migrate.apply.",
        )
        .raise();
    }
    let plan = phases::plan(statements);
    record::drift();
    history::insert(&NewEntry {
        version,
        description,
        status: Status::Pending,
        script: Some(script),
        checksums: Some(checksums),
        rollback,
        statements: statements.len() as i32,
        started_at: history::clock_now(),
        lock_wait: Duration::ZERO,
        retries: 0,
        allowed_rules: allow,
        phases: plan.len() as i32,
        verify,
        schema: None,
    });
    steps::insert(version.as_str(), script, &plan);
    if let Some(watch) = watch {
        crate::watch::record(version.as_str(), watch);
    }
    shmem::wake_at_commit();
    let phases = match plan.len() {
        1 => "1 phase".to_string(),
        n => format!("{n} phases"),
    };
    let mut notice = match behind {
        Some(b) => format!(
            "migration {version} ({phases}) waits for version {} ({}), which the background \
             worker has not finished, and then runs there",
            b.version, b.status
        ),
        None => format!(
            "migration {version} has {phases} and runs in the background worker once this \
             transaction commits"
        ),
    };
    notice.push_str(&format!(
        "; follow it in migrate.steps, or CALL migrate.wait('{version}')"
    ));
    if let Some(b) = behind.filter(|b| b.status == Status::Failed) {
        notice.push_str(&format!(
            ". Version {0} failed: SELECT migrate.retry('{0}') once its cause is fixed, or \
             migrate.cancel('{0}')",
            b.version
        ));
    }
    if crate::gucs::MAX_WORKERS.get() == 0 {
        notice.push_str(". migrate.max_workers is 0: nothing runs until it is raised");
    }
    errors::notice(notice);
    (
        Status::Pending.to_string(),
        version.to_string(),
        Some(checksums.normalized.clone()),
        statements.len() as i32,
        interval(Duration::ZERO),
        0,
        interval(Duration::ZERO),
    )
}

pub(crate) type ApplyRow = (String, String, Option<String>, i32, Interval, i32, Interval);

/// The row `apply` returns for a version recorded earlier.
fn recorded_row(status: String, recorded: Recorded) -> ApplyRow {
    (
        status,
        recorded.version,
        recorded.checksum,
        recorded.statements,
        interval(recorded.duration),
        recorded.retries,
        interval(recorded.lock_wait),
    )
}

#[derive(Debug)]
enum Decision {
    Apply,
    /// Recorded, and pending, running, failed or cancelled in the background worker.
    Submitted(Recorded),
    AlreadyApplied(Recorded),
    BelowBaseline(Recorded),
}

/// What to do with `version`, given its recorded row (or another spelling's) and the highest
/// baseline.
fn decide(
    version: &Version,
    script: &str,
    recorded: Option<Recorded>,
    baseline: Option<Recorded>,
) -> Result<Decision, Problem> {
    if let Some(recorded) = recorded {
        if recorded.status == Status::Baseline {
            return Ok(Decision::BelowBaseline(recorded));
        }
        history::compare_checksum(version, script, &recorded)?;
        if recorded.status != Status::Applied {
            return Ok(Decision::Submitted(recorded));
        }
        return Ok(Decision::AlreadyApplied(recorded));
    }
    if let Some(baseline) = baseline {
        if Version::parse(Some(&baseline.version)).is_ok_and(|b| *version <= b) {
            return Ok(Decision::BelowBaseline(baseline));
        }
    }
    Ok(Decision::Apply)
}

/// Refuses a version below the highest recorded one unless `migrate.out_of_order` is on.
fn check_order(
    version: &Version,
    highest: Option<Recorded>,
    out_of_order: bool,
) -> Result<(), Problem> {
    let Some(highest) = highest else {
        return Ok(());
    };
    let Ok(highest_version) = Version::parse(Some(&highest.version)) else {
        return Ok(());
    };
    if *version > highest_version || out_of_order {
        return Ok(());
    }
    Err(Problem::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("version {version} is lower than the highest applied version {highest_version}"),
        format!(
            "Versions apply in order; {highest_version} was applied at {}. An older version \
             arriving late usually means two branches were merged.",
            highest.finished_at
        ),
        "Renumber the migration above the highest version, or, if it is independent of the \
         later ones, SET migrate.out_of_order = on for this session.",
    ))
}

/// The guard's verdict on every statement before the first one runs, so that a refused
/// statement late in a script does not leave earlier ones holding locks meanwhile. The event
/// trigger judges each statement again as it runs, with the catalogs as they are by then.
fn refuse_unsafe_statements(
    what: &str,
    trees: &[(Statement, StmtTree)],
    running: &Running,
) -> Result<(), Problem> {
    let Some(mut ctx) = crate::guard::hooks::trigger::context() else {
        return Ok(());
    };
    ctx.allow.extend(running.allow.iter().cloned());
    ctx.apply_with_rollback = running.has_rollback;
    match crate::guard::lint::refusal_before_apply(what, trees, &ctx) {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

/// Parses `script` and refuses what cannot run as one transactional migration.
pub(crate) fn parse_for_apply<'a>(
    what: &str,
    script: &'a str,
) -> Result<Vec<(Statement, StmtTree<'a>)>, Problem> {
    let trees = parse::parse(script).map_err(|e| e.problem(what, script))?;
    let statements: Vec<Statement> = trees.iter().map(|(s, _)| s.clone()).collect();
    for (statement, tree) in trees
        .iter()
        .filter(|(s, _)| s.kind == script::Kind::Backfill)
    {
        crate::backfill::check_phase(what, statement.line, *tree)?;
    }
    if statements.is_empty() {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{what} contains no statements"),
            "The script is empty or holds only comments.",
            "Pass the SQL to run; to record a version without running anything, use \
             migrate.baseline.",
        ));
    }
    script::refuse_transaction_control(what, &statements)?;
    Ok(trees)
}

#[cfg(test)]
mod unit {
    use super::*;

    fn recorded(version: &str, status: Status, script: &str) -> Recorded {
        Recorded {
            version: version.into(),
            status,
            checksum: Some(Checksums::of(script).normalized),
            algorithm: Some(1),
            finished_at: "2026-11-24 10:00:00+00".into(),
            statements: 1,
            duration: Duration::ZERO,
            retries: 0,
            lock_wait: Duration::ZERO,
            applied_role: "deployer".into(),
        }
    }

    fn v(s: &str) -> Version {
        Version::parse(Some(s)).unwrap()
    }

    #[test]
    fn same_script_is_already_applied_whatever_the_line_endings() {
        let r = recorded("3", Status::Applied, "CREATE TABLE t (id int);\n");
        let d = decide(&v("3"), "CREATE TABLE t (id int);\r\n", Some(r), None).unwrap();
        assert!(matches!(d, Decision::AlreadyApplied(_)));
    }

    #[test]
    fn changed_script_is_refused_with_both_checksums() {
        let r = recorded("3", Status::Applied, "CREATE TABLE t (id int);");
        let p = decide(
            &v("3"),
            "CREATE TABLE t (id bigint);",
            Some(r.clone()),
            None,
        )
        .unwrap_err();
        assert_eq!(
            p.code,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
        );
        assert!(p.detail.contains(r.checksum.as_deref().unwrap()));
        assert!(p
            .detail
            .contains(&Checksums::of("CREATE TABLE t (id bigint);").normalized));
        assert!(p.detail.contains("2026-11-24 10:00:00+00"));
    }

    #[test]
    fn another_spelling_of_a_recorded_version_is_refused() {
        let r = recorded("1", Status::Applied, "SELECT 1;");
        let p = decide(&v("1.0"), "SELECT 1;", Some(r), None).unwrap_err();
        assert!(
            p.message
                .contains("1.0 is the same version as the recorded 1"),
            "{}",
            p.message
        );
    }

    #[test]
    fn versions_up_to_the_baseline_are_covered() {
        let b = recorded("5", Status::Baseline, "");
        assert!(matches!(
            decide(&v("4"), "x", None, Some(b.clone())),
            Ok(Decision::BelowBaseline(_))
        ));
        assert!(matches!(
            decide(&v("5.0"), "x", None, Some(b.clone())),
            Ok(Decision::BelowBaseline(_))
        ));
        assert!(matches!(
            decide(&v("5.1"), "x", None, Some(b)),
            Ok(Decision::Apply)
        ));
    }

    #[test]
    fn lower_versions_need_out_of_order() {
        let top = recorded("10", Status::Applied, "SELECT 1;");
        let p = check_order(&v("9"), Some(top.clone()), false).unwrap_err();
        assert!(p
            .message
            .contains("9 is lower than the highest applied version 10"));
        assert!(p.hint.contains("migrate.out_of_order"));
        assert!(check_order(&v("9"), Some(top.clone()), true).is_ok());
        assert!(check_order(&v("10.1"), Some(top), false).is_ok());
        assert!(check_order(&v("1"), None, false).is_ok());
    }
}
