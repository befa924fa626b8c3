//! The thin unsafe layer under pg_migrate's event triggers: what fired, and for which command.

use crate::errors::{OrBookkeeping, Problem};
use pgrx::{is_a, pg_sys, PgSqlErrorCode};
use std::ffi::CStr;

/// What an event trigger function was called for.
pub struct Event {
    /// The command tag, e.g. `ALTER TABLE`.
    pub tag: String,
    /// The statement's raw parse tree (ddl_command_start), valid during the call.
    parsetree: *mut pg_sys::Node,
}

/// Reads the trigger data, refusing direct calls.
pub fn event(fcinfo: pg_sys::FunctionCallInfo) -> Event {
    // SAFETY: fcinfo comes from the function manager; its context is checked to be
    // EventTriggerData before it is read as one.
    unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || !is_a(context, pg_sys::NodeTag::T_EventTriggerData) {
            Problem::new(
                PgSqlErrorCode::ERRCODE_E_R_I_E_EVENT_TRIGGER_PROTOCOL_VIOLATED,
                "this function can only be called as an event trigger",
                "It was called directly, not by the event trigger manager.",
                "Let the extension's event triggers call it.",
            )
            .raise();
        }
        let data = context.cast::<pg_sys::EventTriggerData>();
        Event {
            tag: CStr::from_ptr(pg_sys::GetCommandTagName((*data).tag))
                .to_string_lossy()
                .into_owned(),
            parsetree: (*data).parsetree,
        }
    }
}

impl Event {
    /// The statement the event fired for (at ddl_command_start, the one about to run).
    pub fn statement(&self) -> crate::pg::nodes::StmtTree<'_> {
        // SAFETY: the event's tree lives until the statement ends, longer than the call.
        unsafe { crate::pg::nodes::StmtTree::new(self.parsetree) }
    }

    /// Whether the command renames or moves objects (or an enum's labels, or an extension's
    /// members): then objects that print its name change with it.
    pub fn renames(&self) -> bool {
        use pg_sys::NodeTag::*;
        if self.parsetree.is_null() {
            return false;
        }
        // SAFETY: a non-null parse tree the event trigger manager passed is a Node, and its
        // tag says which statement struct it is.
        unsafe {
            match (*self.parsetree).type_ {
                T_RenameStmt | T_AlterObjectSchemaStmt | T_AlterExtensionStmt => true,
                // RENAME VALUE; ADD VALUE changes the type alone.
                T_AlterEnumStmt => !(*self.parsetree.cast::<pg_sys::AlterEnumStmt>())
                    .oldVal
                    .is_null(),
                _ => false,
            }
        }
    }
}

/// What this event's commands changed beyond what `pg_event_trigger_ddl_commands()` names.
#[derive(Default)]
pub struct Collected {
    /// (catalog, OID) pairs:
    /// - the objects of GRANT and REVOKE, which name none there; their statement (with
    ///   `ALL ... IN SCHEMA` resolved) lists them. Objects pg_migrate does not describe
    ///   (databases, tablespaces, languages, ...) are left out;
    /// - the partition ATTACH or DETACH PARTITION attached or detached (ALTER TABLE names
    ///   the parent only);
    /// - the second object of a command that has one, such as the member ALTER EXTENSION ...
    ///   ADD or DROP moves in or out of the extension.
    pub objects: Vec<(pg_sys::Oid, pg_sys::Oid)>,
    /// Whether an ALTER TABLE did more than attach or detach partitions: what it did to a
    /// partitioned or inherited table it did to the children too.
    pub recurses: bool,
    /// Partitions named by ATTACH or DETACH PARTITION, resolved once `search_path` is the
    /// session's again (the statement was written against it).
    partitions: Vec<*mut pg_sys::RangeVar>,
}

/// Reads the collected commands. Call only from a ddl_command_end event trigger.
pub fn collected() -> Collected {
    // The query runs in every session that runs DDL, as whoever runs it.
    let mut collected = crate::pg::guc::pinned(|| {
        pgrx::Spi::connect(|client| {
            let mut table = client.select(
                "SELECT command FROM pg_catalog.pg_event_trigger_ddl_commands() \
                 WHERE NOT in_extension",
                None,
                &[],
            )?;
            let mut out = Collected::default();
            while table.next().is_some() {
                if let Some(datum) = table.get_datum_by_ordinal(1)? {
                    // SAFETY: the command column is a pointer to the CollectedCommand the
                    // event trigger manager holds for the rest of this event.
                    unsafe { read_command(datum.cast_mut_ptr(), &mut out) };
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .or_bookkeeping("read the collected DDL commands");
    for name in std::mem::take(&mut collected.partitions) {
        // SAFETY: the RangeVar belongs to a collected command of this event, which holds
        // the lock.
        let oid = unsafe { crate::pg::nodes::range_var_oid(name) };
        if oid != pg_sys::InvalidOid {
            collected.objects.push((pg_sys::RelationRelationId, oid));
        }
    }
    collected
}

// The C enums' constants keep PostgreSQL's names.
#[allow(non_upper_case_globals)]
/// # Safety
/// `command` is null or a CollectedCommand of the current event; its type says which member
/// of the union is set: SCT_Grant's InternalGrant lists OIDs, SCT_AlterTable's subcommands
/// are CollectedATSubcmd pointers with AlterTableCmd parse trees, SCT_Simple has addresses.
unsafe fn read_command(command: *mut pg_sys::CollectedCommand, out: &mut Collected) {
    use pg_sys::AlterTableType::*;
    use pg_sys::CollectedCommandType::*;
    if command.is_null() {
        return;
    }
    match (*command).type_ {
        SCT_Grant => {
            let grant = (*command).d.grant.istmt;
            if let Some(class) = grant_class((*grant).objtype) {
                for cell in cells((*grant).objects) {
                    out.objects.push((class, cell.oid_value));
                }
            }
        }
        SCT_AlterTable => {
            for cell in cells((*command).d.alterTable.subcmds) {
                let sub = cell.ptr_value.cast::<pg_sys::CollectedATSubcmd>();
                let tree = (*sub).parsetree;
                if tree.is_null() || !pgrx::is_a(tree, pg_sys::NodeTag::T_AlterTableCmd) {
                    out.recurses = true;
                    continue;
                }
                let cmd = tree.cast::<pg_sys::AlterTableCmd>();
                match (*cmd).subtype {
                    AT_AttachPartition | AT_DetachPartition | AT_DetachPartitionFinalize => {
                        let part = (*cmd).def.cast::<pg_sys::PartitionCmd>();
                        if !part.is_null() && !(*part).name.is_null() {
                            out.partitions.push((*part).name);
                        }
                    }
                    _ => out.recurses = true,
                }
            }
        }
        SCT_Simple => {
            let second = (*command).d.simple.secondaryObject;
            if second.classId != pg_sys::InvalidOid {
                out.objects.push((second.classId, second.objectId));
            }
            out.recurses = true;
        }
        _ => out.recurses = true,
    }
}

/// The cells of a PostgreSQL List (none for NIL).
///
/// # Safety
/// `list` is NIL or a valid List that outlives the returned cells.
unsafe fn cells<'a>(list: *mut pg_sys::List) -> &'a [pg_sys::ListCell] {
    if list.is_null() {
        return &[];
    }
    std::slice::from_raw_parts((*list).elements, (*list).length as usize)
}

/// The catalog whose objects a GRANT of this kind lists.
fn grant_class(kind: pg_sys::ObjectType::Type) -> Option<pg_sys::Oid> {
    use pg_sys::ObjectType::*;
    match kind {
        OBJECT_TABLE | OBJECT_SEQUENCE | OBJECT_FOREIGN_TABLE | OBJECT_VIEW | OBJECT_MATVIEW => {
            Some(pg_sys::RelationRelationId)
        }
        OBJECT_FUNCTION | OBJECT_PROCEDURE | OBJECT_ROUTINE => Some(pg_sys::ProcedureRelationId),
        OBJECT_SCHEMA => Some(pg_sys::NamespaceRelationId),
        OBJECT_TYPE | OBJECT_DOMAIN => Some(pg_sys::TypeRelationId),
        _ => None,
    }
}
