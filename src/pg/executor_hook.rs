//! PostgreSQL's ExecutorStart and ExecutorEnd hooks: every query that runs, from any
//! session, passes through them. Installed only from shared_preload_libraries; they chain to
//! whatever hooks were there before. Used to know, while a query runs, which version of an
//! open window it uses (the new version's views, or the tables by their old names), and which
//! sessions still use each, reads included, which no trigger sees.

use pgrx::pg_sys;

static mut PREVIOUS_START: pg_sys::ExecutorStart_hook_type = None;
static mut PREVIOUS_END: pg_sys::ExecutorEnd_hook_type = None;
static mut OBSERVER: Option<Observer> = None;

/// A relation a query's plan reads or writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Relation {
    pub oid: pg_sys::Oid,
    /// A view (kept in the plan, beside the tables it reads, for its permission checks).
    pub view: bool,
}

/// What the hooks ask of the layer above. None of these may raise.
#[derive(Clone, Copy)]
pub struct Observer {
    /// Whether relations are wanted at all: a lookup in this process and one atomic read,
    /// so that sessions of databases without open windows pay nothing more.
    pub wanted: fn() -> bool,
    /// A query (by its descriptor's address, stable until it ends) is about to run, with
    /// the relations of its plan.
    pub started: fn(usize, &[Relation]),
    /// A query ran to its end (one that fails never does).
    pub ended: fn(usize),
}

/// Has `observer` see the queries that start and end. Called from _PG_init while
/// shared_preload_libraries is being processed.
pub fn install(observer: Observer) {
    // SAFETY: _PG_init runs once per process, before any query.
    unsafe {
        OBSERVER = Some(observer);
        PREVIOUS_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        PREVIOUS_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn observe_start(query: *mut pg_sys::QueryDesc) {
    let Some(observer) = OBSERVER else {
        return;
    };
    // A parallel worker's queries are its leader's.
    if query.is_null() || pg_sys::ParallelWorkerNumber >= 0 || !(observer.wanted)() {
        return;
    }
    let statement = (*query).plannedstmt;
    if statement.is_null() {
        return;
    }
    let rtable = pgrx::PgList::<pg_sys::RangeTblEntry>::from_pg((*statement).rtable);
    // A view read by the query is a subquery entry from PostgreSQL 16 on that keeps the
    // view's oid and kind (for its permission checks and locks); a relation entry before,
    // and for a view written through.
    let relations: Vec<Relation> = rtable
        .iter_ptr()
        .filter(|rte| !rte.is_null())
        .filter_map(|rte| {
            let view = (*rte).relkind == pg_sys::RELKIND_VIEW as std::ffi::c_char;
            let relation = (*rte).rtekind == pg_sys::RTEKind::RTE_RELATION
                || (view && (*rte).relid != pg_sys::InvalidOid);
            relation.then(|| Relation {
                oid: (*rte).relid,
                view,
            })
        })
        .collect();
    if !relations.is_empty() {
        (observer.started)(query as usize, &relations);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn observe_end(query: *mut pg_sys::QueryDesc) {
    if let Some(observer) = OBSERVER {
        (observer.ended)(query as usize);
    }
}

// As the utility hook: plain frames calling the next hook through raw bindings, so that an
// ERROR raised there longjmps through them as through C. Only `observe_*` run Rust logic,
// each guarded on its own: after the query's start (its plan is set up, and a start that
// fails is not seen), before its end (its state is freed then).
unsafe extern "C-unwind" {
    #[link_name = "standard_ExecutorStart"]
    fn standard_executor_start_raw(query: *mut pg_sys::QueryDesc, eflags: std::ffi::c_int);
    #[link_name = "standard_ExecutorEnd"]
    fn standard_executor_end_raw(query: *mut pg_sys::QueryDesc);
}

unsafe extern "C-unwind" fn executor_start(query: *mut pg_sys::QueryDesc, eflags: std::ffi::c_int) {
    let next = PREVIOUS_START.unwrap_or(standard_executor_start_raw);
    next(query, eflags);
    observe_start(query);
}

unsafe extern "C-unwind" fn executor_end(query: *mut pg_sys::QueryDesc) {
    observe_end(query);
    let next = PREVIOUS_END.unwrap_or(standard_executor_end_raw);
    next(query)
}
