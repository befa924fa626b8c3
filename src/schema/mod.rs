//! A schema as pg_migrate describes it: the native description of relations, indexes and
//! constraints (the other kinds are `sql/inspect/describe.sql`), the object hashes and the
//! fingerprint they sum to, and the differences between two descriptions. Below the history,
//! which records them after every migration, and inspection, which compares them.

pub mod describe;
pub mod diff;
pub mod fingerprint;
