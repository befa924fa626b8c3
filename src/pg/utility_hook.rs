//! PostgreSQL's ProcessUtility hook: every utility statement, from any session, passes through
//! it before it runs. Installed only from shared_preload_libraries; it chains to whatever hook
//! was there before.

use crate::pg::nodes::StmtTree;
use pgrx::pg_sys;
use std::ffi::c_char;

static mut PREVIOUS: pg_sys::ProcessUtility_hook_type = None;
static mut JUDGES: &[fn(StmtTree)] = &[];
static mut FOLLOWERS: &[fn()] = &[];

/// Has each of `judges`, in order, see every utility statement (in a transaction) before it
/// runs; one may raise to stop it. Each of `followers` is called once a statement has run
/// without an error. Called from _PG_init while shared_preload_libraries is being processed.
pub fn install(judges: &'static [fn(StmtTree)], followers: &'static [fn()]) {
    // SAFETY: _PG_init runs once per process, before any statement.
    unsafe {
        JUDGES = judges;
        FOLLOWERS = followers;
        PREVIOUS = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn judge(node: *mut pg_sys::Node) {
    if node.is_null() || !pg_sys::IsTransactionState() {
        return;
    }
    for judge in JUDGES {
        // The statement ProcessUtility is about to run: its tree lives until it ends.
        judge(StmtTree::new(node));
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn follow() {
    for follower in FOLLOWERS {
        follower();
    }
}

// The hook is a plain frame with nothing to drop, calling the next hook through raw
// bindings: an ERROR raised by the command itself then longjmps through it exactly as through
// C, keeping its cursor position and CONTEXT. (Calling through pgrx's guarded bindings would
// turn it into a Rust panic and re-raise it without them.) Only `judge` runs Rust logic, and
// it is guarded on its own.
unsafe extern "C-unwind" {
    #[link_name = "standard_ProcessUtility"]
    fn standard_process_utility_raw(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const c_char,
        #[cfg(not(feature = "pg13"))] read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

#[cfg(not(feature = "pg13"))]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    judge((*pstmt).utilityStmt);
    let next = PREVIOUS.unwrap_or(standard_process_utility_raw);
    next(
        pstmt,
        query_string,
        read_only_tree,
        context,
        params,
        query_env,
        dest,
        qc,
    );
    follow();
}

#[cfg(feature = "pg13")]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    judge((*pstmt).utilityStmt);
    let next = PREVIOUS.unwrap_or(standard_process_utility_raw);
    next(pstmt, query_string, context, params, query_env, dest, qc);
    follow();
}
