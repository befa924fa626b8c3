//! The database worker: one per database with pending migrations, started by the launcher.
//! It runs migrations' phases in version order. Transactional phases run in a transaction of
//! their own, with the same lock timeouts and retries as `migrate.apply`; the others run
//! top-level, as a client's statement would. Every phase runs with the submitter's role and
//! search_path, under the guard.
//!
//! Crash safety: a transactional phase commits together with the record that it is done, so
//! it either happened and is recorded, or neither. A top-level statement cannot be made
//! atomic with its record; instead the step is marked running first, and a step found
//! running at startup was interrupted: its leftovers (the INVALID index of an interrupted
//! build, a half-detached partition) are cleaned up or completed, and a statement that in
//! fact finished (its index is valid) is recorded as done instead of run again.

use crate::apply::attempt;
use crate::backfill;
use crate::errors::Problem;
use crate::guard::parsetree::{self, TopLevelForm};
use crate::gucs;
use crate::history::steps::{self, Next, Step};
use crate::migration::backoff::{self, Backoff};
use crate::migration::limits::Policy;
use crate::migration::parse;
use crate::migration::phases::PhaseKind;
use crate::migration::script::Statement;
use crate::migration::submitter::{self, Owner, SUPERUSER};
use crate::pg::catalog;
use crate::pg::shmem;
use crate::pg::simple_query;
use crate::pg::subxact::Caught;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::time::{Duration, Instant};

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_migrate_worker_main(arg: pg_sys::Datum) {
    let database = pg_sys::Oid::from(arg.value() as u32);
    crate::pg::process::mark_migrate_worker();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SIGTERM cancels whatever runs and exits, like a backend's: a long index build must not
    // hold up a fast shutdown. The interrupted step is recovered on the next start.
    crate::pg::process::die_on_sigterm();
    // Before the session takes the database's and roles' settings: what commits later may
    // be missing from them.
    SETTINGS_GENERATION_AT_START.set(shmem::settings_generation(database));
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    if !shmem::register_worker(database) {
        return; // another worker serves this database
    }
    shmem::unregister_worker_at_exit(database);
    submitter::set_application_name();

    // The database's and roles' settings at this first look, to notice when they change;
    // changed already while the session connected, they are not its own: it starts again.
    if settings_changed() {
        start_again(database);
        shmem::unregister_worker(database, false);
        return;
    }
    let mut idle_since = Instant::now();
    // Work committed since the window upkeep last looked may have opened or ended a window.
    let mut upkeep_asked = false;
    loop {
        crate::pg::process::reload_config_if_asked();
        if shmem::asked_to_leave(database) {
            break;
        }
        upkeep_asked |= shmem::take_request(database);
        // Between two phases of one migration the session is the migration's: its state
        // (SET, temporary tables) carries to the next phase. Neither the windows' upkeep,
        // which resets the session for its own work, nor a new session for settings given
        // since comes in between; the next migration starts in a new session (`claim`).
        if UNDER_WAY.with_borrow(Option::is_none) {
            if settings_given_since_start() {
                start_again(database);
                break;
            }
            keep_window_time(database, std::mem::take(&mut upkeep_asked));
        }
        let turn = match work_once() {
            Turn::Gone => break,
            Turn::Restart => {
                start_again(database);
                break;
            }
            turn => turn,
        };
        // The workload's sample, when one is due, and the watches kept after it: between
        // phases, never during one.
        let next_sample = crate::watch::turn();
        let pause = match turn {
            Turn::Worked => {
                idle_since = Instant::now();
                continue;
            }
            // Work is waiting but an applier holds the lock: look again shortly (a
            // transactional apply does not wake us when it commits).
            Turn::Busy => {
                idle_since = Instant::now();
                Duration::from_millis(200)
            }
            Turn::Wait(pause) => {
                idle_since = Instant::now();
                pause
            }
            Turn::Gone | Turn::Restart => break, // left above
            Turn::Idle => {
                let idle_limit =
                    Duration::from_secs(gucs::WORKER_IDLE_TIMEOUT_S.get().max(1) as u64);
                if idle_since.elapsed() < idle_limit {
                    Duration::from_secs(10).min(idle_limit)
                } else if stays_to_sample(database, next_sample) {
                    // Until the next sample: new work sets the latch.
                    Duration::from_secs(10)
                } else {
                    break;
                }
            }
        };
        let pause = next_sample.map_or(pause, |due| pause.min(due));
        // A latch set by a committing submitter wakes us at once; the timeout is a fallback.
        if !BackgroundWorker::wait_latch(Some(pause)) {
            break; // the postmaster died
        }
    }
    shmem::unregister_worker(database, false);
}

/// An idle worker stays to sample its database's workload (the baseline of the next
/// watched migration), and always while a watch is open; but gives its slot up to another
/// database waiting for one, and asks to come back for its next sample.
fn stays_to_sample(database: pg_sys::Oid, next_sample: Option<Duration>) -> bool {
    let Some(due) = next_sample else {
        return false;
    };
    let now = crate::pg::process::now();
    // Settings given to the database or its roles (ALTER DATABASE ... SET) are read when a
    // session starts: a worker that stays would keep the old ones. It leaves, and is back
    // at once with the new.
    if settings_changed() {
        start_again(database);
        return false;
    }
    if crate::watch::keeper::any_open() || !shmem::others_waiting(database) {
        return true;
    }
    shmem::wake_by(database, now + due.as_micros().min(i64::MAX as u128) as i64);
    false
}

/// The worker leaves to be started again at once, in a session that takes the settings
/// given to its database or role since this one started.
fn start_again(database: pg_sys::Oid) {
    simple_query::log(
        "settings were given to the database or its roles (ALTER DATABASE/ROLE ... SET): \
         starting a new session, which takes them",
    );
    shmem::wake_by(database, crate::pg::process::now());
}

thread_local! {
    /// The migration whose phase the session ran last, while its next phase may follow:
    /// the session is that migration's until then.
    static UNDER_WAY: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    /// The database's and roles' settings at the worker's first look.
    static SETTINGS_AT_START: std::cell::RefCell<Option<Option<String>>> =
        const { std::cell::RefCell::new(None) };
    /// [`shmem::settings_generation`] before the worker connected.
    static SETTINGS_GENERATION_AT_START: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Whether the settings of this database (ALTER DATABASE ... SET) or of roles (ALTER ROLE ...
/// SET) changed since the worker's first look, or were changed while it connected. The
/// first look alone cannot tell: settings committed between the session's start and that
/// look are in the catalog it reads but not in the session.
fn settings_changed() -> bool {
    if settings_given_since_start() {
        return true;
    }
    let now = simple_query::transaction(|| {
        crate::pg::spi::pinned_row(
            "SELECT string_agg(setdatabase || '/' || setrole || ':' || array_to_string(setconfig, ','), \
                               ';' ORDER BY setdatabase, setrole) \
             FROM pg_db_role_setting WHERE setdatabase IN (0, $1) AND setrole IN (0, $2)",
            // The worker's session is the bootstrap superuser's: other roles' settings are
            // not its own.
            &[
                crate::pg::process::database().into(),
                pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID).into(),
            ],
            |r| r.get::<String>(1),
        )
        .ok()
        .flatten()
        .flatten()
    })
    .unwrap_or(None);
    SETTINGS_AT_START.with(|first| {
        let mut first = first.borrow_mut();
        match first.as_ref() {
            None => {
                *first = Some(now);
                false
            }
            Some(before) => *before != now,
        }
    })
}

/// Whether a statement that gives the worker's session settings (counted in shared memory
/// by the sessions that commit one) committed since before this session connected.
fn settings_given_since_start() -> bool {
    shmem::settings_generation(crate::pg::process::database()) != SETTINGS_GENERATION_AT_START.get()
}

/// What one claim decided.
enum Claim {
    Idle,
    /// There is work, but another transaction holds the applier lock.
    Busy,
    /// Bookkeeping done inside the claim (a cancel, a completion).
    Done,
    /// Invalid indexes of a migration otherwise complete, whose steps are pending again:
    /// drop them.
    Rebuild(Vec<String>),
    /// A top-level step that was running when the worker stopped.
    Recover(Step, TopLevelForm),
    /// A step marked running, ready to run.
    Run(Step, TopLevelForm),
    /// pg_migrate is not installed in this database (any more).
    Gone,
    /// The database's pg_migrate objects are of another version than the library.
    Stale(String),
    /// The next migration would run with settings the database no longer has.
    Restart,
}

enum Turn {
    Worked,
    Busy,
    Idle,
    /// Backfills are under way, and the next batch is due after this long.
    Wait(Duration),
    Gone,
    /// Settings were given to the session's database or role: a new session takes them.
    Restart,
}

thread_local! {
    /// The stale-objects message was logged (once per worker process).
    static STALE_REPORTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

thread_local! {
    /// When the windows' time-to-live was last looked at, and when their next alert is due
    /// (TimestampTz; 0: none).
    static WINDOWS_LOOKED_AT: std::cell::Cell<Option<(Instant, i64)>> =
        const { std::cell::Cell::new(None) };
    /// Window upkeep is waiting for a health gate (said once in the log, when it begins).
    static GATE_HELD_UPKEEP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A window step's result; its error logged, unless the database has no windows to keep.
fn quietly<T>(result: Result<T, crate::pg::subxact::Caught>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        // No extension here, or one that predates windows (not updated yet): nothing to keep.
        Err(e)
            if matches!(
                e.code,
                pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE
                    | pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN
                    | pgrx::PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME
            ) =>
        {
            None
        }
        Err(e) => {
            simple_query::log(&format!("could not keep the expand windows: {}", e.message));
            None
        }
    }
}

/// How often the windows' privileges are carried again for role memberships changed, which
/// no event trigger reports: a role that left the group through which it could use a table's
/// schema loses the new version's view within this, or when the worker next starts.
const FOLLOW_ROLES_EVERY_US: i64 = 10_000_000;

/// Keeps the expand windows (their writes, alerts, expiry policies and set-aside columns),
/// looking when something is due, when asked (a window opened or ended), or every few
/// seconds, and asks to be started again for the next thing due.
fn keep_window_time(database: pg_sys::Oid, asked: bool) {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    if !asked
        && WINDOWS_LOOKED_AT.get().is_some_and(|(at, next)| {
            at.elapsed() < Duration::from_secs(5) && (next == 0 || next > now)
        })
    {
        return;
    }
    // Each in a transaction of its own: a column drop's lock is not held while another
    // window's contract waits for its own.
    let alert = quietly(simple_query::transaction(crate::window::ttl::keep)).unwrap_or(0);
    // (A window whose privileges could not be carried is tried again next round: it is still
    // open.) Its GRANTs run in a session no submitter's work left its state in, as the
    // windows' other work does.
    submitter::fresh_session(&Owner::WindowPrivileges);
    let follow_roles = quietly(simple_query::transaction(
        crate::window::privileges::follow_roles,
    ))
    .unwrap_or(false);
    let roles_next = if follow_roles {
        now + FOLLOW_ROLES_EVERY_US
    } else {
        0
    };
    // While a health gate is open, a column dropped or a window ended here would be judged
    // as the watched change: both wait, looked at again every few seconds.
    if crate::watch::keeper::any_open() {
        if !GATE_HELD_UPKEEP.replace(true) {
            simple_query::log(
                "expand windows' expiry policies and set-aside column drops wait while a \
                 health gate is open (see migrate.watch_status)",
            );
        }
        let next = [alert, roles_next, now + 5_000_000]
            .into_iter()
            .filter(|&t| t != 0)
            .min()
            .unwrap_or(0);
        WINDOWS_LOOKED_AT.set(Some((Instant::now(), next)));
        shmem::wake_at(database, next);
        return;
    }
    GATE_HELD_UPKEEP.set(false);
    // Each window's work runs as its opener in a session no submitter touched, as a
    // migration's phases and a backfill's batches do.
    for due in quietly(simple_query::transaction(crate::window::deprecated_due)).unwrap_or_default()
    {
        submitter::fresh_session(&Owner::Window(due.version().to_string()));
        quietly(simple_query::transaction(|| {
            crate::window::drop_deprecated(&due)
        }));
    }
    let drop = quietly(simple_query::transaction(crate::window::next_deprecated)).unwrap_or(0);
    let mut waiting = false;
    for due in
        quietly(simple_query::transaction(crate::window::ttl::policies_due)).unwrap_or_default()
    {
        if due.acts() {
            submitter::fresh_session(&Owner::Window(due.version().to_string()));
        }
        waiting |= quietly(simple_query::transaction(|| {
            crate::window::ttl::apply_policy(&due)
        }))
        .unwrap_or(true);
    }
    // A policy waiting for the old version to stop writing is looked at again soon, and so
    // is anything due already that was not done (never in a loop).
    let soon = now + 5_000_000;
    let next = [alert, drop, roles_next, if waiting { soon } else { 0 }]
        .into_iter()
        .filter(|&t| t != 0)
        .min()
        .map_or(0, |t| if t <= now { soon } else { t });
    WINDOWS_LOOKED_AT.set(Some((Instant::now(), next)));
    shmem::wake_at(database, next);
}

/// Does the next thing there is to do.
fn work_once() -> Turn {
    let claim = match simple_query::transaction(claim) {
        Ok(claim) => claim,
        Err(e) => {
            simple_query::log(&format!("could not read the queue: {}", e.message));
            return Turn::Idle;
        }
    };
    UNDER_WAY.set(match &claim {
        Claim::Run(step, _) | Claim::Recover(step, _) => Some(step.version.clone()),
        // Its next phase waits for the applier lock.
        Claim::Busy => UNDER_WAY.take(),
        _ => None,
    });
    let recorded = match claim {
        // Until it can go on, the migration keeps the session: batches would reset it.
        Claim::Busy if UNDER_WAY.with_borrow(Option::is_some) => return Turn::Busy,
        // Backfill batches run whenever no migration phase is ready: between migrations,
        // while one waits for its backfill, and while an applier holds the lock.
        Claim::Idle | Claim::Busy => {
            return match backfill::turn() {
                backfill::Turn::Ran => Turn::Worked,
                backfill::Turn::Wait(pause) => Turn::Wait(pause),
                backfill::Turn::Idle if matches!(claim, Claim::Busy) => Turn::Busy,
                backfill::Turn::Idle => Turn::Idle,
            }
        }
        Claim::Gone => return Turn::Gone,
        Claim::Restart => return Turn::Restart,
        // Nothing runs until ALTER EXTENSION ... UPDATE, which wakes the worker (or asks the
        // launcher for one) when it commits: said once, then idle like a worker with nothing
        // to do, which exits after migrate.worker_idle_timeout and frees its slot.
        Claim::Stale(why) => {
            if !STALE_REPORTED.replace(true) {
                simple_query::log(&format!(
                    "{why}; waiting for ALTER EXTENSION pg_migrate UPDATE before running anything"
                ));
            }
            return Turn::Idle;
        }
        Claim::Done => true,
        Claim::Rebuild(invalid) => {
            // Their steps are pending again already; a drop that fails makes the rebuild
            // fail visibly (the name is taken).
            for index in invalid {
                let _ = drop_index_concurrently(&index);
            }
            true
        }
        Claim::Recover(step, form) => {
            let outcome = recover(&step, &form);
            record(|| match outcome {
                Ok(Some(built)) => steps::done(&step, built.as_deref()),
                Ok(None) => steps::restart(&step),
                Err(error) => steps::failed(&step, &error),
            })
        }
        Claim::Run(step, form) => match step.kind {
            PhaseKind::Transaction => run_transaction_phase(&step),
            PhaseKind::TopLevel => run_top_level_phase(&step, &form),
            PhaseKind::Backfill => run_backfill_phase(&step),
        },
    };
    // When the outcome could not be recorded, pause: the step, still marked running, is
    // recovered on the next look.
    if recorded {
        Turn::Worked
    } else {
        Turn::Idle
    }
}

fn record(f: impl FnOnce()) -> bool {
    simple_query::record("a phase's outcome", f)
}

/// Decides, in one transaction under the applier lock, what to do next, and marks a step
/// running before it runs. The lock is only tried: a submitter holding it wakes the worker
/// again when it commits, and the worker polls while anyone else holds it.
fn claim() -> Claim {
    if !catalog::extension_installed() {
        return Claim::Gone;
    }
    if let Err(stale) = crate::history::lock::refuse_stale_objects() {
        return Claim::Stale(stale.message);
    }
    if !crate::history::lock::try_lock_history() {
        return if steps::has_work() {
            Claim::Busy
        } else {
            Claim::Idle
        };
    }
    // Where the phases and migrations committed since the last turn end in the WAL. Under
    // the applier lock, which DROP EXTENSION waits for: its locks on the tables are then
    // never taken in the other order.
    crate::history::commit_lsn::record();
    match steps::next() {
        Next::Idle => Claim::Idle,
        Next::Cancel(version) => {
            crate::worker::steering::cancel_migration(&version);
            Claim::Done
        }
        Next::Complete(version) => {
            // Applied only once every index it built is valid. One dropped or renamed by a
            // later phase is no longer this migration's concern.
            let invalid: Vec<String> = steps::built_indexes(&version)
                .into_iter()
                .filter(|i| catalog::index_is_valid(i) == Some(false))
                .collect();
            if invalid.is_empty() {
                steps::complete(&version);
                return Claim::Done;
            }
            for index in &invalid {
                steps::rebuild(&version, index);
            }
            Claim::Rebuild(invalid)
        }
        Next::Step(step) if step.kind == PhaseKind::Backfill && step.backfill_id.is_some() => {
            // The phase's job is under way: its batches run in backfill turns. A retried
            // migration resumes it where it stopped.
            match step.backfill_id {
                Some(job) if !step.interrupted => {
                    backfill::resume_for_retry(job);
                    Claim::Done
                }
                _ => Claim::Idle,
            }
        }
        Next::Step(step) => {
            // A migration that is not the one the session last served starts with the
            // settings the database has now (ALTER DATABASE ... SET committed before
            // migrate.apply is the DBA's intent), in a new session; nothing is marked yet.
            if settings_given_since_start()
                && UNDER_WAY.with_borrow(|v| v.as_deref() != Some(step.version.as_str()))
            {
                return Claim::Restart;
            }
            // Names in the statement are resolved as the submitter's session would.
            for (name, value) in &submitter::session_settings(&step.settings) {
                crate::pg::guc::set(
                    name,
                    Some(value),
                    SUPERUSER,
                    pg_sys::GucAction::GUC_ACTION_LOCAL,
                );
            }
            let form = match step.kind {
                PhaseKind::TopLevel => statement_form(&step.sql),
                PhaseKind::Transaction | PhaseKind::Backfill => TopLevelForm::Other,
            };
            if step.interrupted && step.kind == PhaseKind::TopLevel {
                return Claim::Recover(step, form);
            }
            let table = form.table();
            let before = table.map(catalog::index_names).unwrap_or_default();
            let table_name = table.and_then(catalog::relation_name);
            steps::start(&step, table_name.as_deref(), &before);
            let step = Step {
                indexes_before: before,
                ..step
            };
            Claim::Run(step, form)
        }
    }
}

/// Runs a transactional phase; false if its outcome could not be recorded.
fn run_transaction_phase(step: &Step) -> bool {
    let what = format!("migration {} phase {}", step.version, step.phase);
    let result = as_submitter(step, || {
        simple_query::transaction(|| {
            let statements = phase_statements(&what, step);
            let outcome = attempt::run(&what, &step.sql, &statements, Policy::from_settings());
            steps::add_waits(step, outcome.retries, outcome.lock_wait);
            steps::done(step, None);
        })
    });
    match result {
        Ok(()) => true,
        Err(error) => record(|| steps::failed(step, &error)),
    }
}

/// Runs a backfill phase: submits its job, which the phase then waits for. False if its
/// outcome could not be recorded.
fn run_backfill_phase(step: &Step) -> bool {
    let what = format!("migration {} phase {}", step.version, step.phase);
    let result = as_submitter(step, || {
        simple_query::transaction(|| {
            phase_statements(&what, step);
            backfill::submit_phase(&step.version, step.phase, &step.sql)
        })
    });
    match result {
        Ok(()) => true,
        Err(error) => record(|| steps::failed(step, &error)),
    }
}

/// Runs a top-level phase; false if its outcome could not be recorded.
fn run_top_level_phase(step: &Step, form: &TopLevelForm) -> bool {
    let before = &step.indexes_before;
    // The backoff is read under the submitter's limits, for a retry.
    let (backoff, ran) = as_submitter(step, || {
        Ok((Backoff::from_settings(), simple_query::run(&step.sql)))
    })
    .unwrap_or_else(|e| (Backoff::from_settings(), Err(e)));
    let result = ran.and_then(|()| match form {
        TopLevelForm::CreateIndex(table, name) => {
            built_index(*table, name.as_deref(), before, &step.version)
        }
        _ => Ok(None),
    });
    let error = match result {
        Ok(built) => return record(|| steps::done(step, built.as_deref())),
        Err(error) => error,
    };
    // A failed CONCURRENTLY command leaves an INVALID index behind; it must not stay, nor
    // make a retry's IF NOT EXISTS skip the build. If it cannot be dropped, the step fails:
    // a retry would not build the index.
    if let Some(table) = form.table() {
        if let Err(cleanup) = drop_leftovers(step, table) {
            return record(|| steps::failed(step, &cleanup));
        }
    }
    let attempts_allowed = gucs::INDEX_BUILD_RETRIES.get().max(0) + 1;
    if backoff::transient(&error) && step.attempts + 1 < attempts_allowed {
        let recorded = record(|| steps::failed_attempt(step, &error));
        // The backoff of migrate.apply's lock retries.
        backoff::sleep(backoff.delay(step.attempts as u32 + 1, backoff::random_unit()));
        recorded
    } else {
        record(|| steps::failed(step, &error))
    }
}

/// The index a CREATE INDEX CONCURRENTLY that succeeded built. A named one must be valid:
/// with IF NOT EXISTS, PostgreSQL skips the build when an index of that name exists, even
/// an INVALID one.
fn built_index(
    table: pg_sys::Oid,
    name: Option<&str>,
    before: &[String],
    version: &str,
) -> Result<Option<String>, Caught> {
    let Some(name) = name else {
        return simple_query::transaction(|| catalog::new_valid_index(table, before));
    };
    match simple_query::transaction(|| catalog::index_is_valid(name))? {
        Some(true) => Ok(Some(name.to_string())),
        found => Err(Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "index {name} is {} after the statement",
                if found.is_some() {
                    "INVALID"
                } else {
                    "missing"
                }
            ),
            "An index of that name already existed and was not valid, so CREATE INDEX \
             IF NOT EXISTS skipped the build, or the index was dropped meanwhile.",
            format!(
                "DROP INDEX CONCURRENTLY {name}; then SELECT migrate.retry({});",
                pgrx::spi::quote_literal(version)
            ),
        )
        .into()),
    }
}

/// After an interruption: cleans up what the statement left half done, and says whether it
/// in fact completed (`Some`, with the index it built, if any) or must run again (`None`).
fn recover(step: &Step, form: &TopLevelForm) -> Result<Option<Option<String>>, Caught> {
    let before = &step.indexes_before;
    match form {
        TopLevelForm::CreateIndex(table, name) => {
            drop_leftovers(step, *table)?;
            let built = match name {
                Some(name) => simple_query::transaction(|| catalog::index_is_valid(name))?
                    .filter(|valid| *valid)
                    .map(|_| name.clone()),
                None => simple_query::transaction(|| catalog::new_valid_index(*table, before))?,
            };
            Ok(built.map(Some))
        }
        TopLevelForm::Reindex(table) => {
            drop_leftovers(step, *table)?;
            Ok(None)
        }
        TopLevelForm::DropIndex(table, names) => {
            if let Some(table) = table {
                drop_leftovers(step, *table)?;
            }
            // Gone already: the drop finished before the interruption.
            Ok(names.is_empty().then_some(None))
        }
        TopLevelForm::Detach(parent) => {
            let pending = simple_query::transaction(|| catalog::detach_pending(*parent))?;
            let Some(parent_name) = simple_query::transaction(|| catalog::relation_name(*parent))?
            else {
                return Ok(None);
            };
            for partition in &pending {
                let finalize =
                    format!("ALTER TABLE {parent_name} DETACH PARTITION {partition} FINALIZE");
                as_submitter(step, || simple_query::run(&finalize))?;
            }
            Ok((!pending.is_empty()).then_some(None))
        }
        TopLevelForm::Other => Ok(None),
    }
}

/// Drops the INVALID indexes on `table` that were not there before the step began, as the
/// submitter: PostgreSQL's ownership check then keeps the cleanup to what the submitter
/// could drop itself (another role's build under way on the same table is not theirs).
fn drop_leftovers(step: &Step, table: pg_sys::Oid) -> Result<(), Caught> {
    let leftovers =
        simple_query::transaction(|| catalog::leftover_indexes(table, &step.indexes_before))?;
    if leftovers.is_empty() {
        return Ok(());
    }
    as_submitter(step, || {
        leftovers
            .iter()
            .try_for_each(|index| drop_index_concurrently(index))
    })
}

fn drop_index_concurrently(index: &str) -> Result<(), Caught> {
    simple_query::run(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}")).inspect_err(|e| {
        simple_query::log(&format!(
            "could not drop the invalid index {index}: {}",
            e.message
        ))
    })
}

fn statement_form(sql: &str) -> TopLevelForm {
    match parse::parse(sql) {
        Ok(trees) => trees.first().map_or(TopLevelForm::Other, |(_, tree)| {
            parsetree::top_level_form(*tree)
        }),
        Err(_) => TopLevelForm::Other,
    }
}

/// The phase's statements, numbered and located as in the whole migration. They parsed when
/// submitted; an error here (a server upgrade changed the grammar) fails the phase.
///
/// The text is split again under the submitter's standard_conforming_strings (carried with
/// the migration), so it splits as it did when the guard judged it and the history recorded
/// it. A text that splits into other statements anyway is never run.
fn phase_statements(what: &str, step: &Step) -> Vec<Statement> {
    let parsed = parse::parse(&step.sql).unwrap_or_else(|e| e.problem(what, &step.sql).raise());
    let recorded = (step.last_statement - step.first_statement + 1).max(0) as usize;
    if let Some(p) = split_differs(what, parsed.len(), recorded) {
        p.raise();
    }
    parsed
        .into_iter()
        .map(|(mut st, _)| {
            st.number += step.first_statement as usize - 1;
            st.line += step.first_line as usize - 1;
            st
        })
        .collect()
}

/// The refusal for a phase whose text no longer splits into the statements recorded for it.
fn split_differs(what: &str, parsed: usize, recorded: usize) -> Option<Problem> {
    (parsed != recorded).then(|| {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "{what} splits into {parsed} statements, not the {recorded} that were judged \
                 and recorded"
            ),
            "The phase's text is parsed again before it runs; under the settings it was \
             submitted with (standard_conforming_strings) it must give exactly the statements \
             the guard judged. Nothing of the phase ran.",
            "Cancel the migration with migrate.cancel and apply it again under the settings \
             it is meant for.",
        )
    })
}

/// Runs `f` as the migration's submitter would: their role, their settings (search_path,
/// migrate.* limits), and the migration marked as running for the guard and the DDL log.
fn as_submitter<T>(step: &Step, f: impl FnOnce() -> Result<T, Caught>) -> Result<T, Caught> {
    submitter::as_role(
        &Owner::Migration(step.version.clone()),
        &step.role,
        &step.settings,
        || crate::migration::running::with_running(step.running(), f),
    )
}
