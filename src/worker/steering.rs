//! Steering what the background worker runs: `migrate.retry` and `migrate.cancel` of a
//! migration, `migrate.pause`, `migrate.resume` and `migrate.cancel` of a backfill job. Every
//! cascade between the two (a cancelled job cancels its migration, a cancelled migration its
//! jobs) is here.

use crate::backfill;
use crate::errors::{OrRaise, Problem};
use crate::history::steps;
use crate::history::{self, Recorded};
use crate::migration::status::{CancelReply, JobState, Status};
use crate::migration::version::Version;
use crate::pg::shmem;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// `migrate.retry(version)`: resumes a failed (or cancelled) migration from the phase that
/// failed; the phases already done are not run again. Returns the new status.
#[pg_extern(volatile, parallel_unsafe)]
fn retry(version: Option<&str>) -> String {
    let recorded = recorded_for("retry migrations", version);
    match recorded.status {
        Status::Failed | Status::Cancelled if crate::window::aborted(&recorded.version) => {
            Problem::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "migration {} opened an expand window that was aborted",
                    recorded.version
                ),
                "Its remaining phases would rebuild a window that no longer exists.",
                "Open a new window under a new version.",
            )
            .raise()
        }
        Status::Failed | Status::Cancelled => {
            crate::pg::identity::require_privileges_of(
                &recorded.applied_role,
                &format!("retry migration {}", recorded.version),
            )
            .or_raise();
            // Another migration's open gate would judge this one's phases as its change.
            crate::watch::refuse_while_open(&recorded.version).or_raise();
            steps::retry(&recorded.version);
            shmem::wake_at_commit();
            Status::Pending.to_string()
        }
        other => wrong_state(
            &recorded,
            other.as_str(),
            "retried",
            "Only failed or cancelled migrations can be retried.",
        ),
    }
}

/// `migrate.cancel(version)`: stops a migration the worker has not finished. One waiting its
/// turn (or failed) is cancelled at once; one running stops at its next phase boundary, so
/// a phase under way (an index build, say) is never cut short. Phases already done stay
/// done. Returns the new status.
#[pg_extern(volatile, parallel_unsafe)]
fn cancel(version: Option<&str>) -> String {
    let recorded = recorded_for("cancel migrations", version);
    if crate::watch::rolling_back(&recorded.version) {
        crate::pg::identity::require_privileges_of(
            &recorded.applied_role,
            &format!("cancel the rollback of migration {}", recorded.version),
        )
        .or_raise();
    }
    match recorded.status {
        Status::Pending | Status::Failed => {
            cancel_migration(&recorded.version);
            // The versions queued behind it may run now; the worker may have gone idle.
            shmem::wake_at_commit();
            CancelReply::Cancelled.to_string()
        }
        Status::Running => {
            steps::request_cancel(&recorded.version);
            shmem::wake_at_commit();
            CancelReply::Cancelling.to_string()
        }
        other => wrong_state(
            &recorded,
            other.as_str(),
            "cancelled",
            "Only pending, running or failed migrations can be cancelled.",
        ),
    }
}

fn recorded_for(action: &str, version: Option<&str>) -> Recorded {
    crate::pg::identity::require_admin(action).or_raise();
    let version = Version::parse(version).or_raise();
    crate::history::lock::refuse_unsafe_context().or_raise();
    crate::history::lock::lock_history();
    history::find(&version).unwrap_or_else(|| {
        Problem::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("version {version} is not recorded"),
            "No migration with that version was applied or submitted.",
            "SELECT * FROM migrate.status; lists the recorded versions.",
        )
        .raise()
    })
}

fn wrong_state(recorded: &Recorded, status: &str, verb: &str, why: &str) -> ! {
    Problem::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "version {} is {status} and cannot be {verb}",
            recorded.version
        ),
        why,
        format!(
            "SELECT * FROM migrate.steps WHERE version = {}; shows its phases.",
            pgrx::spi::quote_literal(&recorded.version)
        ),
    )
    .raise()
}

/// Stops a migration at a phase boundary, and its backfill under way (its progress kept for
/// a retry).
pub fn cancel_migration(version: &str) {
    steps::cancel(version);
    backfill::cancel_with_migration(version);
}

/// `migrate.pause(job)`: no further batch starts until `migrate.resume(job)`; the batch under
/// way, if any, commits first. Returns the new state.
#[pg_extern(volatile, parallel_unsafe)]
fn pause(job: Option<i64>) -> String {
    let (id, summary) = steer_job("pause", job);
    match summary.state {
        JobState::Running | JobState::Paused => {
            let reason = format!("paused by {}", crate::pg::identity::current_user_name());
            backfill::job::set_state(id, JobState::Paused, Some(&reason));
            JobState::Paused.to_string()
        }
        other => wrong_job_state(id, other, "paused", "Only running jobs can be paused."),
    }
}

/// `migrate.resume(job)`: a paused, failed or cancelled job carries on from its last
/// committed batch. Returns the new state.
#[pg_extern(volatile, parallel_unsafe)]
fn resume(job: Option<i64>) -> String {
    let (id, summary) = steer_job("resume", job);
    if let (Some(version), JobState::Failed | JobState::Cancelled) =
        (&summary.version, summary.state)
    {
        Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("backfill {id} is a phase of migration {version}, which is {}", summary.state),
            "Its migration stopped with it; resuming the migration resumes the backfill where it stopped.",
            format!("SELECT migrate.retry({});", pgrx::spi::quote_literal(version)),
        )
        .raise();
    }
    match summary.state {
        JobState::Paused | JobState::Failed | JobState::Cancelled => {
            backfill::job::set_state(id, JobState::Running, None);
            crate::pg::shmem::wake_at_commit();
            JobState::Running.to_string()
        }
        other => wrong_job_state(
            id,
            other,
            "resumed",
            "Only paused, failed or cancelled jobs can be resumed.",
        ),
    }
}

/// `migrate.cancel(job)`: no further batch starts; batches done stay done, and the progress
/// is kept (`migrate.resume` carries on). A job that is a phase of a migration cancels the
/// migration. Returns the new state.
#[pg_extern(volatile, parallel_unsafe, name = "cancel")]
fn cancel_backfill(job: Option<i64>) -> String {
    let (id, summary) = steer_job("cancel", job);
    match summary.state {
        JobState::Running | JobState::Paused | JobState::Failed => {
            backfill::job::set_state(
                id,
                JobState::Cancelled,
                Some(&format!(
                    "cancelled by {}",
                    crate::pg::identity::current_user_name()
                )),
            );
            if let Some(version) = &summary.version {
                cancel_migration(version);
            }
            JobState::Cancelled.to_string()
        }
        other => wrong_job_state(
            id,
            other,
            "cancelled",
            "Only running, paused or failed jobs can be cancelled.",
        ),
    }
}

fn steer_job(verb: &str, job: Option<i64>) -> (i64, backfill::job::Summary) {
    crate::history::lock::refuse_stale_objects().or_raise();
    crate::pg::identity::require_admin(&format!("{verb} backfills")).or_raise();
    let Some(id) = job else {
        crate::backfill::null_argument("job", "the job's id, from migrate.backfill_progress")
    };
    let summary = backfill::job::summary_for_update(id).unwrap_or_else(|| {
        Problem::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("backfill {id} does not exist"),
            "No backfill job has that id.",
            "SELECT * FROM migrate.backfill_progress; lists the jobs.",
        )
        .raise()
    });
    crate::pg::identity::require_privileges_of(&summary.role, &format!("{verb} backfill {id}"))
        .or_raise();
    (id, summary)
}

fn wrong_job_state(id: i64, state: JobState, verb: &str, why: &str) -> ! {
    Problem::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("backfill {id} is {state} and cannot be {verb}"),
        why,
        format!("SELECT * FROM migrate.backfill_progress WHERE job = {id}; shows it."),
    )
    .raise()
}
