//! Writes down where the commits that finished migrations and phases end in the WAL
//! (`commit_lsn` of `migrate.history` and `migrate.step_records`), which a standby's replay
//! position is compared with. Each is known only after its commit: the commit callback keeps
//! it in shared memory (`pg::commit_lsn`), and the worker writes it down at its next turn;
//! until then `migrate.commit_positions()` reads it from there.

use crate::errors::OrBookkeeping;
use pgrx::prelude::*;

/// PostgreSQL's text form of a WAL position, which `pg_lsn` reads.
fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The worker's turn: writes the positions kept since the last time, and for finished rows
/// whose commit was not kept (the server restarted between the commit and now, or pg_migrate
/// is not preloaded) a WAL position read now, after their commit: later than their commit
/// record, never earlier, so a standby counted as having replayed one has. An exact position
/// kept later replaces it. Rows another transaction has locked are left for the next turn.
/// Returns how many rows it wrote.
pub fn record() -> i64 {
    if crate::pg::xact::read_only() {
        return 0;
    }
    let kept = crate::pg::commit_lsn::kept(crate::pg::process::database());
    let xids: Vec<String> = kept.iter().map(|(x, _)| x.to_string()).collect();
    let lsns: Vec<String> = kept.iter().map(|(_, l)| lsn_text(*l)).collect();
    // Rows this transaction finished are not committed yet: their commit is still to come.
    // Each table joined once with what is kept: a lookup per row would cost rows x kept.
    let table = |name: &str| {
        format!(
            "{name}_w AS (UPDATE migrate.{name} t \
                 SET commit_lsn = coalesce(f.lsn, pg_catalog.pg_current_wal_insert_lsn()) \
                 FROM (SELECT o.ctid AS row, k.lsn FROM migrate.{name} o \
                         LEFT JOIN kept k ON k.xid = o.commit_xid \
                        WHERE o.commit_xid IS DISTINCT FROM pg_catalog.pg_current_xact_id_if_assigned() \
                          AND (o.commit_lsn IS NULL AND o.commit_xid IS NOT NULL \
                               OR o.commit_lsn <> k.lsn) \
                        FOR UPDATE OF o SKIP LOCKED) f \
                WHERE t.ctid = f.row RETURNING 1)"
        )
    };
    crate::pg::spi::kept_value_as_owner::<i64>(
        &format!(
            "WITH kept AS (SELECT k.x::pg_catalog.xid8 AS xid, k.l::pg_catalog.pg_lsn AS lsn \
                             FROM unnest($1::text[], $2::text[]) k(x, l)), {}, {} \
             SELECT (SELECT count(*) FROM history_w) + (SELECT count(*) FROM step_records_w)",
            table("history"),
            table("step_records")
        ),
        &[xids.into(), lsns.into()],
    )
    .or_bookkeeping("record commit positions in migrate.history")
    .unwrap_or(0)
}

/// `migrate.kept_commits()`: the commits of this database kept in shared memory and not yet
/// written down, (transaction id, end of its commit record) as text; what
/// `migrate.commit_positions()` reads before the worker writes them.
#[pg_extern(volatile, parallel_safe)]
fn kept_commits() -> TableIterator<'static, (name!(xid, String), name!(lsn, String))> {
    TableIterator::new(
        crate::pg::commit_lsn::kept(crate::pg::process::database())
            .into_iter()
            .map(|(xid, lsn)| (xid.to_string(), lsn_text(lsn))),
    )
}

#[cfg(test)]
mod unit {
    #[test]
    fn a_position_is_spelt_as_pg_lsn_reads_it() {
        assert_eq!(super::lsn_text(0), "0/0");
        assert_eq!(super::lsn_text(0x1_0000_00A8), "1/A8");
        assert_eq!(super::lsn_text(0x16B3_7D28), "0/16B37D28");
    }
}
