//! A migration as data: its version, checksum, script and phases, the limits it runs
//! under, and which one is running in this backend.

pub mod backoff;
pub mod checksum;
pub mod limits;
pub mod parse;
pub mod phases;
pub mod running;
pub mod script;
pub mod status;
pub mod submitter;
pub mod version;
