//! What a run says, in the form asked for: aligned tables and coloured words for people,
//! one versioned JSON document, or GitHub annotations; and the exit code pipelines act on.

use crate::Format;
use anstream::{eprintln, println};
use serde_json::{json, Value};

/// Exit codes, documented and stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Error = 1,
    Usage = 2,
    /// The guard found something in a file (lint).
    Findings = 3,
    /// A file differs from what was applied, or from migrate.sum.
    Checksum = 4,
    /// `status --check`: something is pending.
    Pending = 5,
    /// A lock or the applier lock was not obtained after every retry.
    GaveUp = 6,
    /// `apply --wait-replicas`: a standby had not replayed the last version in time.
    Replicas = 7,
    /// Ctrl-C (SIGINT), as shells report it.
    Interrupted = 130,
}

/// The findings annotated one by one in GitHub's format; its tenth annotation is theirs.
const GITHUB_SHOWN: usize = 9;

/// An error in how the command was called (settings that cannot both hold): exit 2, as
/// for what clap refuses.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A finding or an error as a person, a JSON reader or GitHub sees it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Note {
    pub file: Option<String>,
    pub line: Option<i64>,
    pub title: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
}

impl Note {
    /// A database error as a note about `file`, with its DETAIL, HINT and SQLSTATE.
    pub fn from_db(file: &str, title: &str, e: &postgres::Error) -> Note {
        let db = e.as_db_error();
        Note {
            file: Some(file.to_string()),
            title: title.to_string(),
            message: db.map_or_else(|| e.to_string(), |d| d.message().to_string()),
            detail: db.and_then(|d| d.detail().map(str::to_string)),
            hint: db.and_then(|d| d.hint().map(str::to_string)),
            sqlstate: db.map(|d| d.code().code().to_string()),
            line: db.and_then(|d| {
                statement_line(d.message()).or_else(|| d.detail().and_then(statement_line))
            }),
        }
    }
}

/// The line of "statement 3 (line 12)", the way the extension names a statement in its
/// messages: a refusal carries no cursor position, only this.
pub fn statement_line(text: &str) -> Option<i64> {
    // A statement of the rollback script or of the verify queries is not at that line of
    // the up script the error is placed in.
    if text.contains("the rollback script of") || text.contains("the verify queries of") {
        return None;
    }
    text.match_indices("statement ").find_map(|(at, word)| {
        let rest = &text[at + word.len()..];
        let number_end = rest.find(|c: char| !c.is_ascii_digit())?;
        let line = rest[number_end..].strip_prefix(" (line ")?;
        let line_end = line.find(|c: char| !c.is_ascii_digit())?;
        (number_end > 0 && line_end > 0 && line[line_end..].starts_with(')'))
            .then(|| line[..line_end].parse().ok())
            .flatten()
    })
}

pub struct Out {
    pub format: Format,
    /// What GitHub's `file=` is given before a file's name: the migrations folder as the
    /// repository sees it (GitHub places an annotation by its path in the repository).
    pub github_folder: String,
    /// Findings past the annotations GitHub shows, and how many of them the step summary
    /// took.
    held_back: usize,
    summarised: usize,
    /// The JSON document's members, filled by the verb.
    pub doc: serde_json::Map<String, Value>,
    pub notes: Vec<Note>,
}

const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const GREEN: &str = "\x1b[32m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// What a state asks of the reader.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tone {
    Bad,
    Waiting,
    Good,
}

fn tone(state: &str) -> Tone {
    match state {
        "changed" | "failed" | "missing" | "cancelled" | "refused" | "rolled back"
        | "rollback failed" | "rejected" => Tone::Bad,
        "pending" | "running" | "watching" | "held" | "rewrites" => Tone::Waiting,
        _ => Tone::Good,
    }
}

/// A state word, coloured by what it asks of the reader (stripped by anstream when the
/// output is not a terminal, or NO_COLOR is set).
pub fn coloured(state: &str) -> String {
    let colour = match tone(state) {
        Tone::Bad => RED,
        Tone::Waiting => YELLOW,
        Tone::Good => GREEN,
    };
    format!("{colour}{state}{RESET}")
}

/// The same as a table cell: comfy-table measures the word, not its escape codes, so the
/// columns stay aligned.
pub fn state_cell(state: &str) -> comfy_table::Cell {
    let colour = match tone(state) {
        Tone::Bad => comfy_table::Color::Red,
        Tone::Waiting => comfy_table::Color::Yellow,
        Tone::Good => comfy_table::Color::Green,
    };
    comfy_table::Cell::new(state).fg(colour)
}

impl Out {
    pub fn new(format: Format) -> Out {
        Out {
            format,
            github_folder: String::new(),
            held_back: 0,
            summarised: 0,
            doc: serde_json::Map::new(),
            notes: Vec::new(),
        }
    }

    pub fn human(&self) -> bool {
        self.format == Format::Human
    }

    /// A line of progress or a result, for people only.
    pub fn say(&self, line: &str) {
        if self.human() {
            println!("{line}");
        }
    }

    /// A finding or error: printed now for people and GitHub, kept for JSON.
    pub fn note(&mut self, note: Note) {
        match self.format {
            Format::Human => {
                // A message quotes names and text from the database: cleaned so that none
                // of it drives the terminal or a CI runner.
                let clean = |t: &str| clean(t).replace('\n', "\n    ");
                let note = Note {
                    message: clean(&note.message),
                    detail: note.detail.as_deref().map(clean),
                    hint: note.hint.as_deref().map(clean),
                    ..note.clone()
                };
                let place = match (&note.file, note.line) {
                    (Some(f), Some(l)) => format!("{f}:{l}: "),
                    (Some(f), None) => format!("{f}: "),
                    _ => String::new(),
                };
                eprintln!(
                    "{BOLD}{place}{RED}{}{RESET}{BOLD}: {}{RESET}",
                    note.title, note.message
                );
                if let Some(d) = &note.detail {
                    eprintln!("  DETAIL: {d}");
                }
                if let Some(h) = &note.hint {
                    eprintln!("  HINT: {h}");
                }
            }
            Format::Github => {
                // GitHub shows 10 error annotations a step: nine findings, and the tenth
                // says how many more there are (in the summary, when there is one).
                let shown = self.notes.len();
                let text = [Some(note.message.clone()), note.hint.clone()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                if shown < GITHUB_SHOWN {
                    let mut place = String::new();
                    if let Some(f) = &note.file {
                        let path = format!("{}{f}", self.github_folder);
                        place.push_str(&format!(" file={}", escape_property(&path)));
                    }
                    if let Some(l) = note.line {
                        place.push_str(&format!(",line={l}"));
                    }
                    let place = place.replacen(" file", "file", 1);
                    println!(
                        "::error {place},title={}::{}",
                        escape_property(&note.title),
                        escape_data(&text)
                    );
                } else {
                    use std::io::Write;
                    let flat = |t: &str| t.replace(['\n', '\r', '`'], " ");
                    let written = std::env::var("GITHUB_STEP_SUMMARY")
                        .ok()
                        .and_then(|s| std::fs::OpenOptions::new().append(true).open(s).ok())
                        .is_some_and(|mut f| {
                            writeln!(
                                f,
                                "- `{}{}:{}` {}: {}",
                                self.github_folder,
                                flat(note.file.as_deref().unwrap_or("-")),
                                note.line.unwrap_or(0),
                                flat(&note.title),
                                flat(&text)
                            )
                            .is_ok()
                        });
                    self.held_back += 1;
                    if written {
                        self.summarised += 1;
                    }
                }
            }
            Format::Json => {}
        }
        self.notes.push(note);
    }

    /// An error that ends the run, with the extension's DETAIL and HINT when it came from
    /// the database.
    pub fn error(&mut self, e: &anyhow::Error) -> Exit {
        // anyhow finds a context's own type, and the error under it, by downcasting.
        let db = e
            .downcast_ref::<postgres::Error>()
            .and_then(|p| p.as_db_error());
        let located = e.downcast_ref::<crate::verbs::InFile>();
        let mut note = Note {
            title: "error".into(),
            message: db.map_or_else(|| format!("{e:#}"), |d| d.message().to_string()),
            ..Note::default()
        };
        if let Some(d) = db {
            note.detail = d.detail().map(str::to_string);
            note.hint = d.hint().map(str::to_string);
            note.sqlstate = Some(d.code().code().to_string());
        }
        if let Some(place) = located {
            note.file = Some(place.file.clone());
            note.line = place.line.or_else(|| {
                statement_line(&note.message)
                    .or_else(|| note.detail.as_deref().and_then(statement_line))
            });
        }
        // The extension gives up with the error of its last attempt: a lock not granted
        // in time, or a deadlock with another session.
        let exit = match note.sqlstate.as_deref() {
            Some("55P03" | "40P01") => Exit::GaveUp,
            _ if e.downcast_ref::<Usage>().is_some() => Exit::Usage,
            _ => Exit::Error,
        };
        self.note(note);
        exit
    }

    /// The JSON document, once, at the end.
    pub fn finish(&mut self, exit: Exit) {
        if self.held_back > 0 {
            let where_ = if self.summarised == self.held_back {
                "they are in the step summary"
            } else {
                "run pg-migrate without --format github to see them all"
            };
            println!(
                "::error title=more findings::{} more findings than GitHub shows; {where_}",
                self.held_back
            );
        }
        if self.format != Format::Json {
            return;
        }
        let mut doc = serde_json::Map::new();
        doc.insert("pg_migrate_cli".into(), json!(1));
        doc.insert("exit".into(), json!(exit as i32));
        doc.append(&mut self.doc);
        doc.insert("notes".into(), json!(self.notes));
        // A CI runner reads `##[` anywhere in a line as its command; JSON may escape the `#`
        // and mean the same text.
        println!(
            "{}",
            Value::Object(doc).to_string().replace("##[", "#\\u0023[")
        );
    }
}

/// Text from the database (names, messages, rows a verify query quoted) made inert for a
/// terminal and a CI runner's log: control characters and bidirectional overrides shown
/// escaped; a line that would start a runner's command (`::`, after any spaces) or holds
/// its older form (`##[`) broken by a zero-width space. Newlines are kept.
pub fn clean(text: &str) -> String {
    let escaped: String = text
        .chars()
        .map(|c| match c {
            '\n' => c.to_string(),
            c if c.is_control() => c.escape_debug().to_string(),
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                c.escape_unicode().to_string()
            }
            c => c.to_string(),
        })
        .collect();
    escaped
        .split('\n')
        .map(|line| {
            // GitHub's older commands, Azure Pipelines' and TeamCity's: read anywhere in a line.
            let line = line
                .replace("##[", "##\u{200b}[")
                .replace("##vso[", "##\u{200b}vso[")
                .replace("##teamcity[", "##\u{200b}teamcity[");
            let start = line.len() - line.trim_start().len();
            if line[start..].starts_with("::") {
                format!("{}:\u{200b}{}", &line[..start], &line[start + 1..])
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A table cell of text from the database, cleaned.
pub fn cell(text: impl AsRef<str>) -> comfy_table::Cell {
    comfy_table::Cell::new(clean(text.as_ref()))
}

/// GitHub's escaping of an annotation's text.
fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// ... and of its properties.
fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn a_statement_named_in_a_message_gives_its_line() {
        let m = "pg_migrate: migration 7: statement 3 (line 12): index-create-blocking: x";
        assert_eq!(statement_line(m), Some(12));
        assert_eq!(statement_line("statement 2 (line 1) ran longer"), Some(1));
        // Words that only look like it.
        assert_eq!(statement_line("a statement (line 4)"), None);
        assert_eq!(statement_line("statement 2 (line x)"), None);
        assert_eq!(statement_line("statement 2 (line 4"), None);
        assert_eq!(statement_line("no such statement"), None);
        // Another script's statement: not a line of the up file.
        let m = "pg_migrate: the rollback script of migration 3: statement 2 (line 5): x";
        assert_eq!(statement_line(m), None);
    }

    #[test]
    fn database_text_cannot_drive_a_terminal_or_a_runner() {
        let evil =
            "evil\x1b]0;TITLE\x07\x1b[31mRED\n  ::error::injected\nok ##[add-mask]x \u{202e}abc";
        let c = clean(evil);
        assert!(
            !c.contains('\x1b') && !c.contains('\x07') && !c.contains('\u{202e}'),
            "{c}"
        );
        assert!(!c.lines().any(|l| l.trim_start().starts_with("::")), "{c}");
        assert!(!c.contains("##["), "{c}");
        let c = clean("a ##vso[task.setvariable variable=x]1 b ##teamcity[message text='x']");
        assert!(!c.contains("##vso[") && !c.contains("##teamcity["), "{c}");
        assert_eq!(clean("plain text\nline two"), "plain text\nline two");
    }
}
