//! Expand/contract windows: `migrate.expand` plans the DDL a DBA means as steps that keep
//! the old and the new application version working at once, and applies them as a migration
//! of the same version (its backfills in the worker, the new version's views published
//! last); `migrate.contract` ends the window on the new shape, `migrate.abort` on the old one.

pub mod facts;
pub mod options;
pub mod plan;
pub mod privileges;
pub mod sessions;
pub mod ttl;

use crate::apply;
use crate::errors::{self, OrBookkeeping, OrRaise, Problem};
use crate::history::{self, lock::lock_history};
use crate::migration::checksum::Checksums;
use crate::migration::limits::Policy;
use crate::migration::running::{self, Running};
use crate::migration::script::require_script;
use crate::migration::status::{OnRegression, Status, WindowEnd};
use crate::migration::version::Version;
use crate::pg::expand::{self as read, Request, Unread};
use crate::pg::identity;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use plan::{EndStep, Plan};

type StepRow = (i32, String, String, Option<String>);

// The SQL signature is the API: each argument a named, defaulted parameter.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
fn expand(
    version: Option<&str>,
    script: Option<&str>,
    ttl: default!(Option<Interval>, "NULL"),
    description: default!(Option<&str>, "NULL"),
    dry_run: default!(bool, false),
    on_expiry: default!(&str, "'alert'"),
    options: default!(Option<JsonB>, "NULL"),
    watch: default!(Option<Interval>, "NULL"),
    on_regression: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(step, i32),
        name!(stage, String),
        name!(statement, String),
        name!(lock, Option<String>),
    ),
> {
    if !dry_run {
        identity::require_admin("open expand windows").or_raise();
    }
    let version = Version::parse(version).or_raise();
    let source = require_script(script).or_raise();
    let ttl_s = ttl_seconds(ttl).or_raise();
    let on_expiry = ttl::OnExpiry::parse(on_expiry).or_raise();
    let watch = watch_request(watch.as_ref(), on_regression).or_raise();
    let given = options
        .as_ref()
        .map(|o| options::parse(&o.0, split_name))
        .transpose()
        .or_raise()
        .unwrap_or_default();
    let what = format!("expand window {version}");
    let trees = apply::parse_for_apply(&what, source).or_raise();
    let mut asked: Vec<(pg_sys::Oid, Vec<Request>)> = Vec::new();
    // What the planner has no steps for runs as written, in order, before the window's own
    // steps: judged by the guard like any migration's statement (refused if unsafe).
    // (index in `trees`, text)
    let mut as_written: Vec<(usize, String)> = Vec::new();
    for (i, (statement, tree)) in trees.iter().enumerate() {
        // An index build that would block writes is built CONCURRENTLY instead, where it was
        // written (a later statement may use it).
        if read::builds_index_blocking(*tree) {
            let text = statement_text(statement.text(source));
            let built = crate::migration::parse::build_concurrently(&text).unwrap_or(text);
            as_written.push((i, built));
            continue;
        }
        let requested = match read::read(*tree) {
            Ok(r) if r.requests.iter().all(|r| matches!(r, Request::Other(_))) => {
                as_written.push((i, statement_text(statement.text(source))));
                continue;
            }
            Ok(r) => r,
            Err(Unread::NotPlanned(_)) => {
                as_written.push((i, statement_text(statement.text(source))));
                continue;
            }
            Err(u) => unread(&what, statement.number, u).raise(),
        };
        match asked.iter_mut().find(|(oid, _)| *oid == requested.table) {
            Some((_, requests)) => requests.extend(requested.requests),
            None => asked.push((requested.table, requested.requests)),
        }
    }
    if asked.is_empty() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{what}: nothing in the script needs an expand window"),
            "A window is planned from ALTER TABLE ... ALTER COLUMN ... TYPE, ADD COLUMN, DROP \
             COLUMN, RENAME COLUMN, RENAME TO, SET NOT NULL and ADD CONSTRAINT of plain \
             tables, and CREATE INDEX beside them; the script has none.",
            "Apply it with migrate.apply.",
        )
        .raise();
    }
    // Under the applier lock, before the catalogs are read for the plan: a version that has
    // its window (or its migration) already says so, whatever the plan would find now.
    // The options shape the plan as the script does: the same window is the same both.
    let checksum = match &options {
        Some(o) => Checksums::of(&format!("{source}\n-- options: {}", o.0)).normalized,
        None => Checksums::of(source).normalized,
    };
    if !dry_run {
        lock_history();
        if let Some((recorded, ended)) = recorded_source(&version) {
            if recorded == checksum && ended.is_none() {
                errors::notice(format!(
                    "version {version} already has this expand window; nothing to do (see \
                 migrate.windows)"
                ));
                return TableIterator::new(Vec::new());
            }
            Problem::new(
                PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                format!("version {version} already has an expand window"),
                match ended {
                    Some(end) => format!("It was opened with other DDL and has been {end}."),
                    None => "It was opened with other DDL (the checksums differ).".into(),
                },
                "Open a window for a new version.",
            )
            .raise();
        }
        if let Some(recorded) = history::find(&version) {
            Problem::new(
                PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                format!(
                    "version {version} is already recorded in migrate.history ({})",
                    recorded.status
                ),
                "A window's expand is the migration of its version; this one exists already.",
                "Open the window under a new version.",
            )
            .raise();
        }
    }
    let mut tables: Vec<(pg_sys::Oid, plan::Table, Vec<Request>)> = asked
        .into_iter()
        .filter_map(|(oid, requests)| {
            let relations: Vec<String> = requests
                .iter()
                .filter_map(|r| match r {
                    Request::AddKey { name, .. } => Some(name.clone()),
                    Request::RenameTable { new_name } => Some(new_name.clone()),
                    _ => None,
                })
                .collect();
            let constraints: Vec<String> = requests
                .iter()
                .filter_map(|r| match r {
                    Request::AddKey { name, .. } | Request::AddConstraint { name, .. } => {
                        Some(name.clone())
                    }
                    _ => None,
                })
                .collect();
            let table = facts::table(
                oid,
                |schema| plan::view_schema(schema, version.as_str()),
                &relations,
                &constraints,
            )?;
            Some((oid, table, requests))
        })
        .collect();
    apply_options(&what, &given, &mut tables).or_raise();
    let tables: Vec<(plan::Table, Vec<Request>)> =
        tables.into_iter().map(|(_, t, r)| (t, r)).collect();
    if !dry_run {
        // Before the plan: another window's views and copies on a table are not what this
        // one's refusals should be about.
        let names: Vec<String> = tables
            .iter()
            .map(|(t, _)| t.qualified(crate::pg::catalog::quote_ident))
            .collect();
        refuse_overlap(&names).or_raise();
    }
    let mut planned =
        plan::plan(version.as_str(), &tables, crate::pg::catalog::quote_ident).or_raise();
    // The plan was read from the catalogs as they are before any statement runs: one kept as
    // written that changed a table of the window would be planned around wrongly.
    for (statement, tree) in as_written.iter().map(|(i, _)| &trees[*i]) {
        let named = crate::guard::hooks::trigger::read_command(*tree, &statement.tag)
            .map(|mut c| {
                c.rels_mut()
                    .iter()
                    .map(|r| r.name.clone())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        // A rename or a hidden column does not depend on what else the table has; a copy
        // does (its indexes, defaults and constraints were read for the plan).
        if let Some(table) = named
            .iter()
            .find(|n| planned.checks.iter().any(|c| c.table == **n))
        {
            Problem::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "{what}, statement {}: {} changes {table}, whose columns the window copies",
                    statement.number, statement.tag
                ),
                "The window's steps are planned from the table as it is before the script \
                 runs; a statement run as written beside them would be planned around wrongly.",
                "Run it with migrate.apply before expand, or after contract.",
            )
            .raise();
        }
    }
    plan::pin_printed(&mut planned.expand);
    planned.expand.splice(
        0..0,
        as_written
            .into_iter()
            .map(|(_, sql)| (plan::Stage::Expand, sql)),
    );
    let rows = step_rows(&planned);
    if dry_run {
        return TableIterator::new(rows);
    }
    let schemas: Vec<String> = tables.iter().map(|(t, _)| t.schema.clone()).collect();
    refuse_taken_functions(&schemas, &planned.objects).or_raise();
    refuse_expired().or_raise();
    let script = planned.script();
    // A window with nothing for the worker runs here, in the caller's transaction: the
    // search path the plan pins for its statements is the caller's again afterwards (saved
    // as a function's SET clause saves it: a SET LOCAL inside ends with it). Its statements,
    // and the worker's steps (which carry the setting), see every row of the tables or fail:
    // row_security is off, as pg_dump sets it.
    let path = crate::pg::guc::current("search_path").unwrap_or_default();
    let restores_settings =
        crate::pg::guc::SettingScope::set(&[("search_path", &path), ("row_security", "off")]);
    // A window with nothing for the worker publishes here, before its row is written.
    let (status, ..) = privileges::with_pending(version.as_str(), &planned.mirrors, || {
        apply::apply_script(
            &version,
            &script,
            Some(&format!(
                "expand: {}",
                description.unwrap_or(first_line(source))
            )),
            None,
            Vec::new(),
            None,
            watch,
        )
    });
    drop(restores_settings);
    if Status::parse(&status).is_none_or(|s| !matches!(s, Status::Applied | Status::Pending)) {
        // Covered by a baseline: nothing ran, and no window opens.
        Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("version {version} was not applied ({status})"),
            "A window opens only when its expand script runs.",
            "Open the window under a version above the baseline.",
        )
        .raise();
    }
    record(
        &version,
        description,
        source,
        &checksum,
        &planned,
        (ttl_s, on_expiry, options.as_ref()),
    );
    // Sessions are known by the tables they use once this transaction commits.
    sessions::register_open_at_commit();
    // The worker keeps the window's time: it reads it once this transaction commits.
    crate::pg::shmem::wake_at_commit();
    TableIterator::new(rows)
}

/// A window's watch: the health gate between publish and contract. A window's regression is
/// not rolled back by the gate: its way back is `migrate.abort`, which keeps what new
/// clients wrote, and that is the DBA's to decide; a failed gate holds the window.
fn watch_request(
    watch: Option<&Interval>,
    on_regression: Option<&str>,
) -> Result<Option<crate::watch::Request>, Problem> {
    if on_regression == Some(OnRegression::Rollback.as_str()) {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "an expand window's health gate does not roll it back",
            "A window is given up with migrate.abort, which keeps what new clients wrote; a \
             failed gate holds the window for that decision (contract is refused meanwhile).",
            "Pass on_regression => 'hold' (the default), or leave it out.",
        ));
    }
    crate::watch::request(watch, on_regression, false)
}

/// An options key's identifiers, as PostgreSQL reads a qualified name.
fn split_name(key: &str) -> Result<Vec<String>, Problem> {
    crate::pg::spi::pinned_row("SELECT pg_catalog.parse_ident($1)", &[key.into()], |row| {
        row.get::<Vec<String>>(1)
    })
    .ok()
    .flatten()
    .flatten()
    .ok_or_else(|| {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("options key {key} is not a qualified name"),
            "A key is table.column or schema.table.column, quoted as SQL quotes identifiers.",
            "Write it as in SQL, e.g. \"Orders\".amount.",
        )
    })
}

/// Each column's options given to the change they are for: the conversion back of a type
/// change that copies, analysed as the caller's (`$1` for the new value). An option for no
/// such change, or two for one column, is refused.
fn apply_options(
    what: &str,
    given: &[options::Given],
    tables: &mut [(pg_sys::Oid, plan::Table, Vec<Request>)],
) -> Result<(), Problem> {
    let mut used = vec![false; given.len()];
    for (oid, table, requests) in tables.iter_mut() {
        for request in requests.iter_mut() {
            let Request::ChangeType {
                column,
                new_type,
                rewrites: true,
                down_param,
                ..
            } = request
            else {
                continue;
            };
            let mut found = given
                .iter()
                .enumerate()
                .filter(|(_, g)| g.names(&table.schema, &table.name, column));
            let Some((i, g)) = found.next() else { continue };
            if let Some((_, other)) = found.next() {
                return Err(Problem::new(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!(
                        "{what}: options {} and {} name the same column",
                        g.key, other.key
                    ),
                    "Each column has one conversion back.",
                    "Give the column's options once.",
                ));
            }
            used[i] = true;
            let converted = read::conversion_back(*oid, column, new_type, &g.options.down)
                .map_err(|caught| {
                    Problem::new(
                        caught.code,
                        format!(
                            "{what}: the conversion back of {}: {}",
                            g.key, caught.message
                        ),
                        "It is analysed as an expression of the column's new value, named as \
                         the column, that gives the old type's value; it may name no other \
                         column.",
                        caught.hint.unwrap_or_else(|| {
                            "Fix the expression, e.g. (amount / 100)::integer.".into()
                        }),
                    )
                })?;
            if converted.mutable {
                return Err(Problem::new(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!("{what}: the conversion back of {} is not immutable", g.key),
                    "It calls something that depends on session settings or the database's \
                     contents: writers would convert the same value differently.",
                    "Use immutable functions and operators only.",
                ));
            }
            if let Some(why) = converted.untrusted {
                return Err(untrusted(what, &g.key, &why));
            }
            *down_param = Some(converted.sql);
        }
    }
    match given.iter().zip(&used).find(|(_, used)| !**used) {
        Some((g, _)) => Err(Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "{what}: options name {}, whose type the script does not change with a copy",
                g.key
            ),
            "A conversion back is for a column the window copies to a new type (a change that \
             rewrites the table); other changes need none.",
            "Leave the key out, or check its table and column names.",
        )),
        None => Ok(()),
    }
}

/// A conversion that would run someone's code in every writer's session.
pub fn untrusted(what: &str, column: &str, why: &str) -> Problem {
    Problem::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("{what}: the conversion of {column} calls {why}"),
        "During the window every writer's session runs the conversions, with the writer's \
         rights: a superuser's too. Code a role can change (or that calls such code) would \
         run with them, so only PostgreSQL's own functions, operators, casts and types are \
         trusted there.",
        "Write the conversion with PostgreSQL's own functions, operators and casts, or change \
         the type with migrate.apply.",
    )
}

/// The new version's side of a write, for the bridge triggers' WHEN clauses: whether the
/// statement writing goes through the window's views, or else what its session declares (a
/// setting, or the search path); a plain lookup, bounded and side-effect free, so executable
/// by every writer.
#[pg_extern(stable, parallel_safe)]
fn writes_version(version: &str, schema: &str) -> bool {
    // What the query running does (through the new version's views or not) is known better
    // than what its session declared: a session of either may name the other's objects.
    if let Some(new) = sessions::side_of(window_key(version)) {
        return new;
    }
    let declared = crate::gucs::CLIENT_VERSION
        .get()
        .map(|v| v.to_string_lossy().into_owned());
    read::writes_version(version, schema, declared.as_deref())
}

/// A window's key in shared memory.
pub use crate::pg::shmem::version_key as window_key;

/// Counts a write statement to a window's table by the side that wrote it (the window's
/// version and view schema are the trigger's arguments): a BEFORE ... FOR EACH STATEMENT
/// trigger that every writer runs, so it only reads a setting and the search path and adds
/// to a counter in shared memory, bounded and side-effect free.
#[pg_trigger]
fn count_window_write<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, pgrx::PgTriggerError> {
    // pg_migrate's own writes (the worker's backfills and phases, contract's steps) are
    // neither version's.
    if crate::pg::process::is_migrate_worker() || running::is_applying() {
        return Ok(None);
    }
    let args = trigger.extra_args()?;
    if let [version, schema] = args.as_slice() {
        let new = writes_version(version, schema);
        crate::pg::shmem::count_write(crate::pg::process::database(), window_key(version), new);
    }
    Ok(None)
}

/// A window's writes by each version: what was counted since the worker last took them
/// into the window's row (in shared memory, since the server started).
#[allow(clippy::type_complexity)]
#[pg_extern(stable, parallel_safe)]
fn window_writes(
    version: &str,
) -> TableIterator<
    'static,
    (
        name!(old_writes, i64),
        name!(new_writes, i64),
        name!(old_last_write, Option<TimestampWithTimeZone>),
        name!(new_last_write, Option<TimestampWithTimeZone>),
        name!(old_writes_last_minute, i64),
        name!(new_writes_last_minute, i64),
    ),
> {
    let database = crate::pg::process::database();
    let [old, new] = crate::pg::shmem::window_writes(database, window_key(version), false);
    let at = |t: i64| {
        (t != 0)
            .then(|| TimestampWithTimeZone::try_from(t).ok())
            .flatten()
    };
    TableIterator::once((
        old.writes as i64,
        new.writes as i64,
        at(old.last),
        at(new.last),
        old.last_minute as i64,
        new.last_minute as i64,
    ))
}

/// The sessions still connected that used a window's tables (read or wrote them), one row
/// per version each used them as, `known_by` 'use'; and those that have not used them but
/// declare a version (`migrate.client_version`), on the side the bridge takes it for,
/// `known_by` 'declaration': which clients of the old version are left (see
/// `pg_stat_activity` by pid for who they are). A session that neither used them since the
/// window opened (or the server started) nor declares a version is not known.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn window_sessions(
    version: &str,
) -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(side, String),
        name!(writes, i64),
        name!(last_write, Option<TimestampWithTimeZone>),
        name!(last_seen, Option<TimestampWithTimeZone>),
        name!(known_by, String),
    ),
> {
    let database = crate::pg::process::database();
    // As pg_stat_activity shows what sessions do: those of roles whose privileges the caller
    // has, or all with pg_read_all_stats.
    let sessions: Vec<_> = sessions::connected(database, version)
        .into_iter()
        .filter(|c| crate::pg::process::may_see(c.side.pid))
        .collect();
    let at = |t: i64| {
        (t != 0)
            .then(|| TimestampWithTimeZone::try_from(t).ok())
            .flatten()
    };
    TableIterator::new(sessions.into_iter().map(move |c| {
        let s = c.side;
        (
            s.pid,
            if s.new { "new" } else { "old" }.to_string(),
            s.writes as i64,
            at(s.last),
            at(s.seen),
            if c.declared_only {
                "declaration"
            } else {
                "use"
            }
            .to_string(),
        )
    }))
}

#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
fn contract(
    version: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(step, i32),
        name!(stage, String),
        name!(statement, String),
        name!(lock, Option<String>),
    ),
> {
    TableIterator::new(sessions::own(|| end(version, WindowEnd::Contracted)))
}

#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
fn abort(
    version: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(step, i32),
        name!(stage, String),
        name!(statement, String),
        name!(lock, Option<String>),
    ),
> {
    TableIterator::new(sessions::own(|| end(version, WindowEnd::Aborted)))
}

/// Contracts or aborts a window in the caller's transaction: its statements, run with the
/// caller's rights under the migration lock timeouts and retries, and the window's end.
fn end(version: Option<&str>, how: WindowEnd) -> Vec<StepRow> {
    let verb = match how {
        WindowEnd::Contracted => "contract",
        WindowEnd::Aborted => "abort",
    };
    identity::require_admin(&format!("{verb} expand windows")).or_raise();
    let version = Version::parse(version).or_raise();
    lock_history();
    let Some(window) = open_window(&version) else {
        Problem::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("version {version} has no expand window"),
            "migrate.window_history has no row for it.",
            "See migrate.windows for the windows there are.",
        )
        .raise();
    };
    if let Some(ended) = window.ended {
        Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the expand window of version {version} has already been {ended}"),
            format!("It was {ended} at {}.", window.ended_at.unwrap_or_default()),
            "Nothing is left to do for it.",
        )
        .raise();
    }
    let status = history::find(&version).map(|r| r.status);
    refuse_end(&version, how, status).or_raise();
    match how {
        WindowEnd::Contracted => {
            crate::watch::refuse_contract(version.as_str()).or_raise();
            // Another migration's gate: a contract made meanwhile would be judged as its
            // change. Abort stays open to all: it is the way back.
            crate::watch::refuse_while_open(version.as_str()).or_raise();
        }
        WindowEnd::Aborted => crate::watch::window_aborted(version.as_str(), &window.opened_by),
    }
    refuse_dependents(&version, verb, &window.schemas).or_raise();
    if how == WindowEnd::Contracted {
        // The row count runs as the opener, in this session: only a caller with the
        // opener's privileges may run it, as migrate.verify and migrate.retry require.
        identity::require_privileges_of(&window.opened_by, &format!("contract window {version}"))
            .or_raise();
        // Before any lock is taken: it only reads shared memory and the process array.
        warn_old_sessions(&version);
        lock_bridged(&version, &window).or_raise();
        refuse_drift(&version, &window).or_raise();
    }
    let steps: Vec<&EndStep> = match how {
        WindowEnd::Contracted => window.contract.iter().collect(),
        WindowEnd::Aborted => window
            .abort
            .iter()
            .filter(|s| {
                s.needs_column
                    .as_ref()
                    .is_none_or(|(schema, table, column)| {
                        facts::column_exists(schema, table, column)
                    })
            })
            .collect(),
    };
    let script: String = steps.iter().map(|s| format!("{};\n", s.sql)).collect();
    let what = format!("the {verb} of window {version}");
    if !script.is_empty() {
        let trees = apply::parse_for_apply(&what, &script).or_raise();
        let statements: Vec<_> = trees.into_iter().map(|(s, _)| s).collect();
        crate::history::record::drift();
        let running = Running {
            version: version.to_string(),
            has_rollback: false,
            // Renames are contract's own steps; contract drops the indexes its copies
            // replace, abort those it built: on a table the renames lock anyway, or briefly,
            // under the same timeouts.
            allow: vec![
                "rename-column".into(),
                "rename-table".into(),
                "index-drop-blocking".into(),
            ],
        };
        running::with_running(running, || {
            apply::attempt::run(&what, &script, &statements, Policy::from_settings())
        });
        refuse_set_aside_dependents(&version, verb).or_raise();
        crate::history::record::applied(version.as_str());
    }
    // The writes counted since the worker last took them, kept in the row with the others.
    ttl::take_writes(version.as_str(), false);
    // The worker drops the set-aside columns after the retention: it learns when at commit.
    crate::pg::shmem::wake_at_commit();
    crate::pg::spi::write_as_owner(
        "migrate.window_history",
        "UPDATE migrate.window_history SET ended = $2, ended_at = clock_timestamp(), \
           ended_by = $3 WHERE version = $1",
        &[
            version.as_str().into(),
            how.as_str().into(),
            identity::current_user_name().into(),
        ],
    );
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                i as i32 + 1,
                verb.to_string(),
                s.sql.clone(),
                lock_of(verb, &s.sql),
            )
        })
        .collect()
}

/// Contract goes on (the DBA knows the rollout), but says which sessions still connected
/// used the old version: after the swap their statements may fail.
fn warn_old_sessions(version: &Version) {
    if !sessions::all_known(crate::pg::process::database()) {
        Problem::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("the sessions that used window {version} may not all be known"),
            format!(
                "More than {} sessions used open windows at once since the server started, \
                 and the places of some that are still connected were reused; or not every \
                 table of this database's open windows could be looked for in its queries \
                 (more than {} in open windows at once, or one renamed or dropped outside \
                 the window).",
                crate::pg::shmem::MAX_SESSIONS,
                crate::pg::shmem::MAX_WINDOW_TABLES
            ),
            "Check pg_stat_activity for clients of the old version before contract.",
        )
        .report(pgrx::PgLogLevel::WARNING);
    }
    let database = crate::pg::process::database();
    // Not the caller's own session: it is contracting.
    let caller = crate::pg::process::pid();
    let mut old: Vec<i32> = sessions::connected(database, version.as_str())
        .into_iter()
        .filter(|c| !c.side.new && c.side.pid != caller)
        .map(|c| c.side.pid)
        .collect();
    if old.is_empty() {
        return;
    }
    old.sort_unstable();
    let pids: Vec<String> = old.iter().map(i32::to_string).collect();
    Problem::new(
        PgSqlErrorCode::ERRCODE_WARNING,
        format!(
            "{} sessions still connected used the old version of window {version}",
            old.len()
        ),
        format!(
            "Sessions {} read or wrote its tables through the old schema, or have not used \
             them and declare a version other than {version} (migrate.client_version); after \
             contract, statements that use the old names or types fail.",
            pids.join(", ")
        ),
        format!(
            "See who they are: SELECT * FROM pg_stat_activity WHERE pid IN (SELECT pid FROM \
             migrate.window_sessions('{version}') WHERE side = 'old')."
        ),
    )
    .report(pgrx::PgLogLevel::WARNING);
}

/// Contract needs the window published (every phase done); abort needs the worker to have
/// stopped with it: a running phase is cancelled first, a failed one cancelled or retried.
fn refuse_end(version: &Version, how: WindowEnd, status: Option<Status>) -> Result<(), Problem> {
    let ok = match how {
        WindowEnd::Contracted => status == Some(Status::Applied),
        WindowEnd::Aborted => matches!(status, Some(Status::Applied | Status::Cancelled)),
    };
    if ok {
        return Ok(());
    }
    let status = status.map_or("not recorded".to_string(), |s| s.to_string());
    let hint = match (how, status.as_str()) {
        (WindowEnd::Contracted, "pending" | "running") => {
            format!("Wait until it is published: CALL migrate.wait('{version}'), then contract.")
        }
        (WindowEnd::Contracted, _) => format!(
            "Fix what failed and SELECT migrate.retry('{version}'), or give up with \
             migrate.abort('{version}')."
        ),
        (_, _) => format!("Stop it first with SELECT migrate.cancel('{version}'), then abort."),
    };
    Err(Problem::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "the expand window of version {version} cannot be {} now: its migration is {status}",
            how.as_str()
        ),
        match how {
            WindowEnd::Contracted => {
                "A window is contracted once it is published: its \
                                      backfills done, its columns validated and in step, its \
                                      views created."
            }
            WindowEnd::Aborted => {
                "A window is aborted once the background worker has stopped \
                                   running its phases."
            }
        },
        hint,
    ))
}

/// A window recorded for `version`.
struct Window {
    contract: Vec<EndStep>,
    abort: Vec<EndStep>,
    checks: Vec<plan::Check>,
    opened_by: String,
    ended: Option<String>,
    ended_at: Option<String>,
    /// The schemas of the new version's views.
    schemas: Vec<String>,
}

/// The window of `version`, its row locked (as the owner: admins only read the table) so
/// that a concurrent contract or abort waits for this one.
fn open_window(version: &Version) -> Option<Window> {
    identity::as_owner(|| {
        crate::pg::spi::read_own_row(
            "migrate.window_history",
            "SELECT contract_steps, abort_steps, checks, opened_by::text, ended, ended_at::text, \
                    schemas FROM migrate.window_history WHERE version = $1 FOR UPDATE",
            &[version.as_str().into()],
            |row| {
                // Steps or checks that do not read back are an error, never skipped.
                fn json<T: serde::de::DeserializeOwned>(
                    value: Option<JsonB>,
                ) -> Result<T, pgrx::spi::Error> {
                    value
                        .and_then(|j| serde_json::from_value(j.0).ok())
                        .ok_or(pgrx::spi::Error::InvalidPosition)
                }
                Ok(Window {
                    contract: json(row.get::<JsonB>(1)?)?,
                    abort: json(row.get::<JsonB>(2)?)?,
                    checks: json(row.get::<JsonB>(3)?)?,
                    opened_by: row.get::<String>(4)?.unwrap_or_default(),
                    ended: row.get(5)?,
                    ended_at: row.get(6)?,
                    schemas: row.get::<Vec<String>>(7)?.unwrap_or_default(),
                })
            },
        )
    })
}

/// Contract and abort drop the new version's views: what others built on them (a view, a
/// function with a SQL-standard body, a trigger) would make the drop fail, with PostgreSQL's
/// hint to CASCADE, which neither can. Said first, with what to do.
fn refuse_dependents(version: &Version, verb: &str, schemas: &[String]) -> Result<(), Problem> {
    // Dependents of the views in the window's schemas, but the views' own rules.
    let found = crate::pg::spi::pinned_pairs::<String, String>(
        "WITH views AS (SELECT c.oid FROM pg_class c JOIN pg_namespace n \
                          ON n.oid = c.relnamespace WHERE n.nspname = ANY ($1)) \
         SELECT DISTINCT CASE WHEN d.classid = 'pg_rewrite'::regclass \
                   THEN pg_describe_object('pg_class'::regclass, r.ev_class, 0) \
                   ELSE pg_describe_object(d.classid, d.objid, d.objsubid) END, \
                pg_describe_object(d.refclassid, d.refobjid, 0) \
         FROM pg_depend d \
         LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid \
         WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid IN (SELECT oid FROM views) \
           AND d.deptype = 'n' \
           AND (r.ev_class IS NULL OR r.ev_class NOT IN (SELECT oid FROM views)) \
         ORDER BY 1, 2",
        &[schemas.to_vec().into()],
    )
    .or_bookkeeping("read what depends on the new version's views");
    dependents_found(
        version,
        verb,
        &found,
        "its new version's views",
        &format!("The {verb} drops the views, and nothing that depends on them may stay"),
        if verb == "contract" {
            "Drop them, contract, then create them again over the tables, which then have the \
             new version's shape."
                .to_string()
        } else {
            "Drop them (the new version goes away with the window), then abort again.".to_string()
        },
    )
}

/// Refuses ending window `version` for the (dependent, what it depends on) pairs `found`,
/// if any: on `what`, saying `why` and `hint`.
fn dependents_found(
    version: &Version,
    verb: &str,
    found: &[(String, String)],
    what: &str,
    why: &str,
    hint: String,
) -> Result<(), Problem> {
    if found.is_empty() {
        return Ok(());
    }
    let listed = crate::guard::rule::listed(
        found
            .iter()
            .map(|(dependent, on)| format!("{dependent} depends on {on}")),
    );
    let ended = if verb == "contract" {
        "contracted"
    } else {
        "aborted"
    };
    Err(Problem::new(
        PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
        format!("window {version} cannot be {ended}: other objects depend on {what}"),
        format!("{why}: {listed}."),
        hint,
    ))
}

/// After the steps, still in their transaction: nothing but what PostgreSQL drops with them
/// (indexes, constraints, defaults, triggers) depends on a column the window set aside. A
/// view or a policy written on a column during the window follows its number through the
/// swap, and would go on reading the column nobody keeps in step (and keep the drop after the
/// retention from ever happening): the whole end is rolled back instead.
fn refuse_set_aside_dependents(version: &Version, verb: &str) -> Result<(), Problem> {
    let found = identity::as_owner(|| {
        crate::pg::spi::pinned_pairs::<String, String>(
            "SELECT DISTINCT CASE WHEN d.classid = 'pg_rewrite'::regclass \
                       THEN pg_describe_object('pg_class'::regclass, r.ev_class, 0) \
                       ELSE pg_describe_object(d.classid, d.objid, d.objsubid) END, \
                    pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid) \
             FROM migrate.window_history w \
             CROSS JOIN LATERAL jsonb_array_elements(w.deprecated) c \
             JOIN pg_namespace n ON n.nspname = c ->> 0 \
             JOIN pg_class t ON t.relnamespace = n.oid AND t.relname = c ->> 1 \
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attname = c ->> 2 \
             JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = t.oid \
                             AND d.refobjsubid = a.attnum AND d.deptype = 'n' \
             LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid \
             WHERE w.version = $1 \
               AND d.classid NOT IN ('pg_constraint'::regclass, 'pg_class'::regclass, \
                                     'pg_attrdef'::regclass, 'pg_trigger'::regclass) \
             ORDER BY 1, 2",
            &[version.as_str().into()],
        )
    })
    .or_bookkeeping("read what depends on the columns the window sets aside");
    dependents_found(
        version,
        verb,
        &found,
        "the columns it sets aside",
        "They were written during the window, and would go on using the set-aside columns, \
         which no version writes any more",
        format!("Drop them, {verb} again, then create them again on the columns the table keeps."),
    )
}

/// Before contract swaps the columns: every bridge is in place and every row in step, or
/// the swap would make a difference between them permanent. The count runs as the role that
/// opened the window (its conversions are that role's), with only pg_catalog on the path
/// (they are printed qualified).
fn refuse_drift(version: &Version, window: &Window) -> Result<(), Problem> {
    for check in &window.checks {
        let enabled = crate::pg::spi::pinned_row(
            "SELECT tgenabled = 'A' FROM pg_trigger \
             WHERE tgrelid = to_regclass($1) AND tgname = $2",
            &[check.table.as_str().into(), check.trigger.as_str().into()],
            |row| row.get::<bool>(1),
        )
        .or_bookkeeping("read pg_trigger")
        .flatten();
        if enabled != Some(true) {
            return Err(Problem::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "the bridge of {} is {}: window {version} cannot be contracted",
                    check.table,
                    if enabled.is_none() {
                        "gone"
                    } else {
                        "not enabled ALWAYS"
                    }
                ),
                format!(
                    "Trigger {} kept the old and the new column in step; without it, writes \
                     since may have reached only one of them.",
                    check.trigger
                ),
                format!("Abort the window (SELECT migrate.abort('{version}')) and open it again."),
            ));
        }
        let opener = identity::role_oid(&window.opened_by).ok_or_else(|| {
            Problem::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!(
                    "role {} that opened window {version} no longer exists",
                    window.opened_by
                ),
                "Contract checks the rows with the rights of the role that opened the window.",
                format!("Abort the window: SELECT migrate.abort('{version}')."),
            )
        })?;
        // Every row, or an error: a policy must not hide rows that disagree.
        let settings = [("search_path", "pg_catalog"), ("row_security", "off")];
        let hidden = identity::as_author(opener, &settings, || {
            crate::pg::spi::pinned_row(
                "SELECT relrowsecurity AND row_security_active(oid) FROM pg_class \
                 WHERE oid = to_regclass($1)",
                &[check.table.as_str().into()],
                |r| r.get::<bool>(1),
            )
        })
        .ok()
        .flatten()
        .flatten()
        .unwrap_or(false);
        if hidden {
            return Err(Problem::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "the row-level security policies of {} now apply to role {}, which opened \
                     window {version}",
                    check.table, window.opened_by
                ),
                "Contract counts the rows whose two columns disagree as the opener, and must \
                 see every row.",
                format!(
                    "Give {} back what let it see every row (BYPASSRLS, or the table without \
                     FORCE ROW LEVEL SECURITY), or SELECT migrate.abort('{version}').",
                    window.opened_by
                ),
            ));
        }
        let behind = identity::as_author(opener, &settings, || {
            pgrx::Spi::get_one::<i64>(&check.out_of_step)
        })
        .map_err(|e| {
            Problem::new(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("could not check the rows of {}: {e}", check.table),
                "Contract counts the rows whose two columns disagree.",
                "Report this as a pg_migrate bug.",
            )
        })?
        .unwrap_or(0);
        if behind > 0 {
            return Err(Problem::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "{behind} rows of {} differ between the old and the new column: window \
                     {version} cannot be contracted",
                    check.table
                ),
                "Contract would keep the new column's values and set the old ones aside; the \
                 rows that disagree would keep a value the old version never wrote.",
                format!(
                    "Find them ({}), fix them, and contract again; or SELECT \
                     migrate.abort('{version}').",
                    check.out_of_step
                ),
            ));
        }
    }
    Ok(())
}

/// Each bridged table locked against DDL (SHARE UPDATE EXCLUSIVE: reads and writes go on)
/// until contract commits, so that no trigger change slips between its checks and its swap;
/// waiting at most `migrate.lock_timeout`.
fn lock_bridged(version: &Version, window: &Window) -> Result<(), Problem> {
    let limits = crate::migration::limits::Limits::from_settings();
    for check in &window.checks {
        let sql = format!("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE", check.table);
        let locked = crate::pg::subxact::run(|| {
            crate::migration::limits::with_limits(limits, || pgrx::Spi::run(&sql))
        });
        let error = match locked {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => (PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()),
            Err(caught) => (caught.code, caught.message),
        };
        return Err(Problem::new(
            error.0,
            format!(
                "could not lock {} to contract window {version}: {}",
                check.table, error.1
            ),
            "Contract locks each bridged table against DDL (not against reads or writes) \
             while it checks the bridge and the rows and swaps the columns.",
            "Run migrate.contract again once the session holding the table is done.",
        ));
    }
    Ok(())
}

/// Whether `version`'s window was aborted: its migration must not run again.
pub fn aborted(version: &str) -> bool {
    identity::as_owner(|| {
        crate::pg::spi::pinned_row(
            "SELECT ended = 'aborted' FROM migrate.window_history WHERE version = $1",
            &[version.into()],
            |row| row.get::<bool>(1),
        )
    })
    .or_bookkeeping("read migrate.window_history")
    .flatten()
    .unwrap_or(false)
}

/// The recorded window's source checksum and how it ended.
fn recorded_source(version: &Version) -> Option<(String, Option<String>)> {
    crate::pg::spi::read_own_row(
        "migrate.window_history",
        "SELECT source_checksum, ended FROM migrate.window_history WHERE version = $1",
        &[version.as_str().into()],
        |row| Ok((row.get::<String>(1)?.unwrap_or_default(), row.get(2)?)),
    )
}

/// A function already named as one of the window's (an overload of a conversion, say)
/// would make the bridge's calls ambiguous, or call it instead: every write would fail.
fn refuse_taken_functions(schemas: &[String], names: &[String]) -> Result<(), Problem> {
    let taken = crate::pg::spi::pinned_column::<String>(
        "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE p.proname = ANY ($1) AND n.nspname = ANY ($2) ORDER BY 1",
        &[names.to_vec().into(), schemas.to_vec().into()],
    )
    .or_bookkeeping("read pg_proc");
    match taken.first() {
        Some(function) => Err(Problem::new(
            PgSqlErrorCode::ERRCODE_DUPLICATE_FUNCTION,
            format!("function {function} exists already"),
            "The window creates functions of that name, which its triggers call.",
            "Drop it if it is not yours, or open the window under another version.",
        )),
        None => Ok(()),
    }
}

/// A second open window on a table would bridge it twice, each unaware of the other's
/// columns.
fn refuse_overlap(tables: &[String]) -> Result<(), Problem> {
    let open = crate::pg::identity::as_owner(|| {
        crate::pg::spi::pinned_pairs::<String, String>(
            "SELECT w.version, t FROM migrate.window_history w, unnest(w.tables) t \
             WHERE w.ended IS NULL AND t = ANY ($1)",
            &[tables.to_vec().into()],
        )
    })
    .or_bookkeeping("read migrate.window_history");
    match open.first() {
        Some((other, table)) => Err(Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("table {table} is in the open expand window of version {other}"),
            "A table takes part in one window at a time: two would each bridge and publish \
             it without the other's columns.",
            format!(
                "Contract or abort window {other} first (migrate.contract('{other}'), \
                 migrate.abort('{other}'))."
            ),
        )),
        None => Ok(()),
    }
}

/// While a window has outlived its time-to-live, no other opens: its bridges should not
/// stay, and the DBA is told so by the next expand at the latest.
fn refuse_expired() -> Result<(), Problem> {
    let expired = crate::pg::identity::as_owner(|| {
        crate::pg::spi::pinned_pairs::<String, String>(
            "SELECT version, expires_at::text FROM migrate.window_history \
             WHERE ended IS NULL AND expires_at < now() ORDER BY expires_at",
            &[],
        )
    })
    .or_bookkeeping("read migrate.window_history");
    match expired.first() {
        Some((other, at)) => Err(Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the expand window of version {other} expired at {at}"),
            "Its dual-write bridges outlived their time-to-live; no new window opens until \
             it ends.",
            format!(
                "End it: SELECT migrate.contract('{other}') or migrate.abort('{other}'); or, \
                 if its clients need longer, SELECT migrate.extend('{other}', '1 day', \
                 'the reason')."
            ),
        )),
        None => Ok(()),
    }
}

fn record(
    version: &Version,
    description: Option<&str>,
    source: &str,
    checksum: &str,
    planned: &Plan,
    (ttl_s, on_expiry, options): (i64, ttl::OnExpiry, Option<&JsonB>),
) {
    let json = |steps: &[EndStep]| JsonB(serde_json::to_value(steps).unwrap_or_default());
    let options = options.map(|o| JsonB(o.0.clone()));
    crate::pg::spi::write_as_owner(
        "migrate.window_history",
        "INSERT INTO migrate.window_history (version, description, source, source_checksum, \
           tables, schemas, contract_steps, abort_steps, ttl, opened_at, opened_by, expires_at, \
           checks, objects, on_expiry, deprecated, options, mirrors) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, make_interval(secs => $9), \
                 clock_timestamp(), $10, clock_timestamp() + make_interval(secs => $9), \
                 $11, $12, $13, $14, $15, $16)",
        &[
            version.as_str().into(),
            description.into(),
            source.into(),
            checksum.into(),
            planned.tables.clone().into(),
            planned.schemas.clone().into(),
            json(&planned.contract).into(),
            json(&planned.abort).into(),
            (ttl_s as f64).into(),
            identity::current_user_name().into(),
            JsonB(serde_json::to_value(&planned.checks).unwrap_or_default()).into(),
            planned.objects.clone().into(),
            on_expiry.as_str().into(),
            JsonB(serde_json::to_value(&planned.deprecated).unwrap_or_default()).into(),
            options.into(),
            JsonB(serde_json::to_value(&planned.mirrors).unwrap_or_default()).into(),
        ],
    );
}

/// An ended window whose set-aside columns are due to be dropped.
pub struct DeprecatedDue {
    version: String,
    opener: String,
    columns: Vec<(String, String, String)>,
}

impl DeprecatedDue {
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// The ended windows whose set-aside columns `migrate.deprecated_retention` has passed for
/// (never, if it is 0), and that are not waiting out a failed drop.
pub fn deprecated_due() -> Vec<DeprecatedDue> {
    let retention_s = crate::gucs::DEPRECATED_RETENTION_S.get();
    if retention_s == 0 {
        return Vec::new();
    }
    let due: Vec<(String, String, Option<JsonB>)> = identity::as_owner(|| {
        crate::pg::guc::pinned(|| {
            Spi::connect(|client| {
                client
                    .select(
                        "SELECT version, opened_by::text, deprecated FROM migrate.window_history \
                         WHERE ended IS NOT NULL AND deprecated_dropped_at IS NULL \
                           AND ended_at < now() - make_interval(secs => $1) \
                           AND (deprecated_retry_at IS NULL OR deprecated_retry_at < now()) \
                         ORDER BY ended_at",
                        None,
                        &[f64::from(retention_s).into()],
                    )?
                    .map(|row| {
                        Ok((
                            row.get(1)?.unwrap_or_default(),
                            row.get(2)?.unwrap_or_default(),
                            row.get(3)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, pgrx::spi::Error>>()
            })
        })
    })
    .or_bookkeeping("read migrate.window_history");
    due.into_iter()
        .map(|(version, opener, deprecated)| DeprecatedDue {
            version,
            opener,
            columns: deprecated
                .and_then(|j| serde_json::from_value(j.0).ok())
                .unwrap_or_default(),
        })
        .collect()
}

/// Drops one window's set-aside columns in the caller's transaction (the worker gives each
/// window one of its own). A table inside an open window waits for it to end; a failed drop
/// is tried again after a delay that doubles, up to an hour.
pub fn drop_deprecated(due: &DeprecatedDue) {
    let open: Vec<String> = identity::as_owner(|| {
        crate::pg::spi::pinned_column::<String>(
            "SELECT DISTINCT t FROM migrate.window_history, unnest(tables) t WHERE ended IS NULL",
            &[],
        )
    })
    .or_bookkeeping("read migrate.window_history");
    if due
        .columns
        .iter()
        .any(|(schema, table, _)| open.contains(&crate::pg::catalog::qualified(schema, table)))
    {
        crate::pg::spi::write_as_owner(
            "migrate.window_history",
            "UPDATE migrate.window_history \
             SET deprecated_retry_at = clock_timestamp() + interval '1 minute' WHERE version = $1",
            &[due.version.as_str().into()],
        );
        return;
    }
    let version = due.version.as_str();
    match crate::pg::subxact::run(|| drop_columns(version, &due.opener, &due.columns)) {
        Ok(()) => crate::pg::spi::write_as_owner(
            "migrate.window_history",
            "UPDATE migrate.window_history SET deprecated_dropped_at = clock_timestamp() \
             WHERE version = $1",
            &[version.into()],
        ),
        Err(caught) => {
            crate::pg::spi::write_as_owner(
                "migrate.window_history",
                "UPDATE migrate.window_history SET deprecated_attempts = deprecated_attempts + 1, \
                   deprecated_retry_at = clock_timestamp() \
                     + least(interval '1 hour', interval '30 seconds' * 2 ^ deprecated_attempts) \
                 WHERE version = $1",
                &[version.into()],
            );
            Problem::new(
                PgSqlErrorCode::ERRCODE_WARNING,
                format!(
                    "the background worker could not drop the columns window {version} set aside"
                ),
                caught.message,
                "It tries again later (migrate.window_history.deprecated_retry_at); or drop \
                 them yourself.",
            )
            .report(pgrx::PgLogLevel::WARNING)
        }
    }
}

/// When the next set-aside columns are due (TimestampTz), 0 if none are.
pub fn next_deprecated() -> i64 {
    let retention_s = crate::gucs::DEPRECATED_RETENTION_S.get();
    if retention_s == 0 {
        return 0;
    }
    identity::as_owner(|| {
        crate::pg::spi::pinned_row(
            // TimestampTz: microseconds since 2000-01-01 (946684800 in Unix time).
            "SELECT ((extract(epoch FROM min(greatest(ended_at + make_interval(secs => $1), \
                                                       deprecated_retry_at))) \
                      - 946684800) * 1000000)::int8 \
             FROM migrate.window_history \
             WHERE ended IS NOT NULL AND deprecated_dropped_at IS NULL",
            &[f64::from(retention_s).into()],
            |row| row.get::<i64>(1),
        )
    })
    .or_bookkeeping("read migrate.window_history")
    .flatten()
    .unwrap_or(0)
}

/// `ALTER TABLE ... DROP COLUMN` of each set-aside column that still exists, as the window's
/// opener, judged by the guard with drop-column allowed (the retention was the way back).
fn drop_columns(version: &str, opener: &str, columns: &[(String, String, String)]) {
    let script: String = columns
        .iter()
        .filter(|(schema, table, column)| facts::column_exists(schema, table, column))
        .map(|(schema, table, column)| {
            format!(
                "ALTER TABLE {} DROP COLUMN {};\n",
                crate::pg::catalog::qualified(schema, table),
                crate::pg::catalog::quote_ident(column)
            )
        })
        .collect();
    if script.is_empty() {
        return;
    }
    let Some(role) = identity::role_oid(opener) else {
        Problem::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("role {opener} that opened window {version} no longer exists"),
            "Set-aside columns are dropped with the rights of the role that opened the window.",
            "Drop them yourself (see migrate.window_history.deprecated).",
        )
        .raise();
    };
    let what = format!("the drop of the columns window {version} set aside");
    identity::as_author(role, &[("search_path", "pg_catalog")], || {
        let trees = apply::parse_for_apply(&what, &script).or_raise();
        let statements: Vec<_> = trees.into_iter().map(|(s, _)| s).collect();
        let running = Running {
            version: version.to_string(),
            // Kept for migrate.deprecated_retention: that was the way back.
            has_rollback: true,
            allow: vec!["drop-column".into()],
        };
        crate::history::record::drift();
        running::with_running(running, || {
            apply::attempt::run(&what, &script, &statements, Policy::from_settings())
        });
        // Recorded as the window's version's, as contract's changes are.
        crate::history::record::applied(version);
    });
}

/// The window's time-to-live in seconds: the given one or `migrate.window_ttl`, never above
/// `migrate.max_window_ttl`.
fn ttl_seconds(ttl: Option<Interval>) -> Result<i64, Problem> {
    let max = i64::from(crate::gucs::MAX_WINDOW_TTL_S.get());
    let Some(ttl) = ttl else {
        return Ok(i64::from(crate::gucs::WINDOW_TTL_S.get()).min(max));
    };
    let seconds = ttl::interval_seconds(&ttl);
    if seconds <= 0 || seconds > max {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("ttl must be positive and at most migrate.max_window_ttl ({max} s)"),
            format!("{seconds} s was given."),
            "Give a shorter ttl; a superuser may raise migrate.max_window_ttl.",
        ));
    }
    Ok(seconds)
}

fn unread(what: &str, number: usize, unread: Unread) -> Problem {
    let at = format!("{what}, statement {number}");
    match unread {
        Unread::NotPlanned(tag) => Problem::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("{at}: {tag} was neither planned nor kept as written"),
            "Statements the planner has no steps for run as written.",
            "Report this as a pg_migrate bug.",
        ),
        Unread::NoTable(name) => Problem::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("{at}: table {name} does not exist"),
            "The name was looked up with the current search_path.",
            "Check the name, or qualify it with its schema.",
        ),
        Unread::Locked(column) => Problem::new(
            PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
            format!("{at}: the table of column {column} is locked by another session"),
            "Planning a type change analyses its expression against the table, which needs \
             a lock that another session's ACCESS EXCLUSIVE lock excludes.",
            "Run migrate.expand again once that session is done.",
        ),
        Unread::Failed(caught) => Problem::new(
            caught.code,
            format!("{at}: {}", caught.message),
            caught
                .detail
                .unwrap_or_else(|| "PostgreSQL could not analyse the statement.".into()),
            caught
                .hint
                .unwrap_or_else(|| "Fix the statement and run migrate.expand again.".into()),
        ),
    }
}

fn step_rows(planned: &Plan) -> Vec<StepRow> {
    let expand = planned
        .expand
        .iter()
        .map(|(stage, sql)| (stage.name().to_string(), sql.clone()));
    let contract = planned
        .contract
        .iter()
        .map(|s| ("contract".to_string(), s.sql.clone()));
    expand
        .chain(contract)
        .enumerate()
        .map(|(i, (stage, sql))| {
            let lock = lock_of(&stage, &sql);
            (i as i32 + 1, stage, sql, lock)
        })
        .collect()
}

/// The table lock a step takes, as the guard reads it from the statement; a backfill's
/// batches lock only their rows.
fn lock_of(stage: &str, sql: &str) -> Option<String> {
    if stage == plan::Stage::Backfill.name() {
        return Some("row locks, batch by batch".into());
    }
    let trees = crate::migration::parse::parse(sql).ok()?;
    let (_, tree) = trees.first()?;
    crate::guard::parsetree::lock_needed(*tree).map(|m| m.name().to_string())
}

/// A statement as written, ending so that the `;` after it cannot fall into a trailing `--`
/// comment.
fn statement_text(text: &str) -> String {
    let text = text.trim_end();
    if text.lines().last().is_some_and(|l| l.contains("--")) {
        format!("{text}\n")
    } else {
        text.to_string()
    }
}

fn first_line(source: &str) -> &str {
    source
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}
