//! `migrate.step_records` (read through the view `migrate.steps`): the phases of migrations run
//! by the background worker, and the state transitions the worker and the control functions
//! make on them. Every write runs as the tables' owner with `search_path` pinned; reads go
//! through the view, as the caller.

use crate::migration::phases::{Phase, PhaseKind};
use crate::migration::running::Running;
use crate::migration::status::{Status, StepState};
use crate::pg::subxact::Caught;
use pgrx::datum::DatumWithOid;

/// Records the phases of a migration just submitted.
pub fn insert(version: &str, script: &str, phases: &[Phase]) {
    for phase in phases {
        write(
            "INSERT INTO migrate.step_records (version, phase, kind, first_statement, last_statement, \
               first_line, sql) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                version.into(),
                (phase.number as i32).into(),
                phase.kind.name().into(),
                (phase.first_statement as i32).into(),
                (phase.last_statement as i32).into(),
                (phase.first_line as i32).into(),
                phase.text(script).into(),
            ],
        );
    }
}

/// Adds a watched migration's rollback script as phases after its own, and queues the
/// migration for the worker again: the rollback runs forward, recorded and judged as any
/// phase. Returns the number of its first phase.
pub fn insert_rollback(version: &str, script: &str, phases: &[Phase]) -> i32 {
    let before: i32 = crate::pg::spi::kept_value_as_owner(
        "SELECT coalesce(max(phase), 0) FROM migrate.step_records WHERE version = $1",
        &[version.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0);
    for phase in phases {
        write(
            "INSERT INTO migrate.step_records (version, phase, kind, first_statement, last_statement, \
               first_line, sql, rollback) VALUES ($1, $2, $3, $4, $5, $6, $7, true)",
            &[
                version.into(),
                (before + phase.number as i32).into(),
                phase.kind.name().into(),
                (phase.first_statement as i32).into(),
                (phase.last_statement as i32).into(),
                (phase.first_line as i32).into(),
                phase.text(script).into(),
            ],
        );
    }
    write(
        "UPDATE migrate.history SET status = 'pending', finished_at = NULL, \
           commit_xid = NULL, commit_lsn = NULL, phases = $2 WHERE version = $1",
        &[version.into(), (before + phases.len() as i32).into()],
    );
    before + 1
}

/// What the worker should do next in this database.
#[derive(Debug, Clone)]
pub enum Next {
    /// Nothing pending (or the oldest unfinished migration failed: later ones wait for it).
    Idle,
    /// Run (or resume) this step.
    Step(Step),
    /// Every phase of this migration is done: verify and complete it.
    Complete(String),
    /// This migration was asked to stop.
    Cancel(String),
}

#[derive(Debug, Clone)]
pub struct Step {
    pub version: String,
    pub phase: i32,
    pub kind: PhaseKind,
    pub first_statement: i32,
    pub last_statement: i32,
    pub first_line: i32,
    pub sql: String,
    /// It was running when the worker stopped: a crash, a restart, a kill.
    pub interrupted: bool,
    pub attempts: i32,
    pub indexes_before: Vec<String>,
    /// Who submitted the migration, and how: the phase runs with their role and settings
    /// (search_path, migrate.lock_timeout and the like, as (name, value)), and the guard's
    /// overrides and rollback of the migration.
    pub role: String,
    pub settings: Vec<(String, String)>,
    pub allow: Vec<String>,
    pub has_rollback: bool,
    /// For a backfill phase: the job it submitted, once it has.
    pub backfill_id: Option<i64>,
}

impl Step {
    /// The migration, as the guard and the DDL log see one running.
    pub fn running(&self) -> Running {
        Running {
            version: self.version.clone(),
            has_rollback: self.has_rollback,
            allow: self.allow.clone(),
        }
    }
}

/// A flattened two-dimensional text array of [name, value] rows, as pairs.
pub(crate) fn pairs(flat: Vec<Option<String>>) -> Vec<(String, String)> {
    flat.chunks_exact(2)
        .filter_map(|kv| Some((kv[0].clone()?, kv[1].clone()?)))
        .collect()
}

/// Whether any migration waits for the worker (read without the applier lock).
pub fn has_work() -> bool {
    read_row::<bool>(
        "SELECT EXISTS (SELECT FROM migrate.history WHERE status IN ('pending', 'running'))",
        &[],
        |r| Ok(r.get(1)?.unwrap_or(false)),
    )
    .unwrap_or(false)
}

/// The next thing to do, oldest version first.
pub fn next() -> Next {
    let head = read_row::<(Option<String>, Option<String>, Option<bool>)>(
        // A migration under way finishes before any other starts, even a lower version
        // submitted meanwhile (with migrate.out_of_order).
        "SELECT version, status, cancel_requested FROM migrate.history \
         WHERE status IN ('pending', 'running', 'failed') \
         ORDER BY status = 'running' DESC, version_key LIMIT 1",
        &[],
        |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?)),
    );
    let Some((Some(version), Some(status), cancel)) = head else {
        return Next::Idle;
    };
    if Status::parse(&status) == Some(Status::Failed) {
        return Next::Idle;
    }
    let step = read_row(
        "SELECT s.phase, s.kind, s.first_statement, s.first_line, s.sql, s.state = 'running', \
                s.attempts, s.indexes_before, h.applied_role::text, \
                ARRAY(SELECT ARRAY[key, value] FROM jsonb_each_text(h.settings)), \
                h.allowed_rules, h.rollback_script IS NOT NULL, s.backfill_id, \
                s.last_statement \
         FROM migrate.steps s JOIN migrate.history h USING (version) \
         WHERE s.version = $1 AND s.state <> 'done' ORDER BY s.phase LIMIT 1",
        &[version.as_str().into()],
        |r| {
            Ok(Step {
                version: version.clone(),
                phase: r.get(1)?.unwrap_or(1),
                kind: PhaseKind::from_name(&r.get::<String>(2)?.unwrap_or_default()),
                first_statement: r.get(3)?.unwrap_or(1),
                last_statement: r.get(14)?.unwrap_or(1),
                first_line: r.get(4)?.unwrap_or(1),
                sql: r.get(5)?.unwrap_or_default(),
                interrupted: r.get(6)?.unwrap_or(false),
                attempts: r.get(7)?.unwrap_or(0),
                indexes_before: r
                    .get::<Vec<Option<String>>>(8)?
                    .unwrap_or_default()
                    .into_iter()
                    .flatten()
                    .collect(),
                role: r.get(9)?.unwrap_or_default(),
                settings: pairs(r.get::<Vec<Option<String>>>(10)?.unwrap_or_default()),
                allow: r
                    .get::<Vec<Option<String>>>(11)?
                    .unwrap_or_default()
                    .into_iter()
                    .flatten()
                    .collect(),
                has_rollback: r.get(12)?.unwrap_or(false),
                backfill_id: r.get(13)?,
            })
        },
    );
    // A cancel waits for an interrupted step's recovery (its INVALID index must not stay),
    // and comes too late for a migration with nothing left to run. A backfill under way
    // stops after its current batch.
    match step {
        Some(step) if cancel == Some(true) && (!step.interrupted || step.backfill_id.is_some()) => {
            Next::Cancel(version)
        }
        Some(step) => Next::Step(step),
        None => Next::Complete(version),
    }
}

/// The step starts an attempt: committed before the work, so that `migrate.steps` shows it
/// running and a crash leaves it marked as interrupted.
pub fn start(step: &Step, target_table: Option<&str>, indexes_before: &[String]) {
    write(
        "UPDATE migrate.step_records SET state = 'running', attempts = attempts + 1, \
           started_at = pg_catalog.clock_timestamp(), finished_at = NULL, \
           worker_pid = pg_catalog.pg_backend_pid(), target_table = $3, indexes_before = $4, \
           error_sqlstate = NULL, error_message = NULL, error_detail = NULL \
         WHERE version = $1 AND phase = $2",
        &[
            step.version.as_str().into(),
            step.phase.into(),
            target_table.into(),
            indexes_before.to_vec().into(),
        ],
    );
    write(
        "UPDATE migrate.history SET status = 'running' WHERE version = $1 AND status = 'pending'",
        &[step.version.as_str().into()],
    );
}

pub fn done(step: &Step, built_index: Option<&str>) {
    write(
        "UPDATE migrate.step_records SET state = 'done', finished_at = pg_catalog.clock_timestamp(), \
           built_index = coalesce($3, built_index), \
           commit_xid = pg_catalog.pg_current_xact_id(), commit_lsn = NULL \
         WHERE version = $1 AND phase = $2",
        &[
            step.version.as_str().into(),
            step.phase.into(),
            built_index.into(),
        ],
    );
    crate::pg::commit_lsn::keep_at_commit();
}

/// Adds a transactional phase's lock retries and lock wait to its migration's totals.
pub fn add_waits(step: &Step, retries: u32, lock_wait: std::time::Duration) {
    write(
        "UPDATE migrate.history SET retries = retries + $2, \
           lock_wait = lock_wait + make_interval(secs => $3) WHERE version = $1",
        &[
            step.version.as_str().into(),
            (retries as i32).into(),
            lock_wait.as_secs_f64().into(),
        ],
    );
}

/// The attempt failed and will be retried: the error stays visible until the next attempt.
pub fn failed_attempt(step: &Step, error: &Caught) {
    record_error(step, error, StepState::Pending);
}

/// The step failed for good: the migration fails with it and nothing later runs.
pub fn failed(step: &Step, error: &Caught) {
    record_error(step, error, StepState::Failed);
    write(
        "UPDATE migrate.history SET status = 'failed' WHERE version = $1",
        &[step.version.as_str().into()],
    );
}

fn record_error(step: &Step, error: &Caught, state: StepState) {
    write(
        "UPDATE migrate.step_records SET state = $3, finished_at = pg_catalog.clock_timestamp(), \
           error_sqlstate = $4, error_message = $5, error_detail = $6 \
         WHERE version = $1 AND phase = $2",
        &[
            step.version.as_str().into(),
            step.phase.into(),
            state.as_str().into(),
            crate::errors::sqlstate(error.code).into(),
            error.message.as_str().into(),
            error.detail.clone().into(),
        ],
    );
}

/// Every phase done and verified: the migration is applied, with what its phases changed.
pub fn complete(version: &str) {
    // Its own changes first: an object it touched that DDL outside migrations also touched
    // meanwhile is its change.
    let schema = crate::history::record::changes(
        version,
        "the worker records the migration again at its next turn",
    );
    crate::history::record::drift();
    write(
        "UPDATE migrate.history SET status = 'applied', finished_at = pg_catalog.clock_timestamp(), \
           cancel_requested = false, fingerprint = $2, changes = $3, \
           commit_xid = pg_catalog.pg_current_xact_id(), commit_lsn = NULL \
         WHERE version = $1",
        &[
            version.into(),
            schema.fingerprint.into(),
            schema.changes.into(),
        ],
    );
    crate::pg::commit_lsn::keep_at_commit();
}

/// Stops a migration at a phase boundary: what did not run is cancelled. Called through
/// `worker::steering::cancel_migration`, which cancels its backfill jobs too.
pub fn cancel(version: &str) {
    write(
        "UPDATE migrate.step_records SET state = 'cancelled' WHERE version = $1 \
           AND (state IN ('pending', 'failed') OR (state = 'running' AND backfill_id IS NOT NULL))",
        &[version.into()],
    );
    crate::history::record::abandon(version);
    write(
        "UPDATE migrate.history SET status = 'cancelled', cancel_requested = false WHERE version = $1",
        &[version.into()],
    );
}

/// A backfill job's end, failure, cancellation or resumption, carried to the migration phase
/// it is and (but for its end, which lets the next phase run) to the migration.
pub fn follow_backfill(id: i64, state: StepState, error: Option<&Caught>) {
    write(
        "UPDATE migrate.step_records SET state = $2, \
           finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE clock_timestamp() END, \
           error_sqlstate = $3, error_message = $4, error_detail = $5 \
         WHERE backfill_id = $1",
        &[
            id.into(),
            state.as_str().into(),
            error.map(|e| crate::errors::sqlstate(e.code)).into(),
            error.map(|e| e.message.clone()).into(),
            error.and_then(|e| e.detail.clone()).into(),
        ],
    );
    if state == StepState::Done {
        return;
    }
    write(
        "UPDATE migrate.history SET status = $2, cancel_requested = false \
         WHERE version = (SELECT version FROM migrate.step_records WHERE backfill_id = $1)",
        &[id.into(), state.as_str().into()],
    );
}

/// The step that built `index` builds it again (it was found invalid).
pub fn rebuild(version: &str, index: &str) {
    write(
        "UPDATE migrate.step_records SET state = 'pending', built_index = NULL, \
           commit_xid = NULL, commit_lsn = NULL \
         WHERE version = $1 AND built_index = $2",
        &[version.into(), index.into()],
    );
}

/// The indexes a migration's top-level steps built, for the final verification.
pub fn built_indexes(version: &str) -> Vec<String> {
    crate::pg::spi::pinned_column(
        "SELECT built_index FROM migrate.steps WHERE version = $1 AND built_index IS NOT NULL",
        &[version.into()],
    )
    .unwrap_or_default()
}

fn write(sql: &str, args: &[DatumWithOid]) {
    crate::pg::spi::write_as_owner("migrate.step_records", sql, args);
}

fn read_row<T>(
    sql: &str,
    args: &[DatumWithOid],
    map: impl FnOnce(pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Option<T> {
    crate::pg::spi::read_own_row("migrate.steps", sql, args, map)
}

/// A failed or cancelled migration resumes from its failed (or first unfinished) phase.
pub fn retry(version: &str) {
    write(
        "UPDATE migrate.step_records SET state = 'pending' WHERE version = $1 AND state IN ('failed', 'cancelled')",
        &[version.into()],
    );
    write(
        "UPDATE migrate.history SET status = 'pending', cancel_requested = false WHERE version = $1",
        &[version.into()],
    );
}

/// Asks the worker to stop a running migration at its next phase boundary.
pub fn request_cancel(version: &str) {
    write(
        "UPDATE migrate.history SET cancel_requested = true WHERE version = $1",
        &[version.into()],
    );
}

/// An interrupted step found not to have completed: it runs again from the start.
pub fn restart(step: &Step) {
    write(
        "UPDATE migrate.step_records SET state = 'pending', commit_xid = NULL, commit_lsn = NULL \
         WHERE version = $1 AND phase = $2",
        &[step.version.as_str().into(), step.phase.into()],
    );
}
