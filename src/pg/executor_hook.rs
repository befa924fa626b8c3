//! PostgreSQL's ExecutorEnd hook: every query that ran to its end, from any session, passes
//! through it. Installed only from shared_preload_libraries; it chains to whatever hook was
//! there before. Used to note which sessions still use the tables of open windows, reads
//! included, which no trigger sees.

use pgrx::pg_sys;

static mut PREVIOUS: pg_sys::ExecutorEnd_hook_type = None;
static mut OBSERVER: Option<Observer> = None;

/// What the hook asks of the layer above, for every query that ends.
#[derive(Clone, Copy)]
pub struct Observer {
    /// Whether relations are wanted at all: a lookup in this process and one atomic read,
    /// so that sessions of databases without open windows pay nothing more.
    pub wanted: fn() -> bool,
    /// The relations the query's plan read or wrote (views among them, and the tables they
    /// read). Must not raise.
    pub seen: fn(&[pg_sys::Oid]),
}

/// Has `observer` see the relations of every query that ends. Called from _PG_init while
/// shared_preload_libraries is being processed.
pub fn install(observer: Observer) {
    // SAFETY: _PG_init runs once per process, before any query.
    unsafe {
        OBSERVER = Some(observer);
        PREVIOUS = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn observe(query: *mut pg_sys::QueryDesc) {
    let Some(observer) = OBSERVER else {
        return;
    };
    // A parallel worker's statements are its leader's.
    if query.is_null() || pg_sys::ParallelWorkerNumber >= 0 || !(observer.wanted)() {
        return;
    }
    let statement = (*query).plannedstmt;
    if statement.is_null() {
        return;
    }
    let rtable = pgrx::PgList::<pg_sys::RangeTblEntry>::from_pg((*statement).rtable);
    let relations: Vec<pg_sys::Oid> = rtable
        .iter_ptr()
        .filter(|rte| !rte.is_null() && (**rte).rtekind == pg_sys::RTEKind::RTE_RELATION)
        .map(|rte| (*rte).relid)
        .collect();
    if !relations.is_empty() {
        (observer.seen)(&relations);
    }
}

// As the utility hook: a plain frame calling the next hook through raw bindings, so that an
// ERROR raised there longjmps through it as through C. Only `observe` runs Rust logic,
// guarded on its own, before the query's state is freed.
unsafe extern "C-unwind" {
    #[link_name = "standard_ExecutorEnd"]
    fn standard_executor_end_raw(query: *mut pg_sys::QueryDesc);
}

unsafe extern "C-unwind" fn executor_end(query: *mut pg_sys::QueryDesc) {
    observe(query);
    let next = PREVIOUS.unwrap_or(standard_executor_end_raw);
    next(query)
}
