//! The verbs that read: `status`, `lint`, `plan`, `verify`, `drift`, `fingerprint`. None of
//! them changes the database (`plan`'s dry run rolls back).

use super::{blocking_notes, changed_notes, checked_files, in_file, states, table};
use crate::files::Migration;
use crate::report::{cell, state_cell, Exit, Note, Out};
use crate::Cli;
use anyhow::{Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use postgres::types::Type;
use serde_json::json;

/// `status`.
pub fn status(cli: &Cli, out: &mut Out, check: bool) -> Result<Exit> {
    let Some(found) = checked_files(&cli.dir, out)? else {
        return Ok(Exit::Checksum);
    };
    let mut client = cli.target.connect()?;
    let rows = states(&mut client, &found)?;
    if out.human() {
        anstream::println!("{}", table(&rows));
    }
    out.doc.insert("migrations".into(), json!(rows));
    // A standby shows the primary's history as far as it has replayed it.
    let standby = client
        .query_typed(
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
                    pg_last_xact_replay_timestamp()::text",
            &[],
        )?
        .remove(0);
    if standby.get::<_, bool>(0) {
        let (lsn, at): (Option<String>, Option<String>) = (standby.get(1), standby.get(2));
        out.say(&format!(
            "this server is a standby: the history as replayed up to {} (last replayed \
             commit at {})",
            lsn.as_deref().unwrap_or("?"),
            at.as_deref().unwrap_or("an unknown time")
        ));
        // Queries here that replay cancelled (hot-standby conflicts), by cause: an ACCESS
        // EXCLUSIVE lock a migration took on the primary counts under "lock".
        let conflicts = client.query_typed(
            "SELECT confl_lock, confl_snapshot, confl_bufferpin, confl_deadlock, confl_tablespace \
             FROM pg_catalog.pg_stat_database_conflicts WHERE datname = current_database()",
            &[],
        )?;
        let counts: Vec<(&str, i64)> = ["lock", "snapshot", "buffer pin", "deadlock", "tablespace"]
            .into_iter()
            .enumerate()
            .map(|(i, cause)| (cause, conflicts.first().map_or(0, |r| r.get::<_, i64>(i))))
            .collect();
        let total: i64 = counts.iter().map(|(_, n)| n).sum();
        let causes: Vec<String> = counts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(cause, n)| format!("{cause} {n}"))
            .collect();
        out.say(&format!(
            "queries here cancelled by replay (hot-standby conflicts) since the statistics were \
             reset: {total}{}",
            if causes.is_empty() {
                String::new()
            } else {
                format!(" ({})", causes.join(", "))
            }
        ));
        let by_cause: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(cause, n)| (cause.replace(' ', "_"), json!(n)))
            .collect();
        out.doc.insert(
            "standby".into(),
            json!({"replay_lsn": lsn, "replayed_at": at, "conflicts": by_cause}),
        );
    }
    if changed_notes(&rows, out) {
        return Ok(Exit::Checksum);
    }
    if check && blocking_notes(&rows, out) {
        return Ok(Exit::Error);
    }
    let waiting = rows
        .iter()
        .filter(|r| matches!(r.state.as_str(), "pending" | "running"))
        .count();
    if check && waiting > 0 {
        out.say(&format!("{waiting} versions pending or running"));
        return Ok(Exit::Pending);
    }
    Ok(Exit::Ok)
}

/// `lint`: the guard's findings on each pending file, none of it run.
pub fn lint(cli: &Cli, out: &mut Out) -> Result<Exit> {
    let Some(found) = checked_files(&cli.dir, out)? else {
        return Ok(Exit::Checksum);
    };
    let mut client = cli.target.connect()?;
    let rows = states(&mut client, &found)?;
    let mut findings = 0;
    for (m, row) in found.iter().zip(&rows) {
        if row.state != "pending" {
            continue;
        }
        // An expand file is DDL the window turns into safe steps: what the guard would say
        // of it run directly does not apply. Its finding is the planner's refusal.
        if m.expand.is_some() {
            if let Err(e) = expand_plan(&mut client, m, &mut Out::new(crate::Format::Json), true) {
                findings += 1;
                out.note(Note::from_db(&m.file, "expand", &e));
            }
            continue;
        }
        for r in client
            .query_typed(
                "SELECT l.line, l.rule_id, l.message, l.detail, l.hint \
                 FROM migrate.lint($1, $2) l WHERE NOT l.allowed ORDER BY l.statement",
                &[(&m.script, Type::TEXT), (&m.allow, Type::TEXT_ARRAY)],
            )
            .map_err(|e| in_file(e, m))?
        {
            findings += 1;
            let (rule, message): (String, String) = (r.get(1), r.get(2));
            // The rule is the note's title: the message need not say it again.
            let message = message
                .strip_prefix("pg_migrate: ")
                .unwrap_or(&message)
                .strip_prefix(&format!("{rule}: "))
                .unwrap_or(&message)
                .to_string();
            out.note(Note {
                file: Some(m.file.clone()),
                line: r.get::<_, Option<i32>>(0).map(i64::from),
                title: rule,
                message,
                detail: r.get(3),
                hint: r.get(4),
                sqlstate: None,
            });
        }
    }
    out.say(&format!("{findings} findings"));
    Ok(if findings > 0 {
        Exit::Findings
    } else {
        Exit::Ok
    })
}

/// One statement of a dry run, as the JSON document has it.
#[derive(Debug, serde::Serialize)]
struct Planned {
    version: String,
    file: String,
    line: i32,
    command: String,
    phase: i32,
    locks: Vec<String>,
    blocks: Option<String>,
    rewrites: Vec<String>,
    rows: Option<i64>,
    ms: f64,
    findings: Vec<String>,
    error: Option<String>,
}

/// `plan`: `migrate.dry_run` of each pending file: what each statement locks, blocks and
/// rewrites, how many rows and how long, and whether the guard or the server refuses it.
/// Everything it ran is rolled back.
pub fn plan(cli: &Cli, out: &mut Out, scratch: bool) -> Result<Exit> {
    let Some(found) = checked_files(&cli.dir, out)? else {
        return Ok(Exit::Checksum);
    };
    let mut client = cli.target.connect()?;
    // Every statement planned keeps its locks until the plan ends: against a database in
    // use (production), the sessions that need those tables would queue behind it. A role
    // without pg_read_all_stats sees no backend_type of other roles' sessions: those count.
    if !scratch {
        let others: i64 = client
            .query_typed(
                "SELECT count(*) FROM pg_catalog.pg_stat_activity \
                 WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database() \
                   AND pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() \
                   AND (backend_type OPERATOR(pg_catalog.=) 'client backend' \
                        OR (backend_type IS NULL AND usesysid IS NOT NULL))",
                &[],
            )?
            .first()
            .map_or(0, |r| r.get(0));
        if others > 0 {
            return Err(crate::report::Usage(format!(
                "pg-migrate plan holds the locks of every statement it plans until it ends, \
                 and {others} other session(s) are connected to this database: plan against \
                 a scratch copy of the schema (pg_dump --schema-only; see the README's CI \
                 recipe), or pass --scratch if this database is one"
            ))
            .into());
        }
    }
    let rows = states(&mut client, &found)?;
    let mut planned = Vec::new();
    let mut refused = 0;
    let pending: Vec<&Migration> = found
        .iter()
        .zip(&rows)
        .filter(|(_, r)| r.state == "pending")
        .map(|(m, _)| m)
        .collect();
    // One transaction, rolled back at the end: each file that passes is applied in it, so
    // that the files after it are planned against the schema it makes.
    client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")?;
    for m in pending {
        let before = refused;
        if m.expand.is_some() {
            // The window is opened for real inside a savepoint, so that the guard judges the
            // statements it keeps as written, as it will at deploy; then undone (a window is
            // not carried forward).
            client.batch_execute("SAVEPOINT pg_migrate_plan")?;
            let opened = expand_plan(&mut client, m, out, false);
            client.batch_execute("ROLLBACK TO SAVEPOINT pg_migrate_plan")?;
            match opened {
                Ok(steps) => planned.extend(steps),
                Err(e) => {
                    refused += 1;
                    out.note(Note::from_db(&m.file, "plan", &e));
                }
            }
            continue;
        }
        let result = client
            .query_typed(
                "SELECT d.line, d.command, d.phase, d.locks, d.blocks, d.rewrites, d.rows, \
                        extract(epoch FROM d.duration)::float8 * 1000, d.findings, d.error \
                 FROM migrate.dry_run($1, $2, $3) d ORDER BY d.statement",
                &[
                    (&m.script, Type::TEXT),
                    (&m.allow, Type::TEXT_ARRAY),
                    (&m.rollback, Type::TEXT),
                ],
            )
            .map_err(|e| in_file(e, m))?;
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED).set_header([
            "line", "command", "phase", "locks", "rewrites", "rows", "ms", "verdict",
        ]);
        for r in result {
            let p = Planned {
                version: m.version.clone(),
                file: m.file.clone(),
                line: r.get(0),
                command: r.get(1),
                phase: r.get(2),
                locks: r.get(3),
                blocks: r.get(4),
                rewrites: r.get(5),
                rows: r.get(6),
                ms: r.get::<_, Option<f64>>(7).unwrap_or(0.0),
                findings: r.get(8),
                error: r.get(9),
            };
            let verdict = match &p.error {
                Some(_) => "refused",
                None if !p.rewrites.is_empty() => "rewrites",
                None => "ok",
            };
            t.add_row([
                cell(p.line.to_string()),
                cell(&p.command),
                cell(p.phase.to_string()),
                cell(p.locks.join("\n")),
                cell(p.rewrites.join("\n")),
                cell(p.rows.map(|r| r.to_string()).unwrap_or_default()),
                cell(format!("{:.1}", p.ms)),
                state_cell(verdict),
            ]);
            if let Some(error) = &p.error {
                refused += 1;
                out.note(Note {
                    file: Some(m.file.clone()),
                    line: Some(p.line.into()),
                    title: "plan".into(),
                    message: format!("{}: {error}", p.command),
                    detail: Some(
                        p.findings
                            .iter()
                            .filter(|f| !error.contains(f.as_str()))
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                    .filter(|d| !d.is_empty()),
                    hint: Some(
                        "See SELECT * FROM migrate.rules for the safe way to make the change, or \
                         allow the rule with -- migrate:allow <rule> if it is meant."
                            .into(),
                    ),
                    ..Note::default()
                });
            }
            planned.push(p);
        }
        if out.human() {
            anstream::println!("{} {}\n{t}", m.version, m.description);
        }
        if refused == before {
            refused += carry(&mut client, m, out)?;
        }
    }
    client.batch_execute("ROLLBACK")?;
    out.say(&format!("{refused} statements refused"));
    out.doc.insert("plan".into(), json!(planned));
    Ok(if refused > 0 {
        Exit::Findings
    } else {
        Exit::Ok
    })
}

/// Applies a file that passed its dry run inside the plan's transaction, for the files
/// after it (without its watch: nothing is watched in a transaction that rolls back).
/// Returns 1 when it failed all the same, with a note saying so.
fn carry(client: &mut postgres::Client, m: &Migration, out: &mut Out) -> Result<u32> {
    client.batch_execute("SAVEPOINT pg_migrate_plan")?;
    let quiet = Migration {
        watch: None,
        ..m.clone()
    };
    match super::apply::submit(client, &quiet) {
        Ok(_) => {
            client.batch_execute("RELEASE SAVEPOINT pg_migrate_plan")?;
            Ok(0)
        }
        Err(e) => {
            client.batch_execute("ROLLBACK TO SAVEPOINT pg_migrate_plan")?;
            let mut note = Note::from_db(&m.file, "plan", &e);
            note.message = format!(
                "version {} passed its dry run and failed when applied (the files after it are \
                 planned without it): {}",
                m.version, note.message
            );
            out.note(note);
            Ok(1)
        }
    }
}

/// An expand window's steps, each as a statement of the plan: from
/// `migrate.expand(..., dry_run => true)`, which records nothing and takes no lock (what
/// `lint` may do), or from the window opened for real (the caller undoes it).
fn expand_plan(
    client: &mut postgres::Client,
    m: &Migration,
    out: &mut Out,
    dry_run: bool,
) -> Result<Vec<Planned>, postgres::Error> {
    let ttl = m.expand.as_deref().filter(|t| !t.is_empty());
    let rows = client.query_typed(
        "SELECT e.step, e.stage, e.statement, coalesce(e.lock, '') FROM migrate.expand( \
           version => $1, script => $2, ttl => $3::interval, description => $4, \
           dry_run => $5) e",
        &[
            (&m.version, Type::TEXT),
            (&m.script, Type::TEXT),
            (&ttl, Type::TEXT),
            (&m.description, Type::TEXT),
            (&dry_run, Type::BOOL),
        ],
    )?;
    let (steps, t) = super::window_steps(&rows);
    let steps: Vec<Planned> = steps
        .into_iter()
        .map(|s| Planned {
            version: m.version.clone(),
            file: m.file.clone(),
            line: 0,
            command: format!("expand step {}: {}", s.step, s.stage),
            phase: s.step,
            locks: Some(s.lock).filter(|l| !l.is_empty()).into_iter().collect(),
            blocks: None,
            rewrites: Vec::new(),
            rows: None,
            ms: 0.0,
            findings: Vec::new(),
            error: None,
        })
        .collect();
    if out.human() {
        anstream::println!("{} {} (an expand window)\n{t}", m.version, m.description);
    }
    Ok(steps)
}

/// `verify [VERSION...]`: `migrate.verify` of the versions named, or of every file applied.
/// A check that fails is the database not being what the migration made it: exit 4, as
/// drift.
pub fn verify(cli: &Cli, out: &mut Out, versions: &[String]) -> Result<Exit> {
    let Some(found) = checked_files(&cli.dir, out)? else {
        return Ok(Exit::Checksum);
    };
    let mut client = cli.target.connect()?;
    let rows = states(&mut client, &found)?;
    // A file that changed since it ran is not what was applied: said, exit 4.
    let changed = changed_notes(&rows, out);
    let chosen: Vec<String> = if versions.is_empty() {
        // What is in place as applied: not what waits, failed, or was undone or judged
        // harmful.
        rows.iter()
            .filter(|r| r.file.is_some())
            .filter(|r| {
                !matches!(
                    r.state.as_str(),
                    "pending"
                        | "running"
                        | "baseline"
                        | "changed"
                        | "failed"
                        | "cancelled"
                        | "rolled back"
                        | "rolling back"
                        | "recovering"
                        | "rollback failed"
                        | "rejected"
                        | "aborted"
                )
            })
            .map(|r| r.version.clone())
            .collect()
    } else {
        versions.to_vec()
    };
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["version", "kind", "object", "ok", "detail"]);
    let mut checks = Vec::new();
    let mut failed = 0;
    for v in &chosen {
        let file = found
            .iter()
            .find(|m| &m.version == v)
            .map(|m| m.file.clone());
        for r in client
            .query_typed(
                "SELECT kind, object, ok, detail FROM migrate.verify($1)",
                &[(v, Type::TEXT)],
            )
            .with_context(|| format!("verifying version {v}"))?
        {
            let (kind, object, ok, detail): (String, Option<String>, bool, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            t.add_row([
                cell(v),
                cell(&kind),
                cell(object.as_deref().unwrap_or_default()),
                state_cell(if ok { "ok" } else { "failed" }),
                cell(&detail),
            ]);
            if !ok {
                failed += 1;
                out.note(Note {
                    file: file.clone(),
                    title: "verify".into(),
                    message: format!(
                        "version {v}: {kind}{} failed: {detail}",
                        object
                            .as_deref()
                            .map(|o| format!(" {o}"))
                            .unwrap_or_default()
                    ),
                    hint: Some(
                        "The database is not what this migration made it: pg-migrate drift \
                         shows what changed since, and by whom."
                            .into(),
                    ),
                    ..Note::default()
                });
            }
            checks.push(
                json!({"version": v, "kind": kind, "object": object, "ok": ok,
                               "detail": detail}),
            );
        }
    }
    if out.human() && !checks.is_empty() {
        anstream::println!("{t}");
    }
    out.say(&format!(
        "{} versions verified, {failed} checks failed",
        chosen.len()
    ));
    out.doc.insert("checks".into(), json!(checks));
    Ok(if failed > 0 || changed {
        Exit::Checksum
    } else {
        Exit::Ok
    })
}

/// `drift`: the schema against the one recorded after the last migration, each difference
/// with the DDL that made it (who, when, from where) when the DDL log has it.
pub fn drift(cli: &Cli, out: &mut Out) -> Result<Exit> {
    let mut client = cli.target.connect()?;
    let rows = client
        .query_typed(
            "SELECT kind, object, change, coalesce(attribute, ''), \
                    coalesce(changed_at::text, ''), coalesce(changed_by::text, ''), \
                    coalesce(command_tag, ''), coalesce(migration_version, ''), \
                    coalesce(since_version, '') \
             FROM migrate.drift() ORDER BY kind, object, attribute",
            &[],
        )
        .context("reading migrate.drift()")?;
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header([
        "kind",
        "object",
        "change",
        "attribute",
        "changed at",
        "by",
        "command",
    ]);
    let mut found = Vec::new();
    for r in &rows {
        let cells: Vec<String> = (0..9).map(|i| r.get::<_, String>(i)).collect();
        t.add_row(cells[..7].iter().map(cell).collect::<Vec<_>>());
        out.note(Note {
            title: "drift".into(),
            message: format!(
                "{} {} {}{} since version {}{}",
                cells[0],
                cells[1],
                cells[2],
                if cells[3].is_empty() {
                    String::new()
                } else {
                    format!(" ({})", cells[3])
                },
                cells[8],
                if cells[5].is_empty() {
                    String::new()
                } else {
                    format!(", by {} at {} ({})", cells[5], cells[4], cells[6])
                }
            ),
            hint: Some(
                "Put the change in a migration, or undo it; SELECT * FROM migrate.drift() has \
                 the recorded and live definitions."
                    .into(),
            ),
            ..Note::default()
        });
        found.push(
            json!({"kind": cells[0], "object": cells[1], "change": cells[2],
                          "attribute": cells[3], "changed_at": cells[4], "changed_by": cells[5],
                          "command_tag": cells[6], "migration_version": cells[7],
                          "since_version": cells[8]}),
        );
    }
    if out.human() && !rows.is_empty() {
        anstream::println!("{t}");
    }
    out.say(&format!(
        "{} differences from the recorded schema",
        rows.len()
    ));
    out.doc.insert("drift".into(), json!(found));
    Ok(if rows.is_empty() {
        Exit::Ok
    } else {
        Exit::Checksum
    })
}

/// `fingerprint [--schema S]... [--expect F]`: the schema's fingerprint; with `--expect`,
/// exit 4 when it is another (two environments, or a restore, compared in one command).
pub fn fingerprint(
    cli: &Cli,
    out: &mut Out,
    schemas: &[String],
    expect: Option<&str>,
) -> Result<Exit> {
    let mut client = cli.target.connect()?;
    let schemas = (!schemas.is_empty()).then_some(schemas.to_vec());
    let row = client
        .query_typed(
            "SELECT migrate.fingerprint($1)",
            &[(&schemas, Type::TEXT_ARRAY)],
        )
        .context("reading migrate.fingerprint()")?;
    let fingerprint: String = row[0].get(0);
    out.doc.insert("fingerprint".into(), json!(fingerprint));
    if out.human() {
        anstream::println!("{fingerprint}");
    }
    match expect {
        Some(e) if e != fingerprint => {
            out.note(Note {
                title: "fingerprint".into(),
                message: format!("the schema's fingerprint is {fingerprint}, not {e}"),
                hint: Some(
                    "SELECT * FROM migrate.drift() shows what changed since the last migration \
                     here; compare migrate.describe() of the two databases for the difference."
                        .into(),
                ),
                ..Note::default()
            });
            Ok(Exit::Checksum)
        }
        _ => Ok(Exit::Ok),
    }
}
