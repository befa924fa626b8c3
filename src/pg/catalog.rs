//! Facts about relations, types and expressions, read from the live catalogs through
//! PostgreSQL's own functions: the planner's size estimate, the relcache's record of what this
//! transaction created, the coercion and planner logic ALTER COLUMN TYPE uses, the predicate
//! prover behind SET NOT NULL and ATTACH PARTITION.
//!
//! Nothing here takes a lock: the guard runs before the command it judges has locked
//! anything, and must not queue behind (or ahead of) anyone. Relations are looked at through
//! the relcache, the way the planner looks at them. Analyses that can fail (an unknown type, a
//! default that does not parse) run in a subtransaction and yield `None`, leaving the error to
//! the command itself.

use crate::pg::subxact;
use pgrx::{is_a, pg_sys, PgList};
use std::ffi::{c_char, c_int, CStr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelKind {
    Table,
    PartitionedTable,
    MatView,
    Index,
    PartitionedIndex,
    View,
    Foreign,
    Other,
}

/// A relation a command touches, with what the catalogs say about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rel {
    /// Schema-qualified and quoted where needed, as in `format('%I.%I')`.
    pub name: String,
    pub kind: RelKind,
    /// Created in the current transaction (or, when linting, earlier in the same script):
    /// nobody else can see it, so nothing can queue behind its locks.
    pub new: bool,
    /// PostgreSQL's planner estimate of its rows, and its heap plus TOAST size in bytes.
    pub rows: f64,
    pub bytes: u64,
    /// False when neither could be measured: the relation was never analysed and another
    /// session holds a lock that keeps it from being opened. Such a relation is never taken
    /// for a small one.
    pub size_known: bool,
    /// This transaction already holds a lock on it that blocks writes (SHARE or stronger).
    pub write_locked_by_us: bool,
}

// Exported by the server but not bound by pgrx. Signatures as in PostgreSQL 13 to 18.
unsafe extern "C-unwind" {
    fn transformAlterTableStmt(
        relid: pg_sys::Oid,
        stmt: *mut pg_sys::AlterTableStmt,
        query_string: *const c_char,
        before_stmts: *mut *mut pg_sys::List,
        after_stmts: *mut *mut pg_sys::List,
    ) -> *mut pg_sys::AlterTableStmt;
    fn map_partition_varattnos(
        expr: *mut pg_sys::List,
        fromrel_varno: c_int,
        to_rel: pg_sys::Relation,
        from_rel: pg_sys::Relation,
    ) -> *mut pg_sys::List;
    fn get_proposed_default_constraint(
        new_part_constraints: *mut pg_sys::List,
    ) -> *mut pg_sys::List;
    fn RelationGetPartitionQual(rel: pg_sys::Relation) -> *mut pg_sys::List;
    fn transformPartitionBound(
        pstate: *mut pg_sys::ParseState,
        parent: pg_sys::Relation,
        spec: *mut pg_sys::PartitionBoundSpec,
    ) -> *mut pg_sys::PartitionBoundSpec;
    fn find_all_inheritors(
        parent: pg_sys::Oid,
        lockmode: c_int,
        numparents: *mut *mut pg_sys::List,
    ) -> *mut pg_sys::List;
}

/// A relation looked at through the relcache, under an ACCESS SHARE lock taken without
/// waiting and released when done (the command judged takes its own lock right after). The
/// lock keeps DDL in other sessions from changing what is read meanwhile; if it cannot be had
/// at once, someone holds ACCESS EXCLUSIVE, and nothing is read: the facts that need the
/// relcache are then unknown rather than read from a relation that may be changing under us.
/// Pointers into the entry (`rd_rel`, ...) are never kept across calls that may process
/// invalidations and rebuild it.
pub(super) struct Locked {
    oid: pg_sys::Oid,
    rel: pg_sys::Relation,
}

impl Locked {
    pub(super) fn open(oid: pg_sys::Oid) -> Option<Locked> {
        if oid == pg_sys::InvalidOid {
            return None;
        }
        // SAFETY: a lock request that never waits, then a counted relcache reference.
        unsafe {
            if !pg_sys::ConditionalLockRelationOid(oid, pg_sys::AccessShareLock as _) {
                return None;
            }
            let rel = pg_sys::RelationIdGetRelation(oid);
            if rel.is_null() {
                pg_sys::UnlockRelationOid(oid, pg_sys::AccessShareLock as _);
                return None;
            }
            Some(Locked { oid, rel })
        }
    }

    /// The column's default as the executor would use it (its type's, for a domain), or
    /// NULL when it has none.
    ///
    /// # Safety
    /// `attnum` must be a column of the relation.
    pub(super) unsafe fn column_default(&self, attnum: i16) -> *mut pg_sys::Node {
        pg_sys::build_column_default(self.rel, attnum.into())
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: releases the reference and the lock taken in `open` (a lock this transaction
        // held before keeps being held: locks are counted).
        unsafe {
            pg_sys::RelationClose(self.rel);
            pg_sys::UnlockRelationOid(self.oid, pg_sys::AccessShareLock as _);
        }
    }
}

/// The scalars of a pg_class row, copied out of the syscache: safe to keep, whatever happens
/// to the relcache meanwhile.
#[derive(Clone, Copy)]
struct ClassRow {
    kind: RelKind,
    namespace: pg_sys::Oid,
    name: pg_sys::NameData,
    temporary: bool,
    tablespace: pg_sys::Oid,
    access_method: pg_sys::Oid,
    tuples: f32,
    pages: i32,
    has_subclass: bool,
}

fn class_row(oid: pg_sys::Oid) -> Option<ClassRow> {
    if oid == pg_sys::InvalidOid {
        return None;
    }
    // SAFETY: a syscache copy of the row, read and freed here.
    unsafe {
        let tuple = pg_sys::SearchSysCacheCopy(
            pg_sys::SysCacheIdentifier::RELOID as _,
            pg_sys::Datum::from(oid),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        );
        if tuple.is_null() {
            return None;
        }
        let form = &*pg_sys::GETSTRUCT(tuple).cast::<pg_sys::FormData_pg_class>();
        let row = ClassRow {
            kind: match form.relkind as u8 {
                b'r' => RelKind::Table,
                b'p' => RelKind::PartitionedTable,
                b'm' => RelKind::MatView,
                b'i' => RelKind::Index,
                b'I' => RelKind::PartitionedIndex,
                b'v' => RelKind::View,
                b'f' => RelKind::Foreign,
                _ => RelKind::Other,
            },
            namespace: form.relnamespace,
            name: form.relname,
            temporary: form.relpersistence as u8 == b't',
            tablespace: form.reltablespace,
            access_method: form.relam,
            tuples: form.reltuples,
            pages: form.relpages,
            has_subclass: form.relhassubclass,
        };
        pg_sys::heap_freetuple(tuple);
        Some(row)
    }
}

/// The relation a RangeVar names, resolved as the command will resolve it; `None` if it does
/// not exist (yet): it is then created earlier in the same script, or the command fails.
///
/// # Safety
/// `rv` must be NULL or a RangeVar of a parse tree.
pub unsafe fn relation_named(rv: *mut pg_sys::RangeVar) -> Option<Rel> {
    relation(crate::pg::nodes::range_var_oid(rv))
}

/// Whether relation `oid` is a partitioned table, from its pg_class row alone (no size).
pub fn is_partitioned(oid: pg_sys::Oid) -> bool {
    class_row(oid).is_some_and(|row| row.kind == RelKind::PartitionedTable)
}

/// What the catalogs say about relation `oid`.
pub fn relation(oid: pg_sys::Oid) -> Option<Rel> {
    let row = class_row(oid)?;
    // SAFETY: the name comes from the copied row.
    let name = unsafe { qualified_name(row.namespace, row.name.data.as_ptr()) };
    let locked = Locked::open(oid);
    let (mut rows, mut bytes, mut size_known) = size_of(locked.as_ref(), &row);
    if row.has_subclass {
        // Inheritance children and partitions: what the command reaches through the parent.
        for child in members(oid) {
            if let Some(child_row) = class_row(child) {
                let (r, b, known) = size_of(Locked::open(child).as_ref(), &child_row);
                rows += r;
                bytes += b;
                size_known &= known;
            }
        }
    }
    let (new, write_locked_by_us) = match locked {
        // SAFETY: relcache fields of an entry held under lock.
        Some(locked) => unsafe {
            (
                (*locked.rel).rd_createSubid != 0, // != InvalidSubTransactionId
                pg_sys::CheckRelationLockedByMe(locked.rel, pg_sys::ShareLock as _, true),
            )
        },
        // Someone else holds ACCESS EXCLUSIVE: not ours, and we hold no lock on it.
        None => (false, false),
    };
    Some(Rel {
        name,
        kind: row.kind,
        // A temporary table is invisible to every other session, like a new one.
        new: new || row.temporary,
        rows,
        bytes,
        size_known,
        write_locked_by_us,
    })
}

/// Rows and bytes of one relation with storage: the planner's estimate over its current
/// size when its relcache entry could be opened (`locked`), the last VACUUM/ANALYZE
/// statistics otherwise.
/// Rows, bytes, and whether they were measured at all.
fn size_of(locked: Option<&Locked>, row: &ClassRow) -> (f64, u64, bool) {
    if !matches!(row.kind, RelKind::Table | RelKind::MatView | RelKind::Index) {
        return (0.0, 0, true);
    }
    let block = u64::from(pg_sys::BLCKSZ);
    let Some(locked) = locked else {
        // Another session holds ACCESS EXCLUSIVE: only the statistics can be read. A
        // relation never vacuumed or analysed (reltuples = -1) has none; it is not assumed
        // empty.
        return (
            f64::from(row.tuples.max(0.0)),
            u64::try_from(row.pages.max(0)).unwrap_or(0) * block,
            row.tuples >= 0.0,
        );
    };
    // SAFETY: planner and smgr calls on an entry held under lock.
    unsafe {
        let actual =
            pg_sys::RelationGetNumberOfBlocksInFork(locked.rel, pg_sys::ForkNumber::MAIN_FORKNUM);
        let mut tuples: f64 = 0.0;
        if actual > 0 {
            // The planner assumes at least 10 pages for a table never vacuumed; an empty one
            // holds nothing, whatever the planner would guess.
            let (mut pages, mut allvisfrac) = (0, 0.0);
            pg_sys::estimate_rel_size(
                locked.rel,
                std::ptr::null_mut(),
                &mut pages,
                &mut tuples,
                &mut allvisfrac,
            );
        }
        let toast_oid = (*(*locked.rel).rd_rel).reltoastrelid;
        let toast_blocks = Locked::open(toast_oid).map_or(0, |toast| {
            pg_sys::RelationGetNumberOfBlocksInFork(toast.rel, pg_sys::ForkNumber::MAIN_FORKNUM)
        });
        (
            tuples.max(0.0),
            (u64::from(actual) + u64::from(toast_blocks)) * block,
            true,
        )
    }
}

/// Every inheritance child and partition below `oid`, at any depth.
pub(super) fn members(oid: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    // SAFETY: a pg_inherits scan; no locks taken.
    unsafe {
        PgList::<pg_sys::Oid>::from_pg(find_all_inheritors(
            oid,
            pg_sys::NoLock as _,
            std::ptr::null_mut(),
        ))
        .iter_oid()
        .filter(|m| *m != oid)
        .collect()
    }
}

/// `schema.name`, each part quoted only where needed, as PostgreSQL prints names.
unsafe fn qualified_name(namespace: pg_sys::Oid, name: *const c_char) -> String {
    let schema = pg_sys::get_namespace_name(namespace);
    let quoted = pg_sys::quote_qualified_identifier(schema, name);
    CStr::from_ptr(quoted).to_string_lossy().into_owned()
}

/// `quote_ident(name)`, as PostgreSQL's quote_identifier quotes it.
pub fn quote_ident(name: &str) -> String {
    let Ok(c) = std::ffi::CString::new(name) else {
        return name.to_owned();
    };
    // SAFETY: a NUL-terminated string; the result is it or a palloc'd quoted copy.
    unsafe { CStr::from_ptr(pg_sys::quote_identifier(c.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}

/// `schema.name`, each quoted where needed, as quote_qualified_identifier makes it.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// A type a statement names, resolved once (in a subtransaction: `serial`, or a type that
/// does not exist, resolves to nothing).
pub struct ColumnType {
    /// As PostgreSQL prints it (`character varying(20)`, `bigint`), for messages; as written
    /// when it did not resolve.
    pub display: String,
    resolved: Option<(pg_sys::Oid, i32)>,
}

///
/// # Safety
/// `type_name` must be NULL or a TypeName of a parse tree.
pub unsafe fn column_type(type_name: *mut pg_sys::TypeName) -> ColumnType {
    if type_name.is_null() {
        return ColumnType {
            display: String::new(),
            resolved: None,
        };
    }
    // SAFETY: a catalog lookup of a parse node; an ERROR is caught by the subtransaction.
    let resolved = subxact::run(|| unsafe { type_and_mod(type_name) }).ok();
    // SAFETY: formats a resolved type, or the parse node as written.
    let display = unsafe {
        let text = match resolved {
            Some((typ, typmod)) => pg_sys::format_type_with_typemod(typ, typmod),
            None => pg_sys::TypeNameToString(type_name),
        };
        CStr::from_ptr(text).to_string_lossy().into_owned()
    };
    ColumnType { display, resolved }
}

impl ColumnType {
    /// Whether it is a domain with constraints (whose check forces a rewrite on ADD COLUMN).
    pub fn constrained_domain(&self) -> Option<bool> {
        // SAFETY: a type cache lookup of a type that exists.
        self.resolved
            .map(|(typ, _)| unsafe { pg_sys::DomainHasConstraints(typ) })
    }

    /// Whether a column default, coerced to this type, calls anything volatile
    /// (`contain_volatile_functions`, which reads each function's volatility from pg_proc).
    ///
    /// # Safety
    /// `raw` must be a raw expression of a parse tree.
    pub unsafe fn default_is_volatile(&self, raw: *mut pg_sys::Node) -> Option<bool> {
        let (typ, typmod) = self.resolved?;
        subxact::run(|| unsafe {
            let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
            // A copy, as below: the raw default belongs to the statement about to run.
            let expr = pg_sys::transformExpr(
                pstate,
                pg_sys::copyObjectImpl(raw.cast()).cast(),
                pg_sys::ParseExprKind::EXPR_KIND_COLUMN_DEFAULT,
            );
            let coerced = coerce_as_assignment(pstate, expr, typ, typmod);
            (!coerced.is_null()).then(|| pg_sys::contain_volatile_functions(coerced))
        })
        .ok()
        .flatten()
    }
}

/// Makes `rel`'s columns visible to expressions transformed in `pstate`, as ALTER TABLE
/// does for a USING expression.
///
/// # Safety
/// `pstate` must be a live ParseState; `rel` stays open while it is used.
pub(super) unsafe fn with_relation(pstate: *mut pg_sys::ParseState, rel: &Locked) {
    let item = pg_sys::addRangeTableEntryForRelation(
        pstate,
        rel.rel,
        pg_sys::AccessShareLock as _,
        std::ptr::null_mut(),
        false,
        true,
    );
    pg_sys::addNSItemToQuery(pstate, item, false, true, true);
}

/// typenameTypeIdAndMod: the type and typmod a TypeName names; raises if there is none.
pub(super) unsafe fn type_and_mod(type_name: *mut pg_sys::TypeName) -> (pg_sys::Oid, i32) {
    let (mut typ, mut typmod) = (pg_sys::InvalidOid, 0);
    pg_sys::typenameTypeIdAndMod(std::ptr::null_mut(), type_name, &mut typ, &mut typmod);
    (typ, typmod)
}

/// `expr` coerced to a type as an assignment is (ALTER COLUMN TYPE, column defaults); NULL
/// when no cast exists.
pub(super) unsafe fn coerce_as_assignment(
    pstate: *mut pg_sys::ParseState,
    expr: *mut pg_sys::Node,
    typ: pg_sys::Oid,
    typmod: i32,
) -> *mut pg_sys::Node {
    pg_sys::coerce_to_target_type(
        pstate,
        expr,
        pg_sys::exprType(expr),
        typ,
        typmod,
        pg_sys::CoercionContext::COERCION_ASSIGNMENT,
        pg_sys::CoercionForm::COERCE_IMPLICIT_CAST,
        -1,
    )
}

/// Whether ALTER COLUMN `column` TYPE `type_name` [USING `using`] rewrites the table, decided
/// the way ALTER TABLE decides it: coerce the column (or the USING expression) to the new
/// type, let the planner simplify it (which turns length coercions that cannot fail, such as
/// varchar(10) to varchar(20), into relabels), then check what is left.
///
/// # Safety
/// `type_name` and `using` (NULL or an expression) must belong to a raw parse tree.
pub unsafe fn type_change_rewrites(
    relid: pg_sys::Oid,
    column: &str,
    type_name: *mut pg_sys::TypeName,
    using: *mut pg_sys::Node,
) -> Option<bool> {
    let column = std::ffi::CString::new(column).ok()?;
    subxact::run(|| unsafe {
        let attnum = pg_sys::get_attnum(relid, column.as_ptr());
        if attnum == pg_sys::InvalidAttrNumber as i16 {
            return None;
        }
        let (mut typ, mut typmod, mut coll) = (pg_sys::InvalidOid, 0, pg_sys::InvalidOid);
        pg_sys::get_atttypetypmodcoll(relid, attnum, &mut typ, &mut typmod, &mut coll);
        let (target, target_mod) = type_and_mod(type_name);

        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        let _rel; // the relcache reference the USING expression's range table entry needs
        let source: *mut pg_sys::Node = if using.is_null() {
            pg_sys::makeVar(1, attnum, typ, typmod, coll, 0).cast()
        } else {
            let opened = Locked::open(relid)?;
            with_relation(pstate, &opened);
            _rel = opened;
            // transformExpr rewrites some raw nodes in place (named arguments): give it a
            // copy, or the statement itself would run with a mangled tree.
            pg_sys::transformExpr(
                pstate,
                pg_sys::copyObjectImpl(using.cast()).cast(),
                pg_sys::ParseExprKind::EXPR_KIND_ALTER_COL_TRANSFORM,
            )
        };
        let coerced = coerce_as_assignment(pstate, source, target, target_mod);
        if coerced.is_null() {
            return None; // no cast: ALTER TABLE itself refuses it
        }
        pg_sys::assign_expr_collations(pstate, coerced);
        let planned = pg_sys::expression_planner(coerced.cast()).cast::<pg_sys::Node>();
        Some(requires_rewrite(planned, attnum))
    })
    .ok()
    .flatten()
}

/// tablecmds.c's ATColumnChangeRequiresRewrite, which is static there: what survives planning
/// must be the column itself, seen through relabels, unconstrained domains, and the
/// timestamp/timestamptz conversions that are no-ops while the session TimeZone is UTC.
unsafe fn requires_rewrite(mut expr: *mut pg_sys::Node, attnum: i16) -> bool {
    loop {
        if is_a(expr, pg_sys::NodeTag::T_Var) {
            return (*expr.cast::<pg_sys::Var>()).varattno != attnum;
        } else if is_a(expr, pg_sys::NodeTag::T_RelabelType) {
            expr = (*expr.cast::<pg_sys::RelabelType>()).arg.cast();
        } else if is_a(expr, pg_sys::NodeTag::T_CoerceToDomain) {
            let domain = expr.cast::<pg_sys::CoerceToDomain>();
            if pg_sys::DomainHasConstraints((*domain).resulttype) {
                return true;
            }
            expr = (*domain).arg.cast();
        } else if is_a(expr, pg_sys::NodeTag::T_FuncExpr) {
            let func = expr.cast::<pg_sys::FuncExpr>();
            let id = u32::from((*func).funcid);
            if (id == pg_sys::F_TIMESTAMPTZ_TIMESTAMP || id == pg_sys::F_TIMESTAMP_TIMESTAMPTZ)
                && !pg_sys::TimestampTimestampTzRequiresRewrite()
            {
                expr = PgList::<pg_sys::Node>::from_pg((*func).args)
                    .get_ptr(0)
                    .unwrap_or(std::ptr::null_mut());
                if expr.is_null() {
                    return true;
                }
            } else {
                return true;
            }
        } else {
            return true;
        }
    }
}

/// Whether the table's validated constraints (or the column's own NOT NULL) prove `column IS
/// NOT NULL`, so SET NOT NULL needs no scan. The proof is PostgreSQL's own predicate prover.
/// A partitioned table has nothing to scan itself: every leaf partition must have the proof.
pub fn not_null_proven(relid: pg_sys::Oid, column: &str) -> Option<bool> {
    let row = class_row(relid)?;
    // A partitioned table has no rows of its own; an inheritance parent and each of its
    // children are checked, each one unless its own constraints prove it.
    let mut all = row.kind == RelKind::PartitionedTable || proven_on(relid, column)?;
    for member in members(relid) {
        if class_row(member).is_some_and(|r| r.kind == RelKind::Table) {
            all &= proven_on(member, column)?;
        }
    }
    Some(all)
}

fn proven_on(relid: pg_sys::Oid, column: &str) -> Option<bool> {
    let column = std::ffi::CString::new(column).ok()?;
    subxact::run(|| unsafe {
        let attnum = pg_sys::get_attnum(relid, column.as_ptr());
        if attnum == pg_sys::InvalidAttrNumber as i16 {
            return None;
        }
        let locked = Locked::open(relid)?;
        let (mut typ, mut typmod, mut coll) = (pg_sys::InvalidOid, 0, pg_sys::InvalidOid);
        pg_sys::get_atttypetypmodcoll(relid, attnum, &mut typ, &mut typmod, &mut coll);
        let test =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::NullTest>()).cast::<pg_sys::NullTest>();
        (*test).xpr.type_ = pg_sys::NodeTag::T_NullTest;
        (*test).arg = pg_sys::makeVar(1, attnum, typ, typmod, coll, 0).cast();
        (*test).nulltesttype = pg_sys::NullTestType::IS_NOT_NULL;
        (*test).location = -1;
        let mut list = PgList::<pg_sys::NullTest>::new();
        list.push(test);
        Some(pg_sys::PartConstraintImpliedByRelConstraint(
            locked.rel,
            list.into_pg(),
        ))
    })
    .ok()
    .flatten()
}

/// For ALTER TABLE `parent` ATTACH PARTITION: whether the partition's validated constraints
/// prove its bound, and the default partition with whether its constraints prove it holds no
/// row of the new bound. The bound is transformed and turned into a constraint exactly as
/// ATTACH PARTITION does it (transformAlterTableStmt, get_qual_from_partbound, ...).
///
/// # Safety
/// `stmt` and `cmd` must be an ALTER TABLE ... ATTACH PARTITION parse tree and its command.
pub unsafe fn attach_proofs(
    parent: pg_sys::Oid,
    stmt: *mut pg_sys::AlterTableStmt,
    cmd: *mut pg_sys::AlterTableCmd,
) -> (Option<bool>, Option<(Rel, Option<bool>)>) {
    // Rolled back: transforming the bound evaluates its expressions, which may call the
    // caller's functions; PostgreSQL evaluates them again when the statement runs.
    let proofs = subxact::rolled_back(|| unsafe {
        // transformAlterTableStmt reads the parent's relcache entry and expects it locked.
        let parent_rel = Locked::open(parent)?;
        let attach_rel = Locked::open(crate::pg::nodes::range_var_oid(
            (*(*cmd).def.cast::<pg_sys::PartitionCmd>()).name,
        ))?;
        let only_attach = pg_sys::copyObjectImpl(stmt.cast()).cast::<pg_sys::AlterTableStmt>();
        let mut cmds = PgList::<pg_sys::AlterTableCmd>::new();
        cmds.push(pg_sys::copyObjectImpl(cmd.cast()).cast());
        (*only_attach).cmds = cmds.into_pg();
        let (mut before, mut after) = (std::ptr::null_mut(), std::ptr::null_mut());
        let transformed =
            transformAlterTableStmt(parent, only_attach, c"".as_ptr(), &mut before, &mut after);
        let attach = PgList::<pg_sys::AlterTableCmd>::from_pg((*transformed).cmds)
            .iter_ptr()
            .find(|c| (**c).subtype == pg_sys::AlterTableType::AT_AttachPartition)?;
        let partcmd = (*attach).def.cast::<pg_sys::PartitionCmd>();
        let bound = pg_sys::get_qual_from_partbound(parent_rel.rel, (*partcmd).bound);
        let constraint = pg_sys::list_concat(bound, RelationGetPartitionQual(parent_rel.rel));
        let proven = if constraint.is_null() {
            true
        } else {
            let simplified =
                pg_sys::eval_const_expressions(std::ptr::null_mut(), constraint.cast());
            let canonical = pg_sys::canonicalize_qual(simplified.cast(), true);
            let mut single = PgList::<pg_sys::Expr>::new();
            single.push(pg_sys::make_ands_explicit(canonical.cast()));
            let mapped =
                map_partition_varattnos(single.into_pg(), 1, attach_rel.rel, parent_rel.rel);
            pg_sys::PartConstraintImpliedByRelConstraint(attach_rel.rel, mapped)
        };

        Some((proven, default_proof(parent_rel.rel, constraint)))
    })
    .ok()
    .flatten();
    match proofs {
        None => (None, None),
        Some((proven, default)) => (
            Some(proven),
            default.and_then(|(oid, p)| relation(oid).map(|rel| (rel, p))),
        ),
    }
}

/// The default partition of `parent`, if it has one, and whether its validated constraints
/// prove it holds no row that `constraint` (a new partition's) admits, as
/// check_default_partition_contents asks before it scans; `None` inside when another session
/// holds it locked.
unsafe fn default_proof(
    parent: pg_sys::Relation,
    constraint: *mut pg_sys::List,
) -> Option<(pg_sys::Oid, Option<bool>)> {
    let default_oid = default_partition(parent);
    if default_oid == pg_sys::InvalidOid {
        return None;
    }
    let proven = Locked::open(default_oid).map(|default_rel| {
        let excluded = get_proposed_default_constraint(constraint);
        let mapped = map_partition_varattnos(excluded, 1, default_rel.rel, parent);
        pg_sys::PartConstraintImpliedByRelConstraint(default_rel.rel, mapped)
    });
    Some((default_oid, proven))
}

/// For CREATE TABLE ... PARTITION OF `parent` with `bound`: the parent's default partition
/// and whether PostgreSQL can skip scanning it (see [`default_proof`]). `None` when the parent
/// has no default partition, the new one is the default, or it could not be worked out.
///
/// # Safety
/// `bound` is the raw PartitionBoundSpec of a valid CREATE TABLE ... PARTITION OF.
pub unsafe fn create_partition_proof(
    parent: pg_sys::Oid,
    bound: *mut pg_sys::PartitionBoundSpec,
) -> Option<(Rel, Option<bool>)> {
    if bound.is_null() || (*bound).is_default {
        return None;
    }
    // Rolled back, as in attach_proofs: the bound's expressions are evaluated.
    let proof = subxact::rolled_back(|| unsafe {
        let parent_rel = Locked::open(parent)?;
        // transformPartitionBound reads the partition key, which only a partitioned table has.
        if (*(*parent_rel.rel).rd_rel).relkind != pg_sys::RELKIND_PARTITIONED_TABLE as c_char {
            return None;
        }
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        let spec = transformPartitionBound(
            pstate,
            parent_rel.rel,
            pg_sys::copyObjectImpl(bound.cast()).cast(),
        );
        let constraint = pg_sys::list_concat(
            pg_sys::get_qual_from_partbound(parent_rel.rel, spec),
            RelationGetPartitionQual(parent_rel.rel),
        );
        default_proof(parent_rel.rel, constraint)
    })
    .ok()
    .flatten()?;
    relation(proof.0).map(|rel| (rel, proof.1))
}

unsafe fn default_partition(rel: pg_sys::Relation) -> pg_sys::Oid {
    #[cfg(feature = "pg13")]
    let desc = pg_sys::RelationGetPartitionDesc(rel);
    #[cfg(not(feature = "pg13"))]
    let desc = pg_sys::RelationGetPartitionDesc(rel, true);
    pg_sys::get_default_oid_from_partdesc(desc)
}

/// Whether schema `name` holds any table, materialized view or partitioned table.
pub fn schema_holds_tables(name: &CStr) -> bool {
    // SAFETY: catalog lookup by name; a missing schema yields InvalidOid.
    let namespace = unsafe { pg_sys::get_namespace_oid(name.as_ptr(), true) };
    if namespace == pg_sys::InvalidOid {
        return false;
    }
    crate::pg::guc::pinned(|| {
        pgrx::Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_class \
             WHERE relnamespace = $1 AND relkind IN ('r', 'p', 'm'))",
            &[namespace.into()],
        )
    })
    .ok()
    .flatten()
    .unwrap_or(true)
}

/// The table an index belongs to.
pub fn table_of_index(index: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: a syscache lookup; a missing index yields InvalidOid.
    unsafe { pg_sys::IndexGetRelation(index, true) }
}

/// The qualified name a CREATE would give the relation `rv` names, or `None` when its
/// schema does not exist.
///
/// # Safety
/// `rv` must be NULL or a RangeVar of a parse tree.
pub unsafe fn creation_name(rv: *mut pg_sys::RangeVar) -> Option<String> {
    if rv.is_null() {
        return None;
    }
    subxact::run(|| unsafe {
        let namespace = pg_sys::RangeVarGetCreationNamespace(rv);
        qualified_name(namespace, (*rv).relname)
    })
    .ok()
}

/// Whether SET TABLESPACE `name` moves relation `relid` at all: PostgreSQL does nothing when
/// it is already there (the database's default tablespace counts as its own).
pub fn tablespace_changes(relid: pg_sys::Oid, name: &CStr) -> Option<bool> {
    let row = class_row(relid)?;
    // SAFETY: catalog lookups by name; a backend-global read.
    unsafe {
        let mut target = pg_sys::get_tablespace_oid(name.as_ptr(), true);
        if target == pg_sys::InvalidOid {
            return None;
        }
        if target == pg_sys::MyDatabaseTableSpace {
            target = pg_sys::InvalidOid;
        }
        Some(target != row.tablespace)
    }
}

/// Whether SET ACCESS METHOD `name` changes relation `relid`'s access method.
/// `None` for a name is PostgreSQL 17's `SET ACCESS METHOD DEFAULT`: default_table_access_method.
pub fn access_method_changes(relid: pg_sys::Oid, name: Option<&CStr>) -> Option<bool> {
    let row = class_row(relid)?;
    let default;
    let name = match name {
        Some(name) => name,
        None => {
            default =
                std::ffi::CString::new(crate::pg::guc::current("default_table_access_method")?)
                    .ok()?;
            default.as_c_str()
        }
    };
    // SAFETY: a catalog lookup by name.
    let target = unsafe { pg_sys::get_table_am_oid(name.as_ptr(), true) };
    (target != pg_sys::InvalidOid).then(|| target != row.access_method)
}

/// Whether relation `relid` has a column `name`.
pub fn column_exists(relid: pg_sys::Oid, name: &CStr) -> bool {
    // SAFETY: a syscache lookup.
    unsafe { pg_sys::get_attnum(relid, name.as_ptr()) != pg_sys::InvalidAttrNumber as i16 }
}

/// How column `name` of `relid` is generated (`b's'` stored, `b'v'` virtual, 0 not at all),
/// and whether it is marked NOT NULL.
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub fn column_generation(relid: pg_sys::Oid, name: &str) -> Option<(u8, bool)> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a syscache lookup, released before returning.
    unsafe {
        let tuple = pg_sys::SearchSysCacheAttName(relid, name.as_ptr());
        if tuple.is_null() {
            return None;
        }
        let form = &*pg_sys::GETSTRUCT(tuple).cast::<pg_sys::FormData_pg_attribute>();
        let flags = (form.attgenerated as u8, form.attnotnull);
        pg_sys::ReleaseSysCache(tuple);
        Some(flags)
    }
}

/// Whether constraint `name` of `relid` is a foreign key that is not enforced (a state that
/// PostgreSQL 18 introduced).
#[cfg(feature = "pg18")]
pub fn foreign_key_unenforced(relid: pg_sys::Oid, name: &CStr) -> bool {
    crate::pg::guc::pinned(|| {
        pgrx::Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_constraint WHERE conrelid = $1 \
             AND conname = $2 AND contype = 'f' AND NOT conenforced)",
            &[relid.into(), name.to_string_lossy().as_ref().into()],
        )
    })
    .ok()
    .flatten()
    .unwrap_or(true)
}

/// The column of NOT NULL constraint `name` of `relid` (PostgreSQL 18 keeps them in
/// pg_constraint), or `None` if it is no such constraint.
#[cfg(feature = "pg18")]
pub fn not_null_constraint_column(relid: pg_sys::Oid, name: &CStr) -> Option<String> {
    crate::pg::guc::pinned(|| {
        pgrx::Spi::get_one_with_args::<String>(
            "SELECT a.attname::text FROM pg_catalog.pg_constraint c \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] \
             WHERE c.conrelid = $1 AND c.conname = $2 AND c.contype = 'n'",
            &[relid.into(), name.to_string_lossy().as_ref().into()],
        )
    })
    .ok()
    .flatten()
}

/// The name (quoted) of column `column`'s NOT VALID NOT NULL constraint on `relid`, if it has one.
#[cfg(feature = "pg18")]
pub fn unvalidated_not_null(relid: pg_sys::Oid, column: &str) -> Option<String> {
    crate::pg::guc::pinned(|| {
        pgrx::Spi::get_one_with_args::<String>(
            "SELECT quote_ident(c.conname) FROM pg_catalog.pg_constraint c \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] \
             WHERE c.conrelid = $1 AND a.attname = $2 AND c.contype = 'n' AND NOT c.convalidated",
            &[relid.into(), column.into()],
        )
    })
    .ok()
    .flatten()
}

/// The relation called `name` in the schema of relation `relid` (where a new index of that
/// table would go), if there is one.
pub fn sibling_named(relid: pg_sys::Oid, name: &CStr) -> pg_sys::Oid {
    let Some(row) = class_row(relid) else {
        return pg_sys::InvalidOid;
    };
    // SAFETY: a syscache lookup by name.
    unsafe { pg_sys::get_relname_relid(name.as_ptr(), row.namespace) }
}

/// The key columns of index `index` that are not declared NOT NULL: making it a primary key
/// (ADD PRIMARY KEY USING INDEX) marks them NOT NULL, which checks every row.
pub fn nullable_key_columns(index: pg_sys::Oid) -> Vec<String> {
    if index == pg_sys::InvalidOid {
        return vec![];
    }
    crate::pg::spi::pinned_column(
        "SELECT a.attname::text FROM pg_catalog.pg_index i \
         JOIN pg_catalog.pg_attribute a \
           ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[]) \
         WHERE i.indexrelid = $1 AND NOT a.attnotnull ORDER BY a.attnum",
        &[index.into()],
    )
    .unwrap_or_default()
}

/// `tables` plus every table that TRUNCATE ... CASCADE also empties: those referencing them
/// by foreign key, transitively (PostgreSQL's heap_truncate_find_FKs, to a fixpoint).
pub fn truncate_cascade(tables: &[pg_sys::Oid]) -> Vec<pg_sys::Oid> {
    let mut all: Vec<pg_sys::Oid> = tables.to_vec();
    loop {
        // SAFETY: builds an OID list, then scans pg_constraint for foreign keys referencing it.
        let referencing = unsafe {
            let mut list = std::ptr::null_mut();
            for oid in &all {
                list = pg_sys::lappend_oid(list, *oid);
            }
            PgList::<pg_sys::Oid>::from_pg(pg_sys::heap_truncate_find_FKs(list))
        };
        let before = all.len();
        for oid in referencing.iter_oid() {
            if !all.contains(&oid) {
                all.push(oid);
            }
        }
        if all.len() == before {
            return all;
        }
    }
}

/// The tables (and materialized views) with a column of domain `names`.
///
/// # Safety
/// `names` must be NULL or a List of a parse tree.
pub unsafe fn tables_using_domain(names: *mut pg_sys::List) -> Vec<pg_sys::Oid> {
    let domain = subxact::run(|| unsafe {
        pg_sys::typenameTypeId(
            std::ptr::null_mut(),
            pg_sys::makeTypeNameFromNameList(names),
        )
    });
    let Ok(domain) = domain else { return vec![] };
    crate::pg::spi::pinned_column(
        "SELECT DISTINCT a.attrelid FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         WHERE a.atttypid = $1 AND NOT a.attisdropped AND a.attnum > 0 \
           AND c.relkind IN ('r', 'm')",
        &[domain.into()],
    )
    .unwrap_or_default()
}

/// Whether any table in the database has a clustered index (what a bare CLUSTER rewrites).
pub fn any_clustered_table() -> bool {
    crate::pg::guc::pinned(|| {
        pgrx::Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_index WHERE indisclustered)",
        )
    })
    .ok()
    .flatten()
    .unwrap_or(true)
}

// Indexes are tracked by schema-qualified name, not OID: names survive a dump and restore
// of migrate.steps, and REINDEX CONCURRENTLY swaps names, not OIDs, so its leftovers
// (`_ccnew`, `_ccold`) are exactly the names that were not there before.

/// The indexes of `table`, schema-qualified and quoted.
pub fn index_names(table: pg_sys::Oid) -> Vec<String> {
    name_column(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) \
         FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE i.indrelid = $1 ORDER BY 1",
        &[table.into()],
    )
}

/// The indexes of `table` left behind by an interrupted or failed CONCURRENTLY command:
/// invalid, and not there (by name) before it began.
pub fn leftover_indexes(table: pg_sys::Oid, before: &[String]) -> Vec<String> {
    name_column(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) \
         FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE i.indrelid = $1 AND NOT i.indisvalid \
           AND pg_catalog.format('%I.%I', n.nspname, c.relname) <> ALL ($2)",
        &[table.into(), before.to_vec().into()],
    )
}

/// A valid, ready index of `table` that was not there before: what an unnamed CREATE INDEX
/// CONCURRENTLY built.
pub fn new_valid_index(table: pg_sys::Oid, before: &[String]) -> Option<String> {
    name_column(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) \
         FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE i.indrelid = $1 AND i.indisvalid AND i.indisready \
           AND pg_catalog.format('%I.%I', n.nspname, c.relname) <> ALL ($2) \
         ORDER BY i.indexrelid DESC",
        &[table.into(), before.to_vec().into()],
    )
    .into_iter()
    .next()
}

/// Whether index `name` (schema-qualified) is valid and ready; None if there is none.
pub fn index_is_valid(name: &str) -> Option<bool> {
    crate::pg::guc::pinned(|| {
        pgrx::Spi::get_one_with_args::<bool>(
            "SELECT i.indisvalid AND i.indisready FROM pg_catalog.pg_index i \
             WHERE i.indexrelid = pg_catalog.to_regclass($1)",
            &[name.into()],
        )
    })
    .ok()
    .flatten()
}

/// `schema.index` for an index named `index` on `table`: indexes live in their table's
/// schema.
pub fn index_name_beside(table: pg_sys::Oid, index: &std::ffi::CStr) -> Option<String> {
    let row = class_row(table)?;
    // SAFETY: a NUL-terminated name.
    Some(unsafe { qualified_name(row.namespace, index.as_ptr()) })
}

/// Partitions of `parent` left half-detached by an interrupted DETACH ... CONCURRENTLY.
pub fn detach_pending(parent: pg_sys::Oid) -> Vec<String> {
    name_column(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) \
         FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE i.inhparent = $1 AND i.inhdetachpending",
        &[parent.into()],
    )
}

/// Whether pg_migrate is installed in the current database.
pub fn extension_installed() -> bool {
    // SAFETY: a catalog lookup by name.
    unsafe { pg_sys::get_extension_oid(c"pg_migrate".as_ptr(), true) != pg_sys::InvalidOid }
}

/// `schema.name` of relation `oid`, quoted.
pub fn relation_name(oid: pg_sys::Oid) -> Option<String> {
    let row = class_row(oid)?;
    // SAFETY: the name comes from the copied row.
    Some(unsafe { qualified_name(row.namespace, row.name.data.as_ptr()) })
}

fn name_column(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> Vec<String> {
    crate::pg::spi::pinned_column(sql, args).unwrap_or_default()
}

/// The namespace of relation `oid` (a syscache lookup, nothing allocated), InvalidOid if it
/// is gone.
pub fn relation_namespace(oid: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: a syscache lookup that returns InvalidOid for a missing relation.
    unsafe { pg_sys::get_rel_namespace(oid) }
}

/// The namespace named `name`, InvalidOid if there is none (a syscache lookup).
pub fn namespace_oid(name: &std::ffi::CStr) -> pg_sys::Oid {
    // SAFETY: a syscache lookup by name; missing_ok.
    unsafe { pg_sys::get_namespace_oid(name.as_ptr(), true) }
}

/// The replay lag in WAL bytes of every walsender (standbys and logical subscribers), one row
/// (standby, lag) each: replicas that are connected, whose lag a change can make grow.
macro_rules! streaming_lags {
    () => {
        "SELECT coalesce(nullif(r.application_name, ''), r.client_addr::text, 'pid ' || r.pid) AS standby, \
                pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), r.replay_lsn) AS lag \
           FROM pg_catalog.pg_stat_replication r WHERE r.replay_lsn IS NOT NULL"
    };
}

/// Physical slots no standby uses now, by the WAL they keep: what that standby has yet to
/// receive and replay. It grows with whatever the primary writes, whether or not a change
/// had anything to do with it.
macro_rules! disconnected_slot_lags {
    () => {
        "SELECT 'slot ' || s.slot_name || ' (disconnected)' AS standby, \
                pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.restart_lsn) AS lag \
           FROM pg_catalog.pg_replication_slots s \
          WHERE s.slot_type = 'physical' AND NOT s.active AND s.restart_lsn IS NOT NULL"
    };
}

pub const STREAMING_LAGS: &str = streaming_lags!();
pub const DISCONNECTED_SLOT_LAGS: &str = disconnected_slot_lags!();
/// Both: every replica a backfill's WAL reaches.
pub const REPLICA_LAGS: &str = concat!(streaming_lags!(), " UNION ALL ", disconnected_slot_lags!());
