//! The verbs: each a few SQL calls of the extension's API over the folder's files.

use crate::checksum::normalized_checksum;
use crate::files::{self, Migration};
use crate::report::{coloured, Exit, Note, Out};
use crate::{sum, Cli};
use anyhow::{bail, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use postgres::types::Type;
use postgres::Client;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where in the folder an error points.
#[derive(Debug)]
pub struct InFile {
    pub file: String,
    pub line: Option<i64>,
}

impl std::fmt::Display for InFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}", self.file),
            None => write!(f, "{}", self.file),
        }
    }
}

impl std::error::Error for InFile {}

/// The folder's migrations, once `migrate.sum` says they are the ones it covers.
fn checked_files(dir: &Path, out: &mut Out) -> Result<Option<Vec<Migration>>> {
    let found = files::discover(dir).map_err(|e| {
        anyhow::Error::new(InFile {
            file: e.file.clone(),
            line: None,
        })
        .context(e.problem.clone())
    })?;
    let tracked = files::tracked(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mismatch = sum::check(dir, &tracked).context("reading migrate.sum")?;
    if !mismatch.is_clean() {
        out.note(Note {
            file: Some(sum::FILE.into()),
            title: "checksum".into(),
            message: mismatch.describe(),
            hint: Some(
                "Run pg-migrate hash once the files are as they should be, and commit migrate.sum \
                 with them."
                    .into(),
            ),
            ..Note::default()
        });
        return Ok(None);
    }
    Ok(Some(found))
}

/// `hash`: writes migrate.sum.
pub fn hash(dir: &Path, out: &mut Out) -> Result<Exit> {
    files::discover(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tracked = files::tracked(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let text = sum::compute(dir, &tracked)?;
    std::fs::write(dir.join(sum::FILE), text).context("writing migrate.sum")?;
    out.say(&format!(
        "wrote {} over {} files",
        files::shown(dir).join(sum::FILE).display(),
        tracked.len()
    ));
    out.doc.insert("files".into(), json!(tracked));
    Ok(Exit::Ok)
}

/// One file (or one history row without a file) against the history.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub version: String,
    pub description: String,
    pub file: Option<String>,
    pub state: String,
}

fn texts(v: &Vec<String>) -> (&(dyn postgres::types::ToSql + Sync), Type) {
    (v as &(dyn postgres::types::ToSql + Sync), Type::TEXT_ARRAY)
}

/// Each file's state: applied (as recorded: complete, watching...), changed (its checksum
/// is not the recorded one), pending, a worker's state, or covered by a baseline; and the
/// recorded versions no file has (missing).
fn states(client: &mut Client, found: &[Migration]) -> Result<Vec<Row>> {
    let versions: Vec<String> = found.iter().map(|m| m.version.clone()).collect();
    let recorded = client
        .query_typed(
            "SELECT f.v, h.status, h.checksum, h.checksum_algorithm, s.state, \
                    migrate.version_key(f.v) <= (SELECT max(b.version_key) FROM migrate.history b \
                                                 WHERE b.status = 'baseline') \
             FROM unnest($1::text[]) WITH ORDINALITY f(v, n) \
             LEFT JOIN migrate.history h ON h.version_key = migrate.version_key(f.v) \
             LEFT JOIN migrate.status s ON s.version = h.version \
             ORDER BY f.n",
            &[texts(&versions)],
        )
        .context("reading migrate.history")?;
    let mut rows = Vec::new();
    for (m, r) in found.iter().zip(recorded) {
        let status: Option<String> = r.get(1);
        let checksum: Option<String> = r.get(2);
        let algorithm: Option<i16> = r.get(3);
        let shown: Option<String> = r.get(4);
        let below_baseline: Option<bool> = r.get(5);
        let state = match status.as_deref() {
            Some("baseline") => "baseline".to_string(),
            Some(_)
                if checksum.is_some()
                    && normalized_checksum(&m.script, algorithm.unwrap_or(1)) != checksum =>
            {
                "changed".to_string()
            }
            Some("applied") => shown.unwrap_or_else(|| "applied".into()),
            // Submitted: in the worker's hands, queued or under way.
            Some("pending" | "running") => "running".to_string(),
            Some(other) => other.to_string(),
            None if below_baseline == Some(true) => "baseline".to_string(),
            None => "pending".to_string(),
        };
        rows.push(Row {
            version: m.version.clone(),
            description: m.description.clone(),
            file: Some(m.file.clone()),
            state,
        });
    }
    for r in client
        .query_typed(
            "SELECT h.version, coalesce(h.description, '') FROM migrate.history h \
             WHERE h.status <> 'baseline' AND h.version_key <> ALL ( \
                   SELECT migrate.version_key(v) FROM unnest($1::text[]) v) \
             ORDER BY h.version_key",
            &[texts(&versions)],
        )
        .context("reading migrate.history")?
    {
        rows.push(Row {
            version: r.get(0),
            description: r.get(1),
            file: None,
            state: "missing".into(),
        });
    }
    Ok(rows)
}

fn table(rows: &[Row]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["version", "description", "state", "file"]);
    for r in rows {
        t.add_row([
            r.version.clone(),
            r.description.clone(),
            coloured(&r.state),
            r.file.clone().unwrap_or_default(),
        ]);
    }
    t
}

fn changed_notes(rows: &[Row], out: &mut Out) -> bool {
    let mut any = false;
    for r in rows.iter().filter(|r| r.state == "changed") {
        any = true;
        out.note(Note {
            file: r.file.clone(),
            title: "checksum".into(),
            message: format!(
                "version {} was applied from other text: the file changed since",
                r.version
            ),
            hint: Some(
                "A migration that ran is never edited: put the change in a new version.".into(),
            ),
            ..Note::default()
        });
    }
    any
}

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
    if changed_notes(&rows, out) {
        return Ok(Exit::Checksum);
    }
    if check && rows.iter().any(|r| r.state == "pending") {
        return Ok(Exit::Pending);
    }
    Ok(Exit::Ok)
}

/// The line of a script a statement's 1-based character position falls on.
fn line_of(script: &str, position: usize) -> i64 {
    1 + script
        .chars()
        .take(position.saturating_sub(1))
        .filter(|c| *c == '\n')
        .count() as i64
}

fn in_file(e: postgres::Error, m: &Migration) -> anyhow::Error {
    let line = e.as_db_error().and_then(|d| match d.position() {
        Some(postgres::error::ErrorPosition::Original(p)) => Some(line_of(&m.script, *p as usize)),
        _ => None,
    });
    anyhow::Error::new(e).context(InFile {
        file: m.file.clone(),
        line,
    })
}

/// Waits for a migration the worker runs, saying each phase as it is done.
fn wait_for(client: &mut Client, m: &Migration, out: &mut Out) -> Result<String> {
    let started = Instant::now();
    let mut said = (-1, -1);
    loop {
        let r = client
            .query_typed(
                "SELECT h.status, \
                        (SELECT count(*) FROM migrate.steps s WHERE s.version = h.version \
                           AND s.state = 'done')::int, \
                        (SELECT count(*) FROM migrate.steps s WHERE s.version = h.version)::int \
                 FROM migrate.history h WHERE h.version_key = migrate.version_key($1)",
                &[(&m.version, Type::TEXT)],
            )
            .context("reading migrate.history")?;
        let Some(r) = r.first() else {
            bail!("version {} is no longer recorded", m.version);
        };
        let (status, done, all): (String, i32, i32) = (r.get(0), r.get(1), r.get(2));
        if (done, all) != said {
            out.say(&format!(
                "  {} phase {done} of {all} done ({:.0} s)",
                m.version,
                started.elapsed().as_secs_f64()
            ));
            said = (done, all);
        }
        match status.as_str() {
            "pending" | "running" => std::thread::sleep(Duration::from_millis(500)),
            _ => return Ok(status),
        }
    }
}

/// `apply`: every pending file up to `to`, in version order, one `migrate.apply` each.
pub fn apply(cli: &Cli, out: &mut Out, to: Option<&str>) -> Result<Exit> {
    let Some(found) = checked_files(&cli.dir, out)? else {
        return Ok(Exit::Checksum);
    };
    let mut client = cli.target.connect()?;
    let rows = states(&mut client, &found)?;
    if changed_notes(&rows, out) {
        return Ok(Exit::Checksum);
    }
    let mut applied = Vec::new();
    for (m, row) in found.iter().zip(&rows) {
        if to.is_some_and(|to| files::compare_versions(&m.version, to).is_gt()) {
            break;
        }
        match row.state.as_str() {
            "pending" => {}
            // Submitted earlier and still in the worker's hands: wait for it.
            "running" => {
                let end = wait_for(&mut client, m, out)?;
                if end != "applied" {
                    bail!(InFile {
                        file: m.file.clone(),
                        line: None
                    });
                }
                continue;
            }
            "failed" | "cancelled" => {
                out.note(Note {
                    file: Some(m.file.clone()),
                    title: "error".into(),
                    message: format!("version {} is {}", m.version, row.state),
                    hint: Some(format!(
                        "See migrate.steps; SELECT migrate.retry('{}') runs what is left once \
                         the cause is fixed.",
                        m.version
                    )),
                    ..Note::default()
                });
                return Ok(Exit::Error);
            }
            _ => continue,
        }
        let started = Instant::now();
        let r = client
            .query_typed(
                "SELECT a.status, a.statements FROM migrate.apply(version => $1, script => $2, \
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
            )
            .map_err(|e| in_file(e, m))?;
        let (mut status, statements): (String, i32) = (r[0].get(0), r[0].get(1));
        if status == "pending" {
            status = wait_for(&mut client, m, out)?;
            if status != "applied" {
                let why = client
                    .query_typed(
                        "SELECT coalesce(s.error_message, '') FROM migrate.steps s \
                         WHERE s.version = $1 AND s.state IN ('failed', 'cancelled') \
                         ORDER BY s.phase LIMIT 1",
                        &[(&m.version, Type::TEXT)],
                    )?
                    .first()
                    .map(|r| r.get::<_, String>(0))
                    .unwrap_or_default();
                out.note(Note {
                    file: Some(m.file.clone()),
                    title: "error".into(),
                    message: format!("version {} is {status}: {why}", m.version),
                    hint: Some(format!(
                        "See migrate.steps; SELECT migrate.retry('{}') runs what is left once \
                         the cause is fixed.",
                        m.version
                    )),
                    ..Note::default()
                });
                out.doc.insert("applied".into(), json!(applied));
                return Ok(Exit::Error);
            }
        }
        out.say(&format!(
            "{} {} {}: {} statements in {:.0} ms",
            coloured(&status),
            m.version,
            m.description,
            statements,
            started.elapsed().as_secs_f64() * 1000.0
        ));
        applied.push(json!({"version": m.version, "file": m.file, "status": status}));
    }
    if applied.is_empty() {
        out.say("nothing to apply");
    }
    out.doc.insert("applied".into(), json!(applied));
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
        for r in client
            .query_typed(
                "SELECT l.line, l.rule_id, l.message, l.detail, l.hint \
                 FROM migrate.lint($1, $2) l WHERE NOT l.allowed ORDER BY l.statement",
                &[(&m.script, Type::TEXT), (&m.allow, Type::TEXT_ARRAY)],
            )
            .map_err(|e| in_file(e, m))?
        {
            findings += 1;
            out.note(Note {
                file: Some(m.file.clone()),
                line: r.get::<_, Option<i32>>(0).map(i64::from),
                title: r.get(1),
                message: r.get(2),
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

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn positions_map_to_lines() {
        let script = "CREATE TABLE a (id int);\n\nALTER TABLE a ADD COLUMN b nosuchtype;";
        assert_eq!(line_of(script, 1), 1);
        assert_eq!(line_of(script, 27), 3);
    }
}
