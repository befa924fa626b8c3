//! The health gate (issue 16): a migration applied with `watch => ...` is complete only once
//! the live workload shows it did no harm. The database worker samples the workload
//! (`sampler`: statements' latency from pg_stat_statements, errors by kind from the log
//! hook); a watch judges the samples since the change against those before it at fixed
//! looks (`gate`, by the statistics in `stats`) and ends complete, held, or rolled back by
//! the migration's declared rollback, run forward and watched in turn (`keeper`).

pub mod gate;
pub mod keeper;
pub mod sample;
pub mod sampler;
pub mod signals;
pub mod stats;

use crate::errors::{OrRaise, Problem};
use crate::migration::status::{OnRegression, WatchState};
use crate::migration::version::Version;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use signals::Signal;
use std::time::Duration;

thread_local! {
    /// The database the `DROP DATABASE` under way drops: its counters and samples are freed
    /// once the drop has succeeded.
    static DROPPING: std::cell::Cell<Option<pgrx::pg_sys::Oid>> = const { std::cell::Cell::new(None) };
}

/// A utility statement is about to run. A database that must have no session connected
/// (dropped, renamed, moved, copied as a template) is left by its worker, which otherwise
/// stays connected to sample its workload, when the caller passes the checks PostgreSQL
/// will make; a database that installs pg_migrate gets its worker (the launcher asks
/// every database again after a restart); and settings given to a database or a role are
/// noted when they commit, for workers that connected meanwhile.
pub fn utility_statement(stmt: crate::pg::nodes::StmtTree) {
    for database in crate::pg::nodes::emptied_databases(stmt) {
        crate::pg::shmem::ask_to_leave(database);
    }
    DROPPING.set(crate::pg::nodes::dropped_database(stmt));
    if let Some(given) = crate::pg::nodes::worker_settings_given(stmt) {
        crate::pg::shmem::settings_changed_at_commit(given);
    }
    if crate::pg::nodes::created_extension(stmt).as_deref() == Some("pg_migrate")
        && sampler::interval().is_some()
    {
        crate::pg::shmem::wake_at_commit();
    }
}

/// A utility statement ran without an error: a database it dropped is forgotten.
pub fn utility_statement_done() {
    if let Some(database) = DROPPING.take() {
        crate::pg::error_hook::forget(database);
        crate::pg::sample_ring::forget(database);
        // Its windows' counters and registered tables too: the launcher frees them only for
        // a database that still asked for its worker, and tables that are full stop counting.
        crate::pg::shmem::forget(u32::from(database), true);
    }
}

/// The worker's turn: a sample when one is due, and the watches kept after it. Returns how
/// long until the next sample (None: sampling is off).
pub fn turn() -> Option<Duration> {
    if let Some(sample) = sampler::sample_if_due() {
        keeper::keep(&sample);
    }
    sampler::due_in()
}

/// The thresholds a watch with `looks` looks is judged by now.
pub fn watch_limits(looks: usize) -> gate::Limits {
    gate::Limits {
        alpha: crate::gucs::WATCH_ALPHA.get(),
        tolerance: 1.0 + crate::gucs::WATCH_LATENCY_TOLERANCE.get(),
        floor_ms: crate::gucs::WATCH_LATENCY_FLOOR.get(),
        min_samples: crate::gucs::WATCH_MIN_SAMPLES.get().max(2) as usize,
        min_excess_errors: f64::from(crate::gucs::WATCH_MIN_ERRORS.get()),
        brake: crate::gucs::WATCH_BRAKE.get(),
        lock_wait_ms: f64::from(crate::gucs::WATCH_LOCK_WAIT_MS.get()),
        lag_bytes: f64::from(crate::gucs::BACKFILL_MAX_REPLICATION_LAG_KB.get()) * 1024.0,
        gauge_run: crate::gucs::WATCH_GAUGE_RUN.get().max(1) as usize,
        looks,
    }
}

/// What `apply(..., watch => ..., on_regression => ...)` asked for, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    pub watch: Duration,
    pub on_regression: OnRegression,
}

/// Checks a watch's arguments: each mistake a `pg_migrate:` error before anything is
/// recorded.
pub fn request(
    watch: Option<&pgrx::datum::Interval>,
    on_regression: Option<&str>,
    has_rollback: bool,
) -> Result<Option<Request>, Problem> {
    let bad = |message: String, detail: &str, hint: &str| {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            message,
            detail,
            hint,
        )
    };
    let Some(watch) = watch else {
        return match on_regression {
            None => Ok(None),
            Some(_) => Err(bad(
                "on_regression needs watch".into(),
                "Only a watched migration can regress.",
                "Add watch => '10 min' (how long to watch the workload after the change).",
            )),
        };
    };
    let micros = watch.as_micros();
    if micros <= 0 {
        return Err(bad(
            format!("watch must be positive, not {} s", micros as f64 / 1e6),
            "A watch is how long the workload is observed after the change.",
            "Pass an interval such as '10 min'.",
        ));
    }
    let on_regression = match on_regression {
        None => OnRegression::Hold,
        Some(text) => OnRegression::parse(text).ok_or_else(|| {
            bad(
                format!("unknown on_regression \"{text}\""),
                "A failed health gate either holds the migration for a decision or runs its \
                 rollback.",
                "Pass on_regression => 'hold' or 'rollback'.",
            )
        })?,
    };
    if on_regression == OnRegression::Rollback && !has_rollback {
        return Err(bad(
            "on_regression => 'rollback' needs a rollback script".into(),
            "pg_migrate rolls a change back only by running forward the rollback declared \
             with it; it writes none itself.",
            "Pass rollback => $$...$$ (the statements that undo the change), or \
             on_regression => 'hold'.",
        ));
    }
    if !crate::pg::shmem::available() || sampler::interval().is_none() {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "the workload is not sampled, so a migration cannot be watched",
            "The background worker samples the workload every \
             migrate.watch_sample_interval; it runs only when pg_migrate is in \
             shared_preload_libraries and the interval is above 0.",
            "Set migrate.watch_sample_interval (10s by default) and preload pg_migrate; or \
             apply without watch.",
        ));
    }
    Ok(Some(Request {
        watch: Duration::from_micros(micros.min(i64::MAX as i128) as u64),
        on_regression,
    }))
}

/// Refuses a new migration while another's health gate is open: two changes watched at once
/// cannot be told apart, and a change made during a watch would be judged as the watched
/// one's.
pub fn refuse_while_open(version: &str) -> Result<(), Problem> {
    let open: Vec<(String, String)> = crate::pg::spi::pinned_pairs(
        "SELECT version, state FROM migrate.watch_records \
         WHERE state IN ('waiting', 'watching', 'held', 'rolling back', 'recovering') \
           AND version <> $1",
        &[version.into()],
    )
    .unwrap_or_default();
    let Some((watched, state)) = open
        .into_iter()
        .find(|(_, state)| WatchState::parse(state).is_some_and(|s| s.open()))
    else {
        return Ok(());
    };
    Err(Problem::new(
        PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
        format!("migration {watched} is {state}: its health gate is open"),
        format!(
            "A change applied while migration {watched} is watched would be judged as its \
             change, and its effect on the workload could not be told apart."
        ),
        format!(
            "Wait until SELECT * FROM migrate.watch_status shows it settled, or settle it with \
             migrate.accept('{watched}', 'reason') or migrate.reject('{watched}', 'reason')."
        ),
    ))
}

/// The workload's samples a watch applied now takes as its baseline.
fn baseline_now() -> Vec<sample::Sample> {
    let since =
        crate::pg::process::now() - i64::from(crate::gucs::WATCH_BASELINE_S.get()) * 1_000_000;
    crate::pg::sample_ring::recent(crate::pg::process::database(), since)
}

/// Refuses a watch whose baseline is too thin to judge by: with fewer samples before the
/// change than a look needs, it could only end held. Checked only when the migration is
/// to run (a replayed version is a no-op), before it takes a lock.
pub fn refuse_without_baseline(request: Option<&Request>) -> Result<(), Problem> {
    if request.is_none() {
        return Ok(());
    }
    let have = baseline_now().len();
    let need = crate::gucs::WATCH_MIN_SAMPLES.get().max(2) as usize;
    if have >= need {
        return Ok(());
    }
    let interval = sampler::interval().map_or(0, |i| i.as_secs());
    let baseline_s = crate::gucs::WATCH_BASELINE_S.get().max(0) as u64;
    let reachable = (baseline_s / interval.max(1)).min(crate::pg::sample_ring::SAMPLES as u64);
    if (reachable as usize) < need {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "a watch needs {need} samples of baseline, and the settings allow at most \
                 {reachable}"
            ),
            format!(
                "migrate.watch_baseline ({baseline_s} s) over migrate.watch_sample_interval \
                 ({interval} s) gives {} samples, and the worker keeps at most {} of them.",
                baseline_s / interval.max(1),
                crate::pg::sample_ring::SAMPLES
            ),
            "Lower migrate.watch_min_samples, or raise migrate.watch_baseline (or sample more \
             often).",
        ));
    }
    Err(Problem::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "the workload has been sampled {have} times in the last {} s; a watch needs {need}",
            crate::gucs::WATCH_BASELINE_S.get()
        ),
        "A watch judges the samples after the change against those before it \
         (migrate.watch_min_samples on each side). The background worker samples every \
         migrate.watch_sample_interval: it has just started (a new server, pg_migrate just \
         installed), sampling was off, or another database had its worker slot.",
        format!(
            "Apply again in about {} s; or apply without watch.",
            (need - have) as u64 * interval.max(1)
        ),
    ))
}

/// The state of migration `version`'s watch; None when it is not watched.
fn state_of(version: &str) -> Option<WatchState> {
    crate::pg::spi::pinned_row(
        "SELECT state FROM migrate.watch_records WHERE version = $1",
        &[version.into()],
        |r| r.get::<String>(1),
    )
    .ok()
    .flatten()
    .flatten()
    .and_then(|s| WatchState::parse(&s))
}

/// A watched window is contracted only once its health gate has passed (or was accepted):
/// contract takes the old version's way back away.
pub fn refuse_contract(version: &str) -> Result<(), Problem> {
    let state = match state_of(version) {
        None | Some(WatchState::Complete) => return Ok(()),
        Some(state) => state,
    };
    if state.open() {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("the health gate of window {version} is open ({state})"),
            "Contract takes the old version's names and columns away; it waits until the \
             workload has shown that the window's change did no harm.",
            format!(
                "Wait until SELECT * FROM migrate.watch_status shows it complete, or settle it \
                 with migrate.accept('{version}', 'reason'); migrate.abort('{version}') gives \
                 the window up."
            ),
        ));
    }
    Err(Problem::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("the health gate of window {version} ended {state}"),
        "The window's change was judged harmful; contracting it would make it final.",
        format!("Give the window up with migrate.abort('{version}')."),
    ))
}

/// A watched window given up: its gate, if open, ends rejected, a decision taken as
/// `reject` takes it (the opener's privileges).
pub fn window_aborted(version: &str, opened_by: &str) {
    if state_of(version).is_some_and(|s| s.open()) {
        crate::pg::identity::require_privileges_of(
            opened_by,
            &format!("abort window {version}, whose health gate is open"),
        )
        .or_raise();
        let who = crate::pg::identity::current_user_name();
        keeper::set_state(
            version,
            WatchState::Rejected,
            Some(&who),
            &format!("the window was aborted by {who}"),
        );
    }
}

/// Whether migration `version` is running its rollback, or its rollback failed: a decision
/// of its watch, which only a role with the submitter's privileges may overturn (by
/// cancelling it).
pub fn rolling_back(version: &str) -> bool {
    matches!(
        state_of(version),
        Some(WatchState::RollingBack | WatchState::RollbackFailed)
    )
}

/// Records the watch of a migration just applied or submitted to the worker, with the
/// workload's recent samples as its baseline.
pub fn record(version: &str, request: &Request) {
    let baseline = baseline_now();
    // Watched from when the worker sees it applied: after the caller's commit, however long
    // its transaction.
    let state = WatchState::Waiting;
    crate::pg::spi::write_as_owner(
        "migrate.watch_records",
        "INSERT INTO migrate.watch_records (version, state, on_regression, watch, requested_at, \
           started_at, baseline, changed_at, look_at) \
         VALUES ($1, $2, $3, make_interval(secs => $4), now(), \
                 NULL, $5::jsonb, now(), $6)",
        &[
            version.into(),
            state.as_str().into(),
            request.on_regression.as_str().into(),
            request.watch.as_secs_f64().into(),
            serde_json::to_string(&baseline)
                .unwrap_or_else(|_| "[]".into())
                .into(),
            crate::gucs::watch_looks().into(),
        ],
    );
    let known = sample::reference(&baseline).len();
    crate::errors::notice(format!(
        "migration {version} is watched for {:?} after it takes effect, against {} samples of \
         the workload before it ({}); see migrate.watch_status",
        request.watch,
        baseline.len(),
        match (known, baseline.iter().any(|s| s.statements)) {
            (_, false) =>
                "no statement latency: pg_stat_statements is not installed here".to_string(),
            (n, true) => format!("latency of {n} statements"),
        }
    ));
}

/// The errors reported in this database since the server started, by kind: what the log
/// hook counted (errors a PL/pgSQL block caught are not reported, and not counted). NULL
/// counts when the database has no counters (more than `pg::error_hook::DATABASES` databases
/// reported errors).
#[pg_extern(volatile, parallel_safe)]
fn error_counters() -> TableIterator<
    'static,
    (
        name!(signal, String),
        name!(sqlstates, Vec<String>),
        name!(errors, Option<i64>),
    ),
> {
    let counts = crate::pg::error_hook::counts(crate::pg::process::database());
    TableIterator::new(Signal::ALL.into_iter().map(move |s| {
        (
            s.name().to_string(),
            s.sqlstates()
                .iter()
                .map(|x| String::from_utf8_lossy(&x[..]).into_owned())
                .collect(),
            counts.map(|c| c[s.index()] as i64),
        )
    }))
}

/// The workload's recent samples kept in shared memory for this database: the baseline the
/// next watched migration will be judged against.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn workload_samples() -> TableIterator<
    'static,
    (
        name!(taken_at, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(seconds, f64),
        name!(calls, Option<f64>),
        name!(time_ms, Option<f64>),
        name!(statements, i32),
        name!(errors, Vec<i64>),
    ),
> {
    crate::pg::identity::require_admin("read the workload's samples").or_raise();
    let samples = crate::pg::sample_ring::recent(crate::pg::process::database(), i64::MIN);
    TableIterator::new(samples.into_iter().map(|s| {
        let time = s.queries().iter().map(|q| q.time_ms).sum::<f64>() + s.other_time_ms;
        (
            pgrx::datum::TimestampWithTimeZone::try_from(s.at).ok(),
            s.seconds,
            s.statements.then(|| s.calls()),
            s.statements.then_some(time),
            s.query_count as i32,
            s.errors.iter().map(|e| *e as i64).collect(),
        )
    }))
}

/// `migrate.accept(version, reason)`: the DBA settles a watch as complete (a held one, or
/// one still watching); or accepts a rollback's outcome.
#[pg_extern(volatile, parallel_unsafe)]
fn accept(version: Option<&str>, reason: default!(Option<&str>, "NULL")) -> String {
    decide(version, reason, true).to_string()
}

/// `migrate.reject(version, reason)`: the DBA judges the change harmful. Its rollback runs
/// when it has one that may run; otherwise the watch ends rejected, for the DBA to act on.
#[pg_extern(volatile, parallel_unsafe)]
fn reject(version: Option<&str>, reason: default!(Option<&str>, "NULL")) -> String {
    decide(version, reason, false).to_string()
}

fn decide(version: Option<&str>, reason: Option<&str>, accept: bool) -> WatchState {
    let verb = if accept { "accept" } else { "reject" };
    crate::pg::identity::require_admin(&format!("{verb} watched migrations")).or_raise();
    let version = Version::parse(version).or_raise();
    crate::history::lock::refuse_unsafe_context().or_raise();
    crate::history::lock::lock_history();
    let watched: Option<(String, String, bool, bool)> = crate::pg::spi::pinned_row(
        "SELECT w.state, h.applied_role::text, \
                h.rollback_script IS NOT NULL AND w.rollback_phase IS NULL, \
                w.rollback_phase IS NOT NULL \
         FROM migrate.watch_records w JOIN migrate.history h USING (version) \
         WHERE w.version = $1",
        &[version.as_str().into()],
        |r| {
            Ok((
                r.get(1)?.unwrap_or_default(),
                r.get(2)?.unwrap_or_default(),
                r.get(3)?.unwrap_or(false),
                r.get(4)?.unwrap_or(false),
            ))
        },
    )
    .ok()
    .flatten();
    let Some((state, role, may_roll_back, rollback_began)) = watched else {
        Problem::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("migration {version} is not watched"),
            "Only a migration applied with watch => ... has a health gate to settle.",
            "SELECT * FROM migrate.watch_status; lists the watched migrations.",
        )
        .raise()
    };
    crate::pg::identity::require_privileges_of(&role, &format!("{verb} migration {version}"))
        .or_raise();
    let state = WatchState::parse(&state).unwrap_or(WatchState::Held);
    let destroyed = keeper::destroys_data(&keeper::dropped_kinds(version.as_str()));
    let next = match (accept, state) {
        // A rollback stopped part way left neither the change nor its undoing: "complete"
        // would say the change stands as applied.
        (true, WatchState::Held) if rollback_began => Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("migration {version}'s rollback began and was stopped"),
            "Some of its rollback's phases may have run (see migrate.steps WHERE rollback): the \
             change no longer stands as it was applied.",
            format!(
                "SELECT migrate.retry('{version}'); runs the rollback to its end; \
                 migrate.reject('{version}', 'reason') closes the gate as rejected."
            ),
        )
        .raise(),
        (true, WatchState::Waiting | WatchState::Watching | WatchState::Held) => {
            WatchState::Complete
        }
        (true, WatchState::Recovering) => WatchState::RolledBack,
        (false, WatchState::Watching | WatchState::Held) if may_roll_back && !destroyed => {
            WatchState::RollingBack
        }
        (false, WatchState::Watching | WatchState::Held) => WatchState::Rejected,
        (false, WatchState::Waiting) => Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("migration {version} has not taken effect yet"),
            "Its watch starts once the migration is applied; rejecting it would not stop the \
             background worker from running it.",
            format!("SELECT migrate.cancel('{version}'); stops it (its watch then ends rejected)."),
        )
        .raise(),
        _ => Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("migration {version} is {state} and cannot be {verb}ed"),
            "A watch is accepted while it waits, watches or is held, and a rollback's \
             recovery while it is watched; a watch is rejected while it watches or is held. \
             A failed rollback is not accepted as one: the change is still there.",
            "SELECT * FROM migrate.watch_status; shows its state and evidence; \
             migrate.steps shows a failed rollback's phase, which migrate.retry runs again.",
        )
        .raise(),
    };
    let who = crate::pg::identity::current_user_name();
    let why = format!(
        "{verb}ed by {who}{}",
        reason.map(|r| format!(": {r}")).unwrap_or_default()
    );
    keeper::set_state(version.as_str(), next, Some(&who), &why);
    if next == WatchState::RollingBack {
        // The worker adds the rollback's phases at its next sample.
        crate::pg::shmem::wake_at_commit();
    }
    next
}
