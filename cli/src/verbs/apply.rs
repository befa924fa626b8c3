//! `apply`: the pending files in version order, each one `migrate.apply` (or
//! `migrate.expand` for a file that says `-- migrate:expand`), waiting for what the worker
//! runs after it.

use super::wait::{failed_phase, wait_for, Waited};
use super::{blocking_notes, changed_notes, checked_files, in_file, states, Row, BLOCKING};
use crate::files::{self, Migration};
use crate::interrupt;
use crate::report::{coloured, Exit, Note, Out};
use crate::Cli;
use anyhow::Result;
use postgres::types::Type;
use postgres::Client;
use serde_json::json;
use std::time::{Duration, Instant};

/// Submits one file: its transaction commits whole or not at all. Returns how many
/// statements it had.
pub(super) fn submit(client: &mut Client, m: &Migration) -> Result<i64, postgres::Error> {
    if let Some(ttl) = &m.expand {
        let ttl = (!ttl.is_empty()).then_some(ttl);
        let steps = client.query_typed(
            "SELECT e.step FROM migrate.expand(version => $1, script => $2, ttl => $3::interval, \
               description => $4, watch => $5::interval) e",
            &[
                (&m.version, Type::TEXT),
                (&m.script, Type::TEXT),
                (&ttl, Type::TEXT),
                (&m.description, Type::TEXT),
                (&m.watch, Type::TEXT),
            ],
        )?;
        return Ok(steps.len() as i64);
    }
    let r = client.query_typed(
        "SELECT a.statements FROM migrate.apply(version => $1, script => $2, \
           description => $3, rollback => $4, allow => $5, verify => $6, \
           watch => $7::interval) a",
        &[
            (&m.version, Type::TEXT),
            (&m.script, Type::TEXT),
            (&m.description, Type::TEXT),
            (&m.rollback, Type::TEXT),
            (&m.allow, Type::TEXT_ARRAY),
            (&m.verify, Type::TEXT),
            (&m.watch, Type::TEXT),
        ],
    )?;
    Ok(r[0].get::<_, i32>(0).into())
}

/// Ctrl-C during a wait: what goes on without us.
fn left_running(m: &Migration, state: &str, out: &mut Out) {
    out.note(Note {
        file: Some(m.file.clone()),
        title: "interrupted".into(),
        message: format!(
            "stopped waiting: version {} is {state} and goes on in the database's worker",
            m.version
        ),
        hint: Some(format!(
            "pg-migrate status shows where it is, and pg-migrate apply waits for it again; \
             pg-migrate cancel {} stops it.",
            m.version
        )),
        ..Note::default()
    });
}

/// `apply --wait-replicas`: how long to wait for standbys, and which (none named: all
/// streaming).
pub struct Replicas {
    pub limit: Duration,
    pub names: Vec<String>,
}

/// How one file's turn ended.
pub(super) enum Turn {
    /// Applied (or its gate settled) in this state; `blocking` when that state stops the run.
    Done { end: String, blocking: bool },
    /// Nothing to do for it (applied before, or covered by a baseline).
    Skipped,
    /// The run stops here, with this exit (its note said why).
    Stop(Exit),
}

/// One file's turn: submitted if pending, then waited for (its phases and its gate).
/// `label` starts the line that says it was applied: a fleet's target name.
pub(super) fn apply_file(
    client: &mut Client,
    m: &Migration,
    row: &Row,
    out: &mut Out,
    limit: Duration,
    label: &str,
) -> Result<Turn> {
    let acts = matches!(row.state.as_str(), "pending" | "running" | "watching");
    if acts && interrupt::interrupted() {
        // Between two versions: the one before is applied, this one never began.
        out.note(Note {
            file: Some(m.file.clone()),
            title: "interrupted".into(),
            message: if row.state == "pending" {
                format!("{label}version {} was not started", m.version)
            } else {
                format!(
                    "{label}version {} goes on in the database's worker; it was not waited for",
                    m.version
                )
            },
            hint: Some("pg-migrate apply takes up what is left.".into()),
            ..Note::default()
        });
        return Ok(Turn::Stop(Exit::Interrupted));
    }
    let started = Instant::now();
    let mut statements = 0;
    match row.state.as_str() {
        "pending" => match submit(client, m) {
            Ok(n) => statements = n,
            Err(e) if interrupt::cancelled(&e) => {
                out.note(Note {
                    file: Some(m.file.clone()),
                    title: "interrupted".into(),
                    message: format!(
                        "{label}version {} was not applied: its transaction was rolled back",
                        m.version
                    ),
                    hint: Some("Nothing of it is left; pg-migrate apply runs it again.".into()),
                    ..Note::default()
                });
                return Ok(Turn::Stop(Exit::Interrupted));
            }
            Err(e) => return Err(in_file(e, m)),
        },
        // Submitted earlier, or watched: the wait below.
        "running" | "watching" => {}
        _ => return Ok(Turn::Skipped),
    }
    let end = match wait_for(client, m, out, limit)? {
        Waited::Done(end) => end,
        Waited::Interrupted(state) => {
            left_running(m, &state, out);
            return Ok(Turn::Stop(Exit::Interrupted));
        }
        Waited::TimedOut(state) => {
            out.note(Note {
                file: Some(m.file.clone()),
                title: "timeout".into(),
                message: format!(
                    "{label}version {} is still {state} after {} s: it goes on in the database",
                    m.version,
                    limit.as_secs()
                ),
                hint: Some(
                    "Run pg-migrate apply again to wait for it and go on; pg-migrate status \
                     shows where it is."
                        .into(),
                ),
                ..Note::default()
            });
            return Ok(Turn::Stop(Exit::Error));
        }
    };
    if matches!(end.as_str(), "failed" | "cancelled") {
        let (sqlstate, why) = failed_phase(client, &m.version)?;
        out.note(Note {
            file: Some(m.file.clone()),
            title: "error".into(),
            message: format!("{label}version {} is {end}: {why}", m.version),
            hint: Some(format!(
                "See migrate.steps; pg-migrate retry {} runs what is left once the cause is \
                 fixed.",
                m.version
            )),
            sqlstate: Some(sqlstate.clone()),
            ..Note::default()
        });
        return Ok(Turn::Stop(if sqlstate == "55P03" {
            Exit::GaveUp
        } else {
            Exit::Error
        }));
    }
    out.say(&format!(
        "{label}{} {} {}: {} {} in {:.0} ms",
        coloured(&end),
        m.version,
        m.description,
        statements,
        if m.expand.is_some() {
            "steps"
        } else {
            "statements"
        },
        started.elapsed().as_secs_f64() * 1000.0
    ));
    let blocking = BLOCKING.contains(&end.as_str());
    if blocking {
        blocking_notes(
            &[Row {
                state: end.clone(),
                ..row.clone()
            }],
            out,
        );
    }
    Ok(Turn::Done { end, blocking })
}

/// `apply`: every pending file up to `to`; a phased one waited for, and a watched one's
/// gate too (a later version would be refused while it is open, and may depend on it).
pub fn apply(
    cli: &Cli,
    out: &mut Out,
    to: Option<&str>,
    limit: Duration,
    replicas: Option<Replicas>,
) -> Result<Exit> {
    let Some(found) = checked_files(&cli.dir, out)? else {
        return Ok(Exit::Checksum);
    };
    let mut client = cli.target.connect()?;
    let rows = states(&mut client, &found)?;
    if changed_notes(&rows, out) {
        return Ok(Exit::Checksum);
    }
    if blocking_notes(&rows, out) {
        return Ok(Exit::Error);
    }
    let mut applied = Vec::new();
    let mut exit = Exit::Ok;
    for (m, row) in found.iter().zip(&rows) {
        if to.is_some_and(|to| files::compare_versions(&m.version, to).is_gt()) {
            break;
        }
        match apply_file(&mut client, m, row, out, limit, "")? {
            Turn::Skipped => continue,
            Turn::Stop(stop) => {
                exit = stop;
                break;
            }
            Turn::Done { end, blocking } => {
                applied.push(json!({"version": m.version, "file": m.file, "status": end}));
                if blocking {
                    exit = Exit::Error;
                    break;
                }
            }
        }
    }
    interrupted_after_the_last(&mut exit, out);
    if applied.is_empty() && exit == Exit::Ok {
        out.say("nothing to apply");
    }
    out.doc.insert("applied".into(), json!(applied));
    if let (Some(replicas), Exit::Ok) = (replicas, exit) {
        let last = applied
            .last()
            .and_then(|a| a["version"].as_str())
            .map(str::to_string);
        exit = wait_for_replicas(&mut client, out, last.as_deref(), &replicas)?;
    }
    Ok(exit)
}

/// Ctrl-C reached the server after the last commit: what was applied stays, and is said;
/// the run still ends as interrupted.
pub(super) fn interrupted_after_the_last(exit: &mut Exit, out: &mut Out) {
    if interrupt::interrupted() && *exit == Exit::Ok {
        out.note(Note {
            title: "interrupted".into(),
            message: "Ctrl-C came after the last version was applied; nothing was rolled back"
                .into(),
            hint: Some("pg-migrate status shows what is applied.".into()),
            ..Note::default()
        });
        *exit = Exit::Interrupted;
    }
}

/// Waits (migrate.wait_replicas) until the standbys have replayed `version`, by default the
/// migration the database committed last: a deploy's next step may then read from them.
fn wait_for_replicas(
    client: &mut postgres::Client,
    out: &mut Out,
    version: Option<&str>,
    replicas: &Replicas,
) -> Result<Exit> {
    let names = (!replicas.names.is_empty()).then_some(&replicas.names);
    let started = Instant::now();
    let waited = client.query_typed(
        "CALL migrate.wait_replicas($1, pg_catalog.make_interval(secs => $2), $3)",
        &[
            (&version, Type::TEXT),
            (&replicas.limit.as_secs_f64(), Type::FLOAT8),
            (&names, Type::TEXT_ARRAY),
        ],
    );
    match waited {
        Ok(_) => {}
        Err(e) if interrupt::cancelled(&e) => {
            out.note(Note {
                title: "interrupted".into(),
                message: "stopped waiting for the standbys; the migrations are applied on the \
                          primary"
                    .into(),
                hint: Some("pg-migrate apply --wait-replicas waits again.".into()),
                ..Note::default()
            });
            return Ok(Exit::Interrupted);
        }
        // The wait's own end, not a Ctrl-C or a statement_timeout (the same SQLSTATE).
        Err(e)
            if !crate::interrupt::interrupted()
                && e.as_db_error().is_some_and(|d| {
                    d.code() == &postgres::error::SqlState::QUERY_CANCELED
                        && d.message().starts_with("pg_migrate: version ")
                        && d.message().contains(" is not replayed after ")
                }) =>
        {
            let db = e.as_db_error().expect("checked above");
            out.note(Note {
                title: "replicas".into(),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                hint: Some(
                    "The migrations are applied on the primary; pg-migrate apply \
                     --wait-replicas waits again. SELECT * FROM migrate.replicas(); shows \
                     how far each standby is."
                        .into(),
                ),
                sqlstate: Some("57014".into()),
                ..Note::default()
            });
            return Ok(Exit::Replicas);
        }
        Err(e) => return Err(e.into()),
    }
    let standbys: Vec<String> = client
        .query_typed(
            "SELECT standby FROM migrate.replicas() WHERE state <> 'disconnected' ORDER BY 1",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    out.say(&format!(
        "replayed on {} in {:.0} ms",
        if standbys.is_empty() {
            "every standby (none is streaming)".to_string()
        } else {
            standbys.join(", ")
        },
        started.elapsed().as_secs_f64() * 1000.0
    ));
    out.doc.insert("replicas".into(), json!(standbys));
    Ok(Exit::Ok)
}
