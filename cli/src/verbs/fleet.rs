//! `--fleet FILE`: the same folder of migrations applied to many databases, a canary first,
//! then waves, each version everywhere before the next; after each version every database
//! at it must have the canary's fingerprint, or the run stops and says what differs.

use super::apply::{apply_file, interrupted_after_the_last, Turn};
use super::{blocking_notes, changed_notes, checked_files, states, Row};
use crate::connect::Target;
use crate::files::{self, Migration};
use crate::report::{cell, state_cell, Exit, Note, Out, Usage};
use crate::Cli;
use anyhow::{Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use postgres::types::Type;
use postgres::Client;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The fleet file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    /// Applied first; every other target's fingerprint is compared with it.
    canary: Option<String>,
    /// The order after the canary, wave by wave; by default one wave of every other target
    /// in name order.
    waves: Option<Vec<Vec<String>>>,
    #[serde(default)]
    targets: BTreeMap<String, TargetFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    /// A connection string or URL.
    url: Option<String>,
    /// A service of the service file (PGSERVICEFILE, ~/.pg_service.conf).
    service: Option<String>,
}

/// A fleet, checked: its targets in the order they are applied.
pub struct Fleet {
    pub targets: Vec<(String, Target)>,
    /// Whether the first target is a canary named as such.
    pub canary: bool,
}

fn usage(message: String) -> anyhow::Error {
    Usage(message).into()
}

/// Reads and checks a fleet file: every target connectable one way, each in one wave.
pub fn load(path: &Path) -> Result<Fleet> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the fleet file {}", path.display()))?;
    let file: FleetFile =
        toml::from_str(&text).map_err(|e| usage(format!("{}: {}", path.display(), e.message())))?;
    let named = |what: &str, name: &str| -> Result<()> {
        if file.targets.contains_key(name) {
            Ok(())
        } else {
            Err(usage(format!(
                "{}: {what} \"{name}\" is not one of [targets]",
                path.display()
            )))
        }
    };
    if file.targets.is_empty() {
        return Err(usage(format!(
            "{}: no [targets.NAME] is given",
            path.display()
        )));
    }
    let mut order: Vec<String> = Vec::new();
    if let Some(canary) = &file.canary {
        named("the canary", canary)?;
        order.push(canary.clone());
    }
    match &file.waves {
        Some(waves) => {
            for name in waves.iter().flatten() {
                named("wave member", name)?;
                if order.contains(name) {
                    return Err(usage(format!(
                        "{}: target \"{name}\" comes twice (canary and waves name each target once)",
                        path.display()
                    )));
                }
                order.push(name.clone());
            }
            if let Some(left) = file.targets.keys().find(|n| !order.contains(n)) {
                return Err(usage(format!(
                    "{}: target \"{left}\" is in no wave: add it to one, or remove it",
                    path.display()
                )));
            }
        }
        None => {
            let rest: Vec<String> = file
                .targets
                .keys()
                .filter(|n| !order.contains(n))
                .cloned()
                .collect();
            order.extend(rest);
        }
    }
    let mut targets = Vec::new();
    for name in order {
        let t = &file.targets[&name];
        let target = match (&t.url, &t.service) {
            (Some(url), None) => Target {
                url: Some(url.clone()),
                fleet: true,
                ..Target::default()
            },
            (None, Some(service)) => Target {
                service: Some(service.clone()),
                fleet: true,
                ..Target::default()
            },
            _ => {
                return Err(usage(format!(
                    "{}: target \"{name}\" needs one of url and service",
                    path.display()
                )))
            }
        };
        targets.push((name, target));
    }
    Ok(Fleet {
        targets,
        canary: file.canary.is_some(),
    })
}

/// A fleet takes every connection from its file: connection flags (or DATABASE_URL) beside
/// it would be ignored unseen.
fn refuse_connection_flags(cli: &Cli) -> Result<()> {
    let t = &cli.target;
    if t.url.is_some()
        || t.host.is_some()
        || t.port.is_some()
        || t.user.is_some()
        || t.dbname.is_some()
    {
        return Err(usage(
            "--fleet takes every target's connection from its file: give no --url, --host, \
             --port, --user or --dbname with it, and unset DATABASE_URL"
                .into(),
        ));
    }
    Ok(())
}

/// A connection to each target, in order.
fn connect(fleet: &Fleet) -> Result<Vec<(String, Client)>> {
    fleet
        .targets
        .iter()
        .map(|(name, target)| {
            let client = target
                .connect()
                .with_context(|| format!("target \"{name}\""))?;
            Ok((name.clone(), client))
        })
        .collect()
}

/// The highest version a database has applied (or baselined), and its fingerprint.
fn where_it_is(client: &mut Client) -> Result<(Option<String>, String)> {
    let row = client
        .query_typed(
            "SELECT migrate.current_version(), migrate.fingerprint()",
            &[],
        )?
        .remove(0);
    Ok((row.get(0), row.get(1)))
}

/// What differs between the reference's schema and this target's: migrate.diff run on the
/// target, from the reference's description to its own.
fn differences(
    reference: &mut Client,
    target: &mut Client,
) -> Result<Vec<(String, String, String)>> {
    let described: String =
        reference.query_typed("SELECT migrate.describe()::text", &[])?[0].get(0);
    Ok(target
        .query_typed(
            "SELECT d.kind, d.object, d.change \
             FROM migrate.diff($1::text::jsonb, migrate.describe()) d ORDER BY 2, 1",
            &[(&described, Type::TEXT)],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Compares every target at the reference's version with the reference (the first target);
/// a note per target that differs, naming what differs. Returns whether all matched.
fn fingerprints_match(
    clients: &mut [(String, Client)],
    after: &str,
    out: &mut Out,
) -> Result<bool> {
    let (first, rest) = clients.split_first_mut().expect("a fleet has targets");
    let (version, fingerprint) = where_it_is(&mut first.1)?;
    let mut same = true;
    let mut compared = 1;
    for (name, client) in rest.iter_mut() {
        let (theirs, print) = where_it_is(client)?;
        if theirs != version {
            continue;
        }
        compared += 1;
        if print == fingerprint {
            continue;
        }
        same = false;
        let found = differences(&mut first.1, client)?;
        let shown: Vec<String> = found
            .iter()
            .take(20)
            .map(|(kind, object, change)| format!("{object} ({kind}): {change}"))
            .collect();
        out.note(Note {
            title: "drift".into(),
            message: format!(
                "target \"{name}\" has another schema than \"{}\" after version {after}: \
                 fingerprint {} instead of {}",
                first.0,
                &print[..12.min(print.len())],
                &fingerprint[..12.min(fingerprint.len())]
            ),
            detail: Some(if found.len() > shown.len() {
                format!(
                    "{}; and {} more",
                    shown.join("; "),
                    found.len() - shown.len()
                )
            } else {
                shown.join("; ")
            }),
            hint: Some(format!(
                "Nothing more is applied anywhere. SELECT * FROM migrate.drift(); on \"{name}\" \
                 says who changed what outside migrations; bring it back in line, then run \
                 the fleet again."
            )),
            ..Note::default()
        });
    }
    if same {
        out.say(&format!(
            "version {after}: the same fingerprint on {compared} targets ({})",
            &fingerprint[..12.min(fingerprint.len())]
        ));
    }
    Ok(same)
}

/// `apply --fleet`: version by version, the canary, then each wave; after each version,
/// the fingerprints. Stops at the first failure, failed gate or drift.
pub fn apply(
    cli: &Cli,
    out: &mut Out,
    path: &Path,
    to: Option<&str>,
    limit: Duration,
) -> Result<Exit> {
    refuse_connection_flags(cli)?;
    let fleet = load(path)?;
    let Some(found) = checked_files(&cli.dir, out)? else {
        return Ok(Exit::Checksum);
    };
    let mut clients = connect(&fleet)?;
    let mut rows: Vec<Vec<Row>> = Vec::new();
    let mut stop = None;
    for (name, client) in clients.iter_mut() {
        let r = states(client, &found).with_context(|| format!("target \"{name}\""))?;
        let mut notes = Out::new(crate::Format::Json);
        if changed_notes(&r, &mut notes) {
            stop = Some(Exit::Checksum);
        } else if blocking_notes(&r, &mut notes) {
            stop = stop.or(Some(Exit::Error));
        }
        for mut note in notes.notes {
            note.message = format!("{name}: {}", note.message);
            out.note(note);
        }
        rows.push(r);
    }
    if let Some(exit) = stop {
        return Ok(exit);
    }
    let mut applied = Vec::new();
    let mut exit = Exit::Ok;
    'versions: for (i, m) in found.iter().enumerate() {
        if to.is_some_and(|to| files::compare_versions(&m.version, to).is_gt()) {
            break;
        }
        let mut touched = false;
        for (t, (name, client)) in clients.iter_mut().enumerate() {
            match apply_file(client, m, &rows[t][i], out, limit, &format!("{name}: "))? {
                Turn::Skipped => {}
                Turn::Stop(stopped) => {
                    exit = stopped;
                    break 'versions;
                }
                Turn::Done { end, blocking } => {
                    touched = true;
                    applied.push(json!({"target": name, "version": m.version, "file": m.file, "status": end}));
                    if blocking {
                        exit = Exit::Error;
                        break 'versions;
                    }
                }
            }
        }
        if touched && !fingerprints_match(&mut clients, &m.version, out)? {
            exit = Exit::Checksum;
            break;
        }
    }
    interrupted_after_the_last(&mut exit, out);
    if applied.is_empty() && exit == Exit::Ok {
        out.say("nothing to apply on any target");
    }
    out.doc.insert("applied".into(), json!(applied));
    Ok(exit)
}

/// One target as `status --fleet` shows it: its version, fingerprint, files pending, and
/// standbys behind ("k of n"; unknown without pg_monitor).
fn target_row(
    client: &mut Client,
    found: &[Migration],
) -> Result<(Option<String>, String, usize, String)> {
    let (version, fingerprint) = where_it_is(client)?;
    let pending = states(client, found)?
        .iter()
        .filter(|r| r.state == "pending")
        .count();
    let behind = match client.query_typed(
        "SELECT count(*) FILTER (WHERE cardinality(behind) > 0), count(*) FROM migrate.replicas()",
        &[],
    ) {
        Ok(r) => format!("{} of {}", r[0].get::<_, i64>(0), r[0].get::<_, i64>(1)),
        Err(e) => format!(
            "? ({})",
            e.as_db_error().map_or("unreadable", |d| d.code().code())
        ),
    };
    Ok((version, fingerprint, pending, behind))
}

/// `status --fleet`: one row per target: its version, files pending, drift from the first
/// target (the canary) when at the same version, and its standbys behind.
pub fn status(cli: &Cli, out: &mut Out, path: &Path, check: bool) -> Result<Exit> {
    refuse_connection_flags(cli)?;
    let fleet = load(path)?;
    let Some(found) = checked_files(&cli.dir, out)? else {
        return Ok(Exit::Checksum);
    };
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["target", "version", "pending", "drift", "replicas behind"]);
    let mut rows = Vec::new();
    // The first target's version and fingerprint; None when it could not be read.
    let mut reference: Option<(Option<String>, String)> = None;
    let (mut drifted, mut pending_anywhere, mut unreachable) = (false, false, false);
    for (i, (name, target)) in fleet.targets.iter().enumerate() {
        let read = target
            .connect()
            .and_then(|mut client| target_row(&mut client, &found));
        let (version, fingerprint, pending, behind) = match read {
            Ok(row) => row,
            Err(e) => {
                unreachable = true;
                table.add_row([
                    cell(name.as_str()),
                    cell("?"),
                    cell("?"),
                    cell("?"),
                    cell(format!("unreachable: {e:#}")),
                ]);
                rows.push(json!({"target": name, "error": format!("{e:#}")}));
                continue;
            }
        };
        let drift = match &reference {
            _ if i == 0 => {
                let role = if fleet.canary { "canary" } else { "reference" };
                reference = Some((version.clone(), fingerprint.clone()));
                role.to_string()
            }
            None => "unknown".to_string(),
            Some((v, _)) if *v != version => "other version".to_string(),
            Some((_, print)) if *print == fingerprint => "none".to_string(),
            Some(_) => {
                drifted = true;
                "fingerprint differs".to_string()
            }
        };
        pending_anywhere |= pending > 0;
        table.add_row([
            cell(name.as_str()),
            cell(version.as_deref().unwrap_or("none")),
            cell(pending.to_string()),
            state_cell(&drift),
            cell(behind.as_str()),
        ]);
        rows.push(
            json!({"target": name, "version": version, "pending": pending,
                         "drift": drift, "fingerprint": fingerprint, "replicas_behind": behind}),
        );
    }
    if out.human() {
        anstream::println!("{table}");
    }
    out.doc.insert("targets".into(), json!(rows));
    Ok(if unreachable {
        Exit::Error
    } else if drifted {
        Exit::Checksum
    } else if check && pending_anywhere {
        Exit::Pending
    } else {
        Exit::Ok
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    fn loaded(text: &str) -> Result<Fleet> {
        let dir = std::env::temp_dir().join(format!("pg_migrate_fleet_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "{:x}.toml",
            text.len() * 31 + text.bytes().map(usize::from).sum::<usize>()
        ));
        std::fs::write(&path, text).unwrap();
        let fleet = load(&path);
        std::fs::remove_file(&path).unwrap();
        fleet
    }

    fn refused(text: &str) -> String {
        let e = loaded(text).err().expect("refused");
        assert!(e.downcast_ref::<Usage>().is_some(), "a usage error: {e:#}");
        format!("{e:#}")
    }

    #[test]
    fn the_canary_comes_first_then_the_waves_in_order() {
        let fleet = loaded(
            "canary = \"stage\"\nwaves = [[\"b\", \"a\"], [\"c\"]]\n\
             [targets.a]\nurl = \"postgresql://a/db\"\n[targets.b]\nservice = \"b\"\n\
             [targets.c]\nurl = \"postgresql://c/db\"\n[targets.stage]\nurl = \"postgresql://s/db\"\n",
        )
        .unwrap();
        let names: Vec<&str> = fleet.targets.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["stage", "b", "a", "c"]);
        assert!(fleet.canary);
        assert_eq!(fleet.targets[1].1.service.as_deref(), Some("b"));
        assert_eq!(fleet.targets[0].1.url.as_deref(), Some("postgresql://s/db"));
    }

    #[test]
    fn without_waves_the_targets_go_in_name_order() {
        let fleet = loaded("[targets.z]\nurl = \"x\"\n[targets.m]\nurl = \"y\"\n").unwrap();
        let names: Vec<&str> = fleet.targets.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["m", "z"]);
        assert!(!fleet.canary);
    }

    #[test]
    fn bad_fleet_files_are_usage_errors_that_say_what_is_wrong() {
        assert!(refused("").contains("no [targets.NAME]"));
        assert!(refused("canary = \"x\"\n[targets.a]\nurl = \"u\"\n")
            .contains("the canary \"x\" is not one of [targets]"));
        assert!(
            refused("waves = [[\"a\", \"b\"]]\n[targets.a]\nurl = \"u\"\n")
                .contains("wave member \"b\"")
        );
        assert!(
            refused("waves = [[\"a\"]]\n[targets.a]\nurl = \"u\"\n[targets.b]\nurl = \"v\"\n")
                .contains("target \"b\" is in no wave")
        );
        assert!(
            refused("canary = \"a\"\nwaves = [[\"a\"]]\n[targets.a]\nurl = \"u\"\n")
                .contains("comes twice")
        );
        assert!(refused("[targets.a]\nurl = \"u\"\nservice = \"s\"\n")
            .contains("needs one of url and service"));
        assert!(refused("[targets.a]\n").contains("needs one of url and service"));
        assert!(
            refused("[targets.a]\nurl = \"u\"\nhost = \"h\"\n").contains("unknown field `host`")
        );
        assert!(
            refused("canry = \"a\"\n[targets.a]\nurl = \"u\"\n").contains("unknown field `canry`")
        );
    }
}
