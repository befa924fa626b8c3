//! `migrate.retry` and `migrate.cancel`: steering migrations the background worker runs.

use crate::errors::{OrRaise, Problem};
use crate::history::{self, Recorded};
use crate::version::Version;
use crate::{apply, security, shared, steps};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// `migrate.retry(version)`: resumes a failed (or cancelled) migration from the phase that
/// failed; the phases already done are not run again. Returns the new status.
#[pg_extern(volatile, parallel_unsafe)]
fn retry(version: Option<&str>) -> String {
    let recorded = recorded_for("retry migrations", version);
    match recorded.status.as_str() {
        "failed" | "cancelled" => {
            security::require_privileges_of(
                &recorded.applied_role,
                &format!("retry migration {}", recorded.version),
            )
            .or_raise();
            steps::retry(&recorded.version);
            shared::wake_at_commit();
            "pending".into()
        }
        other => wrong_state(
            &recorded,
            other,
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
    match recorded.status.as_str() {
        "pending" | "failed" => {
            steps::cancel(&recorded.version);
            "cancelled".into()
        }
        "running" => {
            steps::request_cancel(&recorded.version);
            shared::wake_at_commit();
            "cancelling".into()
        }
        other => wrong_state(
            &recorded,
            other,
            "cancelled",
            "Only pending, running or failed migrations can be cancelled.",
        ),
    }
}

fn recorded_for(action: &str, version: Option<&str>) -> Recorded {
    security::require_admin(action).or_raise();
    let version = Version::parse(version).or_raise();
    apply::refuse_unsafe_context().or_raise();
    apply::lock_history();
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
