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

use crate::command::{Rel, RelKind};
use crate::subxact;
use pgrx::{is_a, pg_sys, PgList};
use std::ffi::{c_char, c_int, CStr};

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
    fn find_all_inheritors(
        parent: pg_sys::Oid,
        lockmode: c_int,
        numparents: *mut *mut pg_sys::List,
    ) -> *mut pg_sys::List;
}

/// A relcache reference, released on drop (also when an ERROR unwinds, before the enclosing
/// subtransaction is rolled back).
struct Opened(pg_sys::Relation);

impl Opened {
    fn by_oid(oid: pg_sys::Oid) -> Option<Opened> {
        if oid == pg_sys::InvalidOid {
            return None;
        }
        // SAFETY: returns a counted relcache entry or NULL; takes no lock.
        let rel = unsafe { pg_sys::RelationIdGetRelation(oid) };
        (!rel.is_null()).then_some(Opened(rel))
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        // SAFETY: releases the reference taken in `by_oid`.
        unsafe { pg_sys::RelationClose(self.0) };
    }
}

/// The relation a RangeVar names, resolved as the command will resolve it; `None` if it does
/// not exist (yet): it is then created earlier in the same script, or the command fails.
pub fn relation_named(rv: *mut pg_sys::RangeVar) -> Option<Rel> {
    relation(oid_of(rv))
}

pub fn oid_of(rv: *mut pg_sys::RangeVar) -> pg_sys::Oid {
    if rv.is_null() {
        return pg_sys::InvalidOid;
    }
    // SAFETY: name lookup only; missing relations and schemas yield InvalidOid.
    unsafe {
        pg_sys::RangeVarGetRelidExtended(
            rv,
            pg_sys::NoLock as _,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        )
    }
}

/// What the catalogs say about relation `oid`.
pub fn relation(oid: pg_sys::Oid) -> Option<Rel> {
    let opened = Opened::by_oid(oid)?;
    // SAFETY: reads fields of a relcache entry we hold a reference to.
    unsafe {
        let rel = opened.0;
        let form = (*rel).rd_rel;
        let kind = match (*form).relkind as u8 {
            b'r' => RelKind::Table,
            b'p' => RelKind::PartitionedTable,
            b'm' => RelKind::MatView,
            b'i' => RelKind::Index,
            b'I' => RelKind::PartitionedIndex,
            b'v' => RelKind::View,
            b'f' => RelKind::Foreign,
            _ => RelKind::Other,
        };
        let (rows, bytes) = match kind {
            RelKind::Table | RelKind::MatView | RelKind::Index => size_of(rel),
            RelKind::PartitionedTable | RelKind::PartitionedIndex => size_of_partitions(oid),
            _ => (0.0, 0),
        };
        Some(Rel {
            name: qualified_name((*form).relnamespace, (*form).relname.data.as_ptr()),
            kind,
            new: (*rel).rd_createSubid != 0, // InvalidSubTransactionId
            rows,
            bytes,
            write_locked_by_us: pg_sys::CheckRelationLockedByMe(rel, pg_sys::ShareLock as _, true),
        })
    }
}

/// The planner's row estimate, and heap plus TOAST size.
unsafe fn size_of(rel: pg_sys::Relation) -> (f64, u64) {
    let mut pages: pg_sys::BlockNumber = 0;
    let mut tuples: f64 = 0.0;
    let mut allvisfrac: f64 = 0.0;
    let actual = pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM);
    if actual > 0 {
        // The planner assumes at least 10 pages for a table never vacuumed; an empty one
        // holds nothing, whatever the planner would guess.
        pg_sys::estimate_rel_size(
            rel,
            std::ptr::null_mut(),
            &mut pages,
            &mut tuples,
            &mut allvisfrac,
        );
    }
    let mut blocks = u64::from(actual);
    if let Some(toast) = Opened::by_oid((*(*rel).rd_rel).reltoastrelid) {
        blocks += u64::from(pg_sys::RelationGetNumberOfBlocksInFork(
            toast.0,
            pg_sys::ForkNumber::MAIN_FORKNUM,
        ));
    }
    (tuples.max(0.0), blocks * u64::from(pg_sys::BLCKSZ))
}

/// A partitioned table has no storage of its own: its size is its partitions'.
unsafe fn size_of_partitions(oid: pg_sys::Oid) -> (f64, u64) {
    let members = PgList::<pg_sys::Oid>::from_pg(find_all_inheritors(
        oid,
        pg_sys::NoLock as _,
        std::ptr::null_mut(),
    ));
    let mut total = (0.0, 0);
    for member in members.iter_oid() {
        if let Some(opened) = Opened::by_oid(member) {
            let relkind = (*(*opened.0).rd_rel).relkind as u8;
            if matches!(relkind, b'r' | b'm' | b'i') {
                let (rows, bytes) = size_of(opened.0);
                total.0 += rows;
                total.1 += bytes;
            }
        }
    }
    total
}

/// `schema.name`, each part quoted only where needed, as PostgreSQL prints names.
unsafe fn qualified_name(namespace: pg_sys::Oid, name: *const c_char) -> String {
    let schema = pg_sys::get_namespace_name(namespace);
    let quoted = pg_sys::quote_qualified_identifier(schema, name);
    CStr::from_ptr(quoted).to_string_lossy().into_owned()
}

/// A type as PostgreSQL prints it (`character varying(20)`, `bigint`), for messages.
pub fn type_display(type_name: *mut pg_sys::TypeName) -> String {
    if type_name.is_null() {
        return String::new();
    }
    let resolved = subxact::run(|| unsafe {
        let (mut typ, mut typmod) = (pg_sys::InvalidOid, 0);
        pg_sys::typenameTypeIdAndMod(std::ptr::null_mut(), type_name, &mut typ, &mut typmod);
        CStr::from_ptr(pg_sys::format_type_with_typemod(typ, typmod))
            .to_string_lossy()
            .into_owned()
    });
    // SAFETY: formats the parse node as written when the type cannot be resolved.
    resolved.unwrap_or_else(|_| unsafe {
        CStr::from_ptr(pg_sys::TypeNameToString(type_name))
            .to_string_lossy()
            .into_owned()
    })
}

/// Whether ALTER COLUMN `column` TYPE `type_name` [USING `using`] rewrites the table, decided
/// the way ALTER TABLE decides it: coerce the column (or the USING expression) to the new
/// type, let the planner simplify it (which turns length coercions that cannot fail, such as
/// varchar(10) to varchar(20), into relabels), then check what is left.
pub fn type_change_rewrites(
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
        let (mut target, mut target_mod) = (pg_sys::InvalidOid, 0);
        pg_sys::typenameTypeIdAndMod(
            std::ptr::null_mut(),
            type_name,
            &mut target,
            &mut target_mod,
        );

        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        let _rel; // the relcache reference the USING expression's range table entry needs
        let source: *mut pg_sys::Node = if using.is_null() {
            pg_sys::makeVar(1, attnum, typ, typmod, coll, 0).cast()
        } else {
            let opened = Opened::by_oid(relid)?;
            let item = pg_sys::addRangeTableEntryForRelation(
                pstate,
                opened.0,
                pg_sys::AccessShareLock as _,
                std::ptr::null_mut(),
                false,
                true,
            );
            pg_sys::addNSItemToQuery(pstate, item, false, true, true);
            _rel = opened;
            pg_sys::transformExpr(
                pstate,
                using,
                pg_sys::ParseExprKind::EXPR_KIND_ALTER_COL_TRANSFORM,
            )
        };
        let coerced = pg_sys::coerce_to_target_type(
            pstate,
            source,
            pg_sys::exprType(source),
            target,
            target_mod,
            pg_sys::CoercionContext::COERCION_ASSIGNMENT,
            pg_sys::CoercionForm::COERCE_IMPLICIT_CAST,
            -1,
        );
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

/// Whether a column default, coerced to the column's type, calls anything volatile
/// (`contain_volatile_functions`, which reads each function's volatility from pg_proc).
pub fn default_is_volatile(
    type_name: *mut pg_sys::TypeName,
    raw: *mut pg_sys::Node,
) -> Option<bool> {
    subxact::run(|| unsafe {
        let (mut typ, mut typmod) = (pg_sys::InvalidOid, 0);
        pg_sys::typenameTypeIdAndMod(std::ptr::null_mut(), type_name, &mut typ, &mut typmod);
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        let expr =
            pg_sys::transformExpr(pstate, raw, pg_sys::ParseExprKind::EXPR_KIND_COLUMN_DEFAULT);
        let coerced = pg_sys::coerce_to_target_type(
            pstate,
            expr,
            pg_sys::exprType(expr),
            typ,
            typmod,
            pg_sys::CoercionContext::COERCION_ASSIGNMENT,
            pg_sys::CoercionForm::COERCE_IMPLICIT_CAST,
            -1,
        );
        (!coerced.is_null()).then(|| pg_sys::contain_volatile_functions(coerced))
    })
    .ok()
    .flatten()
}

/// Whether a type is a domain with constraints (whose check forces a rewrite on ADD COLUMN).
pub fn is_constrained_domain(type_name: *mut pg_sys::TypeName) -> Option<bool> {
    subxact::run(|| unsafe {
        let (mut typ, mut typmod) = (pg_sys::InvalidOid, 0);
        pg_sys::typenameTypeIdAndMod(std::ptr::null_mut(), type_name, &mut typ, &mut typmod);
        pg_sys::DomainHasConstraints(typ)
    })
    .ok()
}

/// Whether the table's validated constraints (or the column's own NOT NULL) prove `column IS
/// NOT NULL`, so SET NOT NULL needs no scan. The proof is PostgreSQL's own predicate prover.
pub fn not_null_proven(relid: pg_sys::Oid, column: &str) -> Option<bool> {
    let column = std::ffi::CString::new(column).ok()?;
    subxact::run(|| unsafe {
        let attnum = pg_sys::get_attnum(relid, column.as_ptr());
        if attnum == pg_sys::InvalidAttrNumber as i16 {
            return None;
        }
        let opened = Opened::by_oid(relid)?;
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
            opened.0,
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
pub fn attach_proofs(
    parent: pg_sys::Oid,
    stmt: *mut pg_sys::AlterTableStmt,
    cmd: *mut pg_sys::AlterTableCmd,
) -> (Option<bool>, Option<(Rel, Option<bool>)>) {
    let proofs = subxact::run(|| unsafe {
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
        let parent_rel = Opened::by_oid(parent)?;
        let attach_rel = Opened::by_oid(oid_of((*partcmd).name))?;

        let bound = pg_sys::get_qual_from_partbound(parent_rel.0, (*partcmd).bound);
        let constraint = pg_sys::list_concat(bound, RelationGetPartitionQual(parent_rel.0));
        let proven = if constraint.is_null() {
            true
        } else {
            let simplified =
                pg_sys::eval_const_expressions(std::ptr::null_mut(), constraint.cast());
            let canonical = pg_sys::canonicalize_qual(simplified.cast(), true);
            let mut single = PgList::<pg_sys::Expr>::new();
            single.push(pg_sys::make_ands_explicit(canonical.cast()));
            let mapped = map_partition_varattnos(single.into_pg(), 1, attach_rel.0, parent_rel.0);
            pg_sys::PartConstraintImpliedByRelConstraint(attach_rel.0, mapped)
        };

        let default_oid = default_partition(parent_rel.0);
        let default = Opened::by_oid(default_oid).map(|default_rel| {
            let excluded = get_proposed_default_constraint(constraint);
            let mapped = map_partition_varattnos(excluded, 1, default_rel.0, parent_rel.0);
            pg_sys::PartConstraintImpliedByRelConstraint(default_rel.0, mapped)
        });
        Some((proven, default.map(|p| (default_oid, p))))
    })
    .ok()
    .flatten();
    match proofs {
        None => (None, None),
        Some((proven, default)) => (
            Some(proven),
            default.and_then(|(oid, p)| relation(oid).map(|rel| (rel, Some(p)))),
        ),
    }
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
    crate::security::pinned(|| {
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
pub fn creation_name(rv: *mut pg_sys::RangeVar) -> Option<String> {
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
    let opened = Opened::by_oid(relid)?;
    // SAFETY: a catalog lookup by name and relcache fields.
    unsafe {
        let mut target = pg_sys::get_tablespace_oid(name.as_ptr(), true);
        if target == pg_sys::InvalidOid {
            return None;
        }
        if target == pg_sys::MyDatabaseTableSpace {
            target = pg_sys::InvalidOid;
        }
        Some(target != (*(*opened.0).rd_rel).reltablespace)
    }
}

/// Whether SET ACCESS METHOD `name` changes relation `relid`'s access method.
pub fn access_method_changes(relid: pg_sys::Oid, name: &CStr) -> Option<bool> {
    let opened = Opened::by_oid(relid)?;
    // SAFETY: as above.
    unsafe {
        let target = pg_sys::get_table_am_oid(name.as_ptr(), true);
        (target != pg_sys::InvalidOid).then(|| target != (*(*opened.0).rd_rel).relam)
    }
}
