//! Running one statement top-level, in-process, the way `exec_simple_query` runs a client's
//! statement: parse, analyse, plan, run through an unnamed portal with `isTopLevel = true`.
//! Statements that refuse a transaction block (CREATE INDEX CONCURRENTLY, VACUUM, ...) run
//! here; SPI cannot run them. Only the background worker calls this, between transactions.

use crate::pg::subxact::Caught;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::{PgList, PgTryBuilder};
use std::ffi::CString;
use std::panic::AssertUnwindSafe;

/// Runs `sql` (one statement) as a top-level command in its own transaction(s). On an ERROR
/// the transaction is aborted, as the server's main loop does, and the error returned.
pub fn run(sql: &str) -> Result<(), Caught> {
    let c_sql = CString::new(sql).expect("text values never contain NUL");
    // SAFETY: called outside any transaction by the worker's main loop; every step mirrors
    // exec_simple_query, and the error path mirrors PostgresMain's.
    unsafe {
        // Parse trees, plans and the portal must survive the statement's own commits (CREATE
        // INDEX CONCURRENTLY commits twice inside), so they live outside any transaction.
        let context = pg_sys::AllocSetContextCreateInternal(
            pg_sys::TopMemoryContext,
            c"pg_migrate top-level statement".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        let result = PgTryBuilder::new(AssertUnwindSafe(|| {
            execute(&c_sql, context);
            Ok(())
        }))
        .catch_others(|error| Err(abort(error)))
        .execute();
        // A timer the statement armed (the guard does, for DDL taking strong locks) must not
        // fire during a later one.
        crate::pg::statement_timer::disarm_statement_timeout();
        pg_sys::debug_query_string = std::ptr::null();
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
        pg_sys::MemoryContextDelete(context);
        result
    }
}

unsafe fn execute(sql: &CString, context: pg_sys::MemoryContext) {
    pg_sys::SetCurrentStatementStartTimestamp();
    pg_sys::debug_query_string = sql.as_ptr();
    pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, sql.as_ptr());
    pg_sys::StartTransactionCommand();

    let outer = pg_sys::MemoryContextSwitchTo(context);
    let raw_list = PgList::<pg_sys::RawStmt>::from_pg(pg_sys::pg_parse_query(sql.as_ptr()));
    pg_sys::MemoryContextSwitchTo(outer);
    // Exactly one statement: what was judged and recorded as this step, never more.
    let (Some(raw), 1) = (raw_list.get_ptr(0), raw_list.len()) else {
        crate::errors::Problem::new(
            pgrx::PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            format!(
                "a top-level statement split into {} statements, not one",
                raw_list.len()
            ),
            "Each top-level phase is one statement of the migration, which parsed as one \
             when it was submitted; a text that splits otherwise now is not run.",
            "Cancel the migration with migrate.cancel and submit it again under the settings \
             it was written for (standard_conforming_strings).",
        )
        .raise();
    };
    let tag = pg_sys::CreateCommandTag((*raw).stmt);

    let snapshot = pg_sys::analyze_requires_snapshot(raw);
    if snapshot {
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let outer = pg_sys::MemoryContextSwitchTo(context);
    let queries = analyze(raw, sql);
    let plans = pg_sys::pg_plan_queries(queries, sql.as_ptr(), 0, std::ptr::null_mut());
    if snapshot {
        pg_sys::PopActiveSnapshot();
    }
    pgrx::check_for_interrupts!();

    let portal = pg_sys::CreatePortal(c"".as_ptr(), true, true);
    (*portal).visible = false;
    define_query(portal, sql, tag, plans);
    pg_sys::PortalStart(portal, std::ptr::null_mut(), 0, std::ptr::null_mut());
    let mut format: i16 = 0;
    pg_sys::PortalSetResultFormat(portal, 1, &mut format);
    let receiver = pg_sys::CreateDestReceiver(pg_sys::CommandDest::DestNone);
    pg_sys::MemoryContextSwitchTo(outer);

    let mut completion: pg_sys::QueryCompletion = std::mem::zeroed();
    run_portal(portal, receiver, &mut completion);
    if let Some(destroy) = (*receiver).rDestroy {
        destroy(receiver);
    }
    pg_sys::PortalDrop(portal, false);
    pg_sys::CommitTransactionCommand();
}

#[cfg(any(feature = "pg13", feature = "pg14"))]
unsafe fn analyze(raw: *mut pg_sys::RawStmt, sql: &CString) -> *mut pg_sys::List {
    pg_sys::pg_analyze_and_rewrite(
        raw,
        sql.as_ptr(),
        std::ptr::null_mut(),
        0,
        std::ptr::null_mut(),
    )
}

#[cfg(not(any(feature = "pg13", feature = "pg14")))]
unsafe fn analyze(raw: *mut pg_sys::RawStmt, sql: &CString) -> *mut pg_sys::List {
    pg_sys::pg_analyze_and_rewrite_fixedparams(
        raw,
        sql.as_ptr(),
        std::ptr::null_mut(),
        0,
        std::ptr::null_mut(),
    )
}

unsafe fn define_query(
    portal: pg_sys::Portal,
    sql: &CString,
    tag: pg_sys::CommandTag::Type,
    plans: *mut pg_sys::List,
) {
    pg_sys::PortalDefineQuery(
        portal,
        std::ptr::null(),
        sql.as_ptr(),
        tag,
        plans,
        std::ptr::null_mut(),
    );
}

#[cfg(not(feature = "pg18"))]
unsafe fn run_portal(
    portal: pg_sys::Portal,
    receiver: *mut pg_sys::DestReceiver,
    completion: &mut pg_sys::QueryCompletion,
) {
    pg_sys::PortalRun(
        portal,
        i64::MAX as _,
        true,
        true,
        receiver,
        receiver,
        completion,
    );
}

#[cfg(feature = "pg18")]
unsafe fn run_portal(
    portal: pg_sys::Portal,
    receiver: *mut pg_sys::DestReceiver,
    completion: &mut pg_sys::QueryCompletion,
) {
    pg_sys::PortalRun(portal, i64::MAX as _, true, receiver, receiver, completion);
}

/// Runs `f` in a transaction of its own, with a snapshot, outside any other: the worker's
/// bookkeeping, and a submitter's work under its role (a transactional phase, a backfill's
/// batch). On an ERROR the transaction is aborted and the error returned.
///
/// The worker's own transactions run with what a migration's phase SET for the session (it
/// carries to the migration's next phase) undone until they end: a phase's
/// `default_transaction_read_only` or `lock_timeout` is not the worker's. A setting the
/// worker SETs in one (a submitter's, before its work) stays after it.
pub fn transaction<T>(f: impl FnOnce() -> T) -> Result<T, Caught> {
    let undo_session_sets = !crate::pg::identity::as_another_role();
    let mut f = Some(f);
    // SAFETY: called between transactions by the worker; the error path mirrors PostgresMain's.
    unsafe {
        PgTryBuilder::new(AssertUnwindSafe(|| {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            if undo_session_sets {
                crate::pg::guc::undo_session_sets_for_transaction();
            }
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            crate::pg::xact::share_extension();
            let value = (f.take().expect("the body runs once"))();
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
            Ok(value)
        }))
        .catch_others(|error| Err(abort(error)))
        .execute()
    }
}

/// Records `what` (an outcome, progress) in a transaction of its own; false, and logged, if
/// that failed.
pub fn record(what: &str, f: impl FnOnce()) -> bool {
    match transaction(f) {
        Ok(()) => true,
        Err(e) => {
            log(&format!("could not record {what}: {}", e.message));
            false
        }
    }
}

/// A line in the server log from the worker, which has no client to tell.
pub fn log(message: &str) {
    pgrx::log!("pg_migrate worker: {message}");
}

/// What PostgresMain does after an ERROR: abort whatever transaction state there is, and
/// forget a cancel request that arrived meanwhile.
unsafe fn abort(error: CaughtError) -> Caught {
    crate::pg::statement_timer::disarm_statement_timeout();
    pg_sys::QueryCancelPending = 0;
    pg_sys::AbortCurrentTransaction();
    pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
    Caught::from_error(error)
}
