//! The time-to-live of expand windows, kept by the database worker: at half and at nine
//! tenths of a window's time a warning, and at its end an alert, each in the server log and
//! as `NOTIFY migrate_window`, once (recorded in `alerts_sent`); then the worker asks to be
//! woken at the next one, even if it exits meanwhile.

use crate::errors::{OrBookkeeping, Problem};
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// The marks, in percent of the time-to-live, at which a window alerts.
pub const MARKS: [i32; 3] = [50, 90, 100];

/// The highest mark a window has reached `used` percent of the way through its time, if it
/// is above the last one alerted.
pub fn mark_due(used: f64, sent: i32) -> Option<i32> {
    MARKS
        .iter()
        .rev()
        .copied()
        .find(|&m| used >= f64::from(m))
        .filter(|&m| m > sent)
}

/// What the alert at `mark` says.
pub fn alert(version: &str, mark: i32, expires_at: &str) -> (PgLogLevel, Problem) {
    let (level, message) = if mark >= 100 {
        (
            PgLogLevel::WARNING,
            format!("the expand window of version {version} expired at {expires_at}"),
        )
    } else {
        (
            if mark >= 90 {
                PgLogLevel::WARNING
            } else {
                PgLogLevel::LOG
            },
            format!(
                "the expand window of version {version} has used {mark}% of its time-to-live; \
                 it expires at {expires_at}"
            ),
        )
    };
    (
        level,
        Problem::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            message,
            "Its dual-write bridges cost every write to its tables, and no other window opens \
             while an expired one is open.",
            format!(
                "Once no client of the old version is left: SELECT migrate.contract('{version}'); \
                 or give up with SELECT migrate.abort('{version}')."
            ),
        ),
    )
}

/// Sends the alerts that are due and returns when the next one is (TimestampTz), 0 if none.
/// Each window's alert is sent and recorded in one short transaction of the caller's.
pub fn alert_due() -> i64 {
    let due: Vec<(String, i32, String, i32)> = crate::pg::identity::as_owner(|| {
        crate::pg::guc::pinned(|| {
            pgrx::Spi::connect(|client| {
                client
                    .select(
                        "SELECT version, alerts_sent, expires_at::text, \
                                (extract(epoch FROM clock_timestamp() - opened_at) * 100 \
                                 / greatest(extract(epoch FROM ttl), 0.001))::int \
                         FROM migrate.window_history WHERE ended IS NULL AND alerts_sent < 100",
                        None,
                        &[],
                    )?
                    .map(|row| {
                        Ok((
                            row.get::<String>(1)?.unwrap_or_default(),
                            row.get::<i32>(2)?.unwrap_or(0),
                            row.get::<String>(3)?.unwrap_or_default(),
                            row.get::<i32>(4)?.unwrap_or(0),
                        ))
                    })
                    .collect::<Result<Vec<_>, pgrx::spi::Error>>()
            })
        })
    })
    .or_bookkeeping("read migrate.window_history");
    for (version, sent, expires_at, used) in due {
        let Some(mark) = mark_due(f64::from(used), sent) else {
            continue;
        };
        let (level, problem) = alert(&version, mark, &expires_at);
        let payload = format!("{{\"version\": {version:?}, \"alert\": {mark}}}");
        crate::pg::identity::as_owner(|| {
            crate::pg::guc::pinned(|| {
                pgrx::Spi::run_with_args(
                    "UPDATE migrate.window_history SET alerts_sent = $2 WHERE version = $1",
                    &[version.as_str().into(), mark.into()],
                )?;
                pgrx::Spi::run_with_args(
                    "SELECT pg_catalog.pg_notify('migrate_window', $1)",
                    &[payload.as_str().into()],
                )
            })
        })
        .or_bookkeeping("record a window's alert");
        problem.report(level);
    }
    next_alert()
}

/// When the next alert of an open window is due (TimestampTz, microseconds since 2000), 0 if
/// none is.
fn next_alert() -> i64 {
    crate::pg::identity::as_owner(|| {
        crate::pg::spi::pinned_row(
            // PostgreSQL's timestamps count microseconds from 2000-01-01 (946684800 in Unix
            // time).
            "SELECT ((extract(epoch FROM min(opened_at + ttl * (m / 100.0))) - 946684800) \
                     * 1000000)::int8 \
             FROM migrate.window_history, unnest($1::int[]) m \
             WHERE ended IS NULL AND m > alerts_sent",
            &[MARKS.to_vec().into()],
            |row| row.get::<i64>(1),
        )
    })
    .or_bookkeeping("read migrate.window_history")
    .flatten()
    .unwrap_or(0)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn each_mark_alerts_once_and_a_late_look_sends_only_the_highest() {
        assert_eq!(mark_due(10.0, 0), None);
        assert_eq!(mark_due(50.0, 0), Some(50));
        assert_eq!(mark_due(60.0, 50), None);
        assert_eq!(mark_due(95.0, 50), Some(90));
        assert_eq!(mark_due(250.0, 0), Some(100));
        assert_eq!(mark_due(250.0, 100), None);
    }

    #[test]
    fn the_alerts_say_when_and_what_to_do() {
        let (level, p) = alert("43", 90, "2026-12-05 10:00:00+00");
        assert_eq!(level, PgLogLevel::WARNING);
        assert!(p.message.contains("used 90% of its time-to-live"));
        assert!(p.hint.contains("migrate.contract('43')"));
        let (_, p) = alert("43", 100, "2026-12-05 10:00:00+00");
        assert!(p.message.contains("expired at 2026-12-05"));
    }
}
