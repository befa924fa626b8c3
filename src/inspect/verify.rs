//! `migrate.verify(version)`: proof that a migration did what it should. The objects it
//! created (from the changes recorded with it) are checked against the live catalogs, its
//! declared queries are run read-only, and the verdict is recorded: a migration is complete
//! only once verification has passed.

use crate::errors::{OrBookkeeping, OrRaise, Problem};
use crate::migration::limits::Limits;
use crate::migration::status::{JobState, Status, Verdict};
use crate::migration::version::Version;
use crate::pg::subxact;
use crate::schema::diff::{Change, Difference};
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::{json, Value};

/// One verdict, as `migrate.verify` returns it.
/// One check of a verification, as `migrate.history.verification_report` lists it.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Check {
    #[serde(rename = "check")]
    pub kind: &'static str,
    pub object: Option<String>,
    pub ok: bool,
    pub detail: String,
    /// What the history keeps instead of `detail` when that quotes rows (a query's first
    /// row, an error's text), which every admin reads there: the caller sees them, as the
    /// role they were read as would.
    #[serde(skip)]
    pub recorded: Option<String>,
    /// Not run: the caller lacks the privileges of the role it runs as.
    #[serde(skip)]
    pub withheld: bool,
}

/// What the history keeps of a detail that may quote rows read as `whose` role.
fn withheld_detail(what: &str, whose: &str) -> String {
    format!("{what} (migrate.verify shows why to roles with the privileges of {whose})")
}

/// What verification needs of the history row.
struct Migration {
    version: String,
    status: Status,
    changes: Vec<Difference>,
    verify_script: Option<String>,
    /// Who applied it, and the search_path they applied it under: its verify queries run
    /// with that role's rights and that path, whoever calls migrate.verify later.
    applied_role: String,
    search_path: String,
    standard_conforming_strings: String,
}

fn read(version: &Version) -> Option<Migration> {
    crate::pg::spi::pinned_row(
        "SELECT version, status, changes, verify_script, applied_role::text, \
                coalesce(settings ->> 'search_path', ''), \
                coalesce(settings ->> 'standard_conforming_strings', 'on') \
         FROM migrate.history WHERE version_key = migrate.version_key($1)",
        &[version.as_str().into()],
        |row| {
            Ok(Migration {
                version: row.get(1)?.unwrap_or_default(),
                status: Status::from_column(row.get(2)?)?,
                // Elements of another shape (a later format) are not this check's business.
                changes: row
                    .get::<JsonB>(3)?
                    .and_then(|j| serde_json::from_value::<Vec<Value>>(j.0).ok())
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| serde_json::from_value(c).ok())
                    .collect(),
                verify_script: row.get(4)?,
                applied_role: row.get(5)?.unwrap_or_default(),
                search_path: row.get(6)?.unwrap_or_default(),
                standard_conforming_strings: row.get(7)?.unwrap_or_else(|| "on".into()),
            })
        },
    )
    .or_bookkeeping("read migrate.history")
}

#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
fn verify(
    version: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(kind, String),
        name!(object, Option<String>),
        name!(ok, bool),
        name!(detail, String),
    ),
> {
    crate::pg::identity::require_admin("verify migrations").or_raise();
    let version = Version::parse(version).or_raise();
    let Some(migration) = read(&version) else {
        Problem::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("version {version} is not recorded"),
            "Only an applied migration can be verified.",
            "See SELECT * FROM migrate.status for the recorded versions.",
        )
        .raise();
    };
    if migration.status == Status::Baseline {
        Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "version {} is a baseline: there is nothing to verify",
                migration.version
            ),
            "A baseline records a schema pg_migrate did not build; nothing of it ran here.",
            "Verify the migrations applied after the baseline.",
        )
        .raise();
    }
    let checks = run_checks(&migration);
    if crate::pg::xact::read_only() {
        // A standby's checks show what it has replayed; the verdict is the primary's to keep.
        // Read, not run: pgrx's SPI gives a transaction that runs a statement an id.
        let _ = Spi::connect(|c| {
            c.select("SELECT migrate.note_if_standby()", None, &[])
                .map(|_| ())
        });
        crate::errors::notice(format!(
            "the verification of version {} was not recorded: this transaction cannot write \
             (a standby, or READ ONLY); run migrate.verify on the primary to record it",
            migration.version
        ));
    } else if checks.iter().any(|c| c.withheld) {
        // Another role's verdict stands: checks this caller may not run prove nothing.
        crate::errors::notice(format!(
            "the verification of version {} was not recorded: some of its checks run with \
             the rights of roles whose privileges you do not have",
            migration.version
        ));
    } else {
        record(&migration.version, &checks);
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed > 0 && !checks.iter().any(|c| c.withheld) {
        crate::errors::notice(format!(
            "version {} failed {failed} of {} checks; it stays \"applied, verification failed\" \
             until migrate.verify passes",
            migration.version,
            checks.len()
        ));
    }
    TableIterator::new(
        checks
            .into_iter()
            .map(|c| (c.kind.to_string(), c.object, c.ok, c.detail)),
    )
}

fn run_checks(migration: &Migration) -> Vec<Check> {
    let mut checks = vec![status_check(migration)];
    // Nothing here runs with the caller's rights, nor the owner's: the catalogs are read by
    // anyone, and every expression is evaluated as the role that wrote it (see as_author).
    for change in &migration.changes {
        checks.extend(object_check(migration, change));
    }
    checks.extend(index_use_checks(migration));
    checks.extend(backfill_checks(&migration.version));
    if let Some(script) = &migration.verify_script {
        checks.extend(query_checks(migration, script));
    }
    checks
}

/// How often each index the migration created has been scanned since. An index nothing
/// uses still costs every write and its space; a warning, never a failed check, since an
/// index may be built ahead of the release that needs it. Unique indexes are left out, as
/// DBAs' unused-index queries leave them out: they enforce a rule even when never scanned.
fn index_use_checks(migration: &Migration) -> Vec<Check> {
    let created = migration
        .changes
        .iter()
        .filter(|c| c.kind == "indexes" && c.change == Change::Added && c.attribute.is_none());
    let checks: Vec<Check> = created
        .filter_map(|c| c.object.as_deref())
        .filter_map(|index| {
            let (scans, since) = read_one::<(i64, String)>(
                "SELECT s.idx_scan, \
                        CASE WHEN d.stats_reset > h.finished_at \
                             THEN 'the statistics were reset ' \
                                  || pg_catalog.date_trunc('second', \
                                         pg_catalog.clock_timestamp() - d.stats_reset) || ' ago' \
                             ELSE 'it was created' \
                                  || coalesce(' ' || pg_catalog.date_trunc('second', \
                                         pg_catalog.clock_timestamp() - h.finished_at) || ' ago', \
                                         '') \
                        END \
                 FROM pg_catalog.pg_stat_all_indexes s, migrate.history h, \
                      pg_catalog.pg_stat_database d \
                 WHERE s.indexrelid = pg_catalog.to_regclass($1) AND h.version = $2 \
                   AND NOT EXISTS (SELECT FROM pg_catalog.pg_index i \
                                   WHERE i.indexrelid = s.indexrelid AND i.indisunique) \
                   AND d.datid = (SELECT oid FROM pg_catalog.pg_database \
                                  WHERE datname = pg_catalog.current_database())",
                &[index.into(), migration.version.as_str().into()],
                |row| Ok((row.get(1)?.unwrap_or(0), row.get(2)?.unwrap_or_default())),
            )?;
            Some(Check {
                kind: "index use",
                object: Some(index.to_string()),
                ok: true,
                detail: if scans > 0 {
                    format!(
                        "scanned {scans} time{} since {since}",
                        if scans == 1 { "" } else { "s" }
                    )
                } else {
                    format!("warning: not scanned since {since}")
                },
                ..Check::default()
            })
        })
        .collect();
    let unused: Vec<&str> = checks
        .iter()
        .filter(|c| c.detail.starts_with("warning"))
        .filter_map(|c| c.object.as_deref())
        .collect();
    if !unused.is_empty() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!(
                "{} of the indexes version {} created not scanned since: {}",
                unused.len(),
                migration.version,
                unused.join(", ")
            ),
            "pg_stat_all_indexes.idx_scan is 0. An index no query uses still costs every \
             write to its table, and its space.",
            "If no release will use it, drop it with DROP INDEX CONCURRENTLY in a migration; \
             a new index may also wait for the release that needs it.",
        )
        .report(pgrx::PgLogLevel::WARNING);
    }
    checks
}

fn status_check(migration: &Migration) -> Check {
    let ok = migration.status == Status::Applied;
    Check {
        kind: "status",
        object: None,
        ok,
        detail: if ok {
            "every statement ran".into()
        } else {
            format!(
                "the migration is {}: its phases have not all run (see migrate.steps)",
                migration.status
            )
        },
        ..Check::default()
    }
}

/// Each backfill the migration started finished, and no row matches its where clause now.
/// The where clause is counted as the job's submitter, under the search_path it was
/// submitted with.
fn backfill_checks(version: &str) -> Vec<Check> {
    crate::backfill::of_migration(version)
        .into_iter()
        .map(|job| {
            let (id, table, state, where_clause) = (job.id, job.table, job.state, job.where_clause);
            let author = Author::named(&job.role, &job.search_path, &job.conforming);
            let (mut failed, mut withheld) = (false, false);
            let left = match (&table, &where_clause) {
                (Some(table), Some(w)) => {
                    match count_as(&author, &crate::backfill::remaining_sql(table, w)) {
                        Evaluated::Value(n) => Ok(n),
                        Evaluated::Failed(message) => {
                            failed = true;
                            Err(message)
                        }
                        Evaluated::Withheld(message) => {
                            withheld = true;
                            Err(message)
                        }
                    }
                }
                _ => Ok(0),
            };
            let (ok, detail) = match (state, left, &where_clause) {
                (JobState::Done, Ok(0), Some(w)) => {
                    (true, format!("backfill {id} is done; no row matches {w}"))
                }
                (JobState::Done, Ok(0), None) => (
                    true,
                    format!("backfill {id} is done (no where clause to check)"),
                ),
                (JobState::Done, Ok(n), Some(w)) => (
                    false,
                    format!("backfill {id} is done, but {n} rows match {w} again"),
                ),
                (JobState::Done, Ok(_), None) => (true, format!("backfill {id} is done")),
                (JobState::Done, Err(why), _) => (
                    false,
                    format!("backfill {id} is done, but its where clause was not counted: {why}"),
                ),
                (other, _, _) => (
                    false,
                    format!("backfill {id} is {other} (see migrate.backfill_progress)"),
                ),
            };
            Check {
                kind: "backfill",
                object: table,
                ok,
                detail,
                recorded: failed.then(|| {
                    withheld_detail(
                        &format!("backfill {id} is done, but counting its where clause failed"),
                        &format!("role \"{}\"", job.role),
                    )
                }),
                withheld,
            }
        })
        .collect()
}

/// The check an object the migration created or validated needs, if any.
fn object_check(migration: &Migration, change: &Difference) -> Option<Check> {
    let object = change.object.as_deref()?;
    let new = change.new.as_ref();
    match (
        change.kind.as_str(),
        change.change,
        change.attribute.as_deref(),
    ) {
        ("indexes", Change::Added, None) => Some(index_check(migration, object)),
        ("constraints", Change::Added, None) => {
            let validated = new?.get("validated").and_then(Value::as_bool)?;
            Some(constraint_check(migration, change, object, validated))
        }
        ("constraints", Change::Changed, Some("validated")) => {
            let validated = new?.as_bool()?;
            Some(constraint_check(migration, change, object, validated))
        }
        _ => None,
    }
}

fn index_check(migration: &Migration, index: &str) -> Check {
    let state = read_one::<(bool, bool)>(
        "SELECT i.indisvalid, i.indisready AND i.indislive FROM pg_catalog.pg_index i \
         WHERE i.indexrelid = pg_catalog.to_regclass($1)",
        &[index.into()],
        |row| Ok((row.get(1)?.unwrap_or(false), row.get(2)?.unwrap_or(false))),
    );
    let (ok, detail) = match state {
        Some((true, true)) => (true, "valid and ready".to_string()),
        Some((false, _)) => (
            false,
            "INVALID: queries do not use it, and it still costs every write; an interrupted \
             CREATE INDEX CONCURRENTLY leaves it so. DROP INDEX CONCURRENTLY it and build it \
             again"
                .to_string(),
        ),
        Some((true, _)) => (
            false,
            "valid but not ready: a concurrent build or drop of it is under way or was \
             interrupted"
                .to_string(),
        ),
        None => gone(migration, "indexes", index),
    };
    Check {
        kind: "index",
        object: Some(index.to_string()),
        ok,
        detail,
        ..Check::default()
    }
}

fn constraint_check(
    migration: &Migration,
    change: &Difference,
    object: &str,
    validated: bool,
) -> Check {
    let table = change.relation.as_deref().unwrap_or_default();
    let name = object
        .strip_suffix(&format!(" on {table}"))
        .unwrap_or(object);
    let live = read_one::<(pg_sys::Oid, bool, String)>(
        "SELECT c.oid, c.convalidated, c.contype::text FROM pg_catalog.pg_constraint c \
         WHERE c.conrelid = pg_catalog.to_regclass($1) AND pg_catalog.quote_ident(c.conname) = $2",
        &[table.into(), name.into()],
        |row| {
            Ok((
                row.get(1)?.unwrap_or(pg_sys::InvalidOid),
                row.get(2)?.unwrap_or(false),
                row.get(3)?.unwrap_or_default(),
            ))
        },
    );
    let (ok, detail, withheld) = match live {
        None => {
            let (ok, detail) = gone(migration, "constraints", object);
            (ok, detail, false)
        }
        Some((_, false, _)) if validated => (
            false,
            "NOT VALID, but the migration left it validated: it was dropped and added again \
             without validation; run ALTER TABLE ... VALIDATE CONSTRAINT"
                .to_string(),
            false,
        ),
        Some((oid, live_valid, contype)) => {
            // In a subtransaction: a count that fails (cancelled, a broken expression)
            // fails this check, not the whole verification and its record.
            let counted = (contype == "f" || !live_valid).then(|| count_violations(oid));
            let mut withheld = false;
            let (violations, not_counted) = match counted {
                Some(Evaluated::Failed(message)) => {
                    return Check {
                        kind: "constraint",
                        object: Some(object.to_string()),
                        ok: false,
                        detail: format!("could not count the rows that break it: {message}"),
                        recorded: Some(withheld_detail(
                            "could not count the rows that break it",
                            "its table's owner",
                        )),
                        withheld: false,
                    }
                }
                Some(Evaluated::Value(n)) => (Some(n), None),
                // Counting is extra evidence; without it the check is what the catalogs say.
                Some(Evaluated::Withheld(why)) => {
                    withheld = true;
                    (None, Some(why))
                }
                None => (None, None),
            };
            let (ok, mut detail): (bool, String) = match (live_valid, violations) {
                (true, Some(n)) if n > 0 => (
                    false,
                    format!(
                        "validated, but {n} rows violate it: they were written while its \
                         triggers did not fire (session_replication_role = replica, or \
                         DISABLE TRIGGER ALL)"
                    ),
                ),
                (true, Some(_)) => (true, "validated; every row satisfies it".into()),
                (true, None) => (true, "validated".into()),
                (false, Some(0)) => (
                    true,
                    "NOT VALID by design; every row satisfies it, so VALIDATE CONSTRAINT will \
                     succeed"
                        .into(),
                ),
                (false, Some(n)) => (
                    true,
                    format!(
                        "NOT VALID by design; {n} rows do not satisfy it yet, so VALIDATE \
                         CONSTRAINT would fail until they are fixed"
                    ),
                ),
                (false, None) => (true, "NOT VALID by design".into()),
            };
            if let Some(why) = not_counted {
                detail.push_str(&format!(" (rows not counted: {why})"));
            }
            (ok, detail, withheld)
        }
    };
    Check {
        kind: "constraint",
        object: Some(object.to_string()),
        ok,
        detail,
        withheld,
        ..Check::default()
    }
}

/// How many rows break constraint `oid`. The constraint's expression (a CHECK may call any
/// function; a foreign key compares with its type's equality operator) is evaluated as the
/// table's owner, who wrote it, as PostgreSQL evaluates index expressions in ANALYZE; the
/// count query is built from the catalogs with names qualified under a pinned path.
fn count_violations(oid: pg_sys::Oid) -> Evaluated<i64> {
    let query = read_one::<(Option<String>, pg_sys::Oid)>(
        "SELECT migrate.constraint_violations_query(c.oid), t.relowner \
         FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_class t ON t.oid = c.conrelid \
         WHERE c.oid = $1",
        &[oid.into()],
        |row| Ok((row.get(1)?, row.get(2)?.unwrap_or(pg_sys::InvalidOid))),
    );
    let Some((Some(sql), owner)) = query else {
        return Evaluated::Value(0);
    };
    let author = Author {
        role: Some(owner),
        name: crate::pg::identity::role_name(owner),
        search_path: "pg_catalog".into(),
        standard_conforming_strings: "on".into(),
    };
    count_as(&author, &sql)
}

/// The count `sql` returns, evaluated as `author`.
fn count_as(author: &Author, sql: &str) -> Evaluated<i64> {
    match evaluate(author, || Spi::get_one::<i64>(sql)) {
        Evaluated::Value(Ok(n)) => Evaluated::Value(n.unwrap_or(0)),
        Evaluated::Value(Err(e)) => Evaluated::Failed(e.to_string()),
        Evaluated::Failed(m) => Evaluated::Failed(m),
        Evaluated::Withheld(m) => Evaluated::Withheld(m),
    }
}

/// The role an expression came from, and the settings it was written under.
struct Author {
    /// None when the role no longer exists.
    role: Option<pg_sys::Oid>,
    name: String,
    search_path: String,
    standard_conforming_strings: String,
}

impl Author {
    fn named(name: &str, search_path: &str, standard_conforming_strings: &str) -> Author {
        Author {
            role: crate::pg::identity::role_oid(name),
            name: name.to_string(),
            search_path: search_path.to_string(),
            standard_conforming_strings: standard_conforming_strings.to_string(),
        }
    }
}

/// What became of an expression verify evaluated as its author.
enum Evaluated<T> {
    Value(T),
    /// It raised an error (the message).
    Failed(String),
    /// Not evaluated: the caller lacks the author's privileges, or the author is gone (why).
    Withheld(String),
}

/// Evaluates `f` as `author` (see crate::pg::identity::as_author), in a subtransaction that is rolled
/// back so that nothing it changes in this session survives. Only for a caller who has the
/// author's privileges: the expression runs in the caller's session, whose temporary
/// objects and settings the caller controls, and code must never meet state prepared by
/// someone with fewer rights than the role it runs as. Anyone else is told whom to ask.
fn evaluate<T>(author: &Author, f: impl FnOnce() -> T) -> Evaluated<T> {
    // Nobody can run it as that role any more: as for a caller without its privileges, the
    // verdict recorded stays.
    let Some(role) = author.role else {
        return Evaluated::Withheld(format!(
            "role \"{}\", whose expression it is, no longer exists",
            author.name
        ));
    };
    if !crate::pg::identity::has_privs_of(crate::pg::identity::current_user(), role) {
        return Evaluated::Withheld(format!(
            "it is role \"{}\"'s expression and runs with that role's rights: run \
             migrate.verify as \"{}\" (or a member of it, or a superuser)",
            author.name, author.name
        ));
    }
    // Every row or an error: a check that a policy kept from some rows would pass.
    let settings = [
        ("search_path", author.search_path.as_str()),
        (
            "standard_conforming_strings",
            author.standard_conforming_strings.as_str(),
        ),
        ("row_security", "off"),
    ];
    match subxact::rolled_back(|| crate::pg::identity::as_author(role, &settings, f)) {
        Ok(value) => Evaluated::Value(value),
        Err(caught) => Evaluated::Failed(caught.message),
    }
}

/// An object the migration created that no longer exists: fine if a later migration
/// removed it, a failure if something else did.
fn gone(migration: &Migration, kind: &str, object: &str) -> (bool, String) {
    let removal = json!([Difference {
        kind: kind.to_string(),
        object: Some(object.to_string()),
        change: Change::Removed,
        attribute: None,
        old: None,
        new: None,
        relation: None,
    }]);
    let later = read_one::<String>(
        "SELECT version FROM migrate.history \
         WHERE version_key > migrate.version_key($1) AND changes @> $2 \
         ORDER BY version_key LIMIT 1",
        &[migration.version.as_str().into(), JsonB(removal).into()],
        |row| Ok(row.get(1)?.unwrap_or_default()),
    );
    match later {
        Some(v) => (true, format!("removed since by version {v}")),
        None => (
            false,
            "no longer exists, and no later migration removed it (see migrate.drift())".into(),
        ),
    }
}

/// The migration's declared queries, each read-only, in a subtransaction that is rolled
/// back, under the migration's statement timeout; each passes when it returns no rows. They
/// run as the role that applied the migration (which declared them) with its search_path,
/// never with the rights of whoever calls migrate.verify.
fn query_checks(migration: &Migration, script: &str) -> Vec<Check> {
    let what = format!("the verify queries of migration {}", migration.version);
    let author = Author::named(
        &migration.applied_role,
        &migration.search_path,
        &migration.standard_conforming_strings,
    );
    // Split as they were when apply checked them.
    let parsed = {
        let _lexing = crate::pg::guc::SettingScope::set(&[(
            "standard_conforming_strings",
            &author.standard_conforming_strings,
        )]);
        crate::migration::parse::parse_queries(&what, script)
    };
    let statements = match parsed {
        Ok(s) => s,
        Err(p) => {
            return vec![Check {
                kind: "query",
                object: None,
                ok: false,
                detail: p.full_message(),
                ..Check::default()
            }]
        }
    };
    statements
        .iter()
        .map(|st| {
            // A newline before the closing parenthesis, so a trailing comment cannot hide it.
            let sql = format!(
                "SELECT pg_catalog.to_jsonb(q)::text FROM ({}\n) q LIMIT 1",
                st.text(script)
            );
            let result = evaluate(&author, || {
                crate::pg::guc::set_local("transaction_read_only", "on");
                crate::migration::limits::with_limits(Limits::from_settings(), || {
                    // Read-only SPI: Spi::get_one would give the transaction an id, which a
                    // standby cannot.
                    Spi::connect(|c| c.select(&sql, Some(1), &[])?.first().get_one::<String>())
                })
            });
            let whose = format!("role \"{}\"", author.name);
            let (ok, detail, recorded) = match &result {
                Evaluated::Value(Ok(None))
                | Evaluated::Value(Err(pgrx::spi::Error::InvalidPosition)) => {
                    (true, "returned no rows".to_string(), None)
                }
                Evaluated::Value(Ok(Some(row))) => (
                    false,
                    format!("returned rows, the first: {row}"),
                    Some(withheld_detail("returned rows", &whose)),
                ),
                Evaluated::Value(Err(e)) => (false, format!("could not run: {e}"), None),
                Evaluated::Failed(message) => (
                    false,
                    format!("failed: {message}"),
                    Some(withheld_detail("failed", &whose)),
                ),
                Evaluated::Withheld(why) => (false, format!("not run: {why}"), None),
            };
            Check {
                kind: "query",
                object: Some(format!("statement {} (line {})", st.number, st.line)),
                ok,
                detail,
                recorded,
                withheld: matches!(result, Evaluated::Withheld(_)),
            }
        })
        .collect()
}

fn record(version: &str, checks: &[Check]) {
    crate::history::lock::refuse_stale_objects().or_raise();
    let passed = checks.iter().all(|c| c.ok);
    let kept: Vec<Check> = checks
        .iter()
        .map(|c| Check {
            detail: c.recorded.clone().unwrap_or_else(|| c.detail.clone()),
            ..c.clone()
        })
        .collect();
    let report = serde_json::to_value(kept).expect("checks serialise");
    crate::pg::identity::as_owner(|| {
        Spi::run_with_args(
            "UPDATE migrate.history SET verification = $2, \
               verified_at = pg_catalog.clock_timestamp(), verification_report = $3 \
             WHERE version = $1",
            &[
                version.into(),
                (if passed {
                    Verdict::Passed
                } else {
                    Verdict::Failed
                })
                .as_str()
                .into(),
                JsonB(report).into(),
            ],
        )
    })
    .or_bookkeeping("record the verification in migrate.history");
}

fn read_one<T>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    map: impl FnOnce(pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Option<T> {
    crate::pg::spi::pinned_row(sql, args, map)
        .or_bookkeeping("read the catalogs for migrate.verify")
}
