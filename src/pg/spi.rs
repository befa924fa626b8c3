//! pg_migrate's own queries through SPI, with `search_path` pinned: reads of its tables and
//! the catalogs, and writes of its tables as their owner.

use crate::pg::guc::pinned;
use crate::pg::identity::as_owner;

/// The first column of every row `sql` returns (NULLs left out), read with `search_path`
/// pinned: pg_migrate's list-valued queries of its tables and the catalogs.
pub fn pinned_column<T: pgrx::FromDatum + pgrx::IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Vec<T>, pgrx::spi::Error> {
    pinned(|| {
        pgrx::Spi::connect(|client| {
            client
                .select(sql, None, args)?
                .map(|row| row.get::<T>(1))
                .collect::<Result<Vec<Option<T>>, _>>()
        })
    })
    .map(|values| values.into_iter().flatten().collect())
}

/// Every row `sql` returns as its first two columns (rows with a NULL left out), read with
/// `search_path` pinned.
pub fn pinned_pairs<A, B>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Vec<(A, B)>, pgrx::spi::Error>
where
    A: pgrx::FromDatum + pgrx::IntoDatum,
    B: pgrx::FromDatum + pgrx::IntoDatum,
{
    pinned(|| {
        pgrx::Spi::connect(|client| {
            client
                .select(sql, None, args)?
                .map(|row| Ok(row.get::<A>(1)?.zip(row.get::<B>(2)?)))
                .collect::<Result<Vec<Option<(A, B)>>, pgrx::spi::Error>>()
        })
    })
    .map(|pairs| pairs.into_iter().flatten().collect())
}

/// Every row of a query, mapped, with search_path pinned.
pub fn pinned_rows<T>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    map: impl Fn(pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Result<Vec<T>, pgrx::spi::Error> {
    pinned(|| pgrx::Spi::connect(|client| client.select(sql, None, args)?.map(&map).collect()))
}

/// The first row `sql` returns, mapped, read with `search_path` pinned: pg_migrate's
/// single-row queries of its tables and the catalogs.
pub fn pinned_row<T>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    map: impl FnOnce(pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Result<Option<T>, pgrx::spi::Error> {
    pinned(|| {
        pgrx::Spi::connect(|client| match client.select(sql, Some(1), args)?.next() {
            Some(row) => map(row).map(Some),
            None => Ok(None),
        })
    })
}

/// Writes one of pg_migrate's tables (`sql`, an INSERT or UPDATE) as their owner; a failure
/// is a bookkeeping error naming `table`.
pub fn write_as_owner(table: &str, sql: &str, args: &[pgrx::datum::DatumWithOid]) {
    use crate::errors::OrBookkeeping;
    as_owner(|| pgrx::Spi::run_with_args(sql, args)).or_bookkeeping(&format!("write {table}"));
}

/// `pinned_row` for pg_migrate's own tables, where a failure is a bookkeeping error.
pub fn read_own_row<T>(
    table: &str,
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    map: impl FnOnce(pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Option<T> {
    use crate::errors::OrBookkeeping;
    pinned_row(sql, args, map).or_bookkeeping(&format!("read {table}"))
}

/// pg_migrate's statements that run in every migration or DDL command, prepared once per
/// backend (SPI_keepplan) by their text and parameter types. Parsing and planning them anew
/// cost more than running them. The plan cache replans them when what they read changes
/// (an ALTER EXTENSION UPDATE, a different search_path) and checks permissions at each run,
/// as it does for PL/pgSQL's. A handful of texts, all pg_migrate's own; past `KEPT_AT_MOST`
/// a statement is prepared for its call only. Kept plans are never freed: the process
/// reclaims them, and freeing them from a thread-local destructor would call into the
/// server after it shut down.
type KeptKey = (String, Vec<u32>, Mode);
const KEPT_AT_MOST: usize = 64;

thread_local! {
    static KEPT: std::cell::RefCell<
        std::collections::HashMap<KeptKey, &'static pgrx::spi::OwnedPreparedStatement>,
    > = std::cell::RefCell::new(std::collections::HashMap::new());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// As SQL functions read (`pinned_row`): read-only while the transaction has written
    /// nothing in the current subtransaction, so that a STABLE function sees its caller's
    /// snapshot.
    Read,
    /// As a volatile function's statements run: after every earlier write of this
    /// transaction, in every subtransaction (a read-only run would hide what an earlier,
    /// committed subtransaction of the same migration wrote).
    Write,
}

/// Runs `sql` through its kept plan and maps the result.
fn with_kept<T>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    mode: Mode,
    map: impl FnOnce(pgrx::spi::SpiTupleTable) -> Result<T, pgrx::spi::Error>,
) -> Result<T, pgrx::spi::Error> {
    let types: Vec<pgrx::pg_sys::Oid> = args.iter().map(|a| a.oid()).collect();
    let key = (
        sql.to_owned(),
        types.iter().map(|t| t.to_u32()).collect(),
        mode,
    );
    pgrx::Spi::connect_mut(|client| {
        let plan = match KEPT.with(|kept| kept.borrow().get(&key).copied()) {
            Some(plan) => plan,
            None => {
                let oids: Vec<pgrx::PgOid> = types.into_iter().map(pgrx::PgOid::from).collect();
                let prepared = match mode {
                    Mode::Read => client.prepare(sql, &oids)?,
                    Mode::Write => client.prepare_mut(sql, &oids)?,
                };
                let plan: &'static _ = Box::leak(Box::new(prepared.keep()));
                KEPT.with(|kept| {
                    let mut kept = kept.borrow_mut();
                    if kept.len() < KEPT_AT_MOST {
                        kept.insert(key, plan);
                    }
                });
                plan
            }
        };
        // One generic plan: a custom plan is planned anew for its parameters, and an array of
        // 50,000 OIDs (a schema renamed) took longer to plan than to run.
        let _generic =
            crate::pg::guc::SettingScope::set(&[("plan_cache_mode", "force_generic_plan")]);
        map(match mode {
            Mode::Read => client.select(plan, None, args)?,
            Mode::Write => client.update(plan, None, args)?,
        })
    })
}

/// `pinned_row` through a kept plan: for the reads every migration makes, of what everyone
/// may read.
pub fn kept_row<T>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    map: impl FnOnce(pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Result<Option<T>, pgrx::spi::Error> {
    pinned(|| {
        with_kept(sql, args, Mode::Read, |mut table| match table.next() {
            Some(row) => map(row).map(Some),
            None => Ok(None),
        })
    })
}

/// A statement of pg_migrate's bookkeeping (a write of its tables, a read of those only
/// their owner reads, a call of its bookkeeping functions) through a kept plan, as their
/// owner (`as_owner`, which pins `search_path`); the first row returned, mapped.
pub fn kept_as_owner<T>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    map: impl FnOnce(Option<pgrx::spi::SpiHeapTupleData>) -> Result<T, pgrx::spi::Error>,
) -> Result<T, pgrx::spi::Error> {
    as_owner(|| with_kept(sql, args, Mode::Write, |mut table| map(table.next())))
}

/// `kept_as_owner` of a statement that returns one value: it, or None for no row or NULL.
pub fn kept_value_as_owner<T: pgrx::FromDatum + pgrx::IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Option<T>, pgrx::spi::Error> {
    kept_as_owner(sql, args, |row| {
        Ok(row.map(|row| row.get::<T>(1)).transpose()?.flatten())
    })
}

/// `kept_as_owner`, every row returned mapped.
pub fn kept_rows_as_owner<T>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    map: impl FnMut(pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Result<Vec<T>, pgrx::spi::Error> {
    as_owner(|| with_kept(sql, args, Mode::Write, |table| table.map(map).collect()))
}

/// A snapshot of the catalogs as they were when `with_snapshot` began (the previous
/// command's changes included): what `select_as_of` reads as of.
pub struct Registered(pgrx::pg_sys::Snapshot);

/// Runs `f` with a snapshot taken now, registered with the current resource owner for the
/// call only: subtransactions `f` opens and ends leave it alone, and it cannot outlive them.
pub fn with_snapshot<T>(f: impl FnOnce(&Registered) -> T) -> T {
    struct Unregister(pgrx::pg_sys::Snapshot);
    impl Drop for Unregister {
        fn drop(&mut self) {
            if std::thread::panicking() {
                // An ERROR is unwinding: the (sub)transaction abort that follows releases
                // the resource owner's snapshots.
                return;
            }
            // SAFETY: registered below, with the resource owner that is current again here.
            unsafe { pgrx::pg_sys::UnregisterSnapshot(self.0) }
        }
    }
    // SAFETY: in a transaction; the command counter makes the previous statement's catalog
    // changes part of the snapshot, which stays registered until the guard drops.
    let registered = unsafe {
        pgrx::pg_sys::CommandCounterIncrement();
        pgrx::pg_sys::RegisterSnapshot(pgrx::pg_sys::GetTransactionSnapshot())
    };
    let _unregister = Unregister(registered);
    f(&Registered(registered))
}

/// Runs `f` with a snapshot taken now as the active one: what this transaction has done so
/// far is seen by the server's printers that query the catalogs through SPI themselves
/// (pg_get_viewdef reads pg_rewrite as of the active snapshot, which is otherwise the one the
/// caller's statement began with, before the migration's DDL), as it is by a statement that
/// pg_migrate runs through SPI.
pub fn with_current_snapshot<T>(f: impl FnOnce() -> T) -> T {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            if std::thread::panicking() {
                // An ERROR is unwinding: the (sub)transaction abort pops the snapshot.
                return;
            }
            // SAFETY: pushed below, and the top of the active stack again here.
            unsafe { pgrx::pg_sys::PopActiveSnapshot() }
        }
    }
    // SAFETY: in a transaction; the command counter makes what the transaction did so far
    // part of the snapshot, which is popped when the guard drops.
    unsafe {
        pgrx::pg_sys::CommandCounterIncrement();
        pgrx::pg_sys::PushActiveSnapshot(pgrx::pg_sys::GetTransactionSnapshot());
    }
    let _pop = Pop;
    f()
}

/// One row of `select_as_of`, read within it.
pub struct Row {
    tuple: pgrx::pg_sys::HeapTuple,
    desc: pgrx::pg_sys::TupleDesc,
}

impl Row {
    /// Column `n` (from 1) as `T`; None when it is NULL. A column of a type `T` does not
    /// read is pg_migrate's own mistake, raised as one.
    pub fn get<T>(&self, n: i32) -> Option<T>
    where
        T: pgrx::FromDatum + pgrx::IntoDatum + ToOwned<Owned = T>,
    {
        // SAFETY: the tuple and its descriptor belong to the result being read; the datum
        // is read as `T` only when the column's type is one `T` reads, and `T` owns what it
        // holds (no reference into SPI's memory).
        unsafe {
            let column_type = pgrx::pg_sys::SPI_gettypeid(self.desc, n);
            if !T::is_compatible_with(column_type) {
                crate::errors::Problem::new(
                    pgrx::PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                    format!(
                        "column {n} of one of pg_migrate's queries is of type {column_type:?}, \
                         not {}",
                        std::any::type_name::<T>()
                    ),
                    "pg_migrate read a column of its own query as another type than the query \
                     gives.",
                    "Report this as a pg_migrate bug.",
                )
                .raise();
            }
            let mut null = false;
            let d = pgrx::pg_sys::SPI_getbinval(self.tuple, self.desc, n, &mut null);
            T::from_datum(d, null)
        }
    }
}

/// Runs `query`, whose one parameter is an `oid[]`, read-only as of `as_of` (or now, when
/// None), and maps every row. A snapshot cannot be given through pgrx's SPI.
pub fn select_as_of<T>(
    query: &str,
    oids: Vec<pgrx::pg_sys::Oid>,
    as_of: Option<&Registered>,
    mut map: impl FnMut(&Row) -> T,
) -> Vec<T> {
    use pgrx::pg_sys;
    use pgrx::IntoDatum;
    let query = std::ffi::CString::new(query).expect("no NUL in the query");
    pgrx::Spi::connect(|_client| {
        // SAFETY: SPI is connected for this closure; the plan and its result are read before
        // it ends; `as_of` holds a registered snapshot.
        unsafe {
            let mut types = [pg_sys::OIDARRAYOID];
            let plan = pg_sys::SPI_prepare(query.as_ptr(), 1, types.as_mut_ptr());
            if plan.is_null() {
                crate::errors::Problem::new(
                    pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    "SPI could not prepare one of pg_migrate's queries",
                    format!("The query was: {}", query.to_string_lossy()),
                    "Report this as a pg_migrate bug.",
                )
                .raise();
            }
            let mut values = [oids.into_datum().expect("an array is a datum")];
            let nulls = [b' ' as std::ffi::c_char];
            let (snapshot, read_only) = match as_of {
                Some(s) => (s.0, true),
                None => (std::ptr::null_mut(), false),
            };
            pg_sys::SPI_execute_snapshot(
                plan,
                values.as_mut_ptr(),
                nulls.as_ptr(),
                snapshot,
                std::ptr::null_mut(),
                read_only,
                false,
                0,
            );
            let table = pg_sys::SPI_tuptable;
            let mut out = Vec::new();
            if !table.is_null() {
                for i in 0..pg_sys::SPI_processed as usize {
                    out.push(map(&Row {
                        tuple: *(*table).vals.add(i),
                        desc: (*table).tupdesc,
                    }));
                }
            }
            pg_sys::SPI_freeplan(plan);
            out
        }
    })
}
