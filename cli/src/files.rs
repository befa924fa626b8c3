//! Migration files in a folder: Flyway's names (`V1_2__add_orders.sql` is version 1.2, with
//! `U1_2__*.sql` as its rollback), or a folder per version (`1.2__add_orders/up.sql`,
//! `down.sql`, `verify.sql`). Directives in `-- migrate:` comments. Anything that looks like a
//! migration but cannot be read as one is refused with its path, never skipped.

use std::cmp::Ordering;
use std::fmt;
use std::path::{Path, PathBuf};

/// One migration as found in the folder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Migration {
    pub version: String,
    pub description: String,
    /// The up script's path, relative to the folder.
    pub file: String,
    pub script: String,
    pub rollback: Option<String>,
    pub verify: Option<String>,
    pub allow: Vec<String>,
    pub watch: Option<String>,
    /// `-- migrate:expand [ttl]`: opened as an expand window (`migrate.expand`), with this
    /// ttl (empty: the default).
    pub expand: Option<String>,
}

/// What a script's `-- migrate:` comments ask for.
#[derive(Debug, Default, PartialEq)]
struct Directives {
    allow: Vec<String>,
    watch: Option<String>,
    expand: Option<String>,
}

/// A file the folder holds that cannot be read as a migration.
#[derive(Debug, Clone, PartialEq)]
pub struct FileError {
    pub file: String,
    pub problem: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.problem)
    }
}

/// The files of a migration folder that `migrate.sum` covers, relative, in a stable order.
pub fn tracked(dir: &Path) -> Result<Vec<String>, FileError> {
    let mut out = Vec::new();
    for entry in entries(dir, "")? {
        if entry.is_dir {
            for inner in entries(&dir.join(&entry.name), &entry.name)? {
                if !inner.is_dir && is_sql(&inner.name) {
                    out.push(inner.relative);
                }
            }
        } else if is_sql(&entry.name) {
            out.push(entry.relative);
        }
    }
    out.sort();
    Ok(out)
}

/// A script's name, whatever the case of its suffix: `V4__x.SQL` is not a note to skip.
fn is_sql(name: &str) -> bool {
    name.len() > 4
        && name.is_char_boundary(name.len() - 4)
        && name[name.len() - 4..].eq_ignore_ascii_case(".sql")
}

/// The scripts a migration folder may hold.
const FOLDER_SCRIPTS: [&str; 3] = ["up.sql", "down.sql", "verify.sql"];

struct Entry {
    name: String,
    relative: String,
    is_dir: bool,
}

fn entries(dir: &Path, prefix: &str) -> Result<Vec<Entry>, FileError> {
    let shown = |p: &Path| p.display().to_string();
    let read = std::fs::read_dir(dir).map_err(|e| FileError {
        file: shown(dir),
        problem: format!("cannot read the folder: {e}"),
    })?;
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| FileError {
            file: shown(dir),
            problem: e.to_string(),
        })?;
        let name = entry.file_name().into_string().map_err(|raw| FileError {
            file: raw.to_string_lossy().into_owned(),
            problem: "the name is not UTF-8".into(),
        })?;
        if name.starts_with('.') {
            continue;
        }
        if name.chars().any(char::is_control) {
            return Err(FileError {
                file: name.escape_debug().to_string(),
                problem: "the name holds a control character".into(),
            });
        }
        let kind = entry.file_type().map_err(|e| FileError {
            file: name.clone(),
            problem: e.to_string(),
        })?;
        if kind.is_symlink() {
            // What runs is what the folder holds, not what a link points to elsewhere.
            return Err(FileError {
                file: name,
                problem: "a symbolic link: keep the migration itself in the folder".into(),
            });
        }
        let relative = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        out.push(Entry {
            is_dir: kind.is_dir(),
            name,
            relative,
        });
    }
    Ok(out)
}

/// `1_2` or `1.2` as the extension spells versions (`1.2`); None for anything else.
fn version_of(text: &str) -> Option<String> {
    let version = text.replace('_', ".");
    let ok = !version.is_empty()
        && version
            .split('.')
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(version)
}

/// A version as given on the command line (`--to`): `1.2` or `1_2`.
pub fn parse_version(text: &str) -> Result<String, String> {
    version_of(text).ok_or_else(|| {
        format!("\"{text}\" is not a version: use dot-separated numbers such as 42 or 1.2")
    })
}

/// `V1_2__add_orders` → ("1.2", "add orders"); the prefix letter is checked by the caller.
fn split_name(stem: &str) -> Option<(String, String)> {
    let (version, description) = stem.split_once("__")?;
    Some((version_of(version)?, description.replace('_', " ")))
}

/// Orders versions as the extension does (`migrate.version_key`): numerically, segment by
/// segment, so 1 < 1.2 < 2 < 10, and 1 and 1.0 are the same version.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let key = |v: &str| -> Vec<u128> {
        let mut k: Vec<u128> = v
            .split('.')
            .map(|s| s.parse().unwrap_or(u128::MAX))
            .collect();
        while k.len() > 1 && k.last() == Some(&0) {
            k.pop();
        }
        k
    };
    key(a).cmp(&key(b))
}

fn read_script(dir: &Path, relative: &str) -> Result<String, FileError> {
    let bad = |problem: String| FileError {
        file: relative.to_string(),
        problem,
    };
    let bytes = std::fs::read(dir.join(relative)).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        bad(format!(
            "not UTF-8 (byte {} is invalid): save it as UTF-8",
            e.utf8_error().valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Err(bad("empty: a migration needs at least one statement".into()));
    }
    Ok(text)
}

/// The `-- migrate:allow <rule>`, `-- migrate:watch <interval>` and `-- migrate:expand
/// [ttl]` directives of a script. A line that reads as one however it is spaced or cased
/// counts: a directive misspelt into a plain comment would apply the migration without it,
/// unnoticed.
fn directives(script: &str, file: &str) -> Result<Directives, FileError> {
    let mut d = Directives::default();
    let script = script.strip_prefix('\u{feff}').unwrap_or(script);
    for (n, line) in script.lines().enumerate() {
        let Some(comment) = line.trim().strip_prefix("--") else {
            continue;
        };
        let comment = comment.trim_start();
        let Some(rest) = comment
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("migrate:"))
            .map(|_| &comment[8..])
        else {
            continue;
        };
        let refuse = |problem: String| FileError {
            file: format!("{file}:{}", n + 1),
            problem,
        };
        let (word, value) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let value = value.trim();
        match (word.to_ascii_lowercase().as_str(), value.is_empty()) {
            ("allow", false) => d.allow.extend(value.split_whitespace().map(str::to_string)),
            ("watch", false) if d.watch.is_none() => d.watch = Some(value.to_string()),
            ("expand", _) if d.expand.is_none() => d.expand = Some(value.to_string()),
            ("watch", false) | ("expand", _) => {
                return Err(refuse(format!(
                    "a second `-- migrate:{}`: a migration says it once",
                    word.to_ascii_lowercase()
                )))
            }
            _ => {
                return Err(refuse(format!(
                    "unknown directive \"-- migrate:{rest}\": the directives are \
                     `-- migrate:allow <rule>`, `-- migrate:watch <interval>` and \
                     `-- migrate:expand [ttl]`"
                )))
            }
        }
    }
    if d.expand.is_some() && !d.allow.is_empty() {
        return Err(FileError {
            file: file.to_string(),
            problem: "`-- migrate:allow` in an expand window: migrate.expand plans each change \
                      to be safe, and takes no allowed rules"
                .into(),
        });
    }
    Ok(d)
}

/// A migration read from its up script and directives.
fn migration(
    version: String,
    description: String,
    file: String,
    script: String,
) -> Result<Migration, FileError> {
    let d = directives(&script, &file)?;
    Ok(Migration {
        version,
        description,
        file,
        script,
        allow: d.allow,
        watch: d.watch,
        expand: d.expand,
        ..Migration::default()
    })
}

/// Every migration in `dir`, in version order.
pub fn discover(dir: &Path) -> Result<Vec<Migration>, FileError> {
    let mut found: Vec<Migration> = Vec::new();
    let mut rollbacks: Vec<(String, String)> = Vec::new();
    let bad_name = |file: &str| FileError {
        file: file.to_string(),
        problem: "not a migration's name: use V<version>__<description>.sql (V1_2__add_orders.sql \
                  is version 1.2), U<version>__<description>.sql for its rollback, or a folder \
                  <version>__<description>/ holding up.sql"
            .into(),
    };
    for entry in entries(dir, "")? {
        if entry.is_dir {
            let (version, description) = match entry.name.split_once("__") {
                Some(_) => split_name(&entry.name),
                None => version_of(&entry.name).map(|v| (v, String::new())),
            }
            .ok_or_else(|| bad_name(&entry.name))?;
            // A misspelt script (donw.sql) would be covered by migrate.sum and never run.
            for other in entries(&dir.join(&entry.name), &entry.name)? {
                if !other.is_dir
                    && is_sql(&other.name)
                    && !FOLDER_SCRIPTS.contains(&other.name.as_str())
                {
                    return Err(FileError {
                        file: other.relative,
                        problem: "not a script of a migration folder: it holds up.sql, and \
                                  optionally down.sql and verify.sql"
                            .into(),
                    });
                }
            }
            let inner = |name: &str| -> Result<Option<String>, FileError> {
                let relative = format!("{}/{name}", entry.name);
                if dir.join(&relative).is_file() {
                    read_script(dir, &relative).map(Some)
                } else {
                    Ok(None)
                }
            };
            let file = format!("{}/up.sql", entry.name);
            let script = inner("up.sql")?.ok_or_else(|| FileError {
                file: entry.name.clone(),
                problem: "a migration folder needs an up.sql".into(),
            })?;
            let mut m = migration(version, description, file, script)?;
            m.rollback = inner("down.sql")?;
            m.verify = inner("verify.sql")?;
            found.push(m);
            continue;
        }
        if !is_sql(&entry.name) {
            // Notes, READMEs and migrate.sum live beside the migrations.
            continue;
        }
        let Some(stem) = entry.name.strip_suffix(".sql") else {
            return Err(FileError {
                file: entry.name,
                problem: "a script's name ends in .sql, in lower case".into(),
            });
        };
        let (kind, rest) = stem.split_at(stem.chars().next().map_or(0, char::len_utf8));
        let (version, description) = split_name(rest).ok_or_else(|| bad_name(&entry.name))?;
        let script = read_script(dir, &entry.name)?;
        match kind {
            "V" => {
                found.push(migration(version, description, entry.name, script)?);
            }
            "U" => rollbacks.push((version, script)),
            _ => return Err(bad_name(&entry.name)),
        }
    }
    found.sort_by(|a, b| compare_versions(&a.version, &b.version).then(a.file.cmp(&b.file)));
    for pair in found.windows(2) {
        if compare_versions(&pair[0].version, &pair[1].version) == Ordering::Equal {
            return Err(FileError {
                file: pair[1].file.clone(),
                problem: format!(
                    "version {} again: {} has it already",
                    pair[1].version, pair[0].file
                ),
            });
        }
    }
    for (version, script) in rollbacks {
        let owner = found
            .iter_mut()
            .find(|m| compare_versions(&m.version, &version) == Ordering::Equal)
            .ok_or_else(|| FileError {
                file: format!("U{}", version.replace('.', "_")),
                problem: format!("a rollback of version {version}, which has no V file"),
            })?;
        if owner.rollback.is_some() {
            return Err(FileError {
                file: owner.file.clone(),
                problem: format!(
                    "version {version} has two rollback scripts (U files, or a U file and \
                     down.sql): keep one"
                ),
            });
        }
        owner.rollback = Some(script);
    }
    if let Some(m) = found
        .iter()
        .find(|m| m.expand.is_some() && (m.rollback.is_some() || m.verify.is_some()))
    {
        return Err(FileError {
            file: m.file.clone(),
            problem: format!(
                "version {} opens an expand window and has a rollback or verify script: a \
                 window is undone with pg-migrate abort {}, and checked by the worker before \
                 it is published",
                m.version, m.version
            ),
        });
    }
    Ok(found)
}

/// The absolute folder, for messages.
pub fn shown(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn flyway_names_give_versions_as_the_extension_spells_them() {
        assert_eq!(
            split_name("1_2__add_orders"),
            Some(("1.2".into(), "add orders".into()))
        );
        assert_eq!(split_name("42__x"), Some(("42".into(), "x".into())));
        assert_eq!(split_name("1a__x"), None);
        assert_eq!(split_name("1__"), Some(("1".into(), "".into())));
        assert_eq!(split_name("_1__x"), None);
        assert_eq!(split_name("12"), None);
    }

    #[test]
    fn versions_order_numerically_and_trailing_zeros_do_not_count() {
        let mut v = vec!["10", "2", "1.2", "1", "1.10"];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(v, ["1", "1.2", "1.10", "2", "10"]);
        assert_eq!(compare_versions("1", "1.0"), Ordering::Equal);
    }

    #[test]
    fn directives_are_read_and_unknown_ones_refused() {
        let Directives { allow, watch, .. } = directives(
            "-- migrate:allow rename-column drop-column\n-- migrate:watch 10 min\nSELECT 1;",
            "V1__x.sql",
        )
        .unwrap();
        assert_eq!(allow, ["rename-column", "drop-column"]);
        assert_eq!(watch.as_deref(), Some("10 min"));
        let e = directives("SELECT 1;\n-- migrate:alow x\n", "V1__x.sql").unwrap_err();
        assert_eq!(e.file, "V1__x.sql:2");
        // Spacing and case do not hide one; a second watch is refused.
        let watch = directives("--MIGRATE:Watch 1 min\nSELECT 1;", "V1__x.sql")
            .unwrap()
            .watch;
        assert_eq!(watch.as_deref(), Some("1 min"));
        assert!(directives("--  migrate:watch 1 min\n-- migrate:watch 2 min", "f").is_err());
        assert_eq!(parse_version("1_2"), Ok("1.2".into()));
        assert!(parse_version("V1").is_err());
    }

    #[test]
    fn an_expand_window_is_said_once_with_its_ttl_and_takes_no_allowed_rules() {
        let d = directives(
            "-- migrate:expand 3 days\nALTER TABLE a DROP COLUMN b;",
            "f",
        )
        .unwrap();
        assert_eq!(d.expand.as_deref(), Some("3 days"));
        let d = directives("-- Migrate:Expand\nALTER TABLE a DROP COLUMN b;", "f").unwrap();
        assert_eq!(d.expand.as_deref(), Some(""));
        assert!(directives("-- migrate:expand\n-- migrate:expand 1 day\n", "f").is_err());
        let e = directives("-- migrate:expand\n-- migrate:allow drop-column\n", "f").unwrap_err();
        assert!(e.problem.contains("takes no allowed rules"), "{e}");
    }
}
