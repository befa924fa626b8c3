//! Looking without changing: a migration's dry run, its verification, and the difference
//! between two schema descriptions.

pub mod describe;
pub mod diff;
pub mod dry_run;
pub mod verify;
