//! Which sessions still use each version of an open window, reads included: every query that
//! ends in a session (the executor hook) is looked at for the tables of open windows, which
//! the worker and expand register in shared memory. A session that only reads through the
//! old names is an old client that contract would break, as much as one that writes.

use crate::errors::OrBookkeeping;
use crate::pg::shmem::{self, WindowTable};
use pgrx::pg_sys;
use std::cell::RefCell;

/// How often one session notes its use of one window's side, at most: the shared counters'
/// lock is then taken about once a second per busy session, not once per query.
const NOTE_EVERY_US: i64 = 1_000_000;

#[derive(Default)]
struct Known {
    /// The registry's generation these tables were read at; 0: never read.
    generation: u64,
    tables: Vec<WindowTable>,
    /// (window key, new version, TimestampTz) of the last use noted of each.
    noted: Vec<(u64, bool, i64)>,
}

thread_local! {
    static KNOWN: RefCell<Known> = RefCell::new(Known::default());
    /// pg_migrate's own work on a window (contract's checks) is running: its reads are no
    /// version's.
    static OWN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `f` as pg_migrate's own work: the window tables it reads are not this session's use.
pub fn own<T>(f: impl FnOnce() -> T) -> T {
    struct Own;
    impl Drop for Own {
        // Also as an ERROR unwinds.
        fn drop(&mut self) {
            OWN.set(OWN.get().saturating_sub(1));
        }
    }
    OWN.set(OWN.get() + 1);
    let _own = Own;
    f()
}

/// Whether this database has tables of open windows, reading the registry again only when it
/// changed.
pub fn wanted() -> bool {
    let generation = shmem::window_tables_generation();
    if generation == 0 {
        return false;
    }
    KNOWN.with_borrow_mut(|known| {
        if known.generation != generation {
            known.tables = shmem::window_tables(crate::pg::process::database());
            known.generation = generation;
            let keys: Vec<u64> = known.tables.iter().map(|t| t.key).collect();
            known.noted.retain(|(key, ..)| keys.contains(key));
        }
        !known.tables.is_empty()
    })
}

/// Notes this session's use of the windows whose tables a query read or wrote, by the side it
/// used them as (what `migrate.client_version` or the search path declares, as for writes).
pub fn seen(relations: &[pg_sys::Oid]) {
    // pg_migrate's own statements are neither version's.
    if crate::pg::process::is_migrate_worker()
        || crate::migration::running::is_applying()
        || OWN.get() > 0
    {
        return;
    }
    let used: Vec<(u64, String, String)> = KNOWN.with_borrow(|known| {
        let mut used: Vec<(u64, String, String)> = Vec::new();
        for table in &known.tables {
            if relations.contains(&table.relid) && !used.iter().any(|(k, ..)| *k == table.key) {
                used.push((table.key, table.version.clone(), table.schema.clone()));
            }
        }
        used
    });
    if used.is_empty() {
        return;
    }
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let database = crate::pg::process::database();
    for (key, version, schema) in used {
        let new = super::writes_version(&version, &schema);
        if KNOWN.with_borrow_mut(|known| due(&mut known.noted, key, new, now)) {
            shmem::count_use(database, key, new);
        }
    }
}

/// Whether this session's use of window `key`'s side is to be noted at `now`: not if it was
/// less than [`NOTE_EVERY_US`] ago (`noted` then keeps the time it was).
fn due(noted: &mut Vec<(u64, bool, i64)>, key: u64, new: bool, now: i64) -> bool {
    match noted.iter_mut().find(|(k, n, _)| *k == key && *n == new) {
        Some((.., at)) if now - *at < NOTE_EVERY_US => false,
        Some((.., at)) => {
            *at = now;
            true
        }
        None => {
            noted.push((key, new, now));
            true
        }
    }
}

/// The tables of this database's open windows, as the registry keeps them: read as the
/// extension's owner (expand, in its transaction; the worker, as it keeps the windows).
pub fn register_open() {
    let rows: Vec<(String, pg_sys::Oid, String)> = crate::pg::identity::as_owner(|| {
        crate::pg::guc::pinned(|| {
            pgrx::Spi::connect(|client| {
                client
                    .select(
                        "SELECT w.version, c.oid, n.nspname::text \
                         FROM migrate.window_history w \
                         CROSS JOIN LATERAL unnest(w.tables) t(name) \
                         JOIN pg_class c ON c.oid = to_regclass(t.name) \
                         JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE w.ended IS NULL",
                        None,
                        &[],
                    )?
                    .map(|row| {
                        Ok((
                            row.get::<String>(1)?.unwrap_or_default(),
                            row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                            row.get::<String>(3)?.unwrap_or_default(),
                        ))
                    })
                    .collect::<Result<Vec<_>, pgrx::spi::Error>>()
            })
        })
    })
    .or_bookkeeping("read the tables of the open windows");
    let tables: Vec<WindowTable> = rows
        .into_iter()
        .map(|(version, relid, schema)| WindowTable {
            relid,
            key: super::window_key(&version),
            schema: super::plan::view_schema(&schema, &version),
            version,
        })
        .collect();
    shmem::register_window_tables(crate::pg::process::database(), &tables);
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn a_sides_use_is_noted_at_most_once_a_second() {
        let mut noted = Vec::new();
        assert!(due(&mut noted, 7, false, 10_000_000));
        assert!(!due(&mut noted, 7, false, 10_500_000));
        // Each side and each window on its own.
        assert!(due(&mut noted, 7, true, 10_500_000));
        assert!(due(&mut noted, 8, false, 10_500_000));
        assert!(!due(&mut noted, 7, false, 10_999_999));
        assert!(due(&mut noted, 7, false, 11_000_000));
        // Counted from the last time noted, not from the skipped ones.
        assert!(!due(&mut noted, 7, false, 11_900_000));
        assert_eq!(noted.len(), 3);
    }
}
