//! The bytes `migrate.object_hash(kind, identity, description)` hashes, read from its
//! arguments as its SQL definition read them: `convert_to(kind || E'\n' || identity ||
//! E'\n' || description::text, 'UTF8')`, the jsonb printed by `jsonb_out`, every text
//! converted from the database's encoding to UTF-8.

use pgrx::pg_sys;
use std::ffi::{c_char, CStr};

/// Whether any of the first `count` arguments is NULL: the function is declared STRICT, but
/// an ALTER FUNCTION ... CALLED ON NULL INPUT must not make it read a NULL as a pointer.
pub fn any_null(fcinfo: pg_sys::FunctionCallInfo, count: usize) -> bool {
    // SAFETY: the function manager's call info, with `count` arguments.
    (0..count).any(|n| unsafe { pgrx::fcinfo::pg_arg_is_null(fcinfo, n) })
}

/// Argument `n`, which `any_null` found not NULL.
fn arg(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> pg_sys::Datum {
    // SAFETY: the function manager's call info with more than `n` arguments.
    unsafe { pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, n) }
}

/// A string in the database's encoding, as UTF-8 bytes.
///
/// # Safety
/// `ptr` points to a NUL-terminated string in the database's encoding.
unsafe fn utf8(ptr: *const c_char) -> Vec<u8> {
    // SAFETY: the caller's promise; pg_server_to_any returns `ptr` itself when there is
    // nothing to convert, or a palloc'd NUL-terminated conversion.
    unsafe {
        let len = CStr::from_ptr(ptr).to_bytes().len();
        let converted = pg_sys::pg_server_to_any(ptr, len as _, pg_sys::pg_enc::PG_UTF8 as _);
        CStr::from_ptr(converted).to_bytes().to_vec()
    }
}

/// Text argument `n` (not NULL), as UTF-8.
pub fn text_arg(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> Vec<u8> {
    // SAFETY: a text datum; text_to_cstring detoasts it into a palloc'd copy.
    unsafe { utf8(pg_sys::text_to_cstring(arg(fcinfo, n).cast_mut_ptr())) }
}

/// Jsonb argument `n` (not NULL), as `jsonb_out` prints it, as UTF-8.
pub fn jsonb_arg(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> Vec<u8> {
    // SAFETY: jsonb_out of a jsonb datum returns a palloc'd C string.
    unsafe {
        let printed =
            pgrx::direct_function_call_as_datum(pg_sys::jsonb_out, &[Some(arg(fcinfo, n))])
                .expect("jsonb_out prints every jsonb");
        utf8(printed.cast_mut_ptr())
    }
}
