//! The commands event triggers never see on PostgreSQL 15 (TRUNCATE, VACUUM FULL, CLUSTER,
//! REINDEX), judged from a ProcessUtility hook. Installed only when pg_migrate is in
//! shared_preload_libraries; it chains to whatever hook was there before.

use super::trigger;
use pgrx::{is_a, pg_sys};
use std::ffi::c_char;

static mut PREVIOUS: pg_sys::ProcessUtility_hook_type = None;

/// Called from _PG_init while shared_preload_libraries is being processed.
pub fn install() {
    // SAFETY: _PG_init runs once per process, before any statement.
    unsafe {
        PREVIOUS = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// The statements this hook judges; everything else is the event triggers' business.
unsafe fn unseen_by_event_triggers(node: *mut pg_sys::Node) -> bool {
    use pg_sys::NodeTag as T;
    is_a(node, T::T_TruncateStmt)
        || is_a(node, T::T_VacuumStmt)
        || is_a(node, T::T_ClusterStmt)
        // PostgreSQL 17 fires ddl_command_start for REINDEX itself.
        || (cfg!(any(
            feature = "pg13",
            feature = "pg14",
            feature = "pg15",
            feature = "pg16"
        )) && is_a(node, T::T_ReindexStmt))
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
    )
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
    next(pstmt, query_string, context, params, query_env, dest, qc)
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn judge(node: *mut pg_sys::Node) {
    if node.is_null() || !pg_sys::IsTransactionState() {
        return;
    }
    if !unseen_by_event_triggers(node) {
        return;
    }
    // Event triggers are skipped the same way: in replica mode (superuser-only) and while an
    // extension script runs.
    if pg_sys::SessionReplicationRole == pg_sys::SESSION_REPLICATION_ROLE_REPLICA as i32 {
        return;
    }
    // The hook is process-wide; the guard belongs to databases with pg_migrate.
    if trigger::active() && crate::catalog::extension_installed() {
        trigger::judge_statement(node, &crate::parser::command_tag(node));
    }
}
