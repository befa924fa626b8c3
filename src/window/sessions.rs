//! Which version of an open window each query uses, and which sessions still use each,
//! reads included. Every query that starts in a session (the executor hooks) is looked at for
//! the tables of open windows, which expand and the worker register in shared memory: a query
//! that goes through a window's view (in the new version's schema) uses the new version; one
//! that names the table itself, the old one. That is what the query did, whatever its session
//! declared; the bridge trusts it over the declaration while the query runs, and the session's
//! use is noted when it ends. A session that only reads through the old names is an old client
//! that contract would break, as much as one that writes.

use crate::errors::OrBookkeeping;
use crate::pg::executor_hook::Relation;
use crate::pg::shmem::{self, WindowTable};
use pgrx::pg_sys;
use std::cell::RefCell;
use std::ffi::CString;

/// How often one session notes its use of one window's side, at most: the shared counters'
/// lock is then taken about once a second per busy session, not once per query.
const NOTE_EVERY_US: i64 = 1_000_000;

/// A window's view schema, and its namespace once it exists (it is created at publication).
struct Schema {
    key: u64,
    name: CString,
    namespace: pg_sys::Oid,
}

/// A query running that uses windows, and how.
struct Running {
    query: usize,
    /// The transaction it started in: one that failed never ended, and is forgotten then.
    transaction: u32,
    /// (window key, through the new version's view).
    uses: Vec<(u64, bool)>,
}

#[derive(Default)]
struct Known {
    /// The registry's generation these tables were read at; 0: never read.
    generation: u64,
    /// By relation oid.
    tables: Vec<WindowTable>,
    schemas: Vec<Schema>,
    /// (window key, new version, TimestampTz) of the last use noted of each.
    noted: Vec<(u64, bool, i64)>,
    /// Innermost last.
    running: Vec<Running>,
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

/// pg_migrate's own statements are neither version's.
fn is_own() -> bool {
    crate::pg::process::is_migrate_worker()
        || crate::migration::running::is_applying()
        || OWN.get() > 0
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
            let mut tables = shmem::window_tables(crate::pg::process::database());
            tables.sort_by_key(|t| u32::from(t.relid));
            known.schemas = tables
                .iter()
                .filter_map(|t| Some((t.key, CString::new(t.schema.as_str()).ok()?)))
                .fold(Vec::new(), |mut schemas, (key, name)| {
                    if !schemas
                        .iter()
                        .any(|s: &Schema| s.key == key && s.name == name)
                    {
                        schemas.push(Schema {
                            key,
                            name,
                            namespace: pg_sys::InvalidOid,
                        });
                    }
                    schemas
                });
            let keys: Vec<u64> = tables.iter().map(|t| t.key).collect();
            known.noted.retain(|(key, ..)| keys.contains(key));
            known.tables = tables;
            known.generation = generation;
        }
        !known.tables.is_empty()
    })
}

/// A query starts: which windows it uses, and as which version, kept while it runs.
pub fn started(query: usize, relations: &[Relation]) {
    if is_own() {
        return;
    }
    let transaction = crate::pg::xact::local_id();
    KNOWN.with_borrow_mut(|known| {
        let mut uses: Vec<(u64, bool)> = Vec::new();
        for relation in relations.iter().filter(|r| !r.view) {
            let oid = u32::from(relation.oid);
            let Ok(at) = known
                .tables
                .binary_search_by_key(&oid, |t| u32::from(t.relid))
            else {
                continue;
            };
            // Several windows may list one table (one after the other).
            let first = known.tables[..at]
                .iter()
                .rposition(|t| u32::from(t.relid) != oid)
                .map_or(0, |p| p + 1);
            for table in known.tables[first..]
                .iter()
                .take_while(|t| u32::from(t.relid) == oid)
            {
                if !uses.iter().any(|(k, _)| *k == table.key) {
                    uses.push((table.key, false));
                }
            }
        }
        if uses.is_empty() {
            return;
        }
        for relation in relations.iter().filter(|r| r.view) {
            let namespace = crate::pg::catalog::relation_namespace(relation.oid);
            for schema in known.schemas.iter_mut() {
                if schema.namespace == pg_sys::InvalidOid {
                    // Published since the registry was read.
                    schema.namespace = crate::pg::catalog::namespace_oid(&schema.name);
                }
                if schema.namespace != pg_sys::InvalidOid && schema.namespace == namespace {
                    for (key, new) in uses.iter_mut() {
                        *new |= *key == schema.key;
                    }
                }
            }
        }
        known.running.retain(|r| r.transaction == transaction);
        known.running.push(Running {
            query,
            transaction,
            uses,
        });
    });
}

/// A utility statement is about to run: `COPY table TO` reads a window's table by its old
/// name without the executor, so it is noted here, as a query that ends at once.
pub fn utility_statement(stmt: crate::pg::nodes::StmtTree) {
    // Not a QueryDesc's address: those are aligned.
    const COPY_OUT: usize = 1;
    if !wanted() {
        return;
    }
    if let Some(oid) = crate::pg::nodes::copied_out_table(stmt) {
        started(COPY_OUT, &[Relation { oid, view: false }]);
        ended(COPY_OUT);
    }
}

/// A query ends: its use of windows is noted (at most once a second per window and side),
/// and it is forgotten, with any query started inside it that failed.
pub fn ended(query: usize) {
    let uses = KNOWN.with_borrow_mut(|known| {
        let at = known.running.iter().rposition(|r| r.query == query)?;
        let uses = std::mem::take(&mut known.running[at].uses);
        known.running.truncate(at);
        Some(uses)
    });
    let Some(uses) = uses else {
        return;
    };
    let now = crate::pg::xact::clock();
    let database = crate::pg::process::database();
    for (key, new) in uses {
        if KNOWN.with_borrow_mut(|known| due(&mut known.noted, key, new, now)) {
            shmem::count_use(database, key, new);
        }
    }
}

/// Whether the innermost query running that uses window `key` goes through its new
/// version's views; None when no such query runs (COPY FROM, which is no query, or the
/// worker's).
pub fn side_of(key: u64) -> Option<bool> {
    let transaction = crate::pg::xact::local_id();
    KNOWN.with_borrow(|known| {
        known
            .running
            .iter()
            .rev()
            .filter(|r| r.transaction == transaction)
            .find_map(|r| r.uses.iter().find(|(k, _)| *k == key).map(|(_, new)| *new))
    })
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
/// extension's owner, by the worker as it keeps the windows.
pub fn register_open() {
    let (tables, complete) = open_tables();
    shmem::register_window_tables(crate::pg::process::database(), &tables, complete);
}

/// The same, once the current transaction (an expand's) commits.
pub fn register_open_at_commit() {
    let (tables, complete) = open_tables();
    shmem::register_window_tables_at_commit(crate::pg::process::database(), tables, complete);
}

/// The tables of this database's open windows, and whether all were found.
fn open_tables() -> (Vec<WindowTable>, bool) {
    let rows: Vec<(String, Option<pg_sys::Oid>, String)> = crate::pg::identity::as_owner(|| {
        crate::pg::guc::pinned(|| {
            pgrx::Spi::connect(|client| {
                client
                    .select(
                        "SELECT w.version, c.oid, n.nspname::text \
                         FROM migrate.window_history w \
                         CROSS JOIN LATERAL unnest(w.tables) t(name) \
                         LEFT JOIN pg_class c ON c.oid = to_regclass(t.name) \
                         LEFT JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE w.ended IS NULL",
                        None,
                        &[],
                    )?
                    .map(|row| {
                        Ok((
                            row.get::<String>(1)?.unwrap_or_default(),
                            row.get::<pg_sys::Oid>(2)?,
                            row.get::<String>(3)?.unwrap_or_default(),
                        ))
                    })
                    .collect::<Result<Vec<_>, pgrx::spi::Error>>()
            })
        })
    })
    .or_bookkeeping("read the tables of the open windows");
    // A table renamed or dropped around the window (by someone allowed to) is not found by
    // its name: its sessions are not known, which contract then says.
    let complete = rows.iter().all(|(_, relid, _)| relid.is_some());
    let tables: Vec<WindowTable> = rows
        .into_iter()
        .filter_map(|(version, relid, schema)| {
            Some(WindowTable {
                relid: relid?,
                key: super::window_key(&version),
                schema: super::plan::view_schema(&schema, &version),
                version,
            })
        })
        .collect();
    (tables, complete)
}

/// A session still connected that is a client of one side of a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Connected {
    pub side: shmem::SessionSide,
    /// Known by what it declares (`migrate.client_version`) alone: it has not used the
    /// window's tables.
    pub declared_only: bool,
}

/// The sessions still connected to `database` that used window `version`'s tables, by the
/// side they used them as; and those that have not but declare a version, by the side the
/// bridge would take their writes for (the window's version: the new one; any other: the
/// old one). What a session did goes before what it declares.
pub fn connected(database: pg_sys::Oid, version: &str) -> Vec<Connected> {
    let key = super::window_key(version);
    let mut found: Vec<Connected> = shmem::window_sessions(database, key)
        .into_iter()
        .map(|side| Connected {
            side,
            declared_only: false,
        })
        .collect();
    // Declarations count for open windows only (registered in shared memory): what a
    // session declares is no one's business otherwise.
    if shmem::window_tables(database).iter().any(|t| t.key == key) {
        let mut used: Vec<i32> = found.iter().map(|c| c.side.pid).collect();
        used.sort_unstable();
        let declared = declared_only(&used, crate::pg::declared::sessions(database), key);
        found.extend(declared);
    }
    found
}

/// Of the sessions that declare a version, as (pid, key), those not among `used` (sorted),
/// each on the side its declaration puts it for window `key`.
fn declared_only(used: &[i32], declared: Vec<(i32, u64)>, key: u64) -> Vec<Connected> {
    declared
        .into_iter()
        .filter(|(pid, _)| used.binary_search(pid).is_err())
        .map(|(pid, declares)| Connected {
            side: shmem::SessionSide {
                pid,
                new: declares == key,
                writes: 0,
                last: 0,
                seen: 0,
            },
            declared_only: true,
        })
        .collect()
}

/// Whether every connected session's use of windows, and every declaration, is known.
pub fn all_known(database: pg_sys::Oid) -> bool {
    shmem::sessions_complete(database) && crate::pg::declared::complete()
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

    #[test]
    fn a_declaration_counts_only_for_sessions_that_did_not_use_the_tables() {
        let key = crate::window::window_key("43");
        let other = crate::window::window_key("42");
        let found = declared_only(&[10], vec![(10, other), (11, key), (12, other)], key);
        let sides: Vec<(i32, bool, bool)> = found
            .iter()
            .map(|c| (c.side.pid, c.side.new, c.declared_only))
            .collect();
        // 10 used the tables: what it did decides. 11 declares the window's version, 12
        // another one, which the bridge takes for the old version's.
        assert_eq!(sides, vec![(11, true, true), (12, false, true)]);
        assert!(found.iter().all(|c| c.side.writes == 0 && c.side.seen == 0));
    }
}
