//! `migrate.backfill_jobs` (read through the view `migrate.backfills`): reading a job and
//! recording what happened to it. Every write runs as the tables' owner with `search_path`
//! pinned. A job that is a phase of a migration carries its state to that phase and to the
//! migration (`steps::follow_backfill`), in the same transaction: a failed or cancelled
//! backfill fails or cancels the migration, a resumed one resumes it, and a finished one lets
//! the next phase run.

use crate::backfill::throttle::Bounds;
use crate::backfill::walk::{Key, Walk};
use crate::errors::OrBookkeeping;
use crate::migration::status::{JobState, StepState};
use crate::pg::subxact::Caught;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub table_oid: pg_sys::Oid,
    /// Its schema-qualified, quoted name now; None once the table is gone.
    pub table: Option<String>,
    pub set_clause: String,
    pub where_clause: Option<String>,
    pub walk: Walk,
    pub pass: i32,
    pub upper: Option<Key>,
    pub last: Option<Key>,
    pub rows_scanned: i64,
    pub rows_estimated: i64,
    pub batch_size: i32,
    pub bounds: Bounds,
    pub batch_time: Duration,
    pub pause: Duration,
    pub max_lag: i64,
    pub failed_attempts: i32,
    pub rows_per_second: Option<f64>,
    pub role: String,
    pub settings: Vec<(String, String)>,
}

impl Job {
    /// The pass has walked its whole range (or the table was empty when it began).
    pub fn pass_walked(&self) -> bool {
        match (&self.upper, &self.last) {
            (Some(upper), _) if upper.is_empty() => true,
            (Some(upper), Some(last)) => upper == last,
            _ => false,
        }
    }
}

/// The job the worker should run next, and how long until it is due: running jobs, and those
/// it paused itself for replication lag, least recently served first.
pub fn next_due() -> Option<(i64, Duration)> {
    read_row(
        "SELECT id, GREATEST(0, extract(epoch FROM next_batch_at - clock_timestamp()) * 1000)::bigint \
         FROM migrate.backfills WHERE state = 'running' OR (state = 'paused' AND auto_paused) \
         ORDER BY next_batch_at NULLS FIRST, last_batch_at NULLS FIRST, id LIMIT 1",
        &[],
        |r| {
            Ok((
                r.get::<i64>(1)?.unwrap_or_default(),
                Duration::from_millis(r.get::<i64>(2)?.unwrap_or(0).max(0) as u64),
            ))
        },
    )
}

pub fn load(id: i64) -> Option<Job> {
    let job = read_row(
        "SELECT b.id, b.table_oid, b.set_clause, b.where_clause, b.key_columns, b.key_types, b.pass, \
                b.upper_key, b.last_key, b.rows_scanned, coalesce(b.rows_estimated, 0), \
                b.batch_size, b.min_batch_size, b.max_batch_size, \
                (extract(epoch FROM b.batch_time) * 1000)::bigint, \
                (extract(epoch FROM b.pause) * 1000)::bigint, b.max_replication_lag, \
                b.failed_attempts, b.rows_per_second, b.role::text, \
                ARRAY(SELECT ARRAY[key, value] FROM jsonb_each_text(b.settings)) \
         FROM migrate.backfills b WHERE b.id = $1",
        &[id.into()],
        |r| {
            let walk = match (texts(r.get(5)?), texts(r.get(6)?)) {
                // Its operators are read below, outside this row's statement.
                (Some(columns), Some(types)) => Walk::Keyset {
                    columns,
                    types,
                    operators: None,
                },
                _ => Walk::Pages,
            };
            let ms = |v: Option<i64>| Duration::from_millis(v.unwrap_or(0).max(0) as u64);
            Ok(Job {
                id: r.get(1)?.unwrap_or_default(),
                table_oid: r.get(2)?.unwrap_or(pg_sys::InvalidOid),
                table: None,
                set_clause: r.get(3)?.unwrap_or_default(),
                where_clause: r.get(4)?,
                walk,
                pass: r.get(7)?.unwrap_or(1),
                upper: texts(r.get(8)?),
                last: texts(r.get(9)?),
                rows_scanned: r.get(10)?.unwrap_or(0),
                rows_estimated: r.get(11)?.unwrap_or(0),
                batch_size: r.get(12)?.unwrap_or(1),
                bounds: Bounds {
                    min: r.get(13)?.unwrap_or(1),
                    max: r.get(14)?.unwrap_or(1),
                },
                batch_time: ms(r.get(15)?),
                pause: ms(r.get(16)?),
                max_lag: r.get(17)?.unwrap_or(0),
                failed_attempts: r.get(18)?.unwrap_or(0),
                rows_per_second: r.get(19)?,
                role: r.get(20)?.unwrap_or_default(),
                settings: crate::history::steps::pairs(
                    r.get::<Vec<Option<String>>>(21)?.unwrap_or_default(),
                ),
            })
        },
    )?;
    let walk = match job.walk {
        Walk::Keyset { columns, types, .. } => Walk::Keyset {
            operators: super::operator_schema(job.table_oid, &columns),
            columns,
            types,
        },
        Walk::Pages => Walk::Pages,
    };
    // Its name now, which a rename changes; None once it is dropped.
    Some(Job {
        table: crate::pg::catalog::relation_name(job.table_oid),
        walk,
        ..job
    })
}

/// A pass begins: its bound, and how many keys it is expected to walk.
pub fn start_pass(id: i64, upper: &[String], estimated: i64) {
    write(
        "UPDATE migrate.backfill_jobs SET upper_key = $2, rows_estimated = $3, \
           started_at = coalesce(started_at, clock_timestamp()) WHERE id = $1",
        &[id.into(), upper.to_vec().into(), estimated.into()],
    );
}

/// What one batch did, recorded in the batch's own transaction.
pub struct Batch<'a> {
    pub end: &'a [String],
    pub scanned: i64,
    pub updated: i64,
    pub next_size: i32,
    pub rate: Option<f64>,
    pub pause: Duration,
}

/// A batch committed with this, in its own transaction. A pause or cancel that committed
/// while the batch ran stands (it waited for the job's row, then this batch counts as
/// done); only the worker's own pause for replication lag ends here.
pub fn record_batch(id: i64, batch: &Batch) {
    write(
        "UPDATE migrate.backfill_jobs SET last_key = $2, rows_scanned = rows_scanned + $3, \
           rows_updated = rows_updated + $4, batches = batches + 1, batch_size = $5, \
           rows_per_second = $6, failed_attempts = 0, last_batch_at = clock_timestamp(), \
           next_batch_at = clock_timestamp() + make_interval(secs => $7), \
           state = CASE WHEN auto_paused THEN 'running' ELSE state END, \
           state_reason = CASE WHEN auto_paused THEN NULL ELSE state_reason END, \
           auto_paused = false \
         WHERE id = $1",
        &[
            id.into(),
            batch.end.to_vec().into(),
            batch.scanned.into(),
            batch.updated.into(),
            batch.next_size.into(),
            batch.rate.into(),
            batch.pause.as_secs_f64().into(),
        ],
    );
}

/// A batch gave up waiting for a lock: try again (possibly smaller) after `delay`.
pub fn lock_timeout(id: i64, size: i32, delay: Duration, error: &Caught) {
    write(
        "UPDATE migrate.backfill_jobs SET batch_size = $2, failed_attempts = failed_attempts + 1, \
           lock_timeouts = lock_timeouts + 1, next_batch_at = clock_timestamp() + make_interval(secs => $3), \
           error_sqlstate = $4, error_message = $5, error_detail = $6 \
         WHERE id = $1",
        &[
            id.into(),
            size.into(),
            delay.as_secs_f64().into(),
            crate::errors::sqlstate(error.code).into(),
            error.message.as_str().into(),
            error.detail.clone().into(),
        ],
    );
}

/// Paused by the worker while a replica is too far behind; it resumes by itself.
pub fn pause_for_lag(id: i64, reason: &str) {
    write(
        "UPDATE migrate.backfill_jobs SET state = 'paused', auto_paused = true, state_reason = $2, \
           next_batch_at = clock_timestamp() + interval '1 second' \
         WHERE id = $1 AND (state = 'running' OR auto_paused)",
        &[id.into(), reason.into()],
    );
}

/// The final check found rows the where clause still matches: another pass over them.
pub fn next_pass(id: i64, remaining: i64) {
    write_while_running(
        "UPDATE migrate.backfill_jobs SET pass = pass + 1, upper_key = NULL, last_key = NULL, \
           rows_scanned = 0, rows_estimated = $2, remaining = $2 WHERE id = $1",
        &[id.into(), remaining.into()],
    );
}

/// The final check found nothing left: the job, and its migration phase, are done.
pub fn finish(id: i64, remaining: Option<i64>) {
    if write_while_running(
        "UPDATE migrate.backfill_jobs SET state = 'done', finished_at = clock_timestamp(), \
           remaining = $2, rows_scanned = GREATEST(rows_scanned, rows_estimated), \
           state_reason = NULL, auto_paused = false WHERE id = $1",
        &[id.into(), remaining.into()],
    ) {
        crate::history::steps::follow_backfill(id, StepState::Done, None);
    }
}

/// The job failed; progress is kept, and `migrate.resume` carries on from it.
pub fn fail(id: i64, error: &Caught, remaining: Option<i64>) {
    let failed = write_while_running(
        "UPDATE migrate.backfill_jobs SET state = 'failed', auto_paused = false, \
           state_reason = 'failed', remaining = coalesce($5, remaining), \
           error_sqlstate = $2, error_message = $3, error_detail = $4 WHERE id = $1",
        &[
            id.into(),
            crate::errors::sqlstate(error.code).into(),
            error.message.as_str().into(),
            error.detail.clone().into(),
            remaining.into(),
        ],
    );
    if failed {
        crate::history::steps::follow_backfill(id, StepState::Failed, Some(error));
    }
}

/// Sets the state of a job asked to pause, resume or stop.
pub fn set_state(id: i64, state: JobState, reason: Option<&str>) {
    write(
        "UPDATE migrate.backfill_jobs SET state = $2, state_reason = $3, auto_paused = false, \
           next_batch_at = NULL, failed_attempts = 0, \
           finished_at = CASE WHEN $2 = 'cancelled' THEN clock_timestamp() END \
         WHERE id = $1",
        &[id.into(), state.as_str().into(), reason.into()],
    );
    match state {
        JobState::Cancelled => {
            crate::history::steps::follow_backfill(id, StepState::Cancelled, None)
        }
        JobState::Running => crate::history::steps::follow_backfill(id, StepState::Running, None),
        _ => {}
    }
}

/// What `migrate.pause`, `resume` and `cancel` need to know of a job.
pub struct Summary {
    pub state: JobState,
    pub role: String,
    pub version: Option<String>,
}

/// Reads a job, locking its row: a batch under way finishes first.
pub fn summary_for_update(id: i64) -> Option<Summary> {
    crate::pg::identity::as_owner(|| {
        Spi::connect_mut(|c| {
            let mut rows = c.update(
                "SELECT state, role::text, version FROM migrate.backfill_jobs WHERE id = $1 FOR UPDATE",
                Some(1),
                &[id.into()],
            )?;
            match rows.next() {
                Some(r) => Ok::<_, pgrx::spi::Error>(Some(Summary {
                    state: JobState::from_column(r.get(1)?)?,
                    role: r.get(2)?.unwrap_or_default(),
                    version: r.get(3)?,
                })),
                None => Ok(None),
            }
        })
    })
    .or_bookkeeping("read migrate.backfill_jobs")
}

/// The job a migration's phase submitted.
pub fn link_to_phase(id: i64, version: &str, phase: i32) {
    write(
        "UPDATE migrate.backfill_jobs SET version = $2, phase = $3 WHERE id = $1",
        &[id.into(), version.into(), phase.into()],
    );
    write(
        "UPDATE migrate.step_records SET backfill_id = $1 WHERE version = $2 AND phase = $3",
        &[id.into(), version.into(), phase.into()],
    );
}

/// A job a migration started, as migrate.verify checks it.
pub struct OfMigration {
    pub id: i64,
    pub table: Option<String>,
    pub state: JobState,
    pub where_clause: Option<String>,
    /// Who submitted it, and the search_path and standard_conforming_strings it was
    /// submitted with: its where clause is evaluated as that role, under those.
    pub role: String,
    pub search_path: String,
    pub conforming: String,
}

/// The jobs a migration started, for migrate.verify.
pub fn of_migration(version: &str) -> Vec<OfMigration> {
    crate::pg::guc::pinned(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT id, table_oid, state, where_clause, role::text, \
                        coalesce(settings ->> 'search_path', ''), \
                        coalesce(settings ->> 'standard_conforming_strings', 'on') \
                 FROM migrate.backfills WHERE version = $1 ORDER BY id",
                None,
                &[version.into()],
            )?
            .map(|r| {
                Ok(OfMigration {
                    id: r.get(1)?.unwrap_or_default(),
                    table: r
                        .get::<pg_sys::Oid>(2)?
                        .and_then(crate::pg::catalog::relation_name),
                    state: JobState::from_column(r.get(3)?)?,
                    where_clause: r.get(4)?,
                    role: r.get(5)?.unwrap_or_default(),
                    search_path: r.get(6)?.unwrap_or_default(),
                    conforming: r.get(7)?.unwrap_or_else(|| "on".into()),
                })
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
        })
    })
    .or_bookkeeping("read migrate.backfills")
}

fn write(sql: &str, args: &[DatumWithOid]) {
    crate::pg::spi::write_as_owner("migrate.backfill_jobs", sql, args);
}

/// The worker's verdict on a job (its next pass, done, failed), written only while the job
/// still runs (or is paused by the worker itself for lag): a pause or cancel that committed
/// meanwhile, say during the final check's count, stands. Whether it was written.
fn write_while_running(sql: &str, args: &[DatumWithOid]) -> bool {
    use crate::errors::OrBookkeeping;
    let sql = format!("{sql} AND (state = 'running' OR auto_paused)");
    crate::pg::identity::as_owner(|| {
        Spi::connect_mut(|c| c.update(&sql, None, args).map(|t| t.len()))
    })
    .or_bookkeeping("write migrate.backfill_jobs")
        > 0
}

fn read_row<T>(
    sql: &str,
    args: &[DatumWithOid],
    map: impl FnOnce(pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Option<T> {
    crate::pg::spi::read_own_row("migrate.backfills", sql, args, map)
}

/// A text[] column, its NULL elements left out.
pub fn texts(column: Option<Vec<Option<String>>>) -> Option<Vec<String>> {
    column.map(|v| v.into_iter().flatten().collect())
}

/// Its migration was cancelled: the job stops after its current batch, progress kept.
pub fn cancel_with_migration(version: &str) {
    write(
        "UPDATE migrate.backfill_jobs SET state = 'cancelled', auto_paused = false, \
           state_reason = 'its migration was cancelled', finished_at = clock_timestamp() \
         WHERE version = $1 AND state IN ('running', 'paused', 'failed')",
        &[version.into()],
    );
}
