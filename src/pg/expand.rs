//! What `migrate.expand` reads from a statement's raw parse tree and the catalogs: each column
//! change it can plan, with every expression analysed against the table and printed back by
//! PostgreSQL (`deparse_expression`, `format_type_extended`), so that the SQL of a plan is
//! text PostgreSQL wrote from resolved objects, never the caller's text pasted into it.

use crate::pg::catalog::{coerce_as_assignment, type_and_mod, with_relation, Locked};
use crate::pg::nodes::{range_var_oid, text, StmtTree};
use crate::pg::subxact::{self, Caught};
use pgrx::pg_sys;
use pgrx::pg_sys::NodeTag as T;
use pgrx::{is_a, PgList};
use std::ffi::CString;

// Exported by the server but not bound by pgrx. Signature as in PostgreSQL 13 to 18.
unsafe extern "C-unwind" {
    fn ChooseConstraintName(
        name1: *const std::ffi::c_char,
        name2: *const std::ffi::c_char,
        label: *const std::ffi::c_char,
        namespaceid: pg_sys::Oid,
        others: *mut pg_sys::List,
    ) -> *mut std::ffi::c_char;
}

/// One change a statement asks for, on one column of the statement's table.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    ChangeType {
        column: String,
        /// The new type as `format_type_extended` prints it, schema-qualified.
        new_type: String,
        /// The new value (the USING expression, or the column itself), for the backfill's
        /// SET and WHERE and the consistency check.
        up_plain: String,
        /// Whether PostgreSQL would rewrite the table (binary-coercible changes do not).
        rewrites: bool,
        /// Whether the new type converts back to the old one by assignment.
        down_assignable: bool,
        /// The new value is computed (a USING that is more than a cast of the column), so
        /// converting back is not a cast either.
        computed: bool,
        /// For a computed value, the USING as a function of the column's old value, `$1`
        /// (what the bridge's conversion function returns); None when it reads other columns.
        up_param: Option<String>,
        /// For a computed value, the copy's default: the USING applied to the column's
        /// default (None when the column has none).
        up_default: Option<String>,
        /// Code the conversion to the new type runs that is not PostgreSQL's own (see
        /// `Converted`), and the assignment cast back's.
        up_untrusted: Option<String>,
        down_untrusted: Option<String>,
        /// The conversion back as a function of the new value, `$1`, when the caller gave
        /// one (`options`); else the old type's assignment cast.
        down_param: Option<String>,
        /// The conversion calls something not immutable (it depends on session settings).
        mutable: bool,
        /// The new type is a domain with constraints (adding a column of it rewrites the
        /// table, and a variable of it cannot start NULL).
        constrained_domain: bool,
    },
    Rename {
        column: String,
        new_name: String,
    },
    Drop {
        column: String,
        cascade: bool,
    },
    AddColumn {
        column: String,
        type_sql: String,
        default_sql: Option<String>,
        volatile_default: bool,
        not_null: bool,
        /// Constraints other than NULL, NOT NULL and DEFAULT written inline.
        other_constraints: bool,
    },
    /// ALTER COLUMN ... SET NOT NULL: proven by a CHECK added NOT VALID and validated, so
    /// that setting it scans nothing.
    SetNotNull {
        column: String,
    },
    /// ADD CONSTRAINT ... CHECK or FOREIGN KEY: added NOT VALID, validated in the worker.
    AddConstraint {
        name: String,
        /// What follows `ADD CONSTRAINT name`, without NOT VALID, printed from analysed parts.
        definition: String,
        /// The table's columns it reads.
        columns: Vec<String>,
        /// A foreign key's referenced (schema, table, columns).
        references: Option<(String, String, Vec<String>)>,
    },
    /// ADD UNIQUE or PRIMARY KEY: its index built CONCURRENTLY, attached at contract.
    AddKey {
        name: String,
        primary: bool,
        columns: Vec<String>,
    },
    /// ALTER TABLE ... RENAME TO: the new version's view has the new name until contract
    /// renames the table.
    RenameTable {
        new_name: String,
    },
    /// A subcommand the planner does not plan, by what it is.
    Other(String),
}

/// A statement's table (as the caller's search path resolves it) and what it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Requested {
    pub table: pg_sys::Oid,
    pub requests: Vec<Request>,
}

/// Why a statement could not be read.
pub enum Unread {
    /// Not an ALTER TABLE or a column rename: its command tag.
    NotPlanned(String),
    /// The table it names does not exist (as written).
    NoTable(String),
    /// PostgreSQL raised an error analysing it (an unknown column or type, no cast).
    Failed(Caught),
    /// The table is locked by another session, so its expressions cannot be analysed now.
    Locked(String),
}

/// The table and changes `stmt` asks for.
pub fn read(stmt: StmtTree) -> Result<Requested, Unread> {
    let node = stmt.node();
    // SAFETY: a StmtTree is a valid raw statement tree.
    unsafe {
        if is_a(node, T::T_AlterTableStmt) {
            alter_table(node.cast())
        } else if is_a(node, T::T_RenameStmt)
            && (*node.cast::<pg_sys::RenameStmt>()).renameType == pg_sys::ObjectType::OBJECT_COLUMN
            && (*node.cast::<pg_sys::RenameStmt>()).relationType == pg_sys::ObjectType::OBJECT_TABLE
        {
            let stmt = node.cast::<pg_sys::RenameStmt>();
            let table = table_of((*stmt).relation)?;
            Ok(Requested {
                table,
                requests: vec![Request::Rename {
                    column: text((*stmt).subname),
                    new_name: text((*stmt).newname),
                }],
            })
        } else if is_a(node, T::T_RenameStmt)
            && (*node.cast::<pg_sys::RenameStmt>()).renameType == pg_sys::ObjectType::OBJECT_TABLE
            && !(*node.cast::<pg_sys::RenameStmt>()).missing_ok
        {
            let stmt = node.cast::<pg_sys::RenameStmt>();
            let table = table_of((*stmt).relation)?;
            Ok(Requested {
                table,
                requests: vec![Request::RenameTable {
                    new_name: text((*stmt).newname),
                }],
            })
        } else {
            Err(Unread::NotPlanned(stmt.command_tag()))
        }
    }
}

/// Whether `stmt` is a CREATE INDEX without CONCURRENTLY on a plain table: one the window
/// builds CONCURRENTLY instead (a partitioned table's index cannot be).
pub fn builds_index_blocking(stmt: StmtTree) -> bool {
    let node = stmt.node();
    // SAFETY: a StmtTree is a valid raw statement tree.
    unsafe {
        if !is_a(node, T::T_IndexStmt) || (*node.cast::<pg_sys::IndexStmt>()).concurrent {
            return false;
        }
        let oid = range_var_oid((*node.cast::<pg_sys::IndexStmt>()).relation);
        crate::pg::catalog::relation(oid)
            .is_some_and(|r| r.kind == crate::pg::catalog::RelKind::Table)
    }
}

unsafe fn table_of(rv: *mut pg_sys::RangeVar) -> Result<pg_sys::Oid, Unread> {
    let oid = range_var_oid(rv);
    if oid == pg_sys::InvalidOid {
        let name = text(pg_sys::quote_qualified_identifier(
            (*rv).schemaname,
            (*rv).relname,
        ));
        return Err(Unread::NoTable(name));
    }
    Ok(oid)
}

unsafe fn alter_table(stmt: *mut pg_sys::AlterTableStmt) -> Result<Requested, Unread> {
    if (*stmt).objtype != pg_sys::ObjectType::OBJECT_TABLE {
        return Err(Unread::NotPlanned(
            "ALTER of a relation other than a table".into(),
        ));
    }
    let table = table_of((*stmt).relation)?;
    let mut requests = Vec::new();
    for cmd in PgList::<pg_sys::AlterTableCmd>::from_pg((*stmt).cmds).iter_ptr() {
        use pg_sys::AlterTableType as AT;
        let column = text((*cmd).name);
        let request = match (*cmd).subtype {
            AT::AT_AlterColumnType => type_change(table, &column, (*cmd).def.cast())?,
            AT::AT_DropColumn if !(*cmd).missing_ok => Request::Drop {
                column,
                cascade: (*cmd).behavior == pg_sys::DropBehavior::DROP_CASCADE,
            },
            AT::AT_AddColumn if !(*cmd).missing_ok => add_column((*cmd).def.cast())?,
            AT::AT_SetNotNull => Request::SetNotNull { column },
            AT::AT_AddConstraint => constraint(table, (*cmd).def.cast())?,
            AT::AT_AddColumn | AT::AT_DropColumn => {
                Request::Other("ADD COLUMN IF NOT EXISTS or DROP COLUMN IF EXISTS".into())
            }
            other => Request::Other(format!("{other:?}").trim_start_matches("AT_").into()),
        };
        requests.push(request);
    }
    Ok(Requested { table, requests })
}

/// ALTER COLUMN ... TYPE, analysed as ALTER TABLE analyses it: the USING expression (or the
/// column) transformed against the table, then coerced to the new type by assignment.
unsafe fn type_change(
    relid: pg_sys::Oid,
    column: &str,
    def: *mut pg_sys::ColumnDef,
) -> Result<Request, Unread> {
    let Ok(name) = CString::new(column) else {
        return Err(Unread::NotPlanned("a column name with a NUL".into()));
    };
    if !(*def).collClause.is_null() {
        return Ok(Request::Other("ALTER COLUMN ... TYPE ... COLLATE".into()));
    }
    let opened = Locked::open(relid).ok_or_else(|| Unread::Locked(column.into()))?;
    let analysed = subxact::run(|| unsafe {
        let attnum = pg_sys::get_attnum(relid, name.as_ptr());
        if attnum == pg_sys::InvalidAttrNumber as i16 {
            pgrx::ereport!(
                ERROR,
                pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("column \"{column}\" does not exist")
            );
        }
        let (mut typ, mut typmod, mut coll) = (pg_sys::InvalidOid, 0, pg_sys::InvalidOid);
        pg_sys::get_atttypetypmodcoll(relid, attnum, &mut typ, &mut typmod, &mut coll);
        let (target, target_mod) = type_and_mod((*def).typeName);
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        with_relation(pstate, &opened);
        let using = (*def).raw_default;
        let source: *mut pg_sys::Node = if using.is_null() {
            pg_sys::makeVar(1, attnum, typ, typmod, coll, 0).cast()
        } else {
            transform_using(pstate, using)
        };
        pg_sys::assign_expr_collations(pstate, source);
        let coerced = coerce_as_assignment(pstate, source, target, target_mod);
        if coerced.is_null() {
            pgrx::ereport!(
                ERROR,
                pgrx::PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!(
                    "column \"{column}\" cannot be cast automatically to type {}",
                    format_type(target, target_mod)
                ),
                "Give USING with the expression that computes the new value."
            );
        }
        let mut source_type = pg_sys::exprType(source);
        let down_assignable = pg_sys::can_coerce_type(
            1,
            &mut source_type as *mut _ as *const _,
            &mut typ as *mut _ as *const _,
            pg_sys::CoercionContext::COERCION_ASSIGNMENT,
        ) && {
            let mut target = target;
            pg_sys::can_coerce_type(
                1,
                &mut target as *mut _ as *const _,
                &mut typ as *mut _ as *const _,
                pg_sys::CoercionContext::COERCION_ASSIGNMENT,
            )
        };
        let table_name = pg_sys::get_rel_name(relid);
        let computed = !is_cast_of(source, attnum);
        // The same USING over the old value alone, for the bridge: where it reads another
        // column, there is none (the bridge converts one value).
        let mut one = OneColumn {
            name: column.to_string(),
            typ,
            typmod,
            collation: coll,
            value: std::ptr::null_mut(),
        };
        let up_converted = (computed && !using.is_null())
            .then(|| subxact::run(|| conversion(using, &one, target, target_mod)).ok())
            .flatten();
        // Whatever the conversions call runs in every writer's session (the bridge) and as
        // the opener (the backfill, the checks): a cast of the type's owner as much as a
        // USING.
        let up_untrusted = untrusted_in(coerced, [typ, target]);
        let down_untrusted = {
            let value = first_param(target, target_mod, pg_sys::get_typcollation(target), -1);
            let back = coerce_as_assignment(pstate, value, typ, typmod);
            if back.is_null() {
                None
            } else {
                untrusted_in(back, [typ, target])
            }
        };
        let up_param = up_converted.map(|c| c.sql);
        // And over its default, for the copy's: what an insert that leaves it out gets.
        one.value = opened.column_default(attnum);
        let up_default = (up_param.is_some() && !one.value.is_null())
            .then(|| subxact::run(|| conversion(using, &one, target, target_mod).sql).ok())
            .flatten();
        (
            pg_sys::DomainHasConstraints(target),
            pg_sys::contain_mutable_functions(coerced),
            (
                computed,
                up_param,
                up_default,
                (up_untrusted, down_untrusted),
            ),
            format_type(target, target_mod),
            deparse(source, pg_sys::deparse_context_for(table_name, relid)),
            down_assignable,
        )
    })
    .map_err(Unread::Failed)?;
    drop(opened);
    let (
        constrained_domain,
        mutable,
        (computed, up_param, up_default, (up_untrusted, down_untrusted)),
        new_type,
        up_plain,
        down_assignable,
    ) = analysed;
    let rewrites = crate::pg::catalog::type_change_rewrites(
        relid,
        column,
        (*def).typeName,
        (*def).raw_default,
    )
    .unwrap_or(true);
    Ok(Request::ChangeType {
        column: column.into(),
        new_type,
        up_plain,
        rewrites,
        down_assignable,
        computed,
        up_param,
        up_default,
        up_untrusted,
        down_untrusted,
        down_param: None,
        mutable,
        constrained_domain,
    })
}

/// A raw expression analysed as ALTER COLUMN ... USING is (no subquery, aggregate, window or
/// set-returning function), on a copy: transformExpr rewrites some raw nodes in place.
unsafe fn transform_using(
    pstate: *mut pg_sys::ParseState,
    raw: *mut pg_sys::Node,
) -> *mut pg_sys::Node {
    pg_sys::transformExpr(
        pstate,
        pg_sys::copyObjectImpl(raw.cast()).cast(),
        pg_sys::ParseExprKind::EXPR_KIND_ALTER_COL_TRANSFORM,
    )
}

/// The one column a conversion may name, and what it stands for: the parameter `$1`, or
/// an analysed expression (`value`, when not NULL).
struct OneColumn {
    name: String,
    typ: pg_sys::Oid,
    typmod: i32,
    collation: pg_sys::Oid,
    value: *mut pg_sys::Node,
}

/// The parser's hook for column references while a conversion is analysed: the column's
/// name is `$1`; any other name is left to the parser, which knows no relation and says
/// the column does not exist.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn one_column_ref(
    pstate: *mut pg_sys::ParseState,
    cref: *mut pg_sys::ColumnRef,
) -> *mut pg_sys::Node {
    let one = (*pstate).p_ref_hook_state as *const OneColumn;
    let fields = PgList::<pg_sys::Node>::from_pg((*cref).fields);
    let named = fields.len() == 1
        && fields
            .get_ptr(0)
            .is_some_and(|f| is_a(f, T::T_String) && crate::pg::nodes::str_val(f) == (*one).name);
    if !named {
        return std::ptr::null_mut();
    }
    if !(*one).value.is_null() {
        return pg_sys::copyObjectImpl((*one).value.cast()).cast();
    }
    first_param(
        (*one).typ,
        (*one).typmod,
        (*one).collation,
        (*cref).location,
    )
}

/// `$1` of a type: the value a conversion converts.
unsafe fn first_param(
    typ: pg_sys::Oid,
    typmod: i32,
    collation: pg_sys::Oid,
    location: i32,
) -> *mut pg_sys::Node {
    let mut param = pgrx::PgBox::<pg_sys::Param>::alloc_node(T::T_Param);
    param.paramkind = pg_sys::ParamKind::PARAM_EXTERN;
    param.paramid = 1;
    param.paramtype = typ;
    param.paramtypmod = typmod;
    param.paramcollid = collation;
    param.location = location;
    param.into_pg().cast()
}

/// `raw` (an expression's raw parse tree) analysed as a conversion of one value: `one`'s
/// column name stands for the value (`$1`), no other column may be named, and the result is
/// coerced by assignment to `target`. Analysed as ALTER COLUMN ... USING is (no subquery,
/// aggregate or set-returning function); printed back with every name qualified. Returns
/// the SQL and whether it calls anything not immutable. Raises on any error.
unsafe fn conversion(
    raw: *mut pg_sys::Node,
    one: &OneColumn,
    target: pg_sys::Oid,
    target_mod: i32,
) -> Converted {
    let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
    (*pstate).p_pre_columnref_hook = Some(one_column_ref);
    (*pstate).p_ref_hook_state = (one as *const OneColumn).cast_mut().cast();
    let analysed = transform_using(pstate, raw);
    pg_sys::assign_expr_collations(pstate, analysed);
    let coerced = coerce_as_assignment(pstate, analysed, target, target_mod);
    if coerced.is_null() {
        pgrx::ereport!(
            ERROR,
            pgrx::PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!(
                "the conversion of column \"{}\" gives {}, which does not convert to {} by \
                 assignment",
                one.name,
                format_type(pg_sys::exprType(analysed), pg_sys::exprTypmod(analysed)),
                format_type(target, target_mod)
            ),
            "Cast the expression to the column's type."
        );
    }
    Converted {
        sql: deparse(coerced, std::ptr::null_mut()),
        mutable: pg_sys::contain_mutable_functions(coerced),
        untrusted: untrusted_in(coerced, [one.typ, target]),
    }
}

/// The first code an analysed conversion runs that is not PostgreSQL's own, described;
/// `own_types` are the column's old and new types, whose checks every writer of the column
/// runs anyway.
unsafe fn untrusted_in(expr: *mut pg_sys::Node, own_types: [pg_sys::Oid; 2]) -> Option<String> {
    let mut trust = Trust {
        own_types,
        found: None,
    };
    untrusted_node(expr, (&mut trust as *mut Trust).cast());
    trust.found
}

/// A conversion as SQL over `$1`, and what would make running it in a writer's session
/// unsafe.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    pub sql: String,
    /// It calls something not immutable.
    pub mutable: bool,
    /// The first code it would run that is not PostgreSQL's own, described: a writer's
    /// session would run it with the writer's rights, and its owner could change it.
    pub untrusted: Option<String>,
}

/// What a conversion runs, looked through for code that is not PostgreSQL's own.
struct Trust {
    own_types: [pg_sys::Oid; 2],
    found: Option<String>,
}

/// Whether an object is one of PostgreSQL's own (made by initdb, which no role can change
/// or drop): only those are trusted in every writer's session. A superuser's function could
/// call, through its body or its default arguments, code another role can change.
fn built_in(oid: pg_sys::Oid) -> bool {
    u32::from(oid) < pg_sys::FirstNormalObjectId
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn untrusted_function(
    function: pg_sys::Oid,
    context: *mut std::ffi::c_void,
) -> bool {
    if built_in(function) {
        return false;
    }
    let trust = &mut *context.cast::<Trust>();
    trust.found = Some(format!(
        "function {}, which is not one of PostgreSQL's own",
        text(pg_sys::format_procedure_qualified(function))
    ));
    true
}

/// Walks an analysed expression for the functions it calls (operators', casts' and type
/// input and output functions included) and the domains it coerces to (their checks).
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn untrusted_node(
    node: *mut pg_sys::Node,
    context: *mut std::ffi::c_void,
) -> bool {
    if node.is_null() {
        return false;
    }
    if pg_sys::check_functions_in_node(node, Some(untrusted_function), context) {
        return true;
    }
    if is_a(node, T::T_CoerceToDomain) {
        let trust = &mut *context.cast::<Trust>();
        let domain = (*node.cast::<pg_sys::CoerceToDomain>()).resulttype;
        if !trust.own_types.contains(&domain) {
            trust.found = Some(format!(
                "domain {}, whose checks are not PostgreSQL's own",
                format_type(domain, -1)
            ));
            return true;
        }
    }
    pg_sys::expression_tree_walker(node, Some(untrusted_node), context)
}

/// The conversion back to the old type that the caller gave for `column` of `relid` (an
/// expression naming the column for its new value), analysed.
pub fn conversion_back(
    relid: pg_sys::Oid,
    column: &str,
    new_type: &str,
    expression: &str,
) -> Result<Converted, Caught> {
    let sql = CString::new(format!("SELECT {expression}")).unwrap_or_default();
    let column_c = CString::new(column).unwrap_or_default();
    let new_type_c = CString::new(new_type).unwrap_or_default();
    subxact::run(|| unsafe {
        let attnum = pg_sys::get_attnum(relid, column_c.as_ptr());
        let (mut typ, mut typmod, mut coll) = (pg_sys::InvalidOid, 0, pg_sys::InvalidOid);
        pg_sys::get_atttypetypmodcoll(relid, attnum, &mut typ, &mut typmod, &mut coll);
        let (mut new_typ, mut new_typmod) = (pg_sys::InvalidOid, 0);
        // PostgreSQL 16 replaced missing_ok by a soft-error context; NULL raises, as false did.
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
        let raise = false;
        #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
        let raise = std::ptr::null_mut();
        pg_sys::parseTypeString(new_type_c.as_ptr(), &mut new_typ, &mut new_typmod, raise);
        // One SELECT of one expression, and nothing else: what follows the expression's
        // end (a FROM, a second statement) is refused, not run.
        let raw = single_expression(pg_sys::raw_parser(
            sql.as_ptr(),
            pg_sys::RawParseMode::RAW_PARSE_DEFAULT,
        ));
        let Some(raw) = raw else {
            pgrx::ereport!(
                ERROR,
                pgrx::PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
                format!("the conversion back of column \"{column}\" is not one expression"),
                "Give an expression of the column's new value, such as (amount / 100)::integer."
            );
        };
        let one = OneColumn {
            name: column.to_string(),
            typ: new_typ,
            typmod: new_typmod,
            collation: pg_sys::get_typcollation(new_typ),
            value: std::ptr::null_mut(),
        };
        conversion(raw, &one, typ, typmod)
    })
}

/// The expression of `SELECT <expression>` when the list holds that and nothing else.
unsafe fn single_expression(list: *mut pg_sys::List) -> Option<*mut pg_sys::Node> {
    let stmts = PgList::<pg_sys::RawStmt>::from_pg(list);
    if stmts.len() != 1 {
        return None;
    }
    let select = (*stmts.get_ptr(0)?).stmt;
    if !is_a(select, T::T_SelectStmt) {
        return None;
    }
    let s = select.cast::<pg_sys::SelectStmt>();
    let plain = (*s).op == pg_sys::SetOperation::SETOP_NONE
        && (*s).distinctClause.is_null()
        && (*s).intoClause.is_null()
        && (*s).fromClause.is_null()
        && (*s).whereClause.is_null()
        && (*s).groupClause.is_null()
        && (*s).havingClause.is_null()
        && (*s).windowClause.is_null()
        && (*s).valuesLists.is_null()
        && (*s).sortClause.is_null()
        && (*s).limitOffset.is_null()
        && (*s).limitCount.is_null()
        && (*s).lockingClause.is_null()
        && (*s).withClause.is_null();
    let targets = PgList::<pg_sys::ResTarget>::from_pg((*s).targetList);
    if !plain || targets.len() != 1 {
        return None;
    }
    let target = targets.get_ptr(0)?;
    (!(*target).val.is_null() && (*target).name.is_null()).then_some((*target).val)
}

/// Whether an analysed expression is column `attnum` itself, seen through casts.
unsafe fn is_cast_of(mut expr: *mut pg_sys::Node, attnum: i16) -> bool {
    loop {
        if expr.is_null() {
            return false;
        } else if is_a(expr, T::T_Var) {
            return (*expr.cast::<pg_sys::Var>()).varattno == attnum;
        } else if is_a(expr, T::T_RelabelType) {
            expr = (*expr.cast::<pg_sys::RelabelType>()).arg.cast();
        } else if is_a(expr, T::T_CoerceViaIO) {
            expr = (*expr.cast::<pg_sys::CoerceViaIO>()).arg.cast();
        } else if is_a(expr, T::T_CoerceToDomain) {
            expr = (*expr.cast::<pg_sys::CoerceToDomain>()).arg.cast();
        } else if is_a(expr, T::T_FuncExpr) {
            let func = expr.cast::<pg_sys::FuncExpr>();
            let cast = matches!(
                (*func).funcformat,
                pg_sys::CoercionForm::COERCE_EXPLICIT_CAST
                    | pg_sys::CoercionForm::COERCE_IMPLICIT_CAST
            );
            if !cast {
                return false;
            }
            expr = PgList::<pg_sys::Node>::from_pg((*func).args)
                .get_ptr(0)
                .unwrap_or(std::ptr::null_mut());
        } else {
            return false;
        }
    }
}

/// ADD CONSTRAINT: a CHECK or FOREIGN KEY to validate apart, a UNIQUE or PRIMARY KEY to
/// build apart; anything else (already NOT VALID, USING INDEX, EXCLUDE) as it is.
unsafe fn constraint(relid: pg_sys::Oid, c: *mut pg_sys::Constraint) -> Result<Request, Unread> {
    use pg_sys::ConstrType as C;
    // The grammar sets is_enforced for CHECK and FOREIGN KEY only.
    #[cfg(feature = "pg18")]
    let unenforced =
        !(*c).is_enforced && matches!((*c).contype, C::CONSTR_CHECK | C::CONSTR_FOREIGN);
    #[cfg(not(feature = "pg18"))]
    let unenforced = false;
    if unenforced {
        return Ok(Request::Other("ADD CONSTRAINT ... NOT ENFORCED".into()));
    }
    if (*c).skip_validation {
        return Ok(Request::Other("ADD CONSTRAINT ... NOT VALID".into()));
    }
    match (*c).contype {
        C::CONSTR_CHECK => check(relid, c),
        C::CONSTR_FOREIGN => foreign_key(relid, c),
        C::CONSTR_UNIQUE | C::CONSTR_PRIMARY if (*c).indexname.is_null() => key(relid, c),
        C::CONSTR_UNIQUE | C::CONSTR_PRIMARY => {
            Ok(Request::Other("ADD CONSTRAINT ... USING INDEX".into()))
        }
        C::CONSTR_EXCLUSION => Ok(Request::Other("ADD EXCLUDE".into())),
        other => Ok(Request::Other(format!("ADD CONSTRAINT ({other:?})"))),
    }
}

/// A name as PostgreSQL would choose it for an unnamed constraint of the table (unique
/// among the schema's constraints), or the one given.
unsafe fn constraint_name(
    c: *mut pg_sys::Constraint,
    relid: pg_sys::Oid,
    columns: &[String],
    label: &str,
) -> String {
    if !(*c).conname.is_null() {
        return text((*c).conname);
    }
    let table = pg_sys::get_rel_name(relid);
    let namespace = pg_sys::get_rel_namespace(relid);
    let addition = CString::new(columns.join("_")).unwrap_or_default();
    let label = CString::new(label).unwrap_or_default();
    let addition = if columns.is_empty() {
        std::ptr::null()
    } else {
        addition.as_ptr()
    };
    text(
        if label.as_bytes() == b"check" || label.as_bytes() == b"fkey" {
            ChooseConstraintName(
                table,
                addition,
                label.as_ptr(),
                namespace,
                std::ptr::null_mut(),
            )
        } else {
            // An index's name is a relation's: unique among the schema's relations.
            pg_sys::ChooseRelationName(table, addition, label.as_ptr(), namespace, true)
        },
    )
}

/// Column names from a List of String nodes, each checked to be a column of the table.
unsafe fn column_list(relid: pg_sys::Oid, list: *mut pg_sys::List) -> Vec<String> {
    let names: Vec<String> = PgList::<pg_sys::Node>::from_pg(list)
        .iter_ptr()
        .map(|n| crate::pg::nodes::str_val(n))
        .collect();
    for name in &names {
        let c_name = CString::new(name.as_str()).unwrap_or_default();
        if pg_sys::get_attnum(relid, c_name.as_ptr()) == pg_sys::InvalidAttrNumber as i16 {
            pgrx::ereport!(
                ERROR,
                pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("column \"{name}\" does not exist")
            );
        }
    }
    names
}

fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| crate::pg::catalog::quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// CHECK: its expression analysed against the table as ALTER TABLE does, printed back.
unsafe fn check(relid: pg_sys::Oid, c: *mut pg_sys::Constraint) -> Result<Request, Unread> {
    let opened = Locked::open(relid).ok_or_else(|| Unread::Locked("CHECK".into()))?;
    let raw = (*c).raw_expr;
    let no_inherit = (*c).is_no_inherit;
    let analysed = subxact::run(|| unsafe {
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        with_relation(pstate, &opened);
        let expr = pg_sys::transformExpr(
            pstate,
            pg_sys::copyObjectImpl(raw.cast()).cast(),
            pg_sys::ParseExprKind::EXPR_KIND_CHECK_CONSTRAINT,
        );
        let expr = pg_sys::coerce_to_boolean(pstate, expr, c"CHECK".as_ptr());
        pg_sys::assign_expr_collations(pstate, expr);
        let mut columns: Vec<String> = Vec::new();
        for var in PgList::<pg_sys::Var>::from_pg(pg_sys::pull_var_clause(expr, 0)).iter_ptr() {
            let name = text(pg_sys::get_attname(relid, (*var).varattno, false));
            if !columns.contains(&name) {
                columns.push(name);
            }
        }
        let table_name = pg_sys::get_rel_name(relid);
        let sql = deparse(expr, pg_sys::deparse_context_for(table_name, relid));
        let single: Vec<String> = columns.iter().take(1).cloned().collect();
        let name = constraint_name(
            c,
            relid,
            if columns.len() == 1 { &single } else { &[] },
            "check",
        );
        (name, sql, columns)
    })
    .map_err(Unread::Failed)?;
    drop(opened);
    let (name, sql, columns) = analysed;
    Ok(Request::AddConstraint {
        name,
        definition: format!(
            "CHECK ({sql}){}",
            if no_inherit { " NO INHERIT" } else { "" }
        ),
        columns,
        references: None,
    })
}

/// FOREIGN KEY: printed from its parts, the referenced table resolved and qualified.
unsafe fn foreign_key(relid: pg_sys::Oid, c: *mut pg_sys::Constraint) -> Result<Request, Unread> {
    #[cfg(feature = "pg18")]
    if (*c).fk_with_period {
        return Ok(Request::Other("FOREIGN KEY ... PERIOD".into()));
    }
    let referenced = table_of((*c).pktable)?;
    let analysed = subxact::run(|| unsafe {
        let columns = column_list(relid, (*c).fk_attrs);
        let keys = column_list(referenced, (*c).pk_attrs);
        let (ref_schema, ref_table) = (
            text(pg_sys::get_namespace_name(pg_sys::get_rel_namespace(
                referenced,
            ))),
            text(pg_sys::get_rel_name(referenced)),
        );
        let target = crate::pg::catalog::qualified(&ref_schema, &ref_table);
        let mut sql = format!(
            "FOREIGN KEY ({}) REFERENCES {target}",
            quoted_list(&columns)
        );
        if !keys.is_empty() {
            sql.push_str(&format!(" ({})", quoted_list(&keys)));
        }
        if (*c).fk_matchtype as u8 == b'f' {
            sql.push_str(" MATCH FULL");
        }
        let action = |a: std::ffi::c_char| match a as u8 {
            b'r' => Some("RESTRICT"),
            b'c' => Some("CASCADE"),
            b'n' => Some("SET NULL"),
            b'd' => Some("SET DEFAULT"),
            _ => None,
        };
        if let Some(a) = action((*c).fk_upd_action) {
            sql.push_str(&format!(" ON UPDATE {a}"));
        }
        if let Some(a) = action((*c).fk_del_action) {
            sql.push_str(&format!(" ON DELETE {a}"));
            #[cfg(not(any(feature = "pg13", feature = "pg14")))]
            if !(*c).fk_del_set_cols.is_null() {
                let set = column_list(relid, (*c).fk_del_set_cols);
                sql.push_str(&format!(" ({})", quoted_list(&set)));
            }
        }
        if (*c).deferrable {
            sql.push_str(" DEFERRABLE");
        }
        if (*c).initdeferred {
            sql.push_str(" INITIALLY DEFERRED");
        }
        let name = constraint_name(c, relid, &columns, "fkey");
        (name, sql, columns, (ref_schema, ref_table, keys))
    })
    .map_err(Unread::Failed)?;
    let (name, definition, columns, (ref_schema, ref_table, mut keys)) = analysed;
    if keys.is_empty() {
        // REFERENCES t: its primary key's columns.
        keys = crate::pg::spi::pinned_column::<String>(
            "SELECT a.attname::text FROM pg_constraint k \
             CROSS JOIN LATERAL unnest(k.conkey) WITH ORDINALITY u(n, o) \
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n \
             WHERE k.conrelid = $1 AND k.contype = 'p' ORDER BY u.o",
            &[referenced.into()],
        )
        .unwrap_or_default();
    }
    Ok(Request::AddConstraint {
        name,
        definition,
        columns,
        references: Some((ref_schema, ref_table, keys)),
    })
}

/// UNIQUE or PRIMARY KEY on plain columns; with anything an index built apart would have to
/// repeat (INCLUDE, WITH, a tablespace, NULLS NOT DISTINCT, DEFERRABLE), as written.
unsafe fn key(relid: pg_sys::Oid, c: *mut pg_sys::Constraint) -> Result<Request, Unread> {
    let primary = (*c).contype == pg_sys::ConstrType::CONSTR_PRIMARY;
    #[cfg(not(any(feature = "pg13", feature = "pg14")))]
    let nulls_not_distinct = (*c).nulls_not_distinct;
    #[cfg(any(feature = "pg13", feature = "pg14"))]
    let nulls_not_distinct = false;
    #[cfg(feature = "pg18")]
    let without_overlaps = (*c).without_overlaps;
    #[cfg(not(feature = "pg18"))]
    let without_overlaps = false;
    if !(*c).including.is_null()
        || !(*c).options.is_null()
        || !(*c).indexspace.is_null()
        || (*c).deferrable
        || nulls_not_distinct
        || without_overlaps
    {
        return Ok(Request::Other(format!(
            "{} with INCLUDE, WITH, USING INDEX TABLESPACE, NULLS NOT DISTINCT, WITHOUT              OVERLAPS or DEFERRABLE",
            if primary { "ADD PRIMARY KEY" } else { "ADD UNIQUE" }
        )));
    }
    let (name, columns) = subxact::run(|| unsafe {
        let columns = column_list(relid, (*c).keys);
        let name = if primary {
            constraint_name(c, relid, &[], "pkey")
        } else {
            constraint_name(c, relid, &columns, "key")
        };
        (name, columns)
    })
    .map_err(Unread::Failed)?;
    Ok(Request::AddKey {
        name,
        primary,
        columns,
    })
}

/// ADD COLUMN: its type and default printed by PostgreSQL, and what else it declares.
unsafe fn add_column(def: *mut pg_sys::ColumnDef) -> Result<Request, Unread> {
    let column = text((*def).colname);
    let mut not_null = (*def).is_not_null;
    let mut raw_default: *mut pg_sys::Node = std::ptr::null_mut();
    let mut other_constraints = !(*def).collClause.is_null()
        || (*def).identity != 0
        || (*def).generated != 0
        || !(*def).raw_default.is_null();
    for c in PgList::<pg_sys::Constraint>::from_pg((*def).constraints).iter_ptr() {
        use pg_sys::ConstrType as C;
        match (*c).contype {
            C::CONSTR_NOTNULL => not_null = true,
            C::CONSTR_NULL => {}
            C::CONSTR_DEFAULT => raw_default = (*c).raw_expr,
            _ => other_constraints = true,
        }
    }
    let typename = (*def).typeName;
    let (type_sql, default_sql, volatile_default) = subxact::run(|| unsafe {
        let (typ, typmod) = type_and_mod(typename);
        if raw_default.is_null() {
            return (format_type(typ, typmod), None, false);
        }
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        let expr = pg_sys::transformExpr(
            pstate,
            pg_sys::copyObjectImpl(raw_default.cast()).cast(),
            pg_sys::ParseExprKind::EXPR_KIND_COLUMN_DEFAULT,
        );
        let coerced = coerce_as_assignment(pstate, expr, typ, typmod);
        if coerced.is_null() {
            pgrx::ereport!(
                ERROR,
                pgrx::PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!(
                    "the default of column \"{}\" is not of type {}",
                    text((*def).colname),
                    format_type(typ, typmod)
                ),
                "Write a default of the column's type."
            );
        }
        pg_sys::assign_expr_collations(pstate, coerced);
        (
            format_type(typ, typmod),
            Some(deparse(expr, std::ptr::null_mut())),
            pg_sys::contain_volatile_functions(coerced),
        )
    })
    .map_err(Unread::Failed)?;
    Ok(Request::AddColumn {
        column,
        type_sql,
        default_sql,
        volatile_default,
        not_null,
        other_constraints,
    })
}

/// A type as SQL that names it whatever the search path (built-in names are keywords).
unsafe fn format_type(typ: pg_sys::Oid, typmod: i32) -> String {
    let flags = pg_sys::FORMAT_TYPE_TYPEMOD_GIVEN | pg_sys::FORMAT_TYPE_FORCE_QUALIFY;
    text(pg_sys::format_type_extended(typ, typmod, flags as _))
}

/// An analysed expression as SQL, printed while only `pg_catalog` is on the search path: every
/// function, operator and type from another schema comes out schema-qualified, so the text
/// means the same objects wherever it runs (the worker runs it under the opener's own); and
/// with dates, intervals and floats printed as pg_dump prints them, so that constants read
/// back the same whatever the worker's or a writer's DateStyle.
unsafe fn deparse(expr: *mut pg_sys::Node, context: *mut pg_sys::List) -> String {
    crate::pg::guc::printing(|| unsafe {
        text(pg_sys::deparse_expression(expr, context, false, false))
    })
}

/// Whether the writer of this row declared version `version` of the schema published as
/// `schema`: by `migrate.client_version` when it is set, or else by the first schema of its
/// search path. Never before `schema` exists: until it is published, every writer writes the
/// old shape.
pub fn writes_version(version: &str, schema: &str, declared: Option<&str>) -> bool {
    let Ok(schema) = CString::new(schema) else {
        return false;
    };
    // SAFETY: a namespace lookup by name; the search path list is this backend's.
    unsafe {
        let published = pg_sys::get_namespace_oid(schema.as_ptr(), true);
        if published == pg_sys::InvalidOid {
            return false;
        }
        if let Some(declared) = declared.filter(|d| !d.is_empty()) {
            return declared == version;
        }
        // The first schema only, into a local: a copy of the path would be allocated for
        // every row a bridge sees.
        let mut first = pg_sys::InvalidOid;
        pg_sys::fetch_search_path_array(&mut first, 1) >= 1 && first == published
    }
}
