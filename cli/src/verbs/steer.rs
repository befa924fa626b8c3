//! The verbs that decide: `baseline`, `retry`, `cancel`, `accept`, `reject`, `contract`,
//! `abort`. Each is the extension's function of the same name; its privileges and refusals
//! are the extension's.

use super::checked_files;
use super::wait::{failed_phase, recorded, wait_for, Waited};
use crate::files::{self, Migration};
use crate::interrupt;
use crate::report::{clean, coloured, Exit, Note, Out};
use crate::Cli;
use anyhow::{Context, Result};
use postgres::types::Type;
use serde_json::json;
use std::time::Duration;

/// `baseline VERSION`: records that the database already is at VERSION; files up to it are
/// then never applied here.
pub fn baseline(
    cli: &Cli,
    out: &mut Out,
    version: &str,
    description: Option<&str>,
) -> Result<Exit> {
    let Some(found) = checked_files(&cli.dir, out)? else {
        return Ok(Exit::Checksum);
    };
    let mut client = cli.target.connect()?;
    let description = description.map(str::to_string).or_else(|| {
        found
            .iter()
            .find(|m| files::compare_versions(&m.version, version).is_eq())
            .map(|m| m.description.clone())
    });
    let r = client.query_typed(
        "SELECT status, version FROM migrate.baseline($1, $2)",
        &[(&version, Type::TEXT), (&description, Type::TEXT)],
    )?;
    let (status, version): (String, String) = (r[0].get(0), r[0].get(1));
    let covered = found
        .iter()
        .filter(|m| files::compare_versions(&m.version, &version).is_le())
        .count();
    out.say(&format!(
        "{} {version}: {covered} files up to it will not be applied here",
        coloured(&status)
    ));
    out.doc.insert(
        "baseline".into(),
        json!({"version": version, "files": covered}),
    );
    Ok(Exit::Ok)
}

/// A version named on the command line, with its file when the folder has one (for the
/// notes' place).
fn named(cli: &Cli, version: &str) -> Migration {
    let file = files::discover(&cli.dir).ok().and_then(|f| {
        f.into_iter()
            .find(|m| files::compare_versions(&m.version, version).is_eq())
    });
    file.unwrap_or_else(|| Migration {
        version: version.to_string(),
        ..Migration::default()
    })
}

/// `retry VERSION`: runs what is left of a failed or cancelled migration, then waits for
/// it as `apply` does.
pub fn retry(cli: &Cli, out: &mut Out, version: &str, limit: Duration) -> Result<Exit> {
    let mut client = cli.target.connect()?;
    let version = &recorded(&mut client, version)?;
    let said: String =
        client.query_typed("SELECT migrate.retry($1)", &[(&version, Type::TEXT)])?[0].get(0);
    out.say(&clean(&said));
    let m = named(cli, version);
    let exit = match wait_for(&mut client, &m, out, limit)? {
        Waited::Done(end) if matches!(end.as_str(), "failed" | "cancelled") => {
            let (sqlstate, why) = failed_phase(&mut client, version)?;
            out.note(Note {
                file: (!m.file.is_empty()).then(|| m.file.clone()),
                title: "error".into(),
                message: format!("version {version} is {end} again: {why}"),
                sqlstate: Some(sqlstate.clone()),
                ..Note::default()
            });
            if sqlstate == "55P03" {
                Exit::GaveUp
            } else {
                Exit::Error
            }
        }
        Waited::Done(end) => {
            out.say(&format!("{} {version}", coloured(&end)));
            out.doc.insert("status".into(), json!(end));
            Exit::Ok
        }
        Waited::Interrupted(state) | Waited::TimedOut(state) => {
            out.say(&format!(
                "version {version} is {state} and goes on in the database's worker"
            ));
            if interrupt::interrupted() {
                Exit::Interrupted
            } else {
                Exit::Error
            }
        }
    };
    Ok(exit)
}

/// The steering functions that answer with a sentence.
#[derive(Clone, Copy)]
pub enum Decision {
    Cancel,
    Accept,
    Reject,
}

/// `cancel VERSION`, `accept VERSION --reason R`, `reject VERSION --reason R`.
pub fn decide(
    cli: &Cli,
    out: &mut Out,
    what: Decision,
    version: &str,
    reason: Option<&str>,
) -> Result<Exit> {
    let mut client = cli.target.connect()?;
    let version = &recorded(&mut client, version)?;
    let said: String = match what {
        Decision::Cancel => {
            client.query_typed("SELECT migrate.cancel($1)", &[(&version, Type::TEXT)])
        }
        Decision::Accept => client.query_typed(
            "SELECT migrate.accept($1, $2)",
            &[(&version, Type::TEXT), (&reason, Type::TEXT)],
        ),
        Decision::Reject => client.query_typed(
            "SELECT migrate.reject($1, $2)",
            &[(&version, Type::TEXT), (&reason, Type::TEXT)],
        ),
    }?[0]
        .get(0);
    out.say(&clean(&said));
    out.doc.insert("said".into(), json!(said));
    Ok(Exit::Ok)
}

/// `contract VERSION` and `abort VERSION`: an expand window's two ends.
pub fn close_window(cli: &Cli, out: &mut Out, version: &str, contract: bool) -> Result<Exit> {
    let mut client = cli.target.connect()?;
    let version = &recorded(&mut client, version)?;
    let query = if contract {
        "SELECT step, stage, statement, coalesce(lock, '') FROM migrate.contract($1)"
    } else {
        "SELECT step, stage, statement, coalesce(lock, '') FROM migrate.abort($1)"
    };
    let rows = client
        .query_typed(query, &[(&version, Type::TEXT)])
        .with_context(|| {
            format!(
                "{} of version {version}",
                if contract { "contract" } else { "abort" }
            )
        })?;
    let (steps, t) = super::window_steps(&rows);
    if out.human() {
        anstream::println!("{t}");
    }
    out.doc.insert("steps".into(), json!(steps));
    Ok(Exit::Ok)
}
