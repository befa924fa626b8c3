//! The states of a migration, of its phases, of a backfill job and of a verification, spelt
//! as the `migrate.*` tables spell them (their CHECK constraints list the same words).

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! spelt {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The state a table spells `text`; None for a word it never holds. (Answers
            /// that are never read back leave it unused.)
            #[allow(dead_code)]
            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The state a column holds: a word the table never holds (or NULL) is an error.
            #[allow(dead_code)]
            pub fn from_column(text: Option<String>) -> Result<$name, pgrx::spi::Error> {
                text.as_deref()
                    .and_then($name::parse)
                    .ok_or(pgrx::spi::Error::InvalidPosition)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

spelt!(
    /// `migrate.history.status`.
    Status {
        Applied = "applied",
        Baseline = "baseline",
        Pending = "pending",
        Running = "running",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);

impl Status {
    /// Applied or baselined: the version is in the schema once its transaction commits.
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Applied | Status::Baseline)
    }
}

spelt!(
    /// `migrate.window_history.ended`: how an expand window ended.
    WindowEnd {
        Contracted = "contracted",
        Aborted = "aborted",
    }
);

spelt!(
    /// `migrate.steps.state`: one phase of a migration the worker runs.
    StepState {
        Pending = "pending",
        Running = "running",
        Done = "done",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);

spelt!(
    /// `migrate.backfills.state`.
    JobState {
        Running = "running",
        Paused = "paused",
        Done = "done",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);

spelt!(
    /// `migrate.history.verification`.
    Verdict {
        Passed = "passed",
        Failed = "failed",
    }
);

spelt!(
    /// What `migrate.cancel(version)` answers: cancelled at once, or at the running phase's
    /// end.
    CancelReply {
        Cancelled = "cancelled",
        Cancelling = "cancelling",
    }
);

spelt!(
    /// What `migrate.validate` answers for a script that is not an error.
    Validity {
        Valid = "valid",
        Pending = "pending",
        Baseline = "baseline",
    }
);

spelt!(
    /// What `migrate.apply` answers when it runs nothing: the version is there already.
    Skipped {
        AlreadyApplied = "already_applied",
        BelowBaseline = "below_baseline",
    }
);

spelt!(
    /// `migrate.watch_records.state`: a watched migration's health gate.
    WatchState {
        Waiting = "waiting",
        Watching = "watching",
        Complete = "complete",
        Held = "held",
        RollingBack = "rolling back",
        Recovering = "recovering",
        RolledBack = "rolled back",
        RollbackFailed = "rollback failed",
        Rejected = "rejected",
    }
);

impl WatchState {
    /// The gate is open: the migration's effect on the workload is not settled.
    pub fn open(self) -> bool {
        matches!(
            self,
            WatchState::Waiting
                | WatchState::Watching
                | WatchState::Held
                | WatchState::RollingBack
                | WatchState::Recovering
        )
    }
}

spelt!(
    /// `apply(..., on_regression => ...)`: what a failed health gate does.
    OnRegression {
        Hold = "hold",
        Rollback = "rollback",
    }
);

spelt!(
    /// One signal's, or one look's, verdict in `migrate.watch_status`.
    LookVerdict {
        Pass = "pass",
        Fail = "fail",
        Inconclusive = "inconclusive",
        Unavailable = "unavailable",
        // Reported, never deciding: checksum failures, unused indexes, drift.
        Alert = "alert",
    }
);

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn every_state_reads_back_as_spelt() {
        for s in [
            Status::Applied,
            Status::Baseline,
            Status::Pending,
            Status::Running,
            Status::Failed,
            Status::Cancelled,
        ] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in [
            JobState::Running,
            JobState::Paused,
            JobState::Done,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(StepState::parse("done"), Some(StepState::Done));
        assert_eq!(Status::parse("done"), None);
        assert_eq!(Verdict::Passed.to_string(), "passed");
    }
}
