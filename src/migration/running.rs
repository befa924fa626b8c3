//! Which migration's statements are running in this backend: what the DDL log, the guard
//! and the recorded schema attribute DDL to.

use std::cell::RefCell;

/// The migration whose statements are running, as the DDL log and the guard need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub version: String,
    pub has_rollback: bool,
    /// Guard rules the migration overrides (`allow => ARRAY[...]`).
    pub allow: Vec<String>,
}

thread_local! {
    static APPLYING: RefCell<Option<Running>> = const { RefCell::new(None) };
}

pub fn running() -> Option<Running> {
    APPLYING.with_borrow(|v| v.clone())
}

/// Runs `f` with `running` marked as the migration whose statements run (the worker's phases).
pub fn with_running<T>(running: Running, f: impl FnOnce() -> T) -> T {
    let _applying = Applying::enter(running);
    f()
}

/// Marks a migration's statements as running; cleared on drop, also when an ERROR unwinds.
struct Applying;

impl Applying {
    fn enter(running: Running) -> Applying {
        APPLYING.set(Some(running));
        Applying
    }
}

impl Drop for Applying {
    fn drop(&mut self) {
        APPLYING.set(None);
    }
}

/// Whether a migration's statements are running: versions must not nest.
pub fn is_applying() -> bool {
    APPLYING.with_borrow(|v| v.is_some())
}
