//! What the catalogs say of the objects a DDL command touched: what depends on them, which
//! table a default, rule, constraint or trigger belongs to, and a table's own indexes,
//! constraints, triggers and policies. Read by OID through the syscache and the catalogs'
//! indexes, as the recorded schema's bookkeeping needs them in every migration, without
//! opening or locking a user relation.

use super::describe::{
    attr, oid_attr, scan_by_oids, with_syscache, ATTRDEF, ATTRDEF_ADRELID, CONSTRAINT,
    CONSTRAINT_CONRELID, DEPEND, DEPEND_CLASSID, DEPEND_DEPTYPE, DEPEND_OBJID, DEPEND_REFCLASSID,
    DEPEND_REFERENCE_INDEX, DEPEND_REFOBJID, INHERITS, INHERITS_INHRELID,
};
use pgrx::pg_sys;
use std::ffi::c_int;

// Catalogs and indexes pgrx does not bind, with their column numbers: fixed in PostgreSQL's
// catalog headers (pg_inherits_d.h, pg_attrdef_d.h, pg_rewrite_d.h, pg_policy_d.h,
// pg_constraint_d.h) and the same in every supported version, but for pg_constraint's, which
// describe.rs follows.
const INHERITS_PARENT_INDEX: pg_sys::Oid = pg_sys::Oid::from_u32(2187);
const INHERITS_INHPARENT: u32 = 2;
const ATTRDEF_BY_OID: (pg_sys::Oid, pg_sys::Oid) = (ATTRDEF.0, pg_sys::Oid::from_u32(2657));
const REWRITE_BY_OID: (pg_sys::Oid, pg_sys::Oid) =
    (pg_sys::Oid::from_u32(2618), pg_sys::Oid::from_u32(2692));
const REWRITE_EV_CLASS: u32 = 3;
const POLICY_BY_RELATION: (pg_sys::Oid, pg_sys::Oid) =
    (pg_sys::Oid::from_u32(3256), pg_sys::Oid::from_u32(3258));
const POLICY_POLRELID: u32 = 3;
const CONSTRAINT_BY_RELATION: (pg_sys::Oid, pg_sys::Oid) =
    (CONSTRAINT, pg_sys::Oid::from_u32(2665));
const CONSTRAINT_CONTYPID: u32 = CONSTRAINT_CONRELID + 1;
/// Every catalog row's `oid` is its first column.
const OID_COLUMN: u32 = 1;

/// The catalogs of objects pg_depend and the DDL log name, that pgrx has no constant for.
pub const DEFAULTS: pg_sys::Oid = ATTRDEF.0;
pub const RULES: pg_sys::Oid = REWRITE_BY_OID.0;
pub const POLICIES: pg_sys::Oid = POLICY_BY_RELATION.0;
pub const CONSTRAINTS: pg_sys::Oid = CONSTRAINT;

/// An object as pg_depend names it: its catalog and its OID.
pub type Object = (pg_sys::Oid, pg_sys::Oid);

/// What a pg_class row says of the relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relation {
    pub kind: u8,
    /// A composite type's own type.
    pub row_type: pg_sys::Oid,
    pub is_partition: bool,
}

pub fn relation(oid: pg_sys::Oid) -> Option<Relation> {
    const RELOID: c_int = pg_sys::SysCacheIdentifier::RELOID as c_int;
    with_syscache(RELOID, oid, |tuple| {
        // SAFETY: a pg_class row.
        let form = unsafe { &*pg_sys::GETSTRUCT(tuple).cast::<pg_sys::FormData_pg_class>() };
        Relation {
            kind: form.relkind as u8,
            row_type: form.reltype,
            is_partition: form.relispartition,
        }
    })
}

/// The objects that depend on `of` (on it or on any of its columns), with pg_depend's kind
/// of dependency.
pub fn dependents(of: Object) -> Vec<(Object, u8)> {
    let mut found = vec![];
    scan_by_oids(
        (DEPEND.0, DEPEND_REFERENCE_INDEX),
        &[(DEPEND_REFCLASSID, of.0), (DEPEND_REFOBJID, of.1)],
        |tuple, desc| {
            let kind = attr(tuple, desc, DEPEND_DEPTYPE).map_or(0, |d| d.value() as u8);
            found.push((
                (
                    oid_attr(tuple, desc, DEPEND_CLASSID),
                    oid_attr(tuple, desc, DEPEND_OBJID),
                ),
                kind,
            ));
            true
        },
    );
    found
}

/// The partitions of `parent`, or the tables that inherit from it.
pub fn inheritors(parent: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    let mut found = vec![];
    scan_by_oids(
        (INHERITS.0, INHERITS_PARENT_INDEX),
        &[(INHERITS_INHPARENT, parent)],
        |tuple, desc| {
            found.push(oid_attr(tuple, desc, INHERITS_INHRELID));
            true
        },
    );
    found
}

/// The first row's `column` among those of `catalog` (a catalog and one of its indexes)
/// whose key column equals the key.
fn first_oid(
    catalog: (pg_sys::Oid, pg_sys::Oid),
    key: (u32, pg_sys::Oid),
    column: u32,
) -> Option<pg_sys::Oid> {
    let mut found = None;
    scan_by_oids(catalog, &[key], |tuple, desc| {
        found = Some(oid_attr(tuple, desc, column));
        false
    });
    found
}

/// `column` of every row of `catalog` (a catalog and one of its indexes) whose key column
/// equals the key, of those `keep` keeps.
fn all_oids(
    catalog: (pg_sys::Oid, pg_sys::Oid),
    key: (u32, pg_sys::Oid),
    column: u32,
    mut keep: impl FnMut(pg_sys::HeapTuple, pg_sys::TupleDesc) -> bool,
) -> Vec<pg_sys::Oid> {
    let mut found = vec![];
    scan_by_oids(catalog, &[key], |tuple, desc| {
        if keep(tuple, desc) {
            found.push(oid_attr(tuple, desc, column));
        }
        true
    });
    found
}

/// The table a column default belongs to.
pub fn default_owner(attrdef: pg_sys::Oid) -> Option<pg_sys::Oid> {
    first_oid(ATTRDEF_BY_OID, (OID_COLUMN, attrdef), ATTRDEF_ADRELID)
}

/// The relation a rule belongs to (a view's own rule, or a table's).
pub fn rule_owner(rule: pg_sys::Oid) -> Option<pg_sys::Oid> {
    first_oid(REWRITE_BY_OID, (OID_COLUMN, rule), REWRITE_EV_CLASS)
}

/// The table (or, for a domain's constraint, the type) a constraint belongs to: one of the
/// two is InvalidOid.
pub fn constraint_owner(oid: pg_sys::Oid) -> Option<(pg_sys::Oid, pg_sys::Oid)> {
    const CONSTROID: c_int = pg_sys::SysCacheIdentifier::CONSTROID as c_int;
    with_syscache(CONSTROID, oid, |tuple| {
        let column = |attnum| {
            let mut isnull = false;
            // SAFETY: a pg_constraint row, and one of its columns.
            let d = unsafe { pg_sys::SysCacheGetAttr(CONSTROID, tuple, attnum as _, &mut isnull) };
            if isnull {
                pg_sys::Oid::INVALID
            } else {
                pg_sys::Oid::from(d.value() as u32)
            }
        };
        (column(CONSTRAINT_CONRELID), column(CONSTRAINT_CONTYPID))
    })
}

/// Whether a trigger is internal (a foreign key's own): None when there is no such trigger.
pub fn trigger_is_internal(oid: pg_sys::Oid) -> Option<bool> {
    let mut found = None;
    scan_by_oids(
        (
            pg_sys::TriggerRelationId,
            pg_sys::Oid::from(pg_sys::TriggerOidIndexId),
        ),
        &[(OID_COLUMN, oid)],
        |tuple, desc| {
            found = Some(is_internal(tuple, desc));
            false
        },
    );
    found
}

fn is_internal(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> bool {
    attr(tuple, desc, pg_sys::Anum_pg_trigger_tgisinternal).is_some_and(|d| d.value() != 0)
}

/// The indexes of a table.
pub fn indexes_of(table: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    all_oids(
        (
            pg_sys::IndexRelationId,
            pg_sys::Oid::from(pg_sys::IndexIndrelidIndexId),
        ),
        (pg_sys::Anum_pg_index_indrelid, table),
        pg_sys::Anum_pg_index_indexrelid,
        |_, _| true,
    )
}

/// The constraints of a table.
pub fn constraints_of(table: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    all_oids(
        CONSTRAINT_BY_RELATION,
        (CONSTRAINT_CONRELID, table),
        OID_COLUMN,
        |_, _| true,
    )
}

/// The triggers of a table but the internal ones: a table that thousands of foreign keys
/// reference has thousands of those, and they are not described.
pub fn user_triggers_of(table: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    all_oids(
        (
            pg_sys::TriggerRelationId,
            pg_sys::Oid::from(pg_sys::TriggerRelidNameIndexId),
        ),
        (pg_sys::Anum_pg_trigger_tgrelid, table),
        OID_COLUMN,
        |tuple, desc| !is_internal(tuple, desc),
    )
}

/// The row security policies of a table.
pub fn policies_of(table: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    all_oids(
        POLICY_BY_RELATION,
        (POLICY_POLRELID, table),
        OID_COLUMN,
        |_, _| true,
    )
}

/// The constraints that depend on a table: for a partition, the clones of the foreign keys
/// that reference its partitioned table, which belong to the referencing tables.
pub fn constraints_on(table: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    dependents((pg_sys::RelationRelationId, table))
        .into_iter()
        .filter(|((classid, _), _)| *classid == CONSTRAINT)
        .map(|((_, objid), _)| objid)
        .collect()
}
