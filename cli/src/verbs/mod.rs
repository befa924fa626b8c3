//! The verbs: each a few SQL calls of the extension's API over the folder's files. What
//! they share: the folder checked against `migrate.sum`, and each file's state in the
//! history.

mod apply;
pub mod fleet;
mod inspect;
mod steer;
mod wait;

pub use apply::{apply, Replicas};
pub use inspect::{drift, fingerprint, lint, plan, status, verify};
pub use steer::{baseline, close_window, decide, retry, Decision};

use crate::checksum::normalized_checksum;
use crate::files::{self, Migration};
use crate::report::{cell, state_cell, Exit, Note, Out};
use crate::sum;
use anyhow::{Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use postgres::types::Type;
use postgres::Client;
use serde_json::json;
use std::path::Path;

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
    // The windows' sources are for migrate_admin; others read the history alone (and an
    // expand file's checksum cannot be compared for them).
    let windows: bool = client.query_typed(
        "SELECT has_table_privilege('migrate.window_history', 'SELECT')",
        &[],
    )?[0]
        .get(0);
    let window_checksum = if windows {
        "(SELECT w.source_checksum FROM migrate.window_history w WHERE w.version = h.version)"
    } else {
        "NULL::text"
    };
    // A window's migration is applied once it expanded: what it is now (published,
    // contracted, aborted) is the window's state, which anyone may read.
    let window_state = "(SELECT x.state FROM migrate.windows x WHERE x.version = h.version)";
    let recorded = client
        .query_typed(
            &format!(
                "SELECT f.v, h.status, h.checksum, h.checksum_algorithm, s.state, \
                        migrate.version_key(f.v) <= (SELECT max(b.version_key) \
                            FROM migrate.history b WHERE b.status = 'baseline'), \
                        {window_checksum}, {window_state} \
                 FROM unnest($1::text[]) WITH ORDINALITY f(v, n) \
                 LEFT JOIN migrate.history h ON h.version_key = migrate.version_key(f.v) \
                 LEFT JOIN migrate.status s ON s.version = h.version \
                 ORDER BY f.n"
            ),
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
        // An expand window records the plan it made as the migration's script: the file is
        // the DDL it was given, whose checksum the window keeps.
        let window: Option<String> = r.get(6);
        let window_state: Option<String> = r.get(7);
        let checksum = if m.expand.is_some() {
            window.or(checksum)
        } else {
            checksum
        };
        let state = match status.as_deref() {
            Some("baseline") => "baseline".to_string(),
            Some(_)
                if checksum.is_some()
                    && normalized_checksum(&m.script, algorithm.unwrap_or(1)) != checksum =>
            {
                "changed".to_string()
            }
            // Its health gate's state, while it has one to tell.
            Some("applied")
                if m.expand.is_some()
                    && window_state.is_some()
                    && shown
                        .as_deref()
                        .is_none_or(|s| s == "complete" || s.starts_with("applied")) =>
            {
                window_state.unwrap_or_default()
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
            // The files' keys once, then an anti-join: `<> ALL (subquery)` computed them
            // again for every recorded version (4.7 s at 1,000 versions; this is 19 ms).
            "WITH files AS MATERIALIZED ( \
                 SELECT migrate.version_key(v) AS k FROM unnest($1::text[]) v) \
             SELECT h.version, coalesce(h.description, '') FROM migrate.history h \
             WHERE h.status <> 'baseline' \
               AND NOT EXISTS (SELECT 1 FROM files f WHERE f.k = h.version_key) \
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

/// One step of an expand window, as `migrate.expand`, `contract` and `abort` return it.
#[derive(Debug, Clone, serde::Serialize)]
struct Step {
    step: i32,
    stage: String,
    statement: String,
    lock: String,
}

/// A window's steps (rows of step, stage, statement, lock) and their table.
fn window_steps(rows: &[postgres::Row]) -> (Vec<Step>, Table) {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["step", "stage", "statement", "lock"]);
    let steps: Vec<Step> = rows
        .iter()
        .map(|r| Step {
            step: r.get(0),
            stage: r.get(1),
            statement: r.get(2),
            lock: r.get(3),
        })
        .collect();
    for s in &steps {
        t.add_row([
            cell(s.step.to_string()),
            cell(&s.stage),
            cell(&s.statement),
            cell(&s.lock),
        ]);
    }
    (steps, t)
}

fn table(rows: &[Row]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["version", "description", "state", "file"]);
    for r in rows {
        t.add_row([
            cell(&r.version),
            cell(&r.description),
            state_cell(&r.state),
            cell(r.file.as_deref().unwrap_or_default()),
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
                "See migrate.steps; pg-migrate retry {} runs what is left once the cause is \
                 fixed.",
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
