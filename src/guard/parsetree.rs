//! Raw parse trees turned into [`Command`]s, with catalog facts filled in by `catalog`.
//!
//! The same translation serves the `ddl_command_start` trigger, the ProcessUtility hook and
//! `migrate.lint`, so a statement is judged alike wherever it comes from.
//!
//! Holds `unsafe`: it reads raw parse trees node by node, behind safe functions that take a
//! `pg::nodes::StmtTree`.

use crate::guard::command::{
    Action, Command, ConstraintKind, DomainChange, Generated, LockMode, NewColumn, Rel,
};
use crate::migration::parse;
use crate::pg::catalog;
use crate::pg::nodes::{str_val, text, StmtTree};
use crate::pg::type_change;
use pgrx::{is_a, pg_sys, PgList};
use std::ffi::CStr;

use pg_sys::NodeTag as T;

/// What the statement will do.
pub fn command(stmt: StmtTree) -> Command {
    // SAFETY: a StmtTree is a valid raw statement tree.
    unsafe { command_node(stmt.node()) }
}

/// # Safety
/// `node` must be a raw parse tree of one statement.
unsafe fn command_node(node: *mut pg_sys::Node) -> Command {
    if node.is_null() {
        Command::Other
    } else if is_a(node, T::T_IndexStmt) {
        create_index(node.cast())
    } else if is_a(node, T::T_AlterTableStmt) {
        alter_table(node.cast())
    } else if is_a(node, T::T_DropStmt) {
        drop(node.cast())
    } else if is_a(node, T::T_RenameStmt) {
        rename(node.cast())
    } else if is_a(node, T::T_AlterObjectSchemaStmt) {
        set_schema(node.cast())
    } else if is_a(node, T::T_RefreshMatViewStmt) {
        let stmt = node.cast::<pg_sys::RefreshMatViewStmt>();
        match catalog::relation_named((*stmt).relation) {
            Some(view) => Command::RefreshMatView {
                view,
                concurrent: (*stmt).concurrent,
            },
            None => Command::Other,
        }
    } else if is_a(node, T::T_TruncateStmt) {
        truncate(node.cast())
    } else if is_a(node, T::T_VacuumStmt) {
        vacuum(node.cast())
    } else if is_a(node, T::T_ClusterStmt) {
        let stmt = node.cast::<pg_sys::ClusterStmt>();
        if (*stmt).relation.is_null() && !catalog::any_clustered_table() {
            return Command::Other; // a bare CLUSTER with nothing clustered does nothing
        }
        Command::Cluster {
            table: catalog::relation_named((*stmt).relation),
        }
    } else if is_a(node, T::T_ReindexStmt) {
        reindex(node.cast())
    } else if is_a(node, T::T_AlterDomainStmt) {
        alter_domain(node.cast())
    } else if is_a(node, T::T_CreateStmt)
        && !(*node.cast::<pg_sys::CreateStmt>()).partbound.is_null()
    {
        create_partition(node.cast())
    } else if is_a(node, T::T_AlterTableMoveAllStmt) {
        let stmt = node.cast::<pg_sys::AlterTableMoveAllStmt>();
        if CStr::from_ptr((*stmt).orig_tablespacename) == CStr::from_ptr((*stmt).new_tablespacename)
        {
            return Command::Other; // moving to where everything already is: nothing moves
        }
        Command::MoveAllTablespace {
            from: quote((*stmt).orig_tablespacename),
            to: quote((*stmt).new_tablespacename),
        }
    } else {
        Command::Other
    }
}

/// The strongest lock `node` takes on an existing table, where that is known.
///
/// # Safety
/// As for [`command_node`].
pub fn lock_needed(stmt: StmtTree) -> Option<LockMode> {
    // SAFETY: a StmtTree is a valid raw statement tree.
    unsafe { lock_needed_node(stmt.node()) }
}

/// # Safety
/// As for [`command_node`].
unsafe fn lock_needed_node(node: *mut pg_sys::Node) -> Option<LockMode> {
    use LockMode::*;
    if node.is_null() {
        return None;
    }
    if is_a(node, T::T_AlterTableStmt) {
        return LockMode::from_pg(pg_sys::AlterTableGetLockLevel(
            (*node.cast::<pg_sys::AlterTableStmt>()).cmds,
        ));
    }
    if is_a(node, T::T_IndexStmt) {
        return Some(if (*node.cast::<pg_sys::IndexStmt>()).concurrent {
            ShareUpdateExclusive
        } else {
            Share
        });
    }
    if is_a(node, T::T_DropStmt) {
        let stmt = node.cast::<pg_sys::DropStmt>();
        use pg_sys::ObjectType::*;
        return match (*stmt).removeType {
            OBJECT_INDEX if (*stmt).concurrent => Some(ShareUpdateExclusive),
            OBJECT_TABLE | OBJECT_INDEX | OBJECT_VIEW | OBJECT_MATVIEW | OBJECT_SEQUENCE
            | OBJECT_FOREIGN_TABLE | OBJECT_TRIGGER | OBJECT_POLICY | OBJECT_RULE => {
                Some(AccessExclusive)
            }
            _ => None,
        };
    }
    if is_a(node, T::T_RefreshMatViewStmt) {
        return Some(if (*node.cast::<pg_sys::RefreshMatViewStmt>()).concurrent {
            Exclusive
        } else {
            AccessExclusive
        });
    }
    if is_a(node, T::T_CreateTrigStmt) {
        return Some(ShareRowExclusive);
    }
    if is_a(node, T::T_CreateStmt) {
        let stmt = node.cast::<pg_sys::CreateStmt>();
        if !(*stmt).partbound.is_null() {
            return Some(AccessExclusive); // CREATE TABLE ... PARTITION OF locks the parent
        }
        if creates_foreign_key(stmt) {
            return Some(ShareRowExclusive);
        }
    }
    for (tag, mode) in [
        (T::T_RenameStmt, AccessExclusive),
        (T::T_AlterObjectSchemaStmt, AccessExclusive),
        (T::T_RuleStmt, AccessExclusive),
        (T::T_CreatePolicyStmt, AccessExclusive),
        (T::T_AlterPolicyStmt, AccessExclusive),
        (T::T_TruncateStmt, AccessExclusive),
        (T::T_ClusterStmt, AccessExclusive),
        (T::T_ReindexStmt, Share),
    ] {
        if is_a(node, tag) {
            return Some(mode);
        }
    }
    if is_a(node, T::T_VacuumStmt) && vacuum_full(node.cast()) {
        return Some(AccessExclusive);
    }
    None
}

unsafe fn create_index(stmt: *mut pg_sys::IndexStmt) -> Command {
    let oid = crate::pg::nodes::range_var_oid((*stmt).relation);
    if (*stmt).if_not_exists
        && !(*stmt).idxname.is_null()
        && catalog::sibling_named(oid, CStr::from_ptr((*stmt).idxname)) != pg_sys::InvalidOid
    {
        return Command::Other; // CREATE INDEX IF NOT EXISTS of an index that exists
    }
    let Some(table) = catalog::relation(oid) else {
        return Command::Other;
    };
    let params = PgList::<pg_sys::IndexElem>::from_pg((*stmt).indexParams);
    let names: Option<Vec<String>> = params
        .iter_ptr()
        .map(|e| (!(*e).name.is_null() && (*e).expr.is_null()).then(|| quote((*e).name)))
        .collect();
    Command::CreateIndex {
        table,
        name: opt_quote((*stmt).idxname),
        concurrent: (*stmt).concurrent,
        only: !(*(*stmt).relation).inh,
        columns: names
            .filter(|n| !n.is_empty())
            .map(|n| format!("({})", n.join(", "))),
        unique: (*stmt).unique,
    }
}

unsafe fn alter_table(stmt: *mut pg_sys::AlterTableStmt) -> Command {
    let oid = crate::pg::nodes::range_var_oid((*stmt).relation);
    let Some(table) = catalog::relation(oid) else {
        return Command::Other;
    };
    let mut actions = Vec::new();
    for cmd in PgList::<pg_sys::AlterTableCmd>::from_pg((*stmt).cmds).iter_ptr() {
        let action = action(oid, &table, stmt, cmd);
        if let Action::AddConstraint {
            kind: ConstraintKind::PrimaryKey,
            using_index: true,
            ..
        } = action
        {
            // Making an index the primary key marks its columns NOT NULL, checking every row
            // unless a validated constraint already proves it.
            let index_name = (*(*cmd).def.cast::<pg_sys::Constraint>()).indexname;
            let index = catalog::sibling_named(oid, CStr::from_ptr(index_name));
            for column in catalog::nullable_key_columns(index) {
                actions.push(set_not_null(oid, &column));
            }
        }
        actions.push(action);
    }
    Command::AlterTable { table, actions }
}

/// `COLLATE "C"`'s collation name as written (quoted), from a ColumnDef's collClause.
///
/// # Safety
/// `clause` is null or a valid raw CollateClause.
unsafe fn collate_clause(clause: *mut pg_sys::CollateClause) -> Option<String> {
    if clause.is_null() || (*clause).collname.is_null() {
        return None;
    }
    Some(text(pg_sys::NameListToQuotedString((*clause).collname)))
}

/// The lock an ALTER TABLE's subcommands other than VALIDATE CONSTRAINT take, as PostgreSQL
/// computes the statement's: one statement holds the strongest of them all for its whole run,
/// validating scans included. `None` when there are no others.
///
/// # Safety
/// `cmds` is the command list of a valid raw AlterTableStmt.
unsafe fn lock_beside_validation(cmds: *mut pg_sys::List) -> Option<LockMode> {
    let mut others = PgList::<pg_sys::AlterTableCmd>::new();
    for cmd in PgList::<pg_sys::AlterTableCmd>::from_pg(cmds).iter_ptr() {
        if (*cmd).subtype != pg_sys::AlterTableType::AT_ValidateConstraint {
            others.push(cmd);
        }
    }
    if others.is_empty() {
        return None;
    }
    LockMode::from_pg(pg_sys::AlterTableGetLockLevel(others.into_pg()))
}

unsafe fn action(
    relid: pg_sys::Oid,
    table: &Rel,
    stmt: *mut pg_sys::AlterTableStmt,
    cmd: *mut pg_sys::AlterTableCmd,
) -> Action {
    use pg_sys::AlterTableType as AT;
    let name = || text((*cmd).name);
    match (*cmd).subtype {
        AT::AT_AddColumn if table.new => Action::Other,
        AT::AT_AddColumn
            if (*cmd).missing_ok
                && catalog::column_exists(
                    relid,
                    CStr::from_ptr((*(*cmd).def.cast::<pg_sys::ColumnDef>()).colname),
                ) =>
        {
            Action::Other // ADD COLUMN IF NOT EXISTS of a column that exists: nothing happens
        }
        AT::AT_AddColumn => Action::AddColumn(new_column((*cmd).def.cast())),
        AT::AT_AlterColumnType if !table.new => {
            let def = (*cmd).def.cast::<pg_sys::ColumnDef>();
            // A virtual column (PostgreSQL 18) stores nothing to convert.
            let rewrites = if virtual_column(relid, &name()) {
                Some(false)
            } else {
                catalog::type_change_rewrites(relid, &name(), (*def).typeName, (*def).raw_default)
            };
            let mut type_name = catalog::column_type((*def).typeName).display;
            if let Some(collation) = collate_clause((*def).collClause) {
                type_name = format!("{type_name} COLLATE {collation}");
            }
            Action::AlterType {
                column: name(),
                type_name,
                rewrites,
                // A rewrite rebuilds and checks everything, and is refused for it.
                rebuilds_indexes: match rewrites {
                    Some(false) => {
                        type_change::indexes_rebuilt(relid, &name(), def).unwrap_or_default()
                    }
                    _ => vec![],
                },
                checks_again: match rewrites {
                    Some(false) => type_change::checks_revalidated(relid, &name()),
                    _ => vec![],
                },
            }
        }
        AT::AT_SetNotNull if !table.new => set_not_null(relid, &name()),
        AT::AT_AddConstraint => {
            let c = (*cmd).def.cast::<pg_sys::Constraint>();
            match constraint_kind((*c).contype) {
                // PostgreSQL 18's table constraint NOT NULL (col): without NOT VALID it
                // checks every row, as SET NOT NULL does.
                Some(ConstraintKind::NotNull) => {
                    let keys = PgList::<pg_sys::Node>::from_pg((*c).keys);
                    match keys.get_ptr(0).map(|k| str_val(k)) {
                        Some(column) if !(*c).skip_validation && !table.new => Action::SetNotNull {
                            proven: catalog::not_null_proven(relid, &column).unwrap_or(false),
                            column: catalog::quote_ident(&column),
                            unvalidated: None,
                        },
                        _ => Action::Other,
                    }
                }
                Some(kind) => Action::AddConstraint {
                    name: opt_quote((*c).conname),
                    kind,
                    not_valid: (*c).skip_validation,
                    using_index: !(*c).indexname.is_null(),
                    references: catalog::relation_named((*c).pktable),
                },
                None => Action::Other,
            }
        }
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        AT::AT_SetExpression if !table.new => match catalog::column_generation(relid, &name()) {
            Some((kind, not_null)) if kind != 0 => Action::SetExpression {
                column: name(),
                generated: if kind == b'v' {
                    Generated::Virtual
                } else {
                    Generated::Stored
                },
                not_null,
            },
            _ => Action::Other,
        },
        #[cfg(feature = "pg18")]
        AT::AT_AlterConstraint if !table.new => {
            let alter = (*cmd).def.cast::<pg_sys::ATAlterConstraint>();
            let name = CStr::from_ptr((*alter).conname);
            if (*alter).alterEnforceability
                && (*alter).is_enforced
                && catalog::foreign_key_unenforced(relid, name)
            {
                Action::EnforceForeignKey {
                    name: quote((*alter).conname),
                }
            } else if (*alter).alterInheritability && !(*alter).noinherit {
                // A NOT NULL constraint made inheritable is added to every child, and checked
                // there as SET NOT NULL would be.
                match catalog::not_null_constraint_column(relid, name) {
                    Some(column) => Action::SetNotNull {
                        proven: catalog::not_null_proven(relid, &column).unwrap_or(false),
                        column: catalog::quote_ident(&column),
                        unvalidated: None,
                    },
                    None => Action::Other,
                }
            } else {
                Action::Other
            }
        }
        AT::AT_ValidateConstraint => Action::ValidateConstraint {
            name: quote((*cmd).name),
            beside: lock_beside_validation((*stmt).cmds),
        },
        AT::AT_DropColumn
            if (*cmd).missing_ok && !catalog::column_exists(relid, CStr::from_ptr((*cmd).name)) =>
        {
            Action::Other // DROP COLUMN IF EXISTS of a column that does not exist
        }
        AT::AT_DropColumn => Action::DropColumn {
            column: quote((*cmd).name),
        },
        AT::AT_SetLogged => Action::SetLogged(true),
        AT::AT_SetUnLogged => Action::SetLogged(false),
        AT::AT_SetTableSpace
            if catalog::tablespace_changes(relid, CStr::from_ptr((*cmd).name)) == Some(true) =>
        {
            Action::SetTablespace(quote((*cmd).name))
        }
        AT::AT_SetAccessMethod
            if catalog::access_method_changes(
                relid,
                (!(*cmd).name.is_null()).then(|| CStr::from_ptr((*cmd).name)),
            ) == Some(true) =>
        {
            Action::SetAccessMethod(if (*cmd).name.is_null() {
                // SET ACCESS METHOD DEFAULT (PostgreSQL 17): the method it names.
                catalog::quote_ident(
                    &crate::pg::guc::current("default_table_access_method").unwrap_or_default(),
                )
            } else {
                quote((*cmd).name)
            })
        }
        AT::AT_AttachPartition
            if table.kind == crate::guard::command::RelKind::PartitionedTable =>
        {
            let partcmd = (*cmd).def.cast::<pg_sys::PartitionCmd>();
            match catalog::relation_named((*partcmd).name) {
                Some(partition) if !partition.new => {
                    let (proven, default_partition) = catalog::attach_proofs(relid, stmt, cmd);
                    Action::AttachPartition {
                        partition,
                        proven,
                        default_partition,
                    }
                }
                _ => Action::Other,
            }
        }
        AT::AT_DetachPartition => {
            let partcmd = (*cmd).def.cast::<pg_sys::PartitionCmd>();
            Action::DetachPartition {
                partition: range_var_name((*partcmd).name),
                concurrent: parse::partition_cmd_concurrent(partcmd),
            }
        }
        _ => Action::Other,
    }
}

unsafe fn new_column(def: *mut pg_sys::ColumnDef) -> NewColumn {
    let column_type = catalog::column_type((*def).typeName);
    let mut column = NewColumn {
        name: quote((*def).colname),
        type_name: column_type.display.clone(),
        serial: is_serial((*def).typeName),
        ..Default::default()
    };
    let mut default = std::ptr::null_mut();
    for c in PgList::<pg_sys::Constraint>::from_pg((*def).constraints).iter_ptr() {
        use pg_sys::ConstrType::*;
        match (*c).contype {
            CONSTR_DEFAULT => default = (*c).raw_expr,
            CONSTR_IDENTITY => column.identity = true,
            CONSTR_GENERATED => column.generated = Some(generated_kind(c)),
            other => column.inline_constraints.extend(constraint_kind(other)),
        }
    }
    // A plain or stored column's NOT NULL is checked as its value is written: no scan of its
    // own. A virtual column's value is computed, so PostgreSQL 18 checks every row for it.
    if column.generated != Some(Generated::Virtual) {
        column
            .inline_constraints
            .retain(|k| *k != ConstraintKind::NotNull);
    }
    if !column.serial {
        column.constrained_domain = column_type.constrained_domain();
    }
    if !default.is_null() {
        column.default_sql = Some(expression_text(default));
        column.volatile_default = column_type.default_is_volatile(default);
    }
    column
}

/// SET NOT NULL of `column` (unquoted) on `relid`, or what amounts to it. Unknown (a column
/// not there yet, a lock not free) is not proven: refused.
fn set_not_null(relid: pg_sys::Oid, column: &str) -> Action {
    let proven = catalog::not_null_proven(relid, column).unwrap_or(false);
    Action::SetNotNull {
        column: catalog::quote_ident(column),
        proven,
        // Only a refusal's hint reads it.
        unvalidated: (!proven)
            .then(|| unvalidated_not_null(relid, column))
            .flatten(),
    }
}

/// The column's NOT VALID NOT NULL constraint, quoted (PostgreSQL 18 has them).
fn unvalidated_not_null(relid: pg_sys::Oid, column: &str) -> Option<String> {
    #[cfg(feature = "pg18")]
    return catalog::unvalidated_not_null(relid, column);
    #[cfg(not(feature = "pg18"))]
    {
        let _ = (relid, column);
        None
    }
}

fn virtual_column(relid: pg_sys::Oid, column: &str) -> bool {
    #[cfg(feature = "pg18")]
    return catalog::column_generation(relid, column).is_some_and(|(kind, _)| kind == b'v');
    #[cfg(not(feature = "pg18"))]
    {
        let _ = (relid, column);
        false
    }
}

unsafe fn generated_kind(c: *mut pg_sys::Constraint) -> Generated {
    #[cfg(feature = "pg18")]
    if (*c).generated_kind as u8 == b'v' {
        return Generated::Virtual;
    }
    let _ = c;
    Generated::Stored
}

/// serial, bigserial, ... are not types: transformColumnDefinition expands an unqualified
/// type name spelt so into an integer column with a nextval() default.
unsafe fn is_serial(type_name: *mut pg_sys::TypeName) -> bool {
    if type_name.is_null() {
        return false;
    }
    let names = PgList::<pg_sys::Node>::from_pg((*type_name).names);
    names.len() == 1
        && (*type_name).arrayBounds.is_null()
        && matches!(
            names.get_ptr(0).map(|n| str_val(n)).as_deref(),
            Some("serial" | "serial4" | "bigserial" | "serial8" | "smallserial" | "serial2")
        )
}

fn constraint_kind(contype: pg_sys::ConstrType::Type) -> Option<ConstraintKind> {
    use pg_sys::ConstrType::*;
    Some(match contype {
        CONSTR_CHECK => ConstraintKind::Check,
        CONSTR_FOREIGN => ConstraintKind::ForeignKey,
        CONSTR_UNIQUE => ConstraintKind::Unique,
        CONSTR_PRIMARY => ConstraintKind::PrimaryKey,
        CONSTR_EXCLUSION => ConstraintKind::Exclusion,
        CONSTR_NOTNULL => ConstraintKind::NotNull,
        _ => return None,
    })
}

unsafe fn drop(stmt: *mut pg_sys::DropStmt) -> Command {
    use pg_sys::ObjectType::*;
    let objects = PgList::<pg_sys::Node>::from_pg((*stmt).objects);
    match (*stmt).removeType {
        OBJECT_TABLE => Command::DropTable {
            tables: objects
                .iter_ptr()
                .filter_map(|names| {
                    catalog::relation_named(pg_sys::makeRangeVarFromNameList(names.cast()))
                })
                .collect(),
        },
        OBJECT_INDEX => Command::DropIndex {
            indexes: objects
                .iter_ptr()
                .filter_map(|names| {
                    let index = crate::pg::nodes::range_var_oid(pg_sys::makeRangeVarFromNameList(
                        names.cast(),
                    ));
                    let table = catalog::relation(catalog::table_of_index(index))?;
                    Some((catalog::relation_name(index)?, table))
                })
                .collect(),
            concurrent: (*stmt).concurrent,
        },
        OBJECT_SCHEMA => {
            let cascade = (*stmt).behavior == pg_sys::DropBehavior::DROP_CASCADE;
            for name in objects.iter_ptr() {
                let schema = str_val(name);
                let c_schema = std::ffi::CString::new(schema.as_str()).unwrap_or_default();
                if cascade && catalog::schema_holds_tables(&c_schema) {
                    return Command::DropSchema {
                        schema: catalog::quote_ident(&schema),
                        cascade,
                        holds_tables: true,
                    };
                }
            }
            Command::Other
        }
        _ => Command::Other,
    }
}

/// Whether a relation of this kind is something applications query by name. Decided by what
/// the relation is, not by the statement: ALTER INDEX and ALTER SEQUENCE accept a table too.
fn queried_by_name(rel: &Rel) -> bool {
    use crate::guard::command::RelKind::*;
    matches!(
        rel.kind,
        Table | PartitionedTable | View | MatView | Foreign
    )
}

unsafe fn rename(stmt: *mut pg_sys::RenameStmt) -> Command {
    use pg_sys::ObjectType::*;
    let Some(rel) = catalog::relation_named((*stmt).relation) else {
        return Command::Other;
    };
    if !queried_by_name(&rel) {
        return Command::Other;
    }
    match (*stmt).renameType {
        OBJECT_COLUMN => Command::RenameColumn {
            rel,
            column: quote((*stmt).subname),
            new_name: text((*stmt).newname),
        },
        OBJECT_TABLE | OBJECT_VIEW | OBJECT_MATVIEW | OBJECT_FOREIGN_TABLE | OBJECT_INDEX
        | OBJECT_SEQUENCE => Command::RenameRelation {
            rel,
            new_name: text((*stmt).newname),
        },
        _ => Command::Other,
    }
}

unsafe fn set_schema(stmt: *mut pg_sys::AlterObjectSchemaStmt) -> Command {
    match catalog::relation_named((*stmt).relation) {
        Some(rel) if queried_by_name(&rel) => Command::SetSchema {
            rel,
            schema: quote((*stmt).newschema),
        },
        _ => Command::Other,
    }
}

unsafe fn truncate(stmt: *mut pg_sys::TruncateStmt) -> Command {
    let cascade = (*stmt).behavior == pg_sys::DropBehavior::DROP_CASCADE;
    let named: Vec<pg_sys::Oid> = PgList::<pg_sys::RangeVar>::from_pg((*stmt).relations)
        .iter_ptr()
        .map(|rv| crate::pg::nodes::range_var_oid(rv))
        .filter(|oid| *oid != pg_sys::InvalidOid)
        .collect();
    let oids = if cascade {
        catalog::truncate_cascade(&named)
    } else {
        named
    };
    Command::Truncate {
        tables: oids.into_iter().filter_map(catalog::relation).collect(),
        cascade,
    }
}

/// # Safety
/// `stmt` is a valid raw CREATE TABLE ... PARTITION OF.
unsafe fn create_partition(stmt: *mut pg_sys::CreateStmt) -> Command {
    let parents = PgList::<pg_sys::RangeVar>::from_pg((*stmt).inhRelations);
    let Some(parent_rv) = parents.get_ptr(0) else {
        return Command::Other;
    };
    // Only a partitioned table has partitions to create (PostgreSQL refuses the rest), and
    // IF NOT EXISTS of a table that exists creates nothing. The parent is named, not
    // measured: its size is the sum of every partition's, and only the default one's counts.
    let oid = crate::pg::nodes::range_var_oid(parent_rv);
    let exists = || {
        (*stmt).if_not_exists
            && crate::pg::nodes::range_var_oid((*stmt).relation) != pg_sys::InvalidOid
    };
    if !catalog::is_partitioned(oid) || exists() {
        return Command::Other;
    }
    match (
        catalog::relation_name(oid),
        catalog::create_partition_proof(oid, (*stmt).partbound),
    ) {
        (Some(parent), Some((default_partition, proven))) if !default_partition.new => {
            Command::CreatePartition {
                parent,
                default_partition,
                proven,
            }
        }
        _ => Command::Other,
    }
}

unsafe fn alter_domain(stmt: *mut pg_sys::AlterDomainStmt) -> Command {
    let change = match (*stmt).subtype as u8 {
        b'C' => {
            let c = (*stmt).def.cast::<pg_sys::Constraint>();
            if c.is_null()
                || (*c).contype != pg_sys::ConstrType::CONSTR_CHECK
                || (*c).skip_validation
            {
                return Command::Other;
            }
            DomainChange::AddCheck
        }
        b'O' => DomainChange::SetNotNull,
        b'V' => DomainChange::Validate,
        _ => return Command::Other,
    };
    Command::AlterDomain {
        domain: text(pg_sys::NameListToQuotedString((*stmt).typeName)),
        change,
        tables: catalog::tables_using_domain((*stmt).typeName)
            .into_iter()
            .filter_map(catalog::relation)
            .collect(),
    }
}

unsafe fn vacuum(stmt: *mut pg_sys::VacuumStmt) -> Command {
    if !vacuum_full(stmt) {
        return Command::Other;
    }
    let rels = PgList::<pg_sys::VacuumRelation>::from_pg((*stmt).rels);
    Command::VacuumFull {
        tables: rels
            .iter_ptr()
            .filter_map(|v| catalog::relation_named((*v).relation))
            .collect(),
    }
}

unsafe fn vacuum_full(stmt: *mut pg_sys::VacuumStmt) -> bool {
    (*stmt).is_vacuumcmd && parse::option_set((*stmt).options, b"full")
}

unsafe fn reindex(stmt: *mut pg_sys::ReindexStmt) -> Command {
    use pg_sys::ReindexObjectType::*;
    let concurrent = parse::reindex_is_concurrent(stmt);
    match (*stmt).kind {
        REINDEX_OBJECT_INDEX => {
            let index = crate::pg::nodes::range_var_oid((*stmt).relation);
            Command::Reindex {
                target: format!("INDEX {}", range_var_name((*stmt).relation)),
                table: catalog::relation(catalog::table_of_index(index)),
                concurrent,
            }
        }
        REINDEX_OBJECT_TABLE => Command::Reindex {
            target: format!("TABLE {}", range_var_name((*stmt).relation)),
            table: catalog::relation_named((*stmt).relation),
            concurrent,
        },
        REINDEX_OBJECT_SCHEMA => Command::Reindex {
            target: format!("SCHEMA {}", quote((*stmt).name)),
            table: None,
            concurrent,
        },
        REINDEX_OBJECT_DATABASE | REINDEX_OBJECT_SYSTEM => Command::Reindex {
            target: if (*stmt).kind == REINDEX_OBJECT_SYSTEM {
                "SYSTEM"
            } else {
                "DATABASE"
            }
            .to_string(),
            table: None,
            concurrent,
        },
        _ => Command::Other,
    }
}

unsafe fn creates_foreign_key(stmt: *mut pg_sys::CreateStmt) -> bool {
    let is_fk = |c: *mut pg_sys::Constraint| (*c).contype == pg_sys::ConstrType::CONSTR_FOREIGN;
    PgList::<pg_sys::Constraint>::from_pg((*stmt).constraints)
        .iter_ptr()
        .any(is_fk)
        || PgList::<pg_sys::Node>::from_pg((*stmt).tableElts)
            .iter_ptr()
            .any(|e| {
                is_a(e, T::T_ColumnDef)
                    && PgList::<pg_sys::Constraint>::from_pg(
                        (*e.cast::<pg_sys::ColumnDef>()).constraints,
                    )
                    .iter_ptr()
                    .any(is_fk)
            })
}

/// `schema.name` as written in a RangeVar, quoted where needed.
unsafe fn range_var_name(rv: *mut pg_sys::RangeVar) -> String {
    if rv.is_null() {
        return String::new();
    }
    text(pg_sys::quote_qualified_identifier(
        (*rv).schemaname,
        (*rv).relname,
    ))
}

/// The source text of an expression is not kept in raw parse trees; `nodeToString` would be
/// unreadable in a hint, so a default is shown by its function name where it has one.
unsafe fn expression_text(expr: *mut pg_sys::Node) -> String {
    if is_a(expr, T::T_FuncCall) {
        let names = (*expr.cast::<pg_sys::FuncCall>()).funcname;
        return format!("{}(...)", text(pg_sys::NameListToQuotedString(names)));
    }
    "<default>".into()
}

/// The relation a CREATE statement makes, by the name it will have.
pub fn created_relation(stmt: StmtTree) -> Option<String> {
    let tree = stmt.node();
    // SAFETY: a StmtTree is a valid raw statement tree.
    unsafe { creates_node(tree) }
}

unsafe fn creates_node(tree: *mut pg_sys::Node) -> Option<String> {
    use pg_sys::NodeTag as T;
    let rv = if is_a(tree, T::T_CreateStmt) {
        (*tree.cast::<pg_sys::CreateStmt>()).relation
    } else if is_a(tree, T::T_CreateTableAsStmt) {
        (*(*tree.cast::<pg_sys::CreateTableAsStmt>()).into).rel
    } else if is_a(tree, T::T_ViewStmt) {
        (*tree.cast::<pg_sys::ViewStmt>()).view
    } else {
        return None;
    };
    catalog::creation_name(rv)
}

/// An identifier quoted as PostgreSQL's quote_identifier does.
unsafe fn quote(ptr: *const std::ffi::c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    CStr::from_ptr(pg_sys::quote_identifier(ptr))
        .to_string_lossy()
        .into_owned()
}

unsafe fn opt_quote(ptr: *const std::ffi::c_char) -> Option<String> {
    (!ptr.is_null()).then(|| quote(ptr))
}

/// What a statement run top-level by the worker does, as far as recovering from its
/// interruption needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopLevelForm {
    /// CREATE INDEX CONCURRENTLY on this table, of this name (schema-qualified) if it has one.
    CreateIndex(pg_sys::Oid, Option<String>),
    /// DROP INDEX CONCURRENTLY of these indexes (qualified names, those that still exist), on
    /// this table (none once they are all gone).
    DropIndex(Option<pg_sys::Oid>, Vec<String>),
    /// REINDEX ... CONCURRENTLY of this table's indexes.
    Reindex(pg_sys::Oid),
    /// ALTER TABLE parent DETACH PARTITION ... CONCURRENTLY.
    Detach(pg_sys::Oid),
    Other,
}

impl TopLevelForm {
    pub fn table(&self) -> Option<pg_sys::Oid> {
        match self {
            TopLevelForm::CreateIndex(t, _)
            | TopLevelForm::Reindex(t)
            | TopLevelForm::Detach(t) => Some(*t),
            TopLevelForm::DropIndex(t, _) => *t,
            TopLevelForm::Other => None,
        }
    }
}

/// The form of `node`, with its table resolved now (under the current search_path).
///
/// # Safety
/// As for [`command_node`].
pub fn top_level_form(stmt: StmtTree) -> TopLevelForm {
    // SAFETY: a StmtTree is a valid raw statement tree.
    unsafe { top_level_form_node(stmt.node()) }
}

/// # Safety
/// As for [`command_node`].
unsafe fn top_level_form_node(node: *mut pg_sys::Node) -> TopLevelForm {
    let valid = |oid: pg_sys::Oid| oid != pg_sys::InvalidOid;
    if is_a(node, T::T_IndexStmt) {
        let stmt = node.cast::<pg_sys::IndexStmt>();
        let oid = crate::pg::nodes::range_var_oid((*stmt).relation);
        if valid(oid) {
            let name = (!(*stmt).idxname.is_null())
                .then(|| catalog::index_name_beside(oid, CStr::from_ptr((*stmt).idxname)))
                .flatten();
            return TopLevelForm::CreateIndex(oid, name);
        }
    } else if is_a(node, T::T_DropStmt) {
        let stmt = node.cast::<pg_sys::DropStmt>();
        if (*stmt).removeType == pg_sys::ObjectType::OBJECT_INDEX {
            let mut table = pg_sys::InvalidOid;
            let mut names = Vec::new();
            for parts in PgList::<pg_sys::Node>::from_pg((*stmt).objects).iter_ptr() {
                let index =
                    crate::pg::nodes::range_var_oid(pg_sys::makeRangeVarFromNameList(parts.cast()));
                if valid(index) {
                    table = catalog::table_of_index(index);
                    names.extend(catalog::relation_name(index));
                }
            }
            return TopLevelForm::DropIndex(valid(table).then_some(table), names);
        }
    } else if is_a(node, T::T_ReindexStmt) {
        let stmt = node.cast::<pg_sys::ReindexStmt>();
        let oid = crate::pg::nodes::range_var_oid((*stmt).relation);
        let table = if (*stmt).kind == pg_sys::ReindexObjectType::REINDEX_OBJECT_INDEX {
            catalog::table_of_index(oid)
        } else {
            oid
        };
        if valid(table) {
            return TopLevelForm::Reindex(table);
        }
    } else if is_a(node, T::T_AlterTableStmt) && detaches(node.cast()) {
        let oid =
            crate::pg::nodes::range_var_oid((*node.cast::<pg_sys::AlterTableStmt>()).relation);
        if valid(oid) {
            return TopLevelForm::Detach(oid);
        }
    }
    TopLevelForm::Other
}

unsafe fn detaches(stmt: *mut pg_sys::AlterTableStmt) -> bool {
    PgList::<pg_sys::AlterTableCmd>::from_pg((*stmt).cmds)
        .iter_ptr()
        .any(|cmd| (*cmd).subtype == pg_sys::AlterTableType::AT_DetachPartition)
}

/// A schema renamed, given another owner or dropped: a window's view schema by its bare name,
/// and the schema of a window's tables as `schema <name>` (its tables are known by qualified
/// name until the window ends).
fn schema_named(name: String) -> Vec<String> {
    vec![format!("schema {name}"), name]
}

/// The objects a statement changes that the `window-open` rule guards beside the tables a
/// command names: the table of a trigger created, dropped or renamed (qualified, as
/// `Rel::name`); functions, schemas and the schemas of views dropped, by bare name.
pub fn guarded_names(stmt: StmtTree) -> Vec<String> {
    // SAFETY: a StmtTree is a valid raw statement tree.
    unsafe { guarded_names_node(stmt.node()) }
}

unsafe fn guarded_names_node(node: *mut pg_sys::Node) -> Vec<String> {
    use pg_sys::ObjectType::*;
    let table_of =
        |rv: *mut pg_sys::RangeVar| catalog::relation_name(crate::pg::nodes::range_var_oid(rv));
    let last = |names: *mut pg_sys::List| {
        PgList::<pg_sys::Node>::from_pg(names)
            .iter_ptr()
            .last()
            .map(|n| str_val(n))
    };
    if is_a(node, T::T_CreateTrigStmt) {
        return table_of((*node.cast::<pg_sys::CreateTrigStmt>()).relation)
            .into_iter()
            .collect();
    }
    // A policy follows its columns' numbers: one written during a window on a column the
    // window sets aside would go on reading it after the swap.
    if is_a(node, T::T_CreatePolicyStmt) {
        return table_of((*node.cast::<pg_sys::CreatePolicyStmt>()).table)
            .into_iter()
            .collect();
    }
    if is_a(node, T::T_AlterPolicyStmt) {
        return table_of((*node.cast::<pg_sys::AlterPolicyStmt>()).table)
            .into_iter()
            .collect();
    }
    if is_a(node, T::T_RenameStmt) {
        let stmt = node.cast::<pg_sys::RenameStmt>();
        return match (*stmt).renameType {
            OBJECT_TRIGGER | OBJECT_POLICY => table_of((*stmt).relation).into_iter().collect(),
            OBJECT_FUNCTION | OBJECT_PROCEDURE | OBJECT_ROUTINE => {
                let with_args = (*stmt).object.cast::<pg_sys::ObjectWithArgs>();
                last((*with_args).objname).into_iter().collect()
            }
            OBJECT_SCHEMA => schema_named(text((*stmt).subname)),
            _ => vec![],
        };
    }
    if is_a(node, T::T_ViewStmt) {
        // CREATE OR REPLACE VIEW in a window's schema: guarded by the schema's name.
        let view = (*node.cast::<pg_sys::ViewStmt>()).view;
        let oid = crate::pg::nodes::range_var_oid(view);
        return if oid != pg_sys::InvalidOid {
            vec![text(pg_sys::get_namespace_name(pg_sys::get_rel_namespace(
                oid,
            )))]
        } else if !(*view).schemaname.is_null() {
            vec![text((*view).schemaname)]
        } else {
            vec![]
        };
    }
    if is_a(node, T::T_AlterOwnerStmt) || is_a(node, T::T_AlterObjectSchemaStmt) {
        let (kind, object) = if is_a(node, T::T_AlterOwnerStmt) {
            let stmt = node.cast::<pg_sys::AlterOwnerStmt>();
            ((*stmt).objectType, (*stmt).object)
        } else {
            let stmt = node.cast::<pg_sys::AlterObjectSchemaStmt>();
            ((*stmt).objectType, (*stmt).object)
        };
        return match kind {
            OBJECT_FUNCTION | OBJECT_PROCEDURE | OBJECT_ROUTINE => {
                last((*object.cast::<pg_sys::ObjectWithArgs>()).objname)
                    .into_iter()
                    .collect()
            }
            OBJECT_SCHEMA if is_a(object, T::T_String) => schema_named(str_val(object)),
            _ => vec![],
        };
    }
    if is_a(node, T::T_CreateFunctionStmt) {
        return last((*node.cast::<pg_sys::CreateFunctionStmt>()).funcname)
            .into_iter()
            .collect();
    }
    if is_a(node, T::T_AlterFunctionStmt) {
        let with_args = (*node.cast::<pg_sys::AlterFunctionStmt>()).func;
        return last((*with_args).objname).into_iter().collect();
    }
    if is_a(node, T::T_DropStmt) {
        let stmt = node.cast::<pg_sys::DropStmt>();
        let objects = PgList::<pg_sys::Node>::from_pg((*stmt).objects);
        return match (*stmt).removeType {
            OBJECT_TRIGGER | OBJECT_POLICY => objects
                .iter_ptr()
                .filter_map(|names| {
                    // schema?, table, trigger: the table is the list without its last name,
                    // copied: the statement's own list must stay as it is.
                    let parts = PgList::<pg_sys::Node>::from_pg(names.cast());
                    let mut table = PgList::<pg_sys::Node>::new();
                    for part in parts.iter_ptr().take(parts.len().saturating_sub(1)) {
                        table.push(part);
                    }
                    table_of(pg_sys::makeRangeVarFromNameList(table.into_pg()))
                })
                .collect(),
            // A view of a window is guarded by its schema's name.
            OBJECT_VIEW => objects
                .iter_ptr()
                .filter_map(|names| {
                    let oid = crate::pg::nodes::range_var_oid(pg_sys::makeRangeVarFromNameList(
                        names.cast(),
                    ));
                    (oid != pg_sys::InvalidOid)
                        .then(|| text(pg_sys::get_namespace_name(pg_sys::get_rel_namespace(oid))))
                })
                .collect(),
            OBJECT_FUNCTION | OBJECT_PROCEDURE | OBJECT_ROUTINE => objects
                .iter_ptr()
                .filter_map(|o| last((*o.cast::<pg_sys::ObjectWithArgs>()).objname))
                .collect(),
            OBJECT_SCHEMA => objects
                .iter_ptr()
                .flat_map(|n| schema_named(str_val(n)))
                .collect(),
            _ => vec![],
        };
    }
    vec![]
}
