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

/// The databases a statement needs no other session connected to, and that the current user
/// may have emptied: the one `DROP DATABASE` drops, `ALTER DATABASE ... RENAME TO` renames or
/// `... SET TABLESPACE` moves (its owner's), and the template `CREATE DATABASE` copies (by a
/// role with CREATEDB, of a template or a database it owns), as PostgreSQL checks them. A
/// statement that will be refused empties nothing.
pub fn emptied_databases(stmt: StmtTree) -> Vec<pg_sys::Oid> {
    let copies = stmt.is(pg_sys::NodeTag::T_CreatedbStmt);
    database_names(stmt)
        .into_iter()
        .filter(|n| !n.is_null())
        // SAFETY: a NUL-terminated name from the tree.
        .map(|n| unsafe { pg_sys::get_database_oid(n, true) })
        .filter(|oid| *oid != pg_sys::InvalidOid && may_empty(*oid, copies))
        .collect()
}

/// Whether the current user passes the checks that let it drop, rename or move `database`
/// (ownership), or copy it (CREATEDB, and a template or ownership).
fn may_empty(database: pg_sys::Oid, copy: bool) -> bool {
    let user = crate::pg::identity::current_user();
    // SAFETY: a syscache copy of pg_database's row, read and freed here; role lookups by oid.
    unsafe {
        let tuple = pg_sys::SearchSysCacheCopy(
            pg_sys::SysCacheIdentifier::DATABASEOID as _,
            pg_sys::Datum::from(database),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        );
        if tuple.is_null() {
            return false;
        }
        let form = &*pg_sys::GETSTRUCT(tuple).cast::<pg_sys::FormData_pg_database>();
        let (owner, template) = (form.datdba, form.datistemplate);
        pg_sys::heap_freetuple(tuple);
        let owns = pg_sys::has_privs_of_role(user, owner);
        if !copy {
            return owns;
        }
        (template || owns) && (pg_sys::superuser_arg(user) || role_may_create_databases(user))
    }
}

/// rolcreatedb of `role`.
///
/// # Safety
/// Reads the syscache; call inside a transaction.
unsafe fn role_may_create_databases(role: pg_sys::Oid) -> bool {
    let tuple = pg_sys::SearchSysCacheCopy(
        pg_sys::SysCacheIdentifier::AUTHOID as _,
        pg_sys::Datum::from(role),
        pg_sys::Datum::from(0),
        pg_sys::Datum::from(0),
        pg_sys::Datum::from(0),
    );
    if tuple.is_null() {
        return false;
    }
    let may = (*pg_sys::GETSTRUCT(tuple).cast::<pg_sys::FormData_pg_authid>()).rolcreatedb;
    pg_sys::heap_freetuple(tuple);
    may
}

/// The database names a statement that needs them empty names.
fn database_names(stmt: StmtTree) -> Vec<*const std::ffi::c_char> {
    // SAFETY: each tree as its tag says, allocated for the statement's life.
    unsafe {
        if stmt.is(pg_sys::NodeTag::T_DropdbStmt) {
            vec![(*(stmt.node() as *mut pg_sys::DropdbStmt)).dbname]
        } else if stmt.is(pg_sys::NodeTag::T_RenameStmt) {
            let rename = stmt.node() as *mut pg_sys::RenameStmt;
            if (*rename).renameType == pg_sys::ObjectType::OBJECT_DATABASE {
                vec![(*rename).subname]
            } else {
                vec![]
            }
        } else if stmt.is(pg_sys::NodeTag::T_CreatedbStmt) {
            let create = stmt.node() as *mut pg_sys::CreatedbStmt;
            option_values((*create).options, c"template")
        } else if stmt.is(pg_sys::NodeTag::T_AlterDatabaseStmt) {
            let alter = stmt.node() as *mut pg_sys::AlterDatabaseStmt;
            if option_values((*alter).options, c"tablespace").is_empty() {
                vec![]
            } else {
                vec![(*alter).dbname]
            }
        } else {
            vec![]
        }
    }
}

/// The string values of the options named `name` in a list of DefElems.
///
/// # Safety
/// `options` must be NULL or a List of DefElem.
unsafe fn option_values(
    options: *mut pg_sys::List,
    name: &std::ffi::CStr,
) -> Vec<*const std::ffi::c_char> {
    let mut found = Vec::new();
    if options.is_null() {
        return found;
    }
    for i in 0..(*options).length {
        let def = pg_sys::list_nth(options, i) as *mut pg_sys::DefElem;
        if def.is_null() || (*def).defname.is_null() || (*def).arg.is_null() {
            continue;
        }
        if std::ffi::CStr::from_ptr((*def).defname) == name {
            // defGetString raises on a value of another type; a template is a name.
            if (*(*def).arg).type_ == pg_sys::NodeTag::T_String {
                found.push(pg_sys::defGetString(def) as *const _);
            }
        }
    }
    found
}

/// The extension a `CREATE EXTENSION` creates.
pub fn created_extension(stmt: StmtTree) -> Option<String> {
    if !stmt.is(pg_sys::NodeTag::T_CreateExtensionStmt) {
        return None;
    }
    // SAFETY: a CreateExtensionStmt's tree, allocated for the statement's life.
    unsafe {
        let create = stmt.node() as *mut pg_sys::CreateExtensionStmt;
        (!(*create).extname.is_null()).then(|| {
            std::ffi::CStr::from_ptr((*create).extname)
                .to_string_lossy()
                .into_owned()
        })
    }
}

/// Which databases' worker sessions a statement gives settings to, taken when a session
/// connects: `ALTER DATABASE ... SET`, and `ALTER ROLE ... SET` (or their RESET) for every
/// role or for the bootstrap superuser the workers connect as, in one database or in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingsFor {
    Database(pg_sys::Oid),
    EveryDatabase,
}

pub fn worker_settings_given(stmt: StmtTree) -> Option<SettingsFor> {
    let database = |name: *mut std::ffi::c_char| {
        if name.is_null() {
            return Some(SettingsFor::EveryDatabase);
        }
        // SAFETY: a name in the statement's tree; the lookup raises nothing when it is missing.
        let oid = unsafe { pg_sys::get_database_oid(name, true) };
        (oid != pg_sys::InvalidOid).then_some(SettingsFor::Database(oid))
    };
    if stmt.is(pg_sys::NodeTag::T_AlterDatabaseSetStmt) {
        // SAFETY: an AlterDatabaseSetStmt's tree, allocated for the statement's life.
        let name = unsafe { (*(stmt.node() as *mut pg_sys::AlterDatabaseSetStmt)).dbname };
        return if name.is_null() { None } else { database(name) };
    }
    if !stmt.is(pg_sys::NodeTag::T_AlterRoleSetStmt) {
        return None;
    }
    // SAFETY: an AlterRoleSetStmt's tree, allocated for the statement's life; the role
    // lookup raises nothing when it is missing.
    unsafe {
        let alter = stmt.node() as *mut pg_sys::AlterRoleSetStmt;
        // No role: ALTER ROLE ALL.
        if !(*alter).role.is_null()
            && pg_sys::get_rolespec_oid((*alter).role, true)
                != pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID)
        {
            return None;
        }
        database((*alter).database)
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
