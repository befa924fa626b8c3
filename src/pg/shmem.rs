//! Shared memory between backends, the launcher and the database workers: which database has
//! a worker running (and its latch), which database wants one. Waking a worker is a SetLatch,
//! so work submitted by a transaction is picked up as soon as it commits.
//!
//! Exists only when pg_migrate is in shared_preload_libraries; `available()` says so.

use pgrx::atomics::PgAtomic;
use pgrx::lwlock::PgLwLock;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_guard, pg_shmem_init, pg_sys};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The most databases served at once; `migrate.max_workers` may lower it.
pub const MAX_SLOTS: usize = 64;

#[derive(Clone, Copy, Default)]
pub struct Slot {
    /// 0: free.
    pub database: u32,
    /// The worker is asked to leave: its database is about to be dropped, renamed or copied,
    /// which no other session may be connected to.
    pub leave: bool,
    /// The worker serving it, 0 when none runs.
    pub pid: i32,
    /// The worker's process latch (an address in shared memory, the same in every process).
    pub latch: usize,
    /// Work was committed since the worker last looked: the launcher starts a worker if none
    /// runs, and a worker leaving while it is set is replaced.
    pub wanted: bool,
    /// A worker that exited on an error is not started again before this time
    /// (TimestampTz), so a failing database does not spin.
    pub not_before: i64,
    /// When the database wants its worker again whatever happens meanwhile (TimestampTz; 0:
    /// never): an expand window's next time-to-live alert.
    pub wake_at: i64,
    /// Changes whenever a transaction that gave the worker's session settings (ALTER
    /// DATABASE ... SET, ALTER ROLE ... SET) commits. A worker reads it before it connects,
    /// when its session takes them: a change committed after that may be missing from them,
    /// even if the catalog the worker reads later already shows it.
    pub settings_generation: u64,
}

#[derive(Clone, Copy)]
pub struct Shared {
    pub launcher_latch: usize,
    /// A submission found every slot taken: the launcher then asks every database again, as
    /// slots free up.
    pub overflow: bool,
    pub slots: [Slot; MAX_SLOTS],
    /// The last settings generation given to a slot: each value is given once, so a slot
    /// freed and taken again never shows a worker the value it read before.
    pub settings_epoch: u64,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            launcher_latch: 0,
            overflow: false,
            slots: [Slot::default(); MAX_SLOTS],
            settings_epoch: 0,
        }
    }
}

impl Shared {
    fn slot_for(&mut self, database: u32) -> Option<&mut Slot> {
        let index = self
            .slots
            .iter()
            .position(|s| s.database == database)
            .or_else(|| self.slots.iter().position(|s| s.database == 0))?;
        if self.slots[index].database != database {
            self.settings_epoch += 1;
            self.slots[index].settings_generation = self.settings_epoch;
        }
        let slot = &mut self.slots[index];
        slot.database = database;
        Some(slot)
    }
}

// SAFETY: plain data (integers and addresses into shared memory) behind an LWLock.
unsafe impl PGRXSharedMemory for Shared {}

// SAFETY: a name no other extension uses.
static STATE: PgLwLock<Shared> = unsafe { PgLwLock::new(c"pg_migrate") };

/// Set in the postmaster while it loads us; forked processes inherit it.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Expand windows whose writes are counted at once, over every database; a write no slot is
/// left for is not counted, and the expiry policies then stop trusting the counts.
pub const MAX_COUNTED_WINDOWS: usize = 256;
/// The last minute's writes, in buckets of ten seconds.
const BUCKETS: usize = 6;
const BUCKET_US: i64 = 10_000_000;

/// One side's writes (statements) to a window's tables since the worker last took them.
#[derive(Clone, Copy, Default)]
struct Side {
    writes: u64,
    /// TimestampTz of the last write; 0 if none since the server started.
    last: i64,
    buckets: [u64; BUCKETS],
    /// The ten-second interval (TimestampTz / BUCKET_US) each bucket counts.
    stamps: [i64; BUCKETS],
}

#[derive(Clone, Copy, Default)]
struct Counted {
    /// 0: free.
    database: u32,
    key: u64,
    /// The old version's writes, then the new version's.
    sides: [Side; 2],
}

/// Sessions remembered at once, over every database, as having written to a window's
/// tables; when all are taken, the one that wrote longest ago gives its place up.
pub const MAX_SESSIONS: usize = 4096;
/// Sessions forgotten while connected that are remembered as such.
const LOST_KEPT: usize = 64;

/// What one session wrote to one window's tables, by side.
#[derive(Clone, Copy, Default)]
struct SessionWrites {
    /// 0: free.
    pid: i32,
    database: u32,
    key: u64,
    /// Write statements by the old version, then the new one.
    writes: [u64; 2],
    /// TimestampTz of the last of each; 0: none.
    last: [i64; 2],
    /// TimestampTz of the last statement (a read or a write) by each; 0: none.
    seen: [i64; 2],
}

impl SessionWrites {
    fn latest(&self) -> i64 {
        self.last[0]
            .max(self.last[1])
            .max(self.seen[0])
            .max(self.seen[1])
    }
}

#[derive(Clone, Copy)]
pub struct Writes {
    windows: [Counted; MAX_COUNTED_WINDOWS],
    sessions: [SessionWrites; MAX_SESSIONS],
    /// The last sessions whose writes were forgotten for want of room while they were
    /// connected, and how many were in all: while one is still connected, the sessions
    /// listed may not be all.
    lost: [i32; LOST_KEPT],
    lost_count: u64,
    /// When the counters started (TimestampTz): the server's start, or its restart after a
    /// crash, which clears them.
    since: i64,
    /// A write was not counted for want of a slot.
    dropped: bool,
}

impl Default for Writes {
    fn default() -> Self {
        Writes {
            windows: [Counted::default(); MAX_COUNTED_WINDOWS],
            sessions: [SessionWrites::default(); MAX_SESSIONS],
            lost: [0; LOST_KEPT],
            lost_count: 0,
            // SAFETY: reads the clock (shared memory is set up as the server starts).
            since: unsafe { pg_sys::GetCurrentTimestamp() },
            dropped: false,
        }
    }
}

// SAFETY: plain data behind an LWLock.
unsafe impl PGRXSharedMemory for Writes {}

// SAFETY: a name no other extension uses.
static WRITES: PgLwLock<Writes> = unsafe { PgLwLock::new(c"pg_migrate_window_writes") };

/// What a window's side wrote, as [`window_writes`] reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SideWrites {
    /// Since the worker last took them.
    pub writes: u64,
    /// TimestampTz of the last one, 0 if none since the server started.
    pub last: i64,
    pub last_minute: u64,
}

/// Counts one write to a table of `database`'s window `key`, by the new version or not.
/// Bounded and side-effect free but for the counter: every writer runs it.
pub fn count_write(database: pg_sys::Oid, key: u64, new: bool) {
    if !available() {
        return;
    }
    let database = u32::from(database);
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let mut shared = WRITES.exclusive();
    let index = shared
        .windows
        .iter()
        .position(|w| w.database == database && w.key == key)
        .or_else(|| shared.windows.iter().position(|w| w.database == 0));
    let Some(index) = index else {
        shared.dropped = true;
        return;
    };
    let window = &mut shared.windows[index];
    window.database = database;
    window.key = key;
    let side = &mut window.sides[usize::from(new)];
    side.writes += 1;
    side.last = now;
    let interval = now / BUCKET_US;
    let bucket = interval.rem_euclid(BUCKETS as i64) as usize;
    if side.stamps[bucket] != interval {
        side.stamps[bucket] = interval;
        side.buckets[bucket] = 0;
    }
    side.buckets[bucket] += 1;
    let session = this_session(&mut shared, database, key);
    session.writes[usize::from(new)] += 1;
    session.last[usize::from(new)] = now;
    session.seen[usize::from(new)] = now;
}

/// Notes that this session ran a statement (a read or a write) on a table of `database`'s
/// window `key`, as the new version or not. Every session of a database with open windows
/// may run it: bounded, and it raises no error.
pub fn count_use(database: pg_sys::Oid, key: u64, new: bool) {
    if !available() {
        return;
    }
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let mut shared = WRITES.exclusive();
    this_session(&mut shared, u32::from(database), key).seen[usize::from(new)] = now;
}

/// This session's place for `database`'s window `key`, taken (from the session that used a
/// window longest ago, when none is free) if it had none.
fn this_session(shared: &mut Writes, database: u32, key: u64) -> &mut SessionWrites {
    let pid = crate::pg::process::pid();
    let index = session_slot(&shared.sessions, pid, database, key);
    let taken = shared.sessions[index].pid;
    if taken != 0 && taken != pid {
        // Sessions free their places as they exit: this one is still connected.
        let at = (shared.lost_count % LOST_KEPT as u64) as usize;
        shared.lost[at] = taken;
        shared.lost_count += 1;
    }
    let session = &mut shared.sessions[index];
    if session.pid != pid || session.database != database || session.key != key {
        forget_sessions_at_exit();
        *session = SessionWrites {
            pid,
            database,
            key,
            ..SessionWrites::default()
        };
    }
    session
}

/// Frees this session's places when it exits, whatever ends it (once per session): the
/// places then hold only sessions still connected.
fn forget_sessions_at_exit() {
    thread_local! {
        static HOOKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if HOOKED.replace(true) {
        return;
    }
    #[pgrx::pg_guard]
    unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
        let pid = crate::pg::process::pid();
        for session in WRITES.exclusive().sessions.iter_mut() {
            if session.pid == pid {
                *session = SessionWrites::default();
            }
        }
    }
    // SAFETY: registers an exit callback; it runs once, as the process exits.
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0)) };
}

/// Whether every connected session's use of windows is remembered: every open window's
/// tables were registered, and no session forgotten for want of room is still connected
/// (past the last ones kept, that cannot be known).
pub fn sessions_complete(database: pg_sys::Oid) -> bool {
    if !available() {
        return false;
    }
    {
        let tables = TABLES.share();
        if tables.incomplete_overflow || tables.incomplete.contains(&u32::from(database)) {
            return false;
        }
    }
    let (lost, count) = {
        let shared = WRITES.share();
        (shared.lost, shared.lost_count)
    };
    // Outside the lock: whether each is connected takes the process array's.
    count <= LOST_KEPT as u64
        && !lost
            .iter()
            .any(|&pid| pid != 0 && crate::pg::process::is_connected(pid))
}

/// Windows whose places a session remembers, so that a write finds its place without a
/// search of all of them under the exclusive lock.
const SLOTS_REMEMBERED: usize = 8;

thread_local! {
    /// Where this session's writes to the windows it wrote to last are kept, by window key
    /// (checked before use: a place another session took is searched for again).
    static SESSION_SLOTS: std::cell::Cell<[(u64, usize); SLOTS_REMEMBERED]> =
        const { std::cell::Cell::new([(0, 0); SLOTS_REMEMBERED]) };
}

/// The place of this session's writes to `database`'s window `key`: the one it had, a free
/// one, or else the one whose session wrote longest ago.
fn session_slot(sessions: &[SessionWrites], pid: i32, database: u32, key: u64) -> usize {
    let is_ours = |s: &SessionWrites| s.pid == pid && s.database == database && s.key == key;
    let mut remembered = SESSION_SLOTS.get();
    if let Some(&(_, cached)) = remembered
        .iter()
        .find(|(k, i)| *k == key && sessions.get(*i).is_some_and(is_ours))
    {
        return cached;
    }
    let index = sessions
        .iter()
        .position(is_ours)
        .or_else(|| sessions.iter().position(|s| s.pid == 0))
        .unwrap_or_else(|| {
            (0..sessions.len())
                .min_by_key(|&i| sessions[i].latest())
                .unwrap_or(0)
        });
    // The oldest remembered window makes room.
    remembered.rotate_right(1);
    remembered[0] = (key, index);
    SESSION_SLOTS.set(remembered);
    index
}

/// One session's use of a window by one side, as [`window_sessions`] reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionSide {
    pub pid: i32,
    pub new: bool,
    pub writes: u64,
    /// TimestampTz of the last write; 0: none.
    pub last: i64,
    /// TimestampTz of the last statement, a read or a write.
    pub seen: i64,
}

/// The sessions still connected that used `database`'s window `key`, one entry per side
/// each used.
pub fn window_sessions(database: pg_sys::Oid, key: u64) -> Vec<SessionSide> {
    if !available() {
        return Vec::new();
    }
    let database = u32::from(database);
    let found: Vec<SessionWrites> = WRITES
        .share()
        .sessions
        .iter()
        .filter(|s| s.pid != 0 && s.database == database && s.key == key)
        .copied()
        .collect();
    // Outside the lock: whether each is still connected takes the process array's.
    found
        .into_iter()
        .filter(|s| crate::pg::process::is_connected(s.pid))
        .flat_map(|s| {
            [false, true].into_iter().filter_map(move |new| {
                let side = usize::from(new);
                (s.writes[side] > 0 || s.seen[side] != 0).then_some(SessionSide {
                    pid: s.pid,
                    new,
                    writes: s.writes[side],
                    last: s.last[side],
                    seen: s.seen[side].max(s.last[side]),
                })
            })
        })
        .collect()
}

/// The old and the new version's writes to `database`'s window `key`; with `take`, the
/// counts are reset (the worker adds them to the window's row).
pub fn window_writes(database: pg_sys::Oid, key: u64, take: bool) -> [SideWrites; 2] {
    if !available() {
        return [SideWrites::default(); 2];
    }
    let database = u32::from(database);
    // SAFETY: reads the clock.
    let interval = unsafe { pg_sys::GetCurrentTimestamp() } / BUCKET_US;
    let read = |side: &mut Side, take: bool| {
        let last_minute = (0..BUCKETS)
            .filter(|&i| side.stamps[i] > interval - BUCKETS as i64)
            .map(|i| side.buckets[i])
            .sum();
        let writes = if take {
            std::mem::take(&mut side.writes)
        } else {
            side.writes
        };
        SideWrites {
            writes,
            last: side.last,
            last_minute,
        }
    };
    let found = |w: &&mut Counted| w.database == database && w.key == key;
    if take {
        let mut shared = WRITES.exclusive();
        let Some(window) = shared.windows.iter_mut().find(found) else {
            return [SideWrites::default(); 2];
        };
        let [old, new] = &mut window.sides;
        [read(old, true), read(new, true)]
    } else {
        // A reader (migrate.windows, open to everyone) shares the lock.
        let Some(mut window) = WRITES
            .share()
            .windows
            .iter()
            .find(|w| w.database == database && w.key == key)
            .copied()
        else {
            return [SideWrites::default(); 2];
        };
        let [old, new] = &mut window.sides;
        [read(old, false), read(new, false)]
    }
}

/// When the counters started (TimestampTz), or None if they cannot be trusted: a write went
/// uncounted for want of a slot, or pg_migrate is not preloaded.
pub fn counted_since() -> Option<i64> {
    if !available() {
        return None;
    }
    let shared = WRITES.share();
    (!shared.dropped).then_some(shared.since)
}

/// Frees the counters of `database`'s windows other than `open` (ended, or of a version no
/// longer recorded).
pub fn keep_windows(database: pg_sys::Oid, open: &[u64]) {
    if !available() {
        return;
    }
    let database = u32::from(database);
    let mut shared = WRITES.exclusive();
    for window in shared.windows.iter_mut() {
        if window.database == database && !open.contains(&window.key) {
            *window = Counted::default();
        }
    }
    for session in shared.sessions.iter_mut() {
        if session.database == database && !open.contains(&session.key) {
            *session = SessionWrites::default();
        }
    }
}

/// Tables of open windows registered at once, over every database.
pub const MAX_WINDOW_TABLES: usize = 1024;
/// A version's or a schema's bytes kept: a schema name's limit (NAMEDATALEN).
const NAME_BYTES: usize = 64;

#[derive(Clone, Copy)]
struct Registered {
    /// 0: free.
    database: u32,
    relid: u32,
    key: u64,
    version: [u8; NAME_BYTES],
    schema: [u8; NAME_BYTES],
}

impl Default for Registered {
    fn default() -> Self {
        Registered {
            database: 0,
            relid: 0,
            key: 0,
            version: [0; NAME_BYTES],
            schema: [0; NAME_BYTES],
        }
    }
}

/// A table of an open window, by the name of the window's version and the schema of the
/// table's view in the new version.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowTable {
    pub relid: pg_sys::Oid,
    pub key: u64,
    pub version: String,
    pub schema: String,
}

/// Databases whose open windows' tables were not all registered, kept at once.
const INCOMPLETE_KEPT: usize = 16;

#[derive(Clone, Copy)]
pub struct WindowTables {
    tables: [Registered; MAX_WINDOW_TABLES],
    /// Databases some of whose tables were not registered (no room, a name too long, a table
    /// not found): the sessions known there may not be all. 0: free.
    incomplete: [u32; INCOMPLETE_KEPT],
    /// More databases than that were: none is known to be complete.
    incomplete_overflow: bool,
}

impl Default for WindowTables {
    fn default() -> Self {
        WindowTables {
            tables: [Registered::default(); MAX_WINDOW_TABLES],
            incomplete: [0; INCOMPLETE_KEPT],
            incomplete_overflow: false,
        }
    }
}

impl WindowTables {
    fn mark(&mut self, database: u32, incomplete: bool) {
        let at = self.incomplete.iter().position(|&d| d == database);
        match (at, incomplete) {
            (Some(at), false) => self.incomplete[at] = 0,
            (None, true) => match self.incomplete.iter().position(|&d| d == 0) {
                Some(free) => self.incomplete[free] = database,
                None => self.incomplete_overflow = true,
            },
            _ => {}
        }
    }
}

// SAFETY: plain data behind an LWLock.
unsafe impl PGRXSharedMemory for WindowTables {}

// SAFETY: names no other extension uses.
static TABLES: PgLwLock<WindowTables> = unsafe { PgLwLock::new(c"pg_migrate_window_tables") };
/// Changes whenever TABLES does (0: never registered since the server started), read
/// without a lock by every statement's end: a session reads TABLES again only then.
static TABLES_GENERATION: PgAtomic<AtomicU64> =
    unsafe { PgAtomic::new(c"pg_migrate_window_tables_generation") };

fn name_bytes(name: &str) -> Option<[u8; NAME_BYTES]> {
    let mut bytes = [0; NAME_BYTES];
    // One byte stays 0: where the name ends.
    (name.len() < NAME_BYTES).then(|| {
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        bytes
    })
}

fn name_str(bytes: &[u8; NAME_BYTES]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(NAME_BYTES);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Makes `tables` the registered tables of `database`'s open windows; `complete`: they are
/// all of them.
pub fn register_window_tables(database: pg_sys::Oid, tables: &[WindowTable], complete: bool) {
    if !available() {
        return;
    }
    let database = u32::from(database);
    let mut wanted: Vec<Registered> = Vec::with_capacity(tables.len());
    let mut too_long = false;
    for table in tables {
        match (name_bytes(&table.version), name_bytes(&table.schema)) {
            (Some(version), Some(schema)) => wanted.push(Registered {
                database,
                relid: u32::from(table.relid),
                key: table.key,
                version,
                schema,
            }),
            _ => too_long = true,
        }
    }
    let mut shared = TABLES.exclusive();
    let same = |a: &Registered, b: &Registered| {
        a.relid == b.relid && a.key == b.key && a.version == b.version && a.schema == b.schema
    };
    let registered: Vec<&Registered> = shared
        .tables
        .iter()
        .filter(|t| t.database == database)
        .collect();
    if registered.len() == wanted.len()
        && wanted.iter().all(|w| registered.iter().any(|r| same(r, w)))
    {
        shared.mark(database, too_long || !complete);
        return;
    }
    for table in shared.tables.iter_mut() {
        if table.database == database {
            *table = Registered::default();
        }
    }
    let mut free = 0;
    let mut no_room = false;
    for table in wanted {
        let Some(at) = (free..MAX_WINDOW_TABLES).find(|&i| shared.tables[i].database == 0) else {
            no_room = true;
            break;
        };
        shared.tables[at] = table;
        free = at + 1;
    }
    shared.mark(database, too_long || no_room || !complete);
    TABLES_GENERATION.get().fetch_add(1, Ordering::AcqRel);
}

/// Changes whenever the registered tables do; 0 if none ever were (or pg_migrate is not
/// preloaded).
pub fn window_tables_generation() -> u64 {
    if !available() {
        return 0;
    }
    TABLES_GENERATION.get().load(Ordering::Acquire)
}

/// The registered tables of `database`'s open windows.
pub fn window_tables(database: pg_sys::Oid) -> Vec<WindowTable> {
    if !available() {
        return Vec::new();
    }
    let database = u32::from(database);
    TABLES
        .share()
        .tables
        .iter()
        .filter(|t| t.database == database)
        .map(|t| WindowTable {
            relid: pg_sys::Oid::from(t.relid),
            key: t.key,
            version: name_str(&t.version),
            schema: name_str(&t.schema),
        })
        .collect()
}

/// A version's key in shared memory (a window's, a session's declared one): FNV-1a of its
/// text, stable across processes.
pub fn version_key(version: &str) -> u64 {
    version.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Called from _PG_init during shared_preload_libraries processing.
pub fn init() {
    pg_shmem_init!(STATE);
    pg_shmem_init!(WRITES);
    pg_shmem_init!(TABLES);
    pg_shmem_init!(TABLES_GENERATION = AtomicU64::new(0));
    PRELOADED.store(true, Ordering::Relaxed);
}

pub fn available() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// Wakes the worker serving `database`, or asks the launcher for one.
pub fn request_work(database: pg_sys::Oid) {
    if !available() {
        return;
    }
    let mut shared = STATE.exclusive();
    let launcher = shared.launcher_latch;
    match shared.slot_for(u32::from(database)) {
        Some(slot) => {
            slot.wanted = true;
            if slot.pid != 0 {
                set_latch(slot.latch);
            } else {
                set_latch(launcher);
            }
        }
        // Every slot taken: the launcher asks every database again as slots free up.
        None => {
            shared.overflow = true;
            set_latch(launcher);
        }
    }
}

/// A worker about to look for work takes the request that woke it, and says whether there
/// was one. A request arriving after this finds the flag clear and sets it again, so none is
/// lost.
pub fn take_request(database: pg_sys::Oid) -> bool {
    // SAFETY: reads this process's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    let database = u32::from(database);
    if let Some(slot) = STATE
        .exclusive()
        .slots
        .iter_mut()
        .find(|s| s.database == database && s.pid == pid)
    {
        return std::mem::replace(&mut slot.wanted, false);
    }
    false
}

/// Whether a database wanted a slot when none was free; clears the flag.
pub fn take_overflow() -> bool {
    let mut shared = STATE.exclusive();
    std::mem::replace(&mut shared.overflow, false)
}

/// The database no longer exists or accepts connections: its slot is freed, and its
/// windows' counters; and, once it is `dropped`, its windows' registered tables (a database
/// closed to connections may still have sessions writing to them).
pub fn forget(database: u32, dropped: bool) {
    if !available() {
        return;
    }
    let mut writes = WRITES.exclusive();
    for window in writes.windows.iter_mut() {
        if window.database == database {
            *window = Counted::default();
        }
    }
    for session in writes.sessions.iter_mut() {
        if session.database == database {
            *session = SessionWrites::default();
        }
    }
    drop(writes);
    if dropped {
        let mut tables = TABLES.exclusive();
        for table in tables.tables.iter_mut() {
            if table.database == database {
                *table = Registered::default();
            }
        }
        tables.mark(database, false);
        drop(tables);
        TABLES_GENERATION.get().fetch_add(1, Ordering::AcqRel);
    }
    if let Some(slot) = STATE
        .exclusive()
        .slots
        .iter_mut()
        .find(|s| s.database == database && s.pid == 0)
    {
        *slot = Slot::default();
    }
}

/// The databases that want a worker and have none (and may have one now), and how many
/// workers run.
pub fn wanted() -> (Vec<u32>, usize) {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let shared = STATE.share();
    let running = shared.slots.iter().filter(|s| s.pid != 0).count();
    let wanted = shared
        .slots
        .iter()
        .filter(|s| s.wanted && s.pid == 0 && s.not_before <= now)
        .map(|s| s.database)
        .collect();
    (wanted, running)
}

/// Whether another database waits for a worker slot (or asked when none was free): a worker
/// that only samples its database's workload then gives its slot up.
pub fn others_waiting(database: pg_sys::Oid) -> bool {
    if !available() {
        return false;
    }
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let database = u32::from(database);
    let shared = STATE.share();
    shared.overflow
        || shared.slots.iter().any(|s| {
            s.database != 0
                && s.database != database
                && s.wanted
                && s.pid == 0
                && s.not_before <= now
        })
}

/// Asks for `database`'s worker at `at` (TimestampTz) at the latest, or never (0): the
/// worker says when it next has something to do on time.
pub fn wake_at(database: pg_sys::Oid, at: i64) {
    if !available() {
        return;
    }
    if let Some(slot) = STATE.exclusive().slot_for(u32::from(database)) {
        slot.wake_at = at;
    }
}

/// Asks for `database`'s worker at `at` at the latest, keeping an earlier time asked for
/// already (an expand window's next alert).
pub fn wake_by(database: pg_sys::Oid, at: i64) {
    if !available() {
        return;
    }
    if let Some(slot) = STATE.exclusive().slot_for(u32::from(database)) {
        if slot.wake_at == 0 || slot.wake_at > at {
            slot.wake_at = at;
        }
    }
}

/// The launcher, each time it looks: databases whose time has come want their worker.
pub fn wake_due() {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let mut shared = STATE.exclusive();
    for slot in shared.slots.iter_mut() {
        if slot.database != 0 && slot.wake_at != 0 && slot.wake_at <= now {
            slot.wake_at = 0;
            slot.wanted = true;
            if slot.pid != 0 {
                set_latch(slot.latch);
            }
        }
    }
}

/// Marks databases as wanting a worker (the launcher's own start, after a restart), as many
/// as there are slots for; the others stay in `databases`, for when slots free up.
pub fn want(databases: &mut Vec<u32>) {
    let mut shared = STATE.exclusive();
    databases.retain(|&database| match shared.slot_for(database) {
        Some(slot) => {
            slot.wanted = true;
            false
        }
        None => true,
    });
}

/// The launcher registers its latch.
pub fn register_launcher() {
    // SAFETY: MyProc is this process's PGPROC, in shared memory.
    let latch = unsafe { &raw mut (*pg_sys::MyProc).procLatch } as usize;
    STATE.exclusive().launcher_latch = latch;
}

/// The launcher leaves; until it is back, committed work waits in the table for it.
pub fn unregister_launcher() {
    STATE.exclusive().launcher_latch = 0;
}

/// A database worker takes (or re-takes) its database's slot; false if another worker holds
/// it already.
pub fn register_worker(database: pg_sys::Oid) -> bool {
    let database = u32::from(database);
    // SAFETY: as above.
    let (pid, latch) = unsafe {
        (
            pg_sys::MyProcPid,
            &raw mut (*pg_sys::MyProc).procLatch as usize,
        )
    };
    let mut shared = STATE.exclusive();
    let Some(slot) = shared.slot_for(database) else {
        return false;
    };
    if slot.pid != 0 && slot.pid != pid && process_alive(slot.pid) {
        return false;
    }
    *slot = Slot {
        database,
        pid,
        latch,
        wanted: false,
        not_before: 0,
        wake_at: slot.wake_at,
        leave: false,
        settings_generation: slot.settings_generation,
    };
    true
}

/// [`Slot::settings_generation`] of `database`'s slot; a value no slot has when it has none
/// (a worker that read it then starts again once, after its first look at the settings).
pub fn settings_generation(database: pg_sys::Oid) -> u64 {
    if !available() {
        return 0;
    }
    let database = u32::from(database);
    STATE
        .share()
        .slots
        .iter()
        .find(|s| s.database == database)
        .map_or(u64::MAX, |s| s.settings_generation)
}

/// How long a worker asked to leave stays away: the statement that asked runs meanwhile.
const LEAVE_US: i64 = 10_000_000;

/// Asks `database`'s worker to leave, and not to be started again for a while.
pub fn ask_to_leave(database: pg_sys::Oid) {
    if !available() {
        return;
    }
    let database = u32::from(database);
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let mut shared = STATE.exclusive();
    if let Some(slot) = shared.slots.iter_mut().find(|s| s.database == database) {
        slot.leave = true;
        slot.not_before = now + LEAVE_US;
        // It comes back (to a database that still exists) for its next sample.
        slot.wake_at = now + LEAVE_US;
        if slot.pid != 0 {
            set_latch(slot.latch);
        }
    }
}

/// Whether this worker was asked to leave.
pub fn asked_to_leave(database: pg_sys::Oid) -> bool {
    let database = u32::from(database);
    // SAFETY: reads this process's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    STATE
        .share()
        .slots
        .iter()
        .any(|s| s.database == database && s.pid == pid && s.leave)
}

/// How long a worker that exited on an error waits before it is started again.
const RESTART_DELAY_US: i64 = 5_000_000;

/// A worker leaving. Its slot stays wanted if it exited on an error (restarted after a pause)
/// or if work was requested since it last looked (restarted at once).
/// Frees `database`'s slot when the process exits, whatever ends it.
pub fn unregister_worker_at_exit(database: pg_sys::Oid) {
    #[pgrx::pg_guard]
    unsafe extern "C-unwind" fn on_exit(code: i32, arg: pg_sys::Datum) {
        // A worker that dies with work left is restarted by the launcher; a clean exit frees
        // the slot.
        unregister_worker(pg_sys::Oid::from(arg.value() as u32), code != 0);
    }
    // SAFETY: registers an exit callback; it runs once, as the process exits.
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(database)) };
}

pub fn unregister_worker(database: pg_sys::Oid, failed: bool) {
    let database = u32::from(database);
    // SAFETY: reads this process's pid and the clock.
    let (pid, now) = unsafe { (pg_sys::MyProcPid, pg_sys::GetCurrentTimestamp()) };
    let mut shared = STATE.exclusive();
    if let Some(slot) = shared
        .slots
        .iter_mut()
        .find(|s| s.database == database && s.pid == pid)
    {
        *slot = if failed || slot.wanted || slot.wake_at != 0 || slot.leave {
            Slot {
                database,
                pid: 0,
                latch: 0,
                wanted: failed || slot.wanted,
                not_before: if failed {
                    now + RESTART_DELAY_US
                } else if slot.leave {
                    slot.not_before
                } else {
                    0
                },
                wake_at: slot.wake_at,
                leave: false,
                settings_generation: slot.settings_generation,
            }
        } else {
            Slot::default()
        };
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: a lookup in the proc array.
    unsafe { !pg_sys::BackendPidGetProc(pid).is_null() }
}

fn set_latch(latch: usize) {
    if latch != 0 {
        // SAFETY: the address of a PGPROC latch in shared memory, registered by its owner.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// A registration of a database's window tables, made when the transaction commits.
type Registration = (pg_sys::Oid, Vec<WindowTable>, bool);

thread_local! {
    /// This transaction queued work for the background worker.
    static WAKE_AT_COMMIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// This transaction opened a window: its tables, and the others still open.
    static REGISTER_AT_COMMIT: std::cell::RefCell<Option<Registration>> =
        const { std::cell::RefCell::new(None) };
    /// The databases whose workers' sessions this transaction gave settings to (0: all).
    static SETTINGS_AT_COMMIT: std::cell::RefCell<Vec<u32>> =
        const { std::cell::RefCell::new(Vec::new()) };
    static CALLBACK_REGISTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn at_transaction_end_registered() {
    if !CALLBACK_REGISTERED.replace(true) {
        // SAFETY: registers a callback for the life of this backend.
        unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
    }
}

/// Wakes this database's worker when the current transaction commits: before that, the
/// worker could not see the work, and after a rollback there is none.
pub fn wake_at_commit() {
    WAKE_AT_COMMIT.set(true);
    at_transaction_end_registered();
}

/// Changes the settings generation of the databases given when the current transaction
/// commits, once the settings are there for a session that connects.
pub fn settings_changed_at_commit(given: crate::pg::nodes::SettingsFor) {
    if available() {
        let database = match given {
            crate::pg::nodes::SettingsFor::Database(oid) => u32::from(oid),
            crate::pg::nodes::SettingsFor::EveryDatabase => 0,
        };
        SETTINGS_AT_COMMIT.with_borrow_mut(|d| d.push(database));
        at_transaction_end_registered();
    }
}

fn settings_committed(databases: &[u32]) {
    let mut shared = STATE.exclusive();
    shared.settings_epoch += 1;
    let epoch = shared.settings_epoch;
    for slot in shared.slots.iter_mut() {
        if slot.database != 0 && databases.iter().any(|&d| d == 0 || d == slot.database) {
            slot.settings_generation = epoch;
        }
    }
}

/// [`register_window_tables`] when the current transaction commits: a window whose expand
/// rolls back never had its tables looked for.
pub fn register_window_tables_at_commit(
    database: pg_sys::Oid,
    tables: Vec<WindowTable>,
    complete: bool,
) {
    REGISTER_AT_COMMIT.set(Some((database, tables, complete)));
    at_transaction_end_registered();
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        // Called after the commit is visible to other sessions.
        pg_sys::XactEvent::XACT_EVENT_COMMIT => {
            // First: it raises nothing.
            let settings = SETTINGS_AT_COMMIT.take();
            if !settings.is_empty() {
                settings_committed(&settings);
            }
            if let Some((database, tables, complete)) = REGISTER_AT_COMMIT.take() {
                register_window_tables(database, &tables, complete);
            }
            if WAKE_AT_COMMIT.replace(false) {
                request_work(pg_sys::MyDatabaseId);
            }
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT => {
            WAKE_AT_COMMIT.set(false);
            REGISTER_AT_COMMIT.take();
            SETTINGS_AT_COMMIT.take();
        }
        // COMMIT PREPARED happens in another session, which would not wake the worker; as
        // PostgreSQL does for temporary objects, such a transaction cannot be prepared.
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE if WAKE_AT_COMMIT.get() => {
            crate::errors::Problem::new(
                pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "cannot PREPARE a transaction that submitted work to the background worker",
                "The worker is woken when the submitting transaction commits; a prepared \
                 transaction is committed later, by COMMIT PREPARED in another session.",
                "Submit the migration in a transaction that commits normally.",
            )
            .raise();
        }
        // Settings committed later by COMMIT PREPARED are seen only as a change of the
        // catalog (the worker's own look at pg_db_role_setting): a worker that connects
        // while they commit, before that look, keeps the settings it had for its life.
        pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            WAKE_AT_COMMIT.set(false);
            REGISTER_AT_COMMIT.take();
            SETTINGS_AT_COMMIT.take();
        }
        _ => {}
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn a_database_is_incomplete_until_all_its_tables_are_registered_again() {
        let mut tables = WindowTables::default();
        tables.mark(5, true);
        tables.mark(6, true);
        assert!(tables.incomplete.contains(&5) && tables.incomplete.contains(&6));
        // Another database's registration changes nothing for this one.
        tables.mark(6, false);
        assert!(tables.incomplete.contains(&5) && !tables.incomplete.contains(&6));
        tables.mark(5, false);
        assert!(tables.incomplete.iter().all(|&d| d == 0));
        for database in 1..=(INCOMPLETE_KEPT as u32 + 1) {
            tables.mark(database, true);
        }
        assert!(tables.incomplete_overflow);
    }
}
