//! The time-to-live of expand windows, kept by the database worker: at half and at nine
//! tenths of a window's time a warning, and at its end an alert, each in the server log and
//! as `NOTIFY migrate_window`, once (recorded in `alerts_sent`); then the worker asks to be
//! woken at the next one, even if it exits meanwhile.

use crate::errors::{OrBookkeeping, OrRaise, Problem};
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// What the worker does once a window has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExpiry {
    /// Alert only (at 50%, 90% and 100%); no new window opens until it ends.
    Alert,
    /// Contract once the old version has not written for `migrate.window_quiet_time`.
    Contract,
    /// Abort if the new version never wrote.
    Abort,
}

impl OnExpiry {
    pub fn as_str(self) -> &'static str {
        match self {
            OnExpiry::Alert => "alert",
            OnExpiry::Contract => "contract",
            OnExpiry::Abort => "abort",
        }
    }

    pub fn parse(text: &str) -> Result<OnExpiry, Problem> {
        [OnExpiry::Alert, OnExpiry::Contract, OnExpiry::Abort]
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| {
                Problem::new(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("on_expiry must be alert, contract or abort, not {text:?}"),
                    "It says what the background worker does once the window has expired.",
                    "Give on_expiry => 'alert' (the default), 'contract' or 'abort'.",
                )
            })
    }
}

/// Whether an expired, published window's policy may act now: contract once the old version
/// has been quiet for the quiet time; abort once the new version has had the quiet time to
/// write since publication and has written nothing.
pub fn policy_may_act(
    policy: OnExpiry,
    old_quiet_s: f64,
    quiet_s: f64,
    new_writes: i64,
    published_s: f64,
) -> bool {
    match policy {
        OnExpiry::Alert => false,
        OnExpiry::Contract => old_quiet_s >= quiet_s,
        OnExpiry::Abort => new_writes == 0 && published_s >= quiet_s,
    }
}

/// The seconds an interval stands for, a month counted as 30 days (as PostgreSQL's
/// `extract(epoch FROM interval)` does).
pub fn interval_seconds(interval: &Interval) -> i64 {
    (i64::from(interval.months()) * 30 * 86_400)
        + (i64::from(interval.days()) * 86_400)
        + interval.micros() / 1_000_000
}

/// A window's time-to-live after `extra_s` more: the new ttl and the last alert to count as
/// sent (the marks already behind it; the later ones alert again), given the seconds since
/// it opened and the largest ttl allowed.
pub fn extended(
    ttl_s: i64,
    extra_s: i64,
    elapsed_s: f64,
    max_s: i64,
) -> Result<(i64, i32), Problem> {
    let bad = |message: String, detail: String, hint: &str| {
        Err(Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            message,
            detail,
            hint,
        ))
    };
    if extra_s <= 0 {
        return bad(
            "a window is extended by a positive interval".into(),
            format!("{extra_s} s was given."),
            "Give the time to add, e.g. '1 day'.",
        );
    }
    let new_ttl = ttl_s.saturating_add(extra_s);
    if new_ttl > max_s {
        return bad(
            format!(
                "the window's time-to-live would be {new_ttl} s, over migrate.max_window_ttl \
                 ({max_s} s)"
            ),
            format!("It is {ttl_s} s since the window opened; {extra_s} s more was asked."),
            "Contract or abort the window; a superuser may raise migrate.max_window_ttl.",
        );
    }
    if (new_ttl as f64) <= elapsed_s {
        return bad(
            "the window would still be expired".into(),
            format!(
                "It opened {elapsed_s:.0} s ago with a time-to-live of {ttl_s} s; {extra_s} s \
                 more does not reach now."
            ),
            "Give a longer interval.",
        );
    }
    let used = elapsed_s * 100.0 / new_ttl as f64;
    Ok((new_ttl, mark_due(used, 0).unwrap_or(0)))
}

/// Gives an open window more time, with the reason recorded beside the others (in
/// `migrate.window_history.extensions`), logged and sent as `NOTIFY migrate_window`. An
/// expired window keeps new windows from opening until it ends or is extended.
#[pg_extern(volatile, parallel_unsafe)]
fn extend(
    version: Option<&str>,
    extra: Option<Interval>,
    reason: Option<&str>,
) -> Option<TimestampWithTimeZone> {
    crate::pg::identity::require_admin("extend expand windows").or_raise();
    let version = crate::migration::version::Version::parse(version).or_raise();
    let reason = reason.map(str::trim).filter(|r| !r.is_empty()).unwrap_or_else(|| {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "a window is extended only with a reason",
            "The reason is recorded with the extension, for whoever looks at the window next.",
            format!("SELECT migrate.extend('{version}', '1 day', 'why the old clients need longer')."),
        )
        .raise()
    });
    let Some(extra) = extra else {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "a window is extended by a positive interval",
            "The interval was NULL.",
            "Give the time to add, e.g. '1 day'.",
        )
        .raise()
    };
    // The row locked: a concurrent extend, contract or abort waits for this one.
    let row = crate::pg::spi::kept_as_owner(
        "SELECT extract(epoch FROM ttl)::int8, \
                    extract(epoch FROM clock_timestamp() - opened_at)::float8, ended \
             FROM migrate.window_history WHERE version = $1 FOR UPDATE",
        &[version.as_str().into()],
        |row| {
            row.map(|row| {
                Ok((
                    row.get::<i64>(1)?.unwrap_or(0),
                    row.get::<f64>(2)?.unwrap_or(0.0),
                    row.get::<String>(3)?,
                ))
            })
            .transpose()
        },
    )
    .or_bookkeeping("read migrate.window_history");
    let Some((ttl_s, elapsed_s, ended)) = row else {
        Problem::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("version {version} has no expand window"),
            "migrate.window_history has no row for it.",
            "See migrate.windows for the windows there are.",
        )
        .raise()
    };
    if let Some(ended) = ended {
        Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the expand window of version {version} has already been {ended}"),
            "Only an open window has a time-to-live.",
            "Nothing is left to do for it.",
        )
        .raise();
    }
    let max_s = i64::from(crate::gucs::MAX_WINDOW_TTL_S.get());
    let (new_ttl, alerts_sent) =
        extended(ttl_s, interval_seconds(&extra), elapsed_s, max_s).or_raise();
    let by = crate::pg::identity::current_user_name();
    let expires_at = crate::pg::spi::kept_as_owner(
        "UPDATE migrate.window_history \
             SET ttl = make_interval(secs => $2), \
                 expires_at = opened_at + make_interval(secs => $2), alerts_sent = $3, \
                 extensions = extensions || jsonb_build_array(jsonb_build_object( \
                   'at', clock_timestamp(), 'by', $4::text, \
                   'extra', make_interval(secs => $2 - extract(epoch FROM ttl)::int8), \
                   'reason', $5::text, \
                   'expires_at', opened_at + make_interval(secs => $2))) \
             WHERE version = $1 RETURNING expires_at",
        &[
            version.as_str().into(),
            new_ttl.into(),
            alerts_sent.into(),
            by.as_str().into(),
            reason.into(),
        ],
        |row| {
            Ok(row
                .map(|row| row.get::<TimestampWithTimeZone>(1))
                .transpose()?
                .flatten())
        },
    )
    .or_bookkeeping("write migrate.window_history");
    let until = expires_at.map(|t| t.to_string()).unwrap_or_default();
    notify(
        &serde_json::json!({"version": version.as_str(), "extended_to": until, "reason": reason}),
    );
    Problem::new(
        PgSqlErrorCode::ERRCODE_WARNING,
        format!("the expand window of version {version} was extended to {until} by {by}"),
        format!("Reason: {reason}"),
        format!("See migrate.windows; end it with migrate.contract('{version}') or migrate.abort('{version}')."),
    )
    .report(PgLogLevel::LOG);
    // The worker keeps the alerts' times: it reads the new one once this commits.
    crate::pg::shmem::wake_at_commit();
    expires_at
}

/// Sends `payload` on the `migrate_window` channel, as the owner.
fn notify(payload: &serde_json::Value) {
    let payload = payload.to_string();
    crate::pg::identity::as_owner(|| {
        crate::pg::guc::pinned(|| {
            pgrx::Spi::run_with_args(
                "SELECT pg_catalog.pg_notify('migrate_window', $1)",
                &[payload.as_str().into()],
            )
        })
    })
    .or_bookkeeping("notify migrate_window");
}

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
                 give up with SELECT migrate.abort('{version}'); or give it more time with \
                 SELECT migrate.extend('{version}', '1 day', 'the reason')."
            ),
        ),
    )
}

/// Adds the writes counted in shared memory for `version`'s window to its row; with `take`,
/// the counters are reset (the worker, in its own short transaction). A window that ends
/// leaves them (its transaction may roll back): the worker frees them once it has ended.
pub fn take_writes(version: &str, take: bool) {
    let database = crate::pg::process::database();
    let key = super::window_key(version);
    let [old, new] = crate::pg::shmem::window_writes(database, key, take);
    if old.writes + new.writes == 0 && old.last == 0 && new.last == 0 {
        return;
    }
    crate::pg::spi::write_as_owner(
        "migrate.window_history",
        // TimestampTz values: microseconds since 2000-01-01 (946684800 in Unix time).
        "UPDATE migrate.window_history SET old_writes = old_writes + $2, \
           new_writes = new_writes + $3, \
           old_last_write = greatest(old_last_write, \
             CASE WHEN $4 <> 0 THEN to_timestamp($4 / 1e6 + 946684800) END), \
           new_last_write = greatest(new_last_write, \
             CASE WHEN $5 <> 0 THEN to_timestamp($5 / 1e6 + 946684800) END) \
         WHERE version = $1 AND (ended IS NULL OR NOT $6)",
        &[
            version.into(),
            (old.writes as i64).into(),
            (new.writes as i64).into(),
            old.last.into(),
            new.last.into(),
            // A window ended meanwhile has added these counts itself.
            take.into(),
        ],
    );
}

/// The worker's look at the open windows: their writes recorded (and the counters of
/// windows no longer open freed), the alerts that are due sent; returns when the next alert
/// is due (TimestampTz), 0 if none is.
pub fn keep() -> i64 {
    let open: Vec<String> = crate::pg::identity::as_owner(|| {
        crate::pg::spi::pinned_column::<String>(
            "SELECT version FROM migrate.window_history WHERE ended IS NULL",
            &[],
        )
    })
    .or_bookkeeping("read migrate.window_history");
    for version in &open {
        take_writes(version, true);
    }
    let keys: Vec<u64> = open.iter().map(|v| super::window_key(v)).collect();
    crate::pg::shmem::keep_windows(crate::pg::process::database(), &keys);
    super::sessions::register_open();
    alert_due()
}

/// An expired window whose policy may have to act.
pub struct Due {
    version: String,
    policy: OnExpiry,
    opener: String,
    /// Seconds since the old version last wrote, or since the window was published or the
    /// counters started, whichever is later.
    old_quiet_s: f64,
    new_writes: i64,
    /// Seconds since the window was published.
    published_s: f64,
}

/// The published, expired windows with a policy other than alert, whose writes were counted
/// all along (a window the counters had no room for is never judged by them).
pub fn policies_due() -> Vec<Due> {
    let Some(counted_since) = crate::pg::shmem::counted_since() else {
        return Vec::new();
    };
    let rows: Vec<(String, String, String, f64, i64, f64)> = crate::pg::identity::as_owner(|| {
        crate::pg::guc::pinned(|| {
            pgrx::Spi::connect(|client| {
                client
                    .select(
                        // TimestampTz: microseconds since 2000-01-01 (946684800 in Unix time).
                        "SELECT w.version, w.on_expiry, w.opened_by::text, \
                                extract(epoch FROM now() - greatest(w.old_last_write, h.finished_at, \
                                   to_timestamp($1 / 1e6 + 946684800)))::float8, \
                                w.new_writes, \
                                extract(epoch FROM now() - h.finished_at)::float8 \
                         FROM migrate.window_history w \
                         JOIN migrate.history h ON h.version = w.version \
                         WHERE w.ended IS NULL AND w.expires_at < now() \
                           AND w.on_expiry <> 'alert' AND h.status = 'applied' \
                           AND (w.on_expiry <> 'contract' OR NOT EXISTS ( \
                                SELECT FROM migrate.watch_records g \
                                WHERE g.version = w.version AND g.state <> 'complete')) \
                         ORDER BY w.expires_at",
                        None,
                        &[counted_since.into()],
                    )?
                    .map(|row| {
                        Ok((
                            row.get::<String>(1)?.unwrap_or_default(),
                            row.get::<String>(2)?.unwrap_or_default(),
                            row.get::<String>(3)?.unwrap_or_default(),
                            row.get::<f64>(4)?.unwrap_or(0.0),
                            row.get::<i64>(5)?.unwrap_or(0),
                            row.get::<f64>(6)?.unwrap_or(0.0),
                        ))
                    })
                    .collect::<Result<Vec<_>, pgrx::spi::Error>>()
            })
        })
    })
    .or_bookkeeping("read migrate.window_history");
    rows.into_iter()
        .map(
            |(version, policy, opener, old_quiet_s, new_writes, published_s)| Due {
                version,
                policy: OnExpiry::parse(&policy).unwrap_or(OnExpiry::Alert),
                opener,
                old_quiet_s,
                new_writes,
                published_s,
            },
        )
        .collect()
}

impl Due {
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether its policy may act now.
    pub fn acts(&self) -> bool {
        let quiet_s = f64::from(crate::gucs::WINDOW_QUIET_TIME_S.get());
        policy_may_act(
            self.policy,
            self.old_quiet_s,
            quiet_s,
            self.new_writes,
            self.published_s,
        )
    }
}

/// Contracts or aborts one expired window if its policy may act, as the role that opened it
/// (as if it had called migrate.contract or migrate.abort), in the caller's transaction;
/// returns whether it still waits (to be looked at again soon).
pub fn apply_policy(due: &Due) -> bool {
    let quiet_s = f64::from(crate::gucs::WINDOW_QUIET_TIME_S.get());
    if !due.acts() {
        // A contract waits for the old version to stop; an abort for the new version's time
        // to write (once it has written, never).
        return due.policy == OnExpiry::Contract
            || (due.new_writes == 0 && due.published_s < quiet_s);
    }
    let Some(role) = crate::pg::identity::role_oid(&due.opener) else {
        return false;
    };
    let verb = match due.policy {
        OnExpiry::Contract => "contract",
        _ => "abort",
    };
    let version = due.version.as_str();
    let sql = format!("SELECT count(*) FROM migrate.{verb}($1)");
    let ended = crate::pg::subxact::run(|| {
        crate::pg::identity::as_author(role, &[("search_path", "pg_catalog")], || {
            pgrx::Spi::get_one_with_args::<i64>(&sql, &[version.into()])
        })
    });
    let error = match ended {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(caught) => Some(caught.message),
    };
    if let Some(error) = error {
        Problem::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!(
                "the background worker could not {verb} the expired window of version {version}"
            ),
            error,
            format!("It tries again shortly; or SELECT migrate.{verb}('{version}') yourself."),
        )
        .report(PgLogLevel::WARNING);
        return true;
    }
    notify(&serde_json::json!({"version": version, "on_expiry": verb}));
    Problem::new(
        PgSqlErrorCode::ERRCODE_WARNING,
        format!(
            "the expired window of version {version} was {}ed by the background worker \
             (on_expiry = {verb})",
            verb.trim_end_matches('e')
        ),
        match due.policy {
            OnExpiry::Contract => format!(
                "The old version had not written to its tables for {:.0} s \
                 (migrate.window_quiet_time is {quiet_s:.0} s).",
                due.old_quiet_s
            ),
            _ => format!(
                "The new version had not written to its tables in the {:.0} s since the window \
                 was published.",
                due.published_s
            ),
        },
        "See migrate.windows.",
    )
    .report(PgLogLevel::LOG);
    false
}

/// Sends the alerts that are due and returns when the next one is (TimestampTz), 0 if none.
/// Each window's alert is sent and recorded in one short transaction of the caller's.
fn alert_due() -> i64 {
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
        crate::pg::spi::write_as_owner(
            "migrate.window_history",
            "UPDATE migrate.window_history SET alerts_sent = $2 WHERE version = $1",
            &[version.as_str().into(), mark.into()],
        );
        notify(&serde_json::json!({"version": version, "alert": mark}));
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
    fn an_expired_window_contracts_once_the_old_version_is_quiet_and_aborts_only_if_unused() {
        assert_eq!(OnExpiry::parse("contract").unwrap(), OnExpiry::Contract);
        assert!(OnExpiry::parse("drop").is_err());
        assert!(!policy_may_act(OnExpiry::Alert, 1e9, 60.0, 0, 1e9));
        assert!(!policy_may_act(OnExpiry::Contract, 59.0, 60.0, 0, 1e9));
        assert!(policy_may_act(OnExpiry::Contract, 60.0, 60.0, 5, 60.0));
        assert!(policy_may_act(OnExpiry::Abort, 0.0, 60.0, 0, 60.0));
        // Published just now: the new version has not had its chance to write yet.
        assert!(!policy_may_act(OnExpiry::Abort, 0.0, 60.0, 0, 10.0));
        assert!(!policy_may_act(OnExpiry::Abort, 1e9, 60.0, 1, 1e9));
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

    #[test]
    fn an_extension_is_positive_capped_and_alerts_again_only_ahead() {
        // An hour's window, 50 minutes in (its 50% alert sent), a day more: 3.4% used.
        assert_eq!(
            extended(3_600, 86_400, 3_000.0, 30 * 86_400).unwrap(),
            (90_000, 0)
        );
        // Expired 400 s ago and given 10 minutes: 4,000 of 4,200 s used, past 90%: only the
        // expiry alerts again.
        assert_eq!(
            extended(3_600, 600, 4_000.0, 30 * 86_400).unwrap(),
            (4_200, 90)
        );
        let p = extended(3_600, 0, 10.0, 86_400).unwrap_err();
        assert!(p.message.contains("positive"));
        let p = extended(3_600, 86_400, 10.0, 86_400).unwrap_err();
        assert!(
            p.message.contains("over migrate.max_window_ttl (86400 s)"),
            "{}",
            p.message
        );
        assert!(p.hint.contains("superuser may raise"));
        // A window expired two hours ago, given one: still expired, so refused.
        let p = extended(3_600, 3_600, 10_800.0, 86_400).unwrap_err();
        assert!(p.message.contains("still be expired"));
        assert_eq!(
            interval_seconds(&Interval::new(1, 2, 3_000_000).unwrap()),
            30 * 86_400 + 2 * 86_400 + 3
        );
    }
}
