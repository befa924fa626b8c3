//! The `migrate.*` settings. Defaults and their reasons are in the README.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// How long any one statement of a migration may wait for a lock before the whole attempt
/// is rolled back (and every lock it took released).
pub static LOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(2_000);
/// Upper bound on how long any one statement of a migration may run.
pub static STATEMENT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10 * 60 * 1_000);
/// How many times a migration that timed out on a lock is retried.
pub static LOCK_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(5);
/// The first backoff before a retry; it doubles for every further retry.
pub static LOCK_RETRY_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(500);
/// The longest backoff between two retries.
pub static LOCK_RETRY_MAX_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
/// Whether a version lower than the highest applied one may still be applied.
pub static OUT_OF_ORDER: GucSetting<bool> = GucSetting::<bool>::new(false);

pub fn init() {
    GucRegistry::define_int_guc(
        c"migrate.lock_timeout",
        c"Longest wait for a lock by any statement of a migration.",
        c"On timeout the migration's attempt is rolled back, releasing its locks so that other \
          sessions stop queueing behind it, and retried after a backoff. 0 disables the limit.",
        &LOCK_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"migrate.statement_timeout",
        c"Longest run of any statement of a migration.",
        c"0 disables the limit.",
        &STATEMENT_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"migrate.lock_retries",
        c"How often a migration that timed out on a lock is retried.",
        c"",
        &LOCK_RETRIES,
        0,
        1_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"migrate.lock_retry_delay",
        c"Backoff before the first retry after a lock timeout.",
        c"It doubles for every further retry, up to migrate.lock_retry_max_delay, and a random \
          part of it is dropped so that competing appliers do not retry in step.",
        &LOCK_RETRY_DELAY_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"migrate.lock_retry_max_delay",
        c"Longest backoff between two retries after lock timeouts.",
        c"",
        &LOCK_RETRY_MAX_DELAY_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"migrate.out_of_order",
        c"Allows applying a version lower than the highest applied one.",
        c"",
        &OUT_OF_ORDER,
        GucContext::Userset,
        GucFlags::default(),
    );
    reserve_prefix();
}

/// Makes a misspelt `migrate.*` setting an error instead of a silently ignored placeholder.
fn reserve_prefix() {
    // SAFETY: called from _PG_init after our settings are defined.
    #[cfg(not(any(feature = "pg13", feature = "pg14")))]
    unsafe {
        pgrx::pg_sys::MarkGUCPrefixReserved(c"migrate".as_ptr());
    }
    #[cfg(any(feature = "pg13", feature = "pg14"))]
    unsafe {
        pgrx::pg_sys::EmitWarningsOnPlaceholders(c"migrate".as_ptr());
    }
}
