//! The thin unsafe layer under pg_migrate's event triggers: what fired, and for which command.

use crate::errors::{OrBookkeeping, Problem};
use pgrx::{is_a, pg_sys, PgSqlErrorCode};
use std::ffi::CStr;

/// What an event trigger function was called for.
pub struct Event {
    /// The command tag, e.g. `ALTER TABLE`.
    pub tag: String,
    /// The statement's raw parse tree (ddl_command_start), valid during the call.
    pub parsetree: *mut pg_sys::Node,
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
    /// Whether the command renames or moves objects (or an enum's labels, or an extension's
    /// members): then objects that print its name change with it.
    pub fn renames(&self) -> bool {
        use pg_sys::NodeTag::*;
        if self.parsetree.is_null() {
            return false;
        }
        // SAFETY: a non-null parse tree the event trigger manager passed is a Node.
        let tag = unsafe { (*self.parsetree).type_ };
        matches!(
            tag,
            T_RenameStmt | T_AlterObjectSchemaStmt | T_AlterEnumStmt | T_AlterExtensionStmt
        )
    }
}

/// Objects this event's commands changed that `pg_event_trigger_ddl_commands()` does not
/// name, as (catalog, OID) pairs, read from the collected commands:
/// - GRANT and REVOKE name no object there; their statement (with `ALL ... IN SCHEMA`
///   resolved) lists them. Objects pg_migrate does not describe (databases, tablespaces,
///   languages, ...) are left out.
/// - ALTER TABLE names its table only; each subcommand names what it changed, such as the
///   partition ATTACH or DETACH PARTITION attached or detached.
///
/// Call only from a ddl_command_end event trigger.
pub fn collected_objects() -> Vec<(pg_sys::Oid, pg_sys::Oid)> {
    pgrx::Spi::connect(|client| {
        let mut table = client.select(
            "SELECT command FROM pg_catalog.pg_event_trigger_ddl_commands() \
             WHERE NOT in_extension AND (command_tag IN ('GRANT', 'REVOKE') \
                                         OR command_tag LIKE 'ALTER %')",
            None,
            &[],
        )?;
        let mut out = Vec::new();
        while table.next().is_some() {
            let Some(datum) = table.get_datum_by_ordinal(1)? else {
                continue;
            };
            // SAFETY: the command column is a pointer to the CollectedCommand the event
            // trigger manager holds for the rest of this event; its type says which member
            // of the union is set: SCT_Grant's InternalGrant lists OIDs, SCT_AlterTable's
            // subcommands are CollectedATSubcmd pointers.
            unsafe {
                let command = datum.cast_mut_ptr::<pg_sys::CollectedCommand>();
                if command.is_null() {
                    continue;
                }

                match (*command).type_ {
                    pg_sys::CollectedCommandType::SCT_Grant => {
                        let grant = (*command).d.grant.istmt;
                        if let Some(class) = grant_class((*grant).objtype) {
                            for cell in cells((*grant).objects) {
                                out.push((class, cell.oid_value));
                            }
                        }
                    }
                    pg_sys::CollectedCommandType::SCT_AlterTable => {
                        for cell in cells((*command).d.alterTable.subcmds) {
                            let sub = cell.ptr_value.cast::<pg_sys::CollectedATSubcmd>();
                            let address = (*sub).address;
                            if address.classId != pg_sys::InvalidOid {
                                out.push((address.classId, address.objectId));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_bookkeeping("read the collected DDL commands")
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
