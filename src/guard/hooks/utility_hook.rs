//! The commands event triggers never see on PostgreSQL 15 (TRUNCATE, VACUUM FULL, CLUSTER,
//! REINDEX), judged from the ProcessUtility hook (`pg::utility_hook`).

use crate::guard::hooks::trigger;
use crate::pg::nodes::StmtTree;
use pgrx::pg_sys::NodeTag as T;

/// The statements this hook judges; everything else is the event triggers' business.
fn unseen_by_event_triggers(stmt: StmtTree) -> bool {
    stmt.is(T::T_TruncateStmt)
        || stmt.is(T::T_VacuumStmt)
        || stmt.is(T::T_ClusterStmt)
        // PostgreSQL 17 fires ddl_command_start for REINDEX itself.
        || (cfg!(any(
            feature = "pg13",
            feature = "pg14",
            feature = "pg15",
            feature = "pg16"
        )) && stmt.is(T::T_ReindexStmt))
}

/// Judges, from the ProcessUtility hook (`pg::utility_hook`), what event triggers miss.
pub fn judge(stmt: StmtTree) {
    if !unseen_by_event_triggers(stmt) {
        return;
    }
    // Event triggers are skipped the same way: in replica mode (superuser-only) and while an
    // extension script runs.
    if crate::pg::guc::replica_mode() {
        return;
    }
    // The hook is process-wide; the guard belongs to databases with pg_migrate.
    if trigger::active() && crate::pg::catalog::extension_installed() {
        trigger::judge_statement(stmt, &stmt.command_tag());
    }
}
