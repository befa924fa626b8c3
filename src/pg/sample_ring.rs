//! The workload's recent samples, per database, in shared memory: the baseline a watched
//! migration is judged against exists before it is applied, and outlives the worker that
//! took it (not a restart of the server). Written by the database worker, read by
//! `migrate.apply` when it records a watch.

use crate::pg::error_hook::COUNTERS;
use pgrx::lwlock::PgLwLock;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_guard, pg_shmem_init, pg_sys};
use serde::{Deserialize, Serialize};

/// The queries kept per sample, by the time they took; the rest is counted together. A
/// statement is judged after a change against its mean in the baseline's samples, so one
/// that none of them kept is new to a watch, and left out: a cheap lookup a change makes
/// slow would go unseen. A workload spends its time on a few dozen statements. The rings
/// (959 kB for 48) are built on the postmaster's stack before they are copied into shared
/// memory, which bounds them: 128 (2.4 MB) overflowed it in a debug build.
pub const QUERIES: usize = 48;

/// One statement's calls and time over a sample (pg_stat_statements' queryid).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryDelta {
    pub queryid: i64,
    pub calls: f64,
    pub time_ms: f64,
}

/// The workload over one interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When the interval ended (TimestampTz, microseconds).
    pub at: i64,
    pub seconds: f64,
    /// Errors by `Signal`, counted by the log hook.
    pub errors: [u64; COUNTERS],
    /// False when pg_stat_statements could not be read: no latency for this interval.
    pub statements: bool,
    #[serde(with = "kept_queries")]
    pub queries: [QueryDelta; QUERIES],
    pub query_count: usize,
    /// The statements beyond the `QUERIES` that took most time.
    pub other_calls: f64,
    pub other_time_ms: f64,
}

/// A sample's queries as JSON (in a watch's recorded baseline): the ones it kept, as a list;
/// the slots after them are empty.
mod kept_queries {
    use super::{QueryDelta, QUERIES};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        queries: &[QueryDelta; QUERIES],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let kept = queries
            .iter()
            .rposition(|q| *q != QueryDelta::default())
            .map_or(0, |i| i + 1);
        queries[..kept].serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[QueryDelta; QUERIES], D::Error> {
        let list = Vec::<QueryDelta>::deserialize(d)?;
        let mut queries = [QueryDelta::default(); QUERIES];
        for (slot, q) in queries.iter_mut().zip(list) {
            *slot = q;
        }
        Ok(queries)
    }
}

impl Sample {
    pub fn empty(at: i64, seconds: f64) -> Sample {
        Sample {
            at,
            seconds,
            errors: [0; COUNTERS],
            statements: false,
            queries: [QueryDelta::default(); QUERIES],
            query_count: 0,
            other_calls: 0.0,
            other_time_ms: 0.0,
        }
    }

    pub fn queries(&self) -> &[QueryDelta] {
        &self.queries[..self.query_count.min(QUERIES)]
    }

    pub fn calls(&self) -> f64 {
        self.queries().iter().map(|q| q.calls).sum::<f64>() + self.other_calls
    }
}

/// Databases sampled at once; a database beyond them keeps no ring (its watches wait for a
/// baseline of their own).
pub const DATABASES: usize = 16;
/// Samples kept per database: five minutes at the default interval of ten seconds, with
/// room for a shorter interval.
pub const SAMPLES: usize = 48;

#[derive(Clone, Copy)]
struct Ring {
    /// 0: free.
    database: u32,
    /// Where the next sample goes, and how many there are.
    next: usize,
    len: usize,
    samples: [Sample; SAMPLES],
}

#[derive(Clone, Copy)]
pub struct Rings {
    rings: [Ring; DATABASES],
}

// Built by value before it is copied into shared memory (pgrx), so on the postmaster's
// stack, several copies deep in a debug build: kept well under its usual 8 MB.
const _: () = assert!(std::mem::size_of::<Rings>() <= 1 << 20);

impl Default for Rings {
    fn default() -> Self {
        Rings {
            rings: [Ring {
                database: 0,
                next: 0,
                len: 0,
                samples: [Sample::empty(0, 0.0); SAMPLES],
            }; DATABASES],
        }
    }
}

// SAFETY: plain data behind an LWLock.
unsafe impl PGRXSharedMemory for Rings {}

// SAFETY: a name no other extension uses.
static RINGS: PgLwLock<Rings> = unsafe { PgLwLock::new(c"pg_migrate_sample_rings") };

/// Called from _PG_init during shared_preload_libraries processing.
pub fn init() {
    pg_shmem_init!(RINGS);
}

/// Adds a sample to `database`'s ring, the oldest giving way; false when every ring is
/// another database's.
pub fn push(database: pg_sys::Oid, sample: Sample) -> bool {
    if !crate::pg::shmem::available() {
        return false;
    }
    let database = u32::from(database);
    let mut rings = RINGS.exclusive();
    let index = rings
        .rings
        .iter()
        .position(|r| r.database == database)
        .or_else(|| rings.rings.iter().position(|r| r.database == 0));
    let Some(ring) = index.map(|i| &mut rings.rings[i]) else {
        return false;
    };
    ring.database = database;
    ring.samples[ring.next] = sample;
    ring.next = (ring.next + 1) % SAMPLES;
    ring.len = (ring.len + 1).min(SAMPLES);
    true
}

/// `database`'s samples, oldest first, taken at or after `since` (TimestampTz).
pub fn recent(database: pg_sys::Oid, since: i64) -> Vec<Sample> {
    if !crate::pg::shmem::available() {
        return Vec::new();
    }
    let database = u32::from(database);
    let rings = RINGS.share();
    let Some(ring) = rings.rings.iter().find(|r| r.database == database) else {
        return Vec::new();
    };
    (0..ring.len)
        .map(|i| ring.samples[(ring.next + SAMPLES - ring.len + i) % SAMPLES])
        .filter(|s| s.at >= since)
        .collect()
}

/// Frees a dropped database's ring.
pub fn forget(database: pg_sys::Oid) {
    if !crate::pg::shmem::available() {
        return;
    }
    let database = u32::from(database);
    let mut rings = RINGS.exclusive();
    if let Some(ring) = rings.rings.iter_mut().find(|r| r.database == database) {
        ring.database = 0;
        ring.len = 0;
        ring.next = 0;
    }
}
