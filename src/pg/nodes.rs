//! Raw parse trees: the statements PostgreSQL's parser made, and the text their nodes hold.

use pgrx::pg_sys;
use std::ffi::CStr;

/// A raw statement parse tree PostgreSQL's parser made in this backend, in a memory context
/// that outlives every use of the value: the call that parsed a script (`'a` is the script's
/// borrow), or the event or utility hook it fired for. Readers of parse trees take it instead
/// of a pointer, so that a tree is only ever walked where one is known to be valid.
#[derive(Debug, Clone, Copy)]
pub struct StmtTree<'a>(*mut pg_sys::Node, std::marker::PhantomData<&'a ()>);

impl<'a> StmtTree<'a> {
    /// # Safety
    /// `node` must be a raw statement parse tree that stays allocated for `'a`.
    pub unsafe fn new(node: *mut pg_sys::Node) -> StmtTree<'a> {
        StmtTree(node, std::marker::PhantomData)
    }

    /// The tree, for the readers of parse trees.
    pub fn node(self) -> *mut pg_sys::Node {
        self.0
    }

    /// Whether the statement is a node of this type.
    pub fn is(self, tag: pg_sys::NodeTag) -> bool {
        // SAFETY: a StmtTree is a valid raw statement tree.
        unsafe { pgrx::is_a(self.0, tag) }
    }

    /// The statement's command tag (`CREATE TABLE`, `TRUNCATE TABLE`), as PostgreSQL names it.
    pub fn command_tag(self) -> String {
        // SAFETY: a StmtTree is a valid raw statement tree; the tag names are static strings.
        unsafe {
            CStr::from_ptr(pg_sys::GetCommandTagName(pg_sys::CreateCommandTag(self.0)))
                .to_string_lossy()
                .into_owned()
        }
    }
}

/// The text of a String (PostgreSQL 15+) or Value (13, 14) node.
///
/// # Safety
/// `node` must be a String (Value) node.
pub unsafe fn str_val(node: *mut pg_sys::Node) -> String {
    #[cfg(any(feature = "pg13", feature = "pg14"))]
    let ptr = (*node.cast::<pg_sys::Value>()).val.str_;
    #[cfg(not(any(feature = "pg13", feature = "pg14")))]
    let ptr = (*node.cast::<pg_sys::String>()).sval;
    text(ptr)
}

/// A C string's text; empty for NULL.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string.
pub unsafe fn text(ptr: *const std::ffi::c_char) -> String {
    if ptr.is_null() {
        String::new()
    } else {
        CStr::from_ptr(ptr).to_string_lossy().into_owned()
    }
}

/// The database a `DROP DATABASE` drops, if it exists.
pub fn dropped_database(stmt: StmtTree) -> Option<pg_sys::Oid> {
    if !stmt.is(pg_sys::NodeTag::T_DropdbStmt) {
        return None;
    }
    // SAFETY: a DropdbStmt's tree, allocated for the statement's life; the lookup reads
    // pg_database by name and raises nothing when it is missing.
    unsafe {
        let drop = stmt.node() as *mut pg_sys::DropdbStmt;
        if (*drop).dbname.is_null() {
            return None;
        }
        let oid = pg_sys::get_database_oid((*drop).dbname, true);
        (oid != pg_sys::InvalidOid).then_some(oid)
    }
}

/// The table a `COPY table TO` reads (COPY of a query runs it through the executor); None
/// for any other statement, or a table that does not exist.
pub fn copied_out_table(stmt: StmtTree) -> Option<pg_sys::Oid> {
    if !stmt.is(pg_sys::NodeTag::T_CopyStmt) {
        return None;
    }
    // SAFETY: a CopyStmt's tree, allocated for the statement's life.
    unsafe {
        let copy = stmt.node() as *mut pg_sys::CopyStmt;
        if (*copy).is_from || (*copy).relation.is_null() {
            return None;
        }
        let oid = range_var_oid((*copy).relation);
        (oid != pg_sys::InvalidOid).then_some(oid)
    }
}

/// The OID of the relation a RangeVar names; InvalidOid when there is none (or no RangeVar).
///
/// # Safety
/// `rv` must be NULL or a RangeVar.
pub unsafe fn range_var_oid(rv: *mut pg_sys::RangeVar) -> pg_sys::Oid {
    if rv.is_null() {
        return pg_sys::InvalidOid;
    }
    // Name lookup only; missing relations and schemas yield InvalidOid.
    pg_sys::RangeVarGetRelidExtended(
        rv,
        pg_sys::NoLock as _,
        pg_sys::RVROption::RVR_MISSING_OK,
        None,
        std::ptr::null_mut(),
    )
}
