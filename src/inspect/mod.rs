//! Looking without changing: a migration's dry run and its verification.

pub mod dry_run;
pub mod verify;
