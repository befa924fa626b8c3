//! What a schema description prints of tables, indexes and constraints, read from the
//! syscache and the catalogs' indexes, and printed by the same server functions the SQL
//! description calls (`format_type`, `pg_get_expr`, `pg_get_constraintdef`, `regclass` and
//! `regcollation` output, `pg_identify_object`'s identity): one description, whichever side
//! prints it.
//!
//! The reads here open no relcache entry and lock no user relation: a fingerprint of 10,000
//! tables must not fill the lock table. The server's printers lock as they do when SQL calls
//! them: pg_get_viewdef takes AccessShareLock on what a view reads, until the transaction
//! ends, and printing an expression over a table's columns (a generated column, an index
//! predicate or expression, a CHECK) opens that table for a moment. That is why a migration
//! describes under migrate.lock_timeout (history/record.rs). Each lookup sees the catalogs as
//! of its own catalog snapshot, as each statement of the SQL description did.

pub use super::catalog::{qualified, quote_ident};
use pgrx::{pg_sys, FromDatum, IntoDatum};
use std::collections::{HashMap, HashSet};
use std::ffi::{c_int, CStr};

// Catalogs whose headers pgrx does not bind; their OIDs and column numbers are fixed in
// PostgreSQL's catalog headers (pg_depend_d.h, pg_inherits_d.h, pg_attrdef_d.h) and the same
// in every supported version.
pub(super) const DEPEND: (pg_sys::Oid, pg_sys::Oid) =
    (pg_sys::Oid::from_u32(2608), pg_sys::Oid::from_u32(2673));
pub(super) const DEPEND_CLASSID: u32 = 1;
pub(super) const DEPEND_OBJID: u32 = 2;
pub(super) const DEPEND_DEPTYPE: u32 = 7;
pub(super) const INHERITS: (pg_sys::Oid, pg_sys::Oid) =
    (pg_sys::Oid::from_u32(2611), pg_sys::Oid::from_u32(2680));
pub(super) const INHERITS_INHRELID: u32 = 1;
const INHERITS_INHPARENT: u32 = 2;
const INHERITS_INHSEQNO: u32 = 3;
pub const CONSTRAINT: pg_sys::Oid = pg_sys::Oid::from_u32(2606);
const CONSTRAINT_CONNAME: u32 = 2;
const CONSTRAINT_CONTYPE: u32 = 4;
// PostgreSQL 18 put conenforced before them.
#[cfg(not(feature = "pg18"))]
const CONSTRAINT_CONVALIDATED: u32 = 7;
#[cfg(feature = "pg18")]
const CONSTRAINT_CONVALIDATED: u32 = 8;
pub(super) const CONSTRAINT_CONRELID: u32 = CONSTRAINT_CONVALIDATED + 1;
pub(super) const DEPEND_REFERENCE_INDEX: pg_sys::Oid = pg_sys::Oid::from_u32(2674);
pub(super) const DEPEND_REFCLASSID: u32 = 4;
pub(super) const DEPEND_REFOBJID: u32 = 5;
const DEPEND_REFOBJSUBID: u32 = 6;
pub(super) const ATTRDEF: (pg_sys::Oid, pg_sys::Oid) =
    (pg_sys::Oid::from_u32(2604), pg_sys::Oid::from_u32(2656));
pub(super) const ATTRDEF_ADRELID: u32 = 2;
const ATTRDEF_ADNUM: u32 = 3;
const ATTRDEF_ADBIN: u32 = 4;

/// Runs `f` with the server's allocations (the texts it prints, the tuples it copies) in a
/// memory context of their own, freed when `f` returns: describing thousands of objects must
/// not keep every one's until the query ends. `f` keeps only what it copied into Rust.
pub fn in_scratch_memory<T>(f: impl FnOnce() -> T) -> T {
    let mut scratch = pgrx::PgMemoryContexts::new("pg_migrate describe");
    // SAFETY: the context is dropped (deleted) after `f` returns; nothing palloc'd in it is
    // returned, since T is plain Rust data.
    unsafe { scratch.switch_to(|_| f()) }
}

/// A pg_sequence row.
pub struct Sequence {
    pub type_text: String,
    pub start: i64,
    pub increment: i64,
    pub max: i64,
    pub min: i64,
    pub cache: i64,
    pub cycle: bool,
}

/// A pg_class row, as a description prints it.
pub struct Class {
    pub kind: u8,
    pub persistence: u8,
    pub namespace: pg_sys::Oid,
    pub name: String,
    pub options: Vec<String>,
    pub acl: Vec<String>,
    pub is_partition: bool,
    pub row_security: bool,
    pub force_row_security: bool,
    /// `pg_get_expr(relpartbound, 0)`: a bound holds only constants.
    pub partition_bound: Option<String>,
    pub access_method: pg_sys::Oid,
}

/// A live column, in attnum order.
pub struct Column {
    pub name: String,
    pub type_text: String,
    pub not_null: bool,
    /// `b's'` stored, `b'v'` virtual, 0 not generated.
    pub generated: u8,
    /// `b'a'` always, `b'd'` by default, 0 none.
    pub identity: u8,
    /// The column's collation where it is not its type's.
    pub collation: Option<String>,
    pub acl: Vec<String>,
    /// The default's (or generation expression's) stored tree; printed by the caller's choice.
    pub default: Option<String>,
}

/// A pg_index row with its index's pg_class row.
pub struct Index {
    pub table: pg_sys::Oid,
    pub unique: bool,
    pub nulls_not_distinct: bool,
    pub key_count: usize,
    /// Per column (keys, then included ones): its attnum, 0 for an expression.
    pub columns: Vec<i16>,
    /// Per key column.
    pub classes: Vec<pg_sys::Oid>,
    pub collations: Vec<pg_sys::Oid>,
    pub options: Vec<i16>,
    pub predicate: Option<String>,
    pub valid: bool,
    pub ready: bool,
    pub live: bool,
}

/// A pg_constraint row of a table.
pub struct Constraint {
    pub table: pg_sys::Oid,
    pub name: String,
    pub kind: u8,
    pub validated: bool,
}

fn syscache_attr(cache: c_int, tuple: pg_sys::HeapTuple, attnum: u32) -> Option<pg_sys::Datum> {
    let mut isnull = false;
    // SAFETY: `tuple` is a valid tuple of `cache`, and `attnum` one of its catalog's columns.
    let datum = unsafe { pg_sys::SysCacheGetAttr(cache, tuple, attnum as _, &mut isnull) };
    (!isnull).then_some(datum)
}

/// A syscache row, read by `read` and released after.
pub(super) fn with_syscache<T>(
    cache: c_int,
    key: pg_sys::Oid,
    read: impl FnOnce(pg_sys::HeapTuple) -> T,
) -> Option<T> {
    if key == pg_sys::InvalidOid {
        return None;
    }
    // SAFETY: a syscache lookup by OID; the tuple is released before returning.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(cache, pg_sys::Datum::from(key));
        if tuple.is_null() {
            return None;
        }
        let value = read(tuple);
        pg_sys::ReleaseSysCache(tuple);
        Some(value)
    }
}

/// A C string the server returned (NULL for none), copied.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string.
unsafe fn c_string(ptr: *const std::ffi::c_char) -> Option<String> {
    // SAFETY: the caller's promise.
    (!ptr.is_null()).then(|| {
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned()
    })
}

/// `format_type(oid, typmod)`, or with `typmod` None, `format_type(oid, NULL)`.
fn type_text(oid: pg_sys::Oid, typmod: Option<i32>) -> String {
    let flags =
        pg_sys::FORMAT_TYPE_ALLOW_INVALID | typmod.map_or(0, |_| pg_sys::FORMAT_TYPE_TYPEMOD_GIVEN);
    // SAFETY: format_type_extended returns a palloc'd string.
    unsafe {
        c_string(pg_sys::format_type_extended(
            oid,
            typmod.unwrap_or(-1),
            flags as _,
        ))
    }
    .unwrap_or_default()
}

fn name_of(name: &pg_sys::NameData) -> String {
    // SAFETY: a NameData is NUL-terminated.
    unsafe { c_string(name.data.as_ptr()) }.unwrap_or_default()
}

fn text_array(datum: Option<pg_sys::Datum>) -> Vec<String> {
    // SAFETY: a text[] datum of a catalog row.
    datum
        .and_then(|d| unsafe { Vec::<String>::from_datum(d, false) })
        .unwrap_or_default()
}

/// The elements of an aclitem[] as `aclitemout` prints them.
fn acl_texts(datum: Option<pg_sys::Datum>) -> Vec<String> {
    let Some(datum) = datum else {
        return vec![];
    };
    // SAFETY: an aclitem[] datum of a catalog row, detoasted; its elements are printed by
    // aclitemout, as `aclitem::text` prints them.
    unsafe {
        let array = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()).cast::<pg_sys::ArrayType>();
        let (mut len, mut byval, mut align) = (0i16, false, 0 as std::ffi::c_char);
        pg_sys::get_typlenbyvalalign(pg_sys::ACLITEMOID, &mut len, &mut byval, &mut align);
        let mut elems: *mut pg_sys::Datum = std::ptr::null_mut();
        let mut count: c_int = 0;
        pg_sys::deconstruct_array(
            array,
            pg_sys::ACLITEMOID,
            len.into(),
            byval,
            align,
            &mut elems,
            std::ptr::null_mut(),
            &mut count,
        );
        (0..count as usize)
            .map(|i| cstring_result(pg_sys::aclitemout, &[Some(*elems.add(i))]))
            .collect()
    }
}

/// A function returning cstring, called directly.
unsafe fn cstring_result(
    f: unsafe fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum,
    args: &[Option<pg_sys::Datum>],
) -> String {
    // SAFETY: the caller passes the arguments `f` takes; its result is a cstring.
    unsafe {
        pgrx::direct_function_call_as_datum(f, args)
            .and_then(|d| c_string(d.cast_mut_ptr()))
            .unwrap_or_default()
    }
}

/// A function returning text, called directly; `None` for NULL.
unsafe fn text_result(
    f: unsafe fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum,
    args: &[Option<pg_sys::Datum>],
) -> Option<String> {
    // SAFETY: the caller passes the arguments `f` takes; its result is text.
    unsafe { pgrx::direct_function_call::<String>(f, args) }
}

/// Sorted as `ORDER BY x::text` sorts them: by the database's default collation.
pub fn sort_as_text(values: &mut [String]) {
    values.sort_by(|a, b| {
        // SAFETY: two byte strings and their lengths.
        let c = unsafe {
            pg_sys::varstr_cmp(
                a.as_ptr().cast(),
                a.len() as c_int,
                b.as_ptr().cast(),
                b.len() as c_int,
                pg_sys::DEFAULT_COLLATION_OID,
            )
        };
        c.cmp(&0)
    });
}

pub fn namespace_name(oid: pg_sys::Oid) -> Option<String> {
    // SAFETY: a syscache lookup; NULL when there is no such schema.
    let name = unsafe { pg_sys::get_namespace_name(oid) };
    // SAFETY: a palloc'd NUL-terminated copy, or NULL.
    unsafe { c_string(name) }
}

pub fn class(oid: pg_sys::Oid) -> Option<Class> {
    const RELOID: c_int = pg_sys::SysCacheIdentifier::RELOID as c_int;
    with_syscache(RELOID, oid, |tuple| {
        // SAFETY: a pg_class row.
        let form = unsafe { &*pg_sys::GETSTRUCT(tuple).cast::<pg_sys::FormData_pg_class>() };
        let bound = syscache_attr(RELOID, tuple, pg_sys::Anum_pg_class_relpartbound);
        Class {
            kind: form.relkind as u8,
            persistence: form.relpersistence as u8,
            namespace: form.relnamespace,
            name: name_of(&form.relname),
            options: text_array(syscache_attr(
                RELOID,
                tuple,
                pg_sys::Anum_pg_class_reloptions,
            )),
            acl: acl_texts(syscache_attr(RELOID, tuple, pg_sys::Anum_pg_class_relacl)),
            is_partition: form.relispartition,
            row_security: form.relrowsecurity,
            force_row_security: form.relforcerowsecurity,
            // SAFETY: pg_get_expr(pg_node_tree, oid) of the row's bound.
            partition_bound: bound.and_then(|b| unsafe {
                text_result(
                    pg_sys::pg_get_expr,
                    &[Some(b), pg_sys::Oid::INVALID.into_datum()],
                )
            }),
            access_method: form.relam,
        }
    })
}

/// `oid::regclass::text`.
pub fn regclass_text(oid: pg_sys::Oid) -> String {
    // SAFETY: regclassout of an OID.
    unsafe { cstring_result(pg_sys::regclassout, &[oid.into_datum()]) }
}

/// `pg_get_partkeydef(oid)`.
pub fn partition_key(oid: pg_sys::Oid) -> Option<String> {
    // SAFETY: pg_get_partkeydef of an OID.
    unsafe { text_result(pg_sys::pg_get_partkeydef, &[oid.into_datum()]) }
}

/// One index scan of a catalog by equal OID keys (the index's leading columns), each row
/// read by `read` until it returns false.
pub(super) fn scan_by_oids(
    (catalog, index): (pg_sys::Oid, pg_sys::Oid),
    keys: &[(u32, pg_sys::Oid)],
    mut read: impl FnMut(pg_sys::HeapTuple, pg_sys::TupleDesc) -> bool,
) {
    // SAFETY: an index scan of a catalog under AccessShareLock, with a catalog snapshot; the
    // tuples are read while the scan holds them.
    unsafe {
        let rel = pg_sys::table_open(catalog, pg_sys::AccessShareLock as _);
        let mut skeys: Vec<pg_sys::ScanKeyData> = vec![std::mem::zeroed(); keys.len()];
        for (skey, (column, value)) in skeys.iter_mut().zip(keys) {
            pg_sys::ScanKeyInit(
                skey,
                *column as _,
                pg_sys::BTEqualStrategyNumber as _,
                pg_sys::Oid::from(pg_sys::F_OIDEQ),
                pg_sys::Datum::from(*value),
            );
        }
        let scan = pg_sys::systable_beginscan(
            rel,
            index,
            true,
            std::ptr::null_mut(),
            skeys.len() as c_int,
            skeys.as_mut_ptr(),
        );
        loop {
            let tuple = pg_sys::systable_getnext(scan);
            if tuple.is_null() || !read(tuple, (*rel).rd_att) {
                break;
            }
        }
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
    }
}

/// A whole catalog, read in physical order.
fn scan_all(catalog: pg_sys::Oid, mut read: impl FnMut(pg_sys::HeapTuple, pg_sys::TupleDesc)) {
    // SAFETY: a sequential scan of a catalog under AccessShareLock, with a catalog snapshot.
    unsafe {
        let rel = pg_sys::table_open(catalog, pg_sys::AccessShareLock as _);
        let scan = pg_sys::systable_beginscan(
            rel,
            pg_sys::InvalidOid,
            false,
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
        );
        loop {
            let tuple = pg_sys::systable_getnext(scan);
            if tuple.is_null() {
                break;
            }
            read(tuple, (*rel).rd_att);
        }
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
    }
}

pub(super) fn oid_attr(
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    attnum: u32,
) -> pg_sys::Oid {
    attr(tuple, desc, attnum).map_or(
        pg_sys::Oid::INVALID,
        |d| pg_sys::Oid::from(d.value() as u32),
    )
}

/// The catalog rows a relation's description reads besides its own, for many relations at
/// once: a description of thousands of tables would otherwise open pg_depend, pg_inherits and
/// pg_attrdef once per table. For a few, each is read by its index, as needed.
#[derive(Default)]
pub struct Around {
    extension_members: Option<HashSet<pg_sys::Oid>>,
    parents: Option<HashMap<pg_sys::Oid, Vec<(i32, pg_sys::Oid)>>>,
    defaults: Option<HashMap<pg_sys::Oid, HashMap<i16, String>>>,
}

impl Around {
    /// Each row read when asked for.
    pub fn by_index() -> Around {
        Around::default()
    }

    /// Which of `relations` belong to an extension, their inheritance links and their
    /// column defaults, read now.
    pub fn whole(relations: &[pg_sys::Oid]) -> Around {
        // Sorted, not hashed: four bytes an OID, however many are asked for.
        let mut wanted: Vec<u32> = relations.iter().map(|o| o.to_u32()).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let wanted = |oid: &pg_sys::Oid| wanted.binary_search(&oid.to_u32()).is_ok();
        let mut members = HashSet::new();
        scan_by_oids(
            (DEPEND.0, DEPEND_REFERENCE_INDEX),
            &[(DEPEND_REFCLASSID, pg_sys::ExtensionRelationId)],
            |tuple, desc| {
                if attr(tuple, desc, DEPEND_DEPTYPE).map(|d| d.value() as u8) == Some(b'e')
                    && oid_attr(tuple, desc, DEPEND_CLASSID) == pg_sys::RelationRelationId
                {
                    members.insert(oid_attr(tuple, desc, DEPEND_OBJID));
                }
                true
            },
        );
        let mut parents: HashMap<pg_sys::Oid, Vec<(i32, pg_sys::Oid)>> = HashMap::new();
        scan_all(INHERITS.0, |tuple, desc| {
            let child = oid_attr(tuple, desc, INHERITS_INHRELID);
            if wanted(&child) {
                let seqno = attr(tuple, desc, INHERITS_INHSEQNO).map_or(0, |d| d.value() as i32);
                parents
                    .entry(child)
                    .or_default()
                    .push((seqno, oid_attr(tuple, desc, INHERITS_INHPARENT)));
            }
        });
        let mut defaults: HashMap<pg_sys::Oid, HashMap<i16, String>> = HashMap::new();
        scan_all(ATTRDEF.0, |tuple, desc| {
            let relid = oid_attr(tuple, desc, ATTRDEF_ADRELID);
            if wanted(&relid) {
                defaults
                    .entry(relid)
                    .or_default()
                    .extend(attrdef_row(tuple, desc));
            }
        });
        Around {
            extension_members: Some(members),
            parents: Some(parents),
            defaults: Some(defaults),
        }
    }

    /// Whether relation `relid` belongs to an extension.
    pub fn extension_member(&self, relid: pg_sys::Oid) -> bool {
        match &self.extension_members {
            Some(members) => members.contains(&relid),
            None => extension_member(pg_sys::RelationRelationId, relid),
        }
    }

    /// The parents of `relid` (its partitioned table, or the tables it inherits), in order.
    pub fn parents(&self, relid: pg_sys::Oid) -> Vec<pg_sys::Oid> {
        let mut found = match &self.parents {
            Some(all) => all.get(&relid).cloned().unwrap_or_default(),
            None => {
                let mut found = vec![];
                scan_by_oids(INHERITS, &[(INHERITS_INHRELID, relid)], |tuple, desc| {
                    let seqno =
                        attr(tuple, desc, INHERITS_INHSEQNO).map_or(0, |d| d.value() as i32);
                    found.push((seqno, oid_attr(tuple, desc, INHERITS_INHPARENT)));
                    true
                });
                found
            }
        };
        found.sort_by_key(|(seqno, _)| *seqno);
        found.into_iter().map(|(_, parent)| parent).collect()
    }

    /// The stored trees of the column defaults of `relid`, by attnum.
    fn defaults(&self, relid: pg_sys::Oid) -> HashMap<i16, String> {
        match &self.defaults {
            Some(all) => all.get(&relid).cloned().unwrap_or_default(),
            None => {
                let mut defaults = HashMap::new();
                scan_by_oids(ATTRDEF, &[(ATTRDEF_ADRELID, relid)], |tuple, desc| {
                    defaults.extend(attrdef_row(tuple, desc));
                    true
                });
                defaults
            }
        }
    }
}

fn attrdef_row(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> Option<(i16, String)> {
    let adnum = attr(tuple, desc, ATTRDEF_ADNUM).map_or(0, |d| d.value() as i16);
    // SAFETY: adbin is a pg_node_tree, a text.
    let bin =
        attr(tuple, desc, ATTRDEF_ADBIN).and_then(|d| unsafe { String::from_datum(d, false) })?;
    Some((adnum, bin))
}

pub(super) fn attr(
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    attnum: u32,
) -> Option<pg_sys::Datum> {
    let mut isnull = false;
    // SAFETY: a tuple of the catalog `desc` describes.
    let d = unsafe { pg_sys::heap_getattr(tuple, attnum as i32, desc, &mut isnull) };
    (!isnull).then_some(d)
}

/// The schemas extensions own (their objects are not the schema's): what
/// `migrate.describe_objects` reads from pg_depend once per call.
pub fn extension_schemas() -> Vec<pg_sys::Oid> {
    let mut found = vec![];
    scan_by_oids(
        DEPEND,
        &[(DEPEND_CLASSID, pg_sys::NamespaceRelationId)],
        |tuple, desc| {
            if attr(tuple, desc, DEPEND_DEPTYPE).map(|d| d.value() as u8) == Some(b'e') {
                found.push(oid_attr(tuple, desc, DEPEND_OBJID));
            }
            true
        },
    );
    found
}

/// Whether object `objid` of catalog `classid` belongs to an extension.
fn extension_member(classid: pg_sys::Oid, objid: pg_sys::Oid) -> bool {
    let mut member = false;
    scan_by_oids(
        DEPEND,
        &[(DEPEND_CLASSID, classid), (DEPEND_OBJID, objid)],
        |tuple, desc| {
            member = attr(tuple, desc, DEPEND_DEPTYPE).map(|d| d.value() as u8) == Some(b'e');
            !member
        },
    );
    member
}

/// The live columns of `relid`, in attnum order, with their defaults' stored trees.
pub fn columns(relid: pg_sys::Oid, around: &Around) -> Vec<Column> {
    let mut found: Vec<(i16, Column, bool)> = vec![];
    scan_by_oids(
        (
            pg_sys::AttributeRelationId,
            pg_sys::AttributeRelidNumIndexId.into(),
        ),
        &[(pg_sys::Anum_pg_attribute_attrelid, relid)],
        |tuple, desc| {
            // SAFETY: a pg_attribute row.
            let form =
                unsafe { &*pg_sys::GETSTRUCT(tuple).cast::<pg_sys::FormData_pg_attribute>() };
            if form.attnum <= 0 || form.attisdropped {
                return true;
            }
            // SAFETY: syscache lookups by OID.
            let type_collation = unsafe { pg_sys::get_typcollation(form.atttypid) };
            let collation = (form.attcollation != type_collation)
                // SAFETY: regcollationout of an OID.
                .then(|| unsafe {
                    cstring_result(pg_sys::regcollationout, &[form.attcollation.into_datum()])
                });
            let column = Column {
                name: name_of(&form.attname),
                type_text: type_text(form.atttypid, Some(form.atttypmod)),
                not_null: form.attnotnull,
                generated: form.attgenerated as u8,
                identity: form.attidentity as u8,
                collation,
                acl: acl_texts(attr(tuple, desc, pg_sys::Anum_pg_attribute_attacl)),
                default: None,
            };
            found.push((form.attnum, column, form.atthasdef));
            true
        },
    );
    let mut defaults = if found.iter().any(|(_, _, has_default)| *has_default) {
        around.defaults(relid)
    } else {
        HashMap::new()
    };
    found.sort_by_key(|(attnum, _, _)| *attnum);
    found
        .into_iter()
        .map(|(attnum, mut column, _)| {
            column.default = defaults.remove(&attnum);
            column
        })
        .collect()
}

/// `pg_get_expr(tree, relid)`: relid 0 for an expression that refers to no column.
pub fn expression(tree: &str, relid: pg_sys::Oid) -> Option<String> {
    // SAFETY: pg_get_expr(pg_node_tree, oid) of a stored tree.
    unsafe {
        text_result(
            pg_sys::pg_get_expr,
            &[tree.into_datum(), relid.into_datum()],
        )
    }
}

/// `collation::regcollation::text`.
pub fn collation_text(oid: pg_sys::Oid) -> String {
    // SAFETY: regcollationout of an OID.
    unsafe { cstring_result(pg_sys::regcollationout, &[oid.into_datum()]) }
}

fn vector<T: Copy>(datum: Option<pg_sys::Datum>) -> Vec<T> {
    let Some(datum) = datum else {
        return vec![];
    };
    // SAFETY: an oidvector or int2vector of a catalog row (stored plain, never toasted):
    // a header, then dim1 values of T.
    unsafe {
        let header = datum.cast_mut_ptr::<pg_sys::oidvector>();
        let count = (*header).dim1 as usize;
        let values = (*header).values.as_ptr().cast::<T>();
        std::slice::from_raw_parts(values, count).to_vec()
    }
}

pub fn index(indexrelid: pg_sys::Oid) -> Option<Index> {
    const INDEXRELID: c_int = pg_sys::SysCacheIdentifier::INDEXRELID as c_int;
    with_syscache(INDEXRELID, indexrelid, |tuple| {
        // SAFETY: a pg_index row.
        let form = unsafe { &*pg_sys::GETSTRUCT(tuple).cast::<pg_sys::FormData_pg_index>() };
        let key = syscache_attr(INDEXRELID, tuple, pg_sys::Anum_pg_index_indkey);
        let predicate = syscache_attr(INDEXRELID, tuple, pg_sys::Anum_pg_index_indpred)
            // SAFETY: pg_get_expr(pg_node_tree, oid) of the row's predicate.
            .and_then(|p| unsafe {
                text_result(pg_sys::pg_get_expr, &[Some(p), form.indrelid.into_datum()])
            });
        Index {
            table: form.indrelid,
            unique: form.indisunique,
            nulls_not_distinct: form.indnullsnotdistinct,
            key_count: form.indnkeyatts as usize,
            columns: vector::<i16>(key),
            classes: vector::<pg_sys::Oid>(syscache_attr(
                INDEXRELID,
                tuple,
                pg_sys::Anum_pg_index_indclass,
            )),
            collations: vector::<pg_sys::Oid>(syscache_attr(
                INDEXRELID,
                tuple,
                pg_sys::Anum_pg_index_indcollation,
            )),
            options: vector::<i16>(syscache_attr(
                INDEXRELID,
                tuple,
                pg_sys::Anum_pg_index_indoption,
            )),
            predicate,
            valid: form.indisvalid,
            ready: form.indisready,
            live: form.indislive,
        }
    })
}

/// `quote_ident(attname)` of column `attnum` of `relid`.
pub fn column_name(relid: pg_sys::Oid, attnum: i16) -> Option<String> {
    // SAFETY: a syscache lookup; NULL when there is no such column.
    let name = unsafe { pg_sys::get_attname(relid, attnum, true) };
    // SAFETY: a palloc'd NUL-terminated copy, or NULL.
    unsafe { c_string(name) }.map(|n| quote_ident(&n))
}

/// `pg_get_indexdef(index, column, true)`: an expression column as PostgreSQL prints it.
pub fn index_expression(index: pg_sys::Oid, column: i32) -> Option<String> {
    // SAFETY: pg_get_indexdef(oid, int4, bool).
    unsafe {
        text_result(
            pg_sys::pg_get_indexdef_ext,
            &[index.into_datum(), column.into_datum(), true.into_datum()],
        )
    }
}

/// `(pg_identify_object('pg_opclass', oid, 0)).identity`.
pub fn opclass_identity(oid: pg_sys::Oid) -> Option<String> {
    let address = pg_sys::ObjectAddress {
        classId: pg_sys::OperatorClassRelationId,
        objectId: oid,
        objectSubId: 0,
    };
    // SAFETY: the identity of an object address, NULL when it does not exist.
    let identity = unsafe { pg_sys::getObjectIdentity(&address, true) };
    // SAFETY: a palloc'd NUL-terminated string, or NULL.
    unsafe { c_string(identity) }
}

pub fn access_method_name(oid: pg_sys::Oid) -> Option<String> {
    // SAFETY: a syscache lookup; NULL when there is no such method.
    let name = unsafe { pg_sys::get_am_name(oid) };
    // SAFETY: a palloc'd NUL-terminated copy, or NULL.
    unsafe { c_string(name) }
}

pub fn constraint(oid: pg_sys::Oid) -> Option<Constraint> {
    const CONSTROID: c_int = pg_sys::SysCacheIdentifier::CONSTROID as c_int;
    with_syscache(CONSTROID, oid, |tuple| {
        let column = |attnum| syscache_attr(CONSTROID, tuple, attnum);
        Constraint {
            table: column(CONSTRAINT_CONRELID).map_or(pg_sys::Oid::INVALID, |d| {
                pg_sys::Oid::from(d.value() as u32)
            }),
            // SAFETY: conname is a NameData in the row.
            name: column(CONSTRAINT_CONNAME)
                .map(|d| name_of(unsafe { &*d.cast_mut_ptr::<pg_sys::NameData>() }))
                .unwrap_or_default(),
            kind: column(CONSTRAINT_CONTYPE).map_or(0, |d| d.value() as u8),
            validated: column(CONSTRAINT_CONVALIDATED).is_some_and(|d| d.value() != 0),
        }
    })
}

/// `pg_get_constraintdef(oid)`.
pub fn constraint_definition(oid: pg_sys::Oid) -> Option<String> {
    // SAFETY: pg_get_constraintdef(oid).
    unsafe { text_result(pg_sys::pg_get_constraintdef, &[oid.into_datum()]) }
}

/// `pg_get_viewdef(oid)`.
pub fn view_definition(oid: pg_sys::Oid) -> Option<String> {
    // SAFETY: pg_get_viewdef(oid).
    unsafe { text_result(pg_sys::pg_get_viewdef, &[oid.into_datum()]) }
}

pub fn sequence(oid: pg_sys::Oid) -> Option<Sequence> {
    const SEQRELID: c_int = pg_sys::SysCacheIdentifier::SEQRELID as c_int;
    with_syscache(SEQRELID, oid, |tuple| {
        // pg_sequence's columns, fixed in every supported version (pg_sequence_d.h).
        let column =
            |attnum: u32| syscache_attr(SEQRELID, tuple, attnum).map_or(0, |d| d.value() as i64);
        let type_oid = pg_sys::Oid::from(column(2) as u32);
        Sequence {
            type_text: type_text(type_oid, None),
            start: column(3),
            increment: column(4),
            max: column(5),
            min: column(6),
            cache: column(7),
            cycle: column(8) != 0,
        }
    })
}

/// The column a sequence belongs to (OWNED BY, or an identity's), as
/// `table::regclass::text || '.' || quote_ident(column)`.
pub fn sequence_owner(oid: pg_sys::Oid) -> Option<String> {
    let mut owner = None;
    scan_by_oids(
        DEPEND,
        &[
            (DEPEND_CLASSID, pg_sys::RelationRelationId),
            (DEPEND_OBJID, oid),
        ],
        |tuple, desc| {
            let field = |attnum| attr(tuple, desc, attnum).map_or(0, |d| d.value());
            let deptype = field(DEPEND_DEPTYPE) as u8;
            let refclass = pg_sys::Oid::from(field(DEPEND_REFCLASSID) as u32);
            if refclass == pg_sys::RelationRelationId && (deptype == b'a' || deptype == b'i') {
                let table = pg_sys::Oid::from(field(DEPEND_REFOBJID) as u32);
                if let Some(column) = column_name(table, field(DEPEND_REFOBJSUBID) as i16) {
                    owner = Some(format!("{}.{}", regclass_text(table), column));
                }
            }
            owner.is_none()
        },
    );
    owner
}
