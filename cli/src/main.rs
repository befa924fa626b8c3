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
    },
    /// The guard's findings on the pending files, judged against the database's catalogs.
    Lint,
    /// A dry run of each pending file: locks, rewrites, rows, time and verdict per statement
    /// (rolled back).
    Plan,
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
            std::process::exit(if e.use_stderr() {
                Exit::Usage as i32
            } else {
                0
            });
        }
    };
    interrupt::install();
    let mut out = Out::new(cli.format);
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

fn run(cli: &Cli, out: &mut Out) -> Result<Exit> {
    use std::time::Duration;
    use verbs::Decision;
    match &cli.command {
        Command::Hash => verbs::hash(&cli.dir, out),
        Command::Status { check } => verbs::status(cli, out, *check),
        Command::Apply { to, wait } => {
            verbs::apply(cli, out, to.as_deref(), Duration::from_secs(*wait))
        }
        Command::Lint => verbs::lint(cli, out),
        Command::Plan => verbs::plan(cli, out),
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
