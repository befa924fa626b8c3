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

/// States that stop `apply` and fail `status --check`: a change that failed, was stopped,
/// was judged harmful, or waits for a decision. Later files may depend on it.
const BLOCKING: [&str; 7] = [
    "failed",
    "cancelled",
    "held",
    "rolled back",
    "rollback failed",
    "rejected",
    "missing",
];

fn blocking_notes(rows: &[Row], out: &mut Out) -> bool {
    let mut any = false;
    for r in rows.iter().filter(|r| BLOCKING.contains(&r.state.as_str())) {
        any = true;
        let hint = match r.state.as_str() {
            "missing" => "It is recorded in the database and no file has it: the wrong folder or \
                          database, or a file deleted after it ran."
                .to_string(),
            "held" => format!(
                "Its health gate waits for a decision: migrate.accept('{0}', 'reason') or \
                 migrate.reject('{0}', 'reason').",
                r.version
            ),
            "failed" | "cancelled" => format!(
                "See migrate.steps; SELECT migrate.retry('{}') runs what is left once the \
                 cause is fixed.",
                r.version
            ),
            _ => "Its change was undone or judged harmful: later versions may depend on it; \
                  put a fix in a new version."
                .to_string(),
        };
        out.note(Note {
            file: r.file.clone(),
            title: "blocked".into(),
            message: format!("version {} is {}", r.version, r.state),
            hint: Some(hint),
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
    if check && blocking_notes(&rows, out) {
        return Ok(Exit::Error);
    }
    if check
        && rows
            .iter()
            .any(|r| matches!(r.state.as_str(), "pending" | "running"))
    {
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

/// How a wait ended.
enum Waited {
    Done(String),
    /// Still the worker's (or the gate's) after the time allowed.
    TimedOut(String),
}

/// Waits for a migration the worker runs, saying each phase as it is done; then, when it is
/// watched, for its health gate to settle, saying each state.
fn wait_for(client: &mut Client, m: &Migration, out: &mut Out, limit: Duration) -> Result<Waited> {
    let started = Instant::now();
    let mut said = (-1, -1);
    let mut said_state = String::new();
    loop {
        let r = client
            .query_typed(
                "SELECT h.status, \
                        (SELECT count(*) FROM migrate.steps s WHERE s.version = h.version \
                           AND s.state = 'done')::int, \
                        (SELECT count(*) FROM migrate.steps s WHERE s.version = h.version)::int, \
                        w.state \
                 FROM migrate.history h LEFT JOIN migrate.watch_records w USING (version) \
                 WHERE h.version_key = migrate.version_key($1)",
                &[(&m.version, Type::TEXT)],
            )
            .context("reading migrate.history")?;
        let Some(r) = r.first() else {
            bail!("version {} is no longer recorded", m.version);
        };
        let (status, done, all): (String, i32, i32) = (r.get(0), r.get(1), r.get(2));
        let gate: Option<String> = r.get(3);
        if all > 0 && (done, all) != said {
            out.say(&format!(
                "  {} phase {done} of {all} done ({:.0} s)",
                m.version,
                started.elapsed().as_secs_f64()
            ));
            said = (done, all);
        }
        let open = matches!(
            gate.as_deref(),
            Some("waiting" | "watching" | "rolling back" | "recovering")
        );
        if let Some(state) = gate
            .as_deref()
            .filter(|s| *s != said_state && *s != "waiting")
        {
            out.say(&format!(
                "  {} health gate: {state} ({:.0} s)",
                m.version,
                started.elapsed().as_secs_f64()
            ));
            said_state = state.to_string();
        }
        let busy = matches!(status.as_str(), "pending" | "running");
        let gate_open = status == "applied" && open;
        let settled = !busy && !gate_open;
        if settled {
            return Ok(Waited::Done(match gate {
                Some(state) if status == "applied" => state,
                _ => status,
            }));
        }
        if started.elapsed() >= limit {
            return Ok(Waited::TimedOut(gate.filter(|_| !busy).unwrap_or(status)));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What the worker's failed phase reported.
fn failed_phase(client: &mut Client, version: &str) -> Result<(String, String)> {
    Ok(client
        .query_typed(
            "SELECT coalesce(s.error_sqlstate, ''), coalesce(s.error_message, '') \
             FROM migrate.steps s WHERE s.version = $1 AND s.state IN ('failed', 'cancelled') \
             ORDER BY s.phase LIMIT 1",
            &[(&version, Type::TEXT)],
        )?
        .first()
        .map(|r| (r.get(0), r.get(1)))
        .unwrap_or_default())
}

/// `apply`: every pending file up to `to`, in version order, one `migrate.apply` each; a
/// phased one waited for, and a watched one's gate too (a later version would be refused
/// while it is open, and may depend on it).
pub fn apply(cli: &Cli, out: &mut Out, to: Option<&str>, limit: Duration) -> Result<Exit> {
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
        let started = Instant::now();
        let mut statements = 0;
        match row.state.as_str() {
            "pending" => {
                let r = client
                    .query_typed(
                        "SELECT a.status, a.statements FROM migrate.apply(version => $1, \
                           script => $2, description => $3, rollback => $4, allow => $5, \
                           verify => $6, watch => $7::interval) a",
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
                statements = r[0].get::<_, i32>(1);
            }
            // Submitted earlier, or watched: the wait below.
            "running" | "watching" => {}
            _ => continue,
        }
        let end = match wait_for(&mut client, m, out, limit)? {
            Waited::Done(end) => end,
            Waited::TimedOut(state) => {
                out.note(Note {
                    file: Some(m.file.clone()),
                    title: "timeout".into(),
                    message: format!(
                        "version {} is still {state} after {} s: it goes on in the database",
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
                exit = Exit::Error;
                break;
            }
        };
        if matches!(end.as_str(), "failed" | "cancelled") {
            let (sqlstate, why) = failed_phase(&mut client, &m.version)?;
            out.note(Note {
                file: Some(m.file.clone()),
                title: "error".into(),
                message: format!("version {} is {end}: {why}", m.version),
                hint: Some(format!(
                    "See migrate.steps; SELECT migrate.retry('{}') runs what is left once the \
                     cause is fixed.",
                    m.version
                )),
                sqlstate: Some(sqlstate.clone()),
                ..Note::default()
            });
            exit = if sqlstate == "55P03" {
                Exit::GaveUp
            } else {
                Exit::Error
            };
            break;
        }
        out.say(&format!(
            "{} {} {}: {} statements in {:.0} ms",
            coloured(&end),
            m.version,
            m.description,
            statements,
            started.elapsed().as_secs_f64() * 1000.0
        ));
        applied.push(json!({"version": m.version, "file": m.file, "status": end}));
        if BLOCKING.contains(&end.as_str()) {
            blocking_notes(
                &[Row {
                    state: end,
                    ..row.clone()
                }],
                out,
            );
            exit = Exit::Error;
            break;
        }
    }
    if applied.is_empty() && exit == Exit::Ok {
        out.say("nothing to apply");
    }
    out.doc.insert("applied".into(), json!(applied));
    Ok(exit)
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
