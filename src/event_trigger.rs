//! The thin unsafe layer under pg_migrate's event triggers: what fired, and for which command.

use crate::errors::Problem;
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
