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
mod report;
mod sum;
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
    let mut out = Out::new(cli.format);
    let exit = match run(&cli, &mut out) {
        Ok(exit) => exit,
        Err(e) => out.error(&e),
    };
    out.finish(exit);
    std::process::exit(exit as i32);
}

fn run(cli: &Cli, out: &mut Out) -> Result<Exit> {
    match &cli.command {
        Command::Hash => report::hash(&cli.dir, out),
        Command::Status { check } => report::status(cli, out, *check),
        Command::Apply { to, wait } => report::apply(
            cli,
            out,
            to.as_deref(),
            std::time::Duration::from_secs(*wait),
        ),
        Command::Lint => report::lint(cli, out),
    }
}
