//! `pg-migrate`: a thin client of the pg_migrate extension for migrations kept as files. It
//! finds the files, checks them against `migrate.sum` and the database's history, and calls
//! the extension's SQL API; every judgement (the guard, checksums of what ran, the worker)
//! stays in the database.

// The extension's own checksum normalisation, the one module both build: a script's
// checksum here is the one `migrate.apply` records.
#[path = "../../src/migration/checksum.rs"]
#[allow(dead_code)]
mod checksum;
mod connect;
mod files;
mod interrupt;
mod pgfiles;
mod report;
mod sum;
mod tls;
mod verbs;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use report::{Exit, Out};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "pg-migrate", version, about, disable_help_flag = true)]
struct Cli {
    /// The folder of migration files.
    #[arg(
        long,
        global = true,
        env = "PG_MIGRATE_DIR",
        default_value = "migrations"
    )]
    dir: PathBuf,
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    format: Format,
    #[command(flatten)]
    target: connect::Target,
    #[arg(long, global = true, action = clap::ArgAction::Help, help = "Print help")]
    help: Option<bool>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
    /// GitHub Actions annotations (`::error file=...`).
    Github,
}

#[derive(Subcommand)]
enum Command {
    /// Files against migrate.history: applied, pending, changed, missing, running, failed.
    Status {
        /// Exit 5 when anything is pending.
        #[arg(long)]
        check: bool,
        /// Every target of this fleet file: one row each (version, pending, drift, standbys
        /// behind).
        #[arg(long, value_name = "FILE")]
        fleet: Option<PathBuf>,
    },
    /// Applies the pending files in version order, waiting for the worker's phases.
    Apply {
        /// Stop after this version.
        #[arg(long, value_parser = files::parse_version)]
        to: Option<String>,
        /// How long to wait for the worker's phases, and for a watched migration's health
        /// gate, before leaving them to the worker (seconds).
        #[arg(long, default_value_t = 3600)]
        wait: u64,
        /// Then wait until every standby streaming from the database (or each --replica) has
        /// replayed the last version, for at most this long (seconds; 60 when not given).
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "60")]
        wait_replicas: Option<u64>,
        /// A standby to wait for, by application_name or replication slot (repeatable);
        /// one that is not connected is waited for too.
        #[arg(long = "replica", value_name = "NAME", requires = "wait_replicas")]
        replicas: Vec<String>,
        /// Every target of this fleet file (TOML: targets, an optional canary, waves),
        /// version by version; stops at the first failure or fingerprint that differs.
        #[arg(long, value_name = "FILE", conflicts_with = "wait_replicas")]
        fleet: Option<PathBuf>,
    },
    /// The guard's findings on the pending files, judged against the database's catalogs.
    Lint,
    /// A dry run of each pending file: locks, rewrites, rows, time and verdict per statement
    /// (rolled back).
    Plan {
        /// The database is a scratch copy: plan even though other sessions are connected
        /// (the plan holds its statements' locks until it ends).
        #[arg(long)]
        scratch: bool,
    },
    /// migrate.verify of the versions given, or of every applied file.
    Verify {
        #[arg(value_parser = files::parse_version)]
        versions: Vec<String>,
    },
    /// The schema against the one recorded after the last migration.
    Drift,
    /// The schema's fingerprint.
    Fingerprint {
        /// Only these schemas (repeatable).
        #[arg(long = "schema")]
        schemas: Vec<String>,
        /// Exit 4 when the fingerprint is not this one.
        #[arg(long)]
        expect: Option<String>,
    },
    /// Records that the database already is at VERSION: files up to it are not applied.
    Baseline {
        #[arg(value_parser = files::parse_version)]
        version: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// Runs what is left of a failed or cancelled migration, and waits for it.
    Retry {
        #[arg(value_parser = files::parse_version)]
        version: String,
        /// How long to wait for the worker (seconds).
        #[arg(long, default_value_t = 3600)]
        wait: u64,
    },
    /// Stops a migration the worker runs.
    Cancel {
        #[arg(value_parser = files::parse_version)]
        version: String,
    },
    /// Settles a held health gate: the change stays.
    Accept {
        #[arg(value_parser = files::parse_version)]
        version: String,
        /// Why, recorded with the decision.
        #[arg(long)]
        reason: String,
    },
    /// Settles a health gate against the change: rolled back when it can be.
    Reject {
        #[arg(value_parser = files::parse_version)]
        version: String,
        /// Why, recorded with the decision.
        #[arg(long)]
        reason: String,
    },
    /// Ends an expand window: the old shape goes.
    Contract {
        #[arg(value_parser = files::parse_version)]
        version: String,
    },
    /// Gives an expand window up: back to the old shape, nothing lost.
    Abort {
        #[arg(value_parser = files::parse_version)]
        version: String,
    },
    /// Writes migrate.sum over the folder.
    Hash,
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            if !e.use_stderr() {
                std::process::exit(0); // --help, --version
            }
            // A pipeline that asked for JSON gets its one document, usage errors included.
            let args: Vec<String> = std::env::args().collect();
            let json = args
                .windows(2)
                .any(|w| w[0] == "--format" && w[1] == "json")
                || args.iter().any(|a| a == "--format=json");
            if json {
                let mut out = Out::new(Format::Json);
                out.note(report::Note {
                    title: "usage".into(),
                    message: e.kind().to_string(),
                    detail: Some(e.render().to_string()),
                    ..report::Note::default()
                });
                out.finish(Exit::Usage);
            }
            std::process::exit(Exit::Usage as i32);
        }
    };
    interrupt::install();
    let mut out = Out::new(cli.format);
    out.github_folder = github_folder(&cli.dir, std::env::var_os("GITHUB_WORKSPACE"));
    let exit = match run(&cli, &mut out) {
        Ok(exit) => exit,
        Err(e) => out.error(&e),
    };
    // A statement cancelled by Ctrl-C ends as an error: it is the interrupt that is said.
    let exit = if interrupt::interrupted() && exit != Exit::Ok {
        Exit::Interrupted
    } else {
        exit
    };
    out.finish(exit);
    std::process::exit(exit as i32);
}

/// The migrations folder as a path in the repository, with a trailing slash ("" for its
/// top): GitHub places an annotation by that path. The repository is `GITHUB_WORKSPACE`
/// when a runner gives it, else the current folder.
fn github_folder(dir: &std::path::Path, workspace: Option<std::ffi::OsString>) -> String {
    use std::path::{Component, Path};
    let within = workspace
        .and_then(|w| Some((Path::new(&w).canonicalize().ok()?, dir.canonicalize().ok()?)))
        .and_then(|(w, d)| d.strip_prefix(w).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| dir.to_path_buf());
    let path: std::path::PathBuf = within
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    match path.to_string_lossy() {
        p if p.is_empty() => String::new(),
        p => format!("{}/", p.trim_end_matches('/')),
    }
}

fn run(cli: &Cli, out: &mut Out) -> Result<Exit> {
    use std::time::Duration;
    use verbs::Decision;
    match &cli.command {
        Command::Hash => verbs::hash(&cli.dir, out),
        Command::Status {
            check,
            fleet: Some(fleet),
        } => verbs::fleet::status(cli, out, fleet, *check),
        Command::Status { check, fleet: None } => verbs::status(cli, out, *check),
        Command::Apply {
            to,
            wait,
            fleet: Some(fleet),
            ..
        } => verbs::fleet::apply(cli, out, fleet, to.as_deref(), Duration::from_secs(*wait)),
        Command::Apply {
            to,
            wait,
            wait_replicas,
            replicas,
            fleet: None,
        } => {
            let replicas = wait_replicas.map(|s| verbs::Replicas {
                limit: Duration::from_secs(s),
                names: replicas.clone(),
            });
            verbs::apply(
                cli,
                out,
                to.as_deref(),
                Duration::from_secs(*wait),
                replicas,
            )
        }
        Command::Lint => verbs::lint(cli, out),
        Command::Plan { scratch } => verbs::plan(cli, out, *scratch),
        Command::Verify { versions } => verbs::verify(cli, out, versions),
        Command::Drift => verbs::drift(cli, out),
        Command::Fingerprint { schemas, expect } => {
            verbs::fingerprint(cli, out, schemas, expect.as_deref())
        }
        Command::Baseline {
            version,
            description,
        } => verbs::baseline(cli, out, version, description.as_deref()),
        Command::Retry { version, wait } => {
            verbs::retry(cli, out, version, Duration::from_secs(*wait))
        }
        Command::Cancel { version } => verbs::decide(cli, out, Decision::Cancel, version, None),
        Command::Accept { version, reason } => {
            verbs::decide(cli, out, Decision::Accept, version, Some(reason))
        }
        Command::Reject { version, reason } => {
            verbs::decide(cli, out, Decision::Reject, version, Some(reason))
        }
        Command::Contract { version } => verbs::close_window(cli, out, version, true),
        Command::Abort { version } => verbs::close_window(cli, out, version, false),
    }
}

#[cfg(test)]
mod unit {
    use super::github_folder;
    use std::path::Path;

    #[test]
    fn annotations_name_files_by_their_path_in_the_repository() {
        assert_eq!(github_folder(Path::new("migrations"), None), "migrations/");
        assert_eq!(
            github_folder(Path::new("./db/migrations/"), None),
            "db/migrations/"
        );
        assert_eq!(github_folder(Path::new("."), None), "");
        let repo = std::env::temp_dir().join(format!("pg-migrate-gh-{}", std::process::id()));
        std::fs::create_dir_all(repo.join("db/m")).unwrap();
        let found = github_folder(&repo.join("db/m"), Some(repo.clone().into_os_string()));
        let outside = github_folder(
            Path::new("/nonexistent/m"),
            Some(repo.clone().into_os_string()),
        );
        std::fs::remove_dir_all(&repo).unwrap();
        assert_eq!(found, "db/m/");
        assert_eq!(outside, "/nonexistent/m/");
    }
}
