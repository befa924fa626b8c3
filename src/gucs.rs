//! The `migrate.*` settings. Defaults and their reasons are in the README.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::ffi::{CStr, CString};

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
/// The submitter's settings a migration runs under: where names resolve, and the limits on
/// its locks, statements and retries. Recorded with each migration, so that the background
/// worker runs its phases as the submitter's own session would have. standard_conforming_strings
/// decides how a script splits into statements: the worker must split it as the guard did.
/// row_security decides whether a policy that applies to the submitter filters the rows a
/// statement sees or makes it fail: a window's steps must see every row or fail.
pub const CARRIED: [&str; 8] = [
    "search_path",
    "standard_conforming_strings",
    "row_security",
    "migrate.lock_timeout",
    "migrate.statement_timeout",
    "migrate.lock_retries",
    "migrate.lock_retry_delay",
    "migrate.lock_retry_max_delay",
];

/// The CARRIED settings as the caller's session has them now, as (names, values): read
/// before switching to the tables' owner, which pins search_path.
pub fn carried() -> (Vec<String>, Vec<String>) {
    CARRIED
        .iter()
        .filter_map(|name| Some((name.to_string(), crate::pg::guc::current(name)?)))
        .unzip()
}

/// The largest script (and rollback script, verify queries) apply, lint, dry_run and
/// validate accept.
pub static MAX_SCRIPT_SIZE_KB: GucSetting<i32> = GucSetting::<i32>::new(8 * 1024);

/// Whether a version lower than the highest applied one may still be applied.
pub static OUT_OF_ORDER: GucSetting<bool> = GucSetting::<bool>::new(false);

/// Database workers running at once (each serves one database).
pub static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(4);
/// Attempts after the first for a CONCURRENTLY command that failed on a lock or deadlock.
pub static INDEX_BUILD_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(3);
/// A database worker with nothing to do exits after this long.
pub static WORKER_IDLE_TIMEOUT_S: GucSetting<i32> = GucSetting::<i32>::new(2);

/// Backfills: the first batch's size, the bounds it adapts within, the duration it aims
/// for, the sleep between batches, and how far behind a streaming replica may fall.
pub static BACKFILL_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1_000);
pub static BACKFILL_MIN_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(100);
pub static BACKFILL_MAX_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(50_000);
pub static BACKFILL_BATCH_TIME_MS: GucSetting<i32> = GucSetting::<i32>::new(50);
pub static BACKFILL_PAUSE_MS: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static BACKFILL_MAX_REPLICATION_LAG_KB: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024);
/// The batches' backend_flush_after (8 kB blocks): 256 kB, PostgreSQL's own default for the
/// checkpointer, where the kernel has sync_file_range (PostgreSQL turns the flush-after
/// settings off by default elsewhere).
pub static BACKFILL_FLUSH_AFTER_BLOCKS: GucSetting<i32> =
    GucSetting::<i32>::new(if cfg!(target_os = "linux") { 32 } else { 0 });

#[derive(PostgresGucEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardMode {
    #[name = c"enforce"]
    Enforce,
    #[name = c"warn"]
    Warn,
    #[name = c"off"]
    Off,
}

/// Whether DDL that breaks a rule is refused, only warned about, or not judged at all.
pub static GUARD: GucSetting<GuardMode> = GucSetting::<GuardMode>::new(GuardMode::Enforce);
/// The schema version a client declares it was built for (`SET [LOCAL]
/// migrate.client_version = '43'`): which side of an expand window its writes come from.
pub static CLIENT_VERSION: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// How long an expand window stays open by default, and the longest it may be given.
pub static WINDOW_TTL_S: GucSetting<i32> = GucSetting::<i32>::new(3 * 86_400);
pub static MAX_WINDOW_TTL_S: GucSetting<i32> = GucSetting::<i32>::new(30 * 86_400);
pub static WINDOW_QUIET_TIME_S: GucSetting<i32> = GucSetting::<i32>::new(600);
pub static DEPRECATED_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(7 * 86_400);

/// Rule ids overridden for the current transaction (`SET LOCAL migrate.allow = '...'`).
pub static ALLOW: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Tables with at most this many estimated rows (and at most SMALL_TABLE_MAX_SIZE_KB) are
/// exempt from the lock and scan rules.
pub static SMALL_TABLE_THRESHOLD: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static SMALL_TABLE_MAX_SIZE_KB: GucSetting<i32> = GucSetting::<i32>::new(10 * 1024);

/// What `migrate.allow` says for the statement about to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// Rule ids set in this transaction by the current role, or by a role with its
    /// privileges (empty when unset).
    Honoured(Vec<String>),
    /// Set in an earlier transaction (a session-wide SET), which does not count.
    Stale(Vec<String>),
    /// Set by `setter`, which lacks the current role's privileges: an override belongs to
    /// the role that set it, so a plain role's SET LOCAL does not reach the DDL of an
    /// admin's SECURITY DEFINER function it calls.
    NotTheSetters(Vec<String>, String),
}

/// The rule ids in migrate.allow and whether they count here and now.
pub fn allowed_rules() -> Allowed {
    let ids: Vec<String> = ALLOW
        .get()
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default()
        .split(',')
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
        .collect();
    if ids.is_empty() {
        return Allowed::Honoured(ids);
    }
    if !crate::pg::guc::assigned_in_this_transaction() {
        return Allowed::Stale(ids);
    }
    // Whether the role running the statement may override at all (migrate_admin) is the
    // guard's policy; here only whether the override is that role's own.
    let setter = crate::pg::guc::setter_of(c"migrate.allow");
    if crate::pg::identity::has_privs_of(setter, crate::pg::identity::current_user()) {
        Allowed::Honoured(ids)
    } else {
        Allowed::NotTheSetters(ids, crate::pg::identity::role_name(setter))
    }
}

/// The health gate (issue 16): how often the worker samples the workload, the baseline a
/// watch takes from before the change, the time a change is given to settle, and the
/// thresholds of its judgement. Read by the worker: set them in postgresql.conf.
pub static WATCH_SAMPLE_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static WATCH_BASELINE_S: GucSetting<i32> = GucSetting::<i32>::new(300);
pub static WATCH_SETTLE_S: GucSetting<i32> = GucSetting::<i32>::new(30);
pub static WATCH_MIN_SAMPLES: GucSetting<i32> = GucSetting::<i32>::new(6);
pub static WATCH_MIN_ERRORS: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static WATCH_LOCK_WAIT_MS: GucSetting<i32> = GucSetting::<i32>::new(5_000);
pub static WATCH_ALPHA: GucSetting<f64> = GucSetting::<f64>::new(0.05);
pub static WATCH_LATENCY_TOLERANCE: GucSetting<f64> = GucSetting::<f64>::new(0.2);
pub static WATCH_BRAKE: GucSetting<f64> = GucSetting::<f64>::new(10.0);
pub static WATCH_LATENCY_FLOOR: GucSetting<f64> = GucSetting::<f64>::new(0.1);
pub static WATCH_GAUGE_RUN: GucSetting<i32> = GucSetting::<i32>::new(3);
pub static WATCH_LOOKS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(DEFAULT_LOOKS));

/// The looks of a watch applied now (`migrate.watch_looks`, checked when it is set).
pub fn watch_looks() -> Vec<f64> {
    let text = WATCH_LOOKS.get().map(|v| v.to_string_lossy().into_owned());
    text.as_deref()
        .and_then(|t| parse_looks(t).ok())
        .unwrap_or_else(default_looks)
}

/// Where a watch's looks fall by default (`migrate.watch_looks`), as fractions of the watch:
/// at a tenth, a fifth, half and the end (the 1, 2, 5 and 10 minutes of a ten-minute watch).
pub const DEFAULT_LOOKS: &std::ffi::CStr = c"0.1, 0.2, 0.5, 1";

/// The looks of DEFAULT_LOOKS.
pub fn default_looks() -> Vec<f64> {
    parse_looks(&DEFAULT_LOOKS.to_string_lossy()).unwrap_or_else(|_| vec![1.0])
}

/// The most looks a watch may have: each one spends a share of `migrate.watch_alpha`.
pub const MAX_LOOKS: usize = 20;

/// The looks of `migrate.watch_looks`: fractions of the watch, rising, the last one 1 (a watch
/// ends at its last look). Err says what is wrong, for the setting's error.
pub fn parse_looks(text: &str) -> Result<Vec<f64>, String> {
    let mut looks = Vec::new();
    for (n, item) in text.split(',').map(str::trim).enumerate() {
        if n == MAX_LOOKS {
            return Err(format!("More than {MAX_LOOKS} looks."));
        }
        let fraction: f64 = item
            .parse()
            .ok()
            .filter(|f: &f64| f.is_finite() && *f > 0.0 && *f <= 1.0)
            .ok_or_else(|| {
                format!("\"{item}\" is not a fraction of the watch above 0 and at most 1.")
            })?;
        if looks.last().is_some_and(|last| fraction <= *last) {
            return Err(format!(
                "The looks must rise: {fraction} comes after {}.",
                looks[looks.len() - 1]
            ));
        }
        looks.push(fraction);
    }
    if looks.last() != Some(&1.0) {
        return Err("The last look must be 1, the end of the watch.".into());
    }
    Ok(looks)
}

/// A setting's name, descriptions, variable, bounds (and unit).
type IntGuc = (
    &'static CStr,
    &'static CStr,
    &'static CStr,
    &'static GucSetting<i32>,
    i32,
    i32,
    GucFlags,
);
type FloatGuc = (
    &'static CStr,
    &'static CStr,
    &'static CStr,
    &'static GucSetting<f64>,
    f64,
    f64,
);

fn define_watch_gucs() {
    let ints: [IntGuc; 7] = [
        (
            c"migrate.watch_sample_interval",
            c"How often the worker samples the workload of a database with pg_migrate.",
            c"Each sample reads pg_stat_statements (when installed in the database) and the \
              errors counted by the log hook. 0 turns sampling, and so watches, off. A worker \
              that samples keeps its slot (migrate.max_workers) unless another database waits.",
            &WATCH_SAMPLE_INTERVAL_S,
            0,
            3600,
            GucFlags::UNIT_S,
        ),
        (
            c"migrate.watch_baseline",
            c"How much of the workload before a change a watch compares with.",
            c"Taken from the samples in shared memory when the migration is applied (at most \
              48 samples).",
            &WATCH_BASELINE_S,
            1,
            86_400,
            GucFlags::UNIT_S,
        ),
        (
            c"migrate.watch_settle",
            c"Samples this soon after a change are not judged.",
            c"Caches refill and plans are made again after DDL; the first seconds say little.",
            &WATCH_SETTLE_S,
            0,
            86_400,
            GucFlags::UNIT_S,
        ),
        (
            c"migrate.watch_min_samples",
            c"Samples needed on each side before latency can pass or fail a look.",
            c"",
            &WATCH_MIN_SAMPLES,
            2,
            1000,
            GucFlags::default(),
        ),
        (
            c"migrate.watch_min_errors",
            c"Errors of one kind beyond the baseline's rate needed to fail a look.",
            c"A handful of errors is not a regression, however unlikely the test finds them.",
            &WATCH_MIN_ERRORS,
            1,
            i32::MAX,
            GucFlags::default(),
        ),
        (
            c"migrate.watch_gauge_run",
            c"Samples in a row above a gauge's threshold that fail a look.",
            c"The gauges are the lock wait (migrate.watch_lock_wait) and the replication lag \
              (migrate.backfill_max_replication_lag): one sample above is a moment, several \
              in a row a state.",
            &WATCH_GAUGE_RUN,
            1,
            1000,
            GucFlags::default(),
        ),
        (
            c"migrate.watch_lock_wait",
            c"A lock wait this long, in migrate.watch_gauge_run samples in a row, fails a look.",
            c"The longest wait of any session for a lock on a relation the migration changed. \
              0 turns the rule off.",
            &WATCH_LOCK_WAIT_MS,
            0,
            i32::MAX,
            GucFlags::UNIT_MS,
        ),
    ];
    for (name, short, long, setting, min, max, flags) in ints {
        GucRegistry::define_int_guc(
            name,
            short,
            long,
            setting,
            min,
            max,
            GucContext::Sighup,
            flags,
        );
    }
    let floats: [FloatGuc; 4] = [
        (
            c"migrate.watch_alpha",
            c"The chance of a false alarm over all the looks and tests of one watch.",
            c"Spread evenly (Bonferroni) over every test of every look.",
            &WATCH_ALPHA,
            1e-9,
            0.5,
        ),
        (
            c"migrate.watch_latency_tolerance",
            c"How much slower statements may become and the change still pass (0.2: 20%).",
            c"A look passes when the upper bound of the latency ratio's confidence interval is \
              within it, and fails when the ratio is significantly above it.",
            &WATCH_LATENCY_TOLERANCE,
            0.0,
            100.0,
        ),
        (
            c"migrate.watch_latency_floor",
            c"Time per call (ms) a statement may add and the change still pass.",
            c"When in three watch samples of four no statement's time per call grew by more than this \
              over its baseline mean, a latency ratio is the noise of tiny times: the look \
              passes on it and does not fail. The brake is not affected. 0: the ratio alone.",
            &WATCH_LATENCY_FLOOR,
            0.0,
            1e6,
        ),
        (
            c"migrate.watch_brake",
            c"A latency ratio that fails a look at once.",
            c"Two samples this much slower than the baseline's median stop the watch without \
              waiting for a second failing look.",
            &WATCH_BRAKE,
            1.0,
            1e6,
        ),
    ];
    for (name, short, long, setting, min, max) in floats {
        GucRegistry::define_float_guc(
            name,
            short,
            long,
            setting,
            min,
            max,
            GucContext::Sighup,
            GucFlags::default(),
        );
    }
    crate::pg::guc::define_checked_string(
        c"migrate.watch_looks",
        c"When a watch looks at the workload, as fractions of its length.",
        c"Rising fractions, the last one 1, e.g. '0.1, 0.2, 0.5, 1': the 1, 2, 5 and 10 \
          minutes of a ten-minute watch. Each look spends a share of migrate.watch_alpha. \
          Recorded with each watch when it is applied.",
        &WATCH_LOOKS,
        GucContext::Sighup,
        |text| parse_looks(text).map(|_| ()),
        "Give rising fractions of the watch, the last one 1: e.g. '0.1, 0.2, 0.5, 1'.",
    );
}

pub fn init() {
    GucRegistry::define_int_guc(
        c"migrate.lock_timeout",
        c"Longest wait for a lock by any statement of a migration.",
        c"On timeout the migration's attempt is rolled back, releasing its locks so that other \
          sessions stop queueing behind it, and retried after a backoff. The guard sets it as \
          lock_timeout for DDL in sessions without one. 0 disables the limit. Superuser-only, \
          so that nobody can switch the guard's timeout off for themselves.",
        &LOCK_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"migrate.statement_timeout",
        c"Longest run of any statement of a migration.",
        c"0 disables the limit.",
        &STATEMENT_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Suset,
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
    GucRegistry::define_int_guc(
        c"migrate.max_script_size",
        c"Largest script migrate.apply, lint, dry_run and validate accept.",
        c"Parsing, judging and recording a script takes time and memory in proportion to it, \
          and lint and dry_run are open to every role. Superuser-only.",
        &MAX_SCRIPT_SIZE_KB,
        1,
        1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_bool_guc(
        c"migrate.out_of_order",
        c"Allows applying a version lower than the highest applied one.",
        c"",
        &OUT_OF_ORDER,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"migrate.guard",
        c"What the guard does with DDL that breaks a rule: enforce (refuse), warn, or off.",
        c"Only superusers may change it.",
        &GUARD,
        GucContext::Suset,
        GucFlags::default(),
    );
    // Kept in shared memory too, as sessions declare it: a session that declared a version
    // and has not used a window's tables yet is one of that version's clients.
    crate::pg::guc::define_assigned_string(
        c"migrate.client_version",
        c"The schema version this client was built for, during an expand window.",
        c"Writes by a client that declares the version of an open, published window are \
          bridged from the new columns to the old ones; every other write the other way. \
          Unset, the first schema of search_path decides (public_v43 declares version 43).",
        &CLIENT_VERSION,
        GucContext::Userset,
        crate::pg::declared::declare,
    );
    GucRegistry::define_int_guc(
        c"migrate.window_ttl",
        c"How long an expand window stays open when migrate.expand is given no ttl.",
        c"At most migrate.max_window_ttl.",
        &WINDOW_TTL_S,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"migrate.max_window_ttl",
        c"The longest time-to-live an expand window may be given.",
        c"Dual-write bridges cost every write; a window that outlives its rollout is a \
          liability. Superuser-only.",
        &MAX_WINDOW_TTL_S,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"migrate.window_quiet_time",
        c"How long the old version must not have written before an expired window with \
          on_expiry = 'contract' is contracted.",
        c"Read by the background worker (set it per database or server-wide). Superuser-only: \
          it decides when the worker ends windows by itself.",
        &WINDOW_QUIET_TIME_S,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"migrate.deprecated_retention",
        c"How long the columns an expand window set aside are kept after it ends (0: always).",
        c"The background worker drops them then (set it per database or server-wide). \
          Superuser-only: it decides when data is dropped.",
        &DEPRECATED_RETENTION_S,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    crate::pg::guc::define_transaction_string(
        c"migrate.allow",
        c"Guard rules overridden for this transaction (comma-separated rule ids).",
        c"Honoured for members of migrate_admin, and only in the transaction that set it: \
          use SET LOCAL. Data-loss rules are honoured only inside migrate.apply for a \
          migration that declares a rollback script.",
        &ALLOW,
    );
    GucRegistry::define_int_guc(
        c"migrate.small_table_threshold",
        c"Tables with at most this many estimated rows are exempt from the lock and scan rules.",
        c"They must also be at most migrate.small_table_max_size. Data-loss and rename rules \
          apply to every table. The estimate is PostgreSQL's planner estimate.",
        &SMALL_TABLE_THRESHOLD,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"migrate.small_table_max_size",
        c"Tables of at most this size (heap and TOAST) are exempt from the lock and scan rules.",
        c"They must also have at most migrate.small_table_threshold estimated rows.",
        &SMALL_TABLE_MAX_SIZE_KB,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"migrate.max_workers",
        c"Database workers running at once.",
        c"Each serves one database; they come out of max_worker_processes, beside the launcher.",
        &MAX_WORKERS,
        0,
        crate::pg::shmem::MAX_SLOTS as i32,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"migrate.index_build_retries",
        c"Retries of a CONCURRENTLY command that failed on a lock timeout, deadlock or serialization failure.",
        c"The INVALID index a failed build leaves is dropped concurrently before each retry.",
        &INDEX_BUILD_RETRIES,
        0,
        100,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"migrate.worker_idle_timeout",
        c"A database worker with nothing to do exits after this long.",
        c"New work starts one again at once. Short, because a connected worker makes DROP \
          DATABASE wait (it waits 5 s for other sessions to leave).",
        &WORKER_IDLE_TIMEOUT_S,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    backfill_settings();
    crate::pg::guc::reserve_prefix();
}

fn backfill_settings() {
    let sizes: [(&std::ffi::CStr, &std::ffi::CStr, &'static GucSetting<i32>); 3] = [
        (
            c"migrate.backfill_batch_size",
            c"Rows in a backfill's first batch.",
            &BACKFILL_BATCH_SIZE,
        ),
        (
            c"migrate.backfill_min_batch_size",
            c"Fewest rows in a backfill batch, however slow batches are.",
            &BACKFILL_MIN_BATCH_SIZE,
        ),
        (
            c"migrate.backfill_max_batch_size",
            c"Most rows in a backfill batch, however fast batches are.",
            &BACKFILL_MAX_BATCH_SIZE,
        ),
    ];
    for (name, short, setting) in sizes {
        GucRegistry::define_int_guc(
            name,
            short,
            c"The batch size adapts to hold migrate.backfill_batch_time. Read when a backfill is submitted.",
            setting,
            1,
            i32::MAX,
            GucContext::Userset,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"migrate.backfill_batch_time",
        c"How long each backfill batch aims to take.",
        c"A batch holds the locks of the rows it updated until it commits, so this is the \
          longest a writer touching one of them waits. Read when a backfill is submitted.",
        &BACKFILL_BATCH_TIME_MS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"migrate.backfill_pause",
        c"Sleep between two backfill batches.",
        c"Leaves I/O and CPU to the application. Read when a backfill is submitted.",
        &BACKFILL_PAUSE_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"migrate.backfill_max_replication_lag",
        c"How far a streaming replica may fall behind in replay before backfills pause.",
        c"Measured in WAL bytes from pg_stat_replication, and for a physical slot whose \
          standby is disconnected, by the WAL it keeps; the backfill resumes once every \
          replica is within it again. 0 disables the check. Read when a backfill is submitted.",
        &BACKFILL_MAX_REPLICATION_LAG_KB,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"migrate.backfill_flush_after",
        c"backend_flush_after for backfill batches: how much they write before the OS is asked to write it out.",
        c"A backfill rewrites the whole table. Left to the kernel, its pages pile up in the page \
          cache until a checkpoint's fsync writes them all at once, and every session that \
          commits then waits for the disk. 0 keeps the server's backend_flush_after. Read \
          by the worker before each batch.",
        &BACKFILL_FLUSH_AFTER_BLOCKS,
        0,
        256, // WRITEBACK_MAX_PENDING_FLUSHES, backend_flush_after's own limit
        GucContext::Sighup,
        GucFlags::UNIT_BLOCKS,
    );
    define_watch_gucs();
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn looks_are_rising_fractions_ending_at_one() {
        assert_eq!(parse_looks("1").unwrap(), [1.0]);
        assert_eq!(parse_looks(" 0.25,0.5 , 1.0").unwrap(), [0.25, 0.5, 1.0]);
        let error = |text: &str| parse_looks(text).unwrap_err();
        assert!(
            error("").contains("\"\" is not a fraction"),
            "{}",
            error("")
        );
        assert!(error("0.1, x, 1").contains("\"x\""));
        assert!(error("0, 1").contains("above 0"));
        assert!(error("0.5, 1.5").contains("\"1.5\""));
        assert!(error("NaN, 1").contains("NaN"));
        assert!(error("0.5, 0.2, 1").contains("must rise: 0.2 comes after 0.5"));
        assert!(error("0.5, 0.5, 1").contains("must rise"));
        assert!(error("0.1, 0.5").contains("last look must be 1"));
        let many = (1..=21)
            .map(|i| format!("{}", i as f64 / 21.0))
            .collect::<Vec<_>>()
            .join(",");
        assert!(
            error(&many).contains("More than 20 looks"),
            "{}",
            error(&many)
        );
    }
}
