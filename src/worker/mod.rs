//! The background worker: the launcher, one database worker per database with work, and
//! the steering functions (retry, cancel, pause, resume) that change what it does.

pub mod database_worker;
pub mod launcher;
pub mod steering;
