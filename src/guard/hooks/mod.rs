//! Where the guard meets PostgreSQL: event triggers, the ProcessUtility hook, and the
//! timeouts set for DDL in sessions that have none.

pub mod lock_timeout;
pub mod trigger;
pub mod utility_hook;
