//! The thin PostgreSQL layer: the calls into the server that need `unsafe`, behind safe
//! functions. Everything above it is plain Rust over these and SPI.

pub mod catalog;
pub mod commit_lsn;
pub mod declared;
pub mod describe;
pub mod error_hook;
pub mod event_trigger;
pub mod executor_hook;
pub mod expand;
pub mod guc;
pub mod hash_input;
pub mod identity;
pub mod nodes;
pub mod process;
pub mod sample_ring;
pub mod shmem;
pub mod simple_query;
pub mod spi;
pub mod statement_timer;
pub mod subxact;
pub mod touched;
pub mod type_change;
pub mod utility_hook;
pub mod xact;

/// The server's major version. pgrx builds one library per major version, so this is known
/// when compiling: the guard's judgement of a statement may differ between versions.
pub const MAJOR: u32 = pgrx::pg_sys::PG_MAJORVERSION_NUM;
