//! Waiting for what the worker runs after `migrate.apply` returns: the phases (with a
//! progress bar on a terminal, fed by `migrate.steps` and `migrate.backfill_progress`),
//! then a watched migration's health gate.

use crate::files::Migration;
use crate::interrupt;
use crate::report::Out;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use postgres::types::Type;
use postgres::Client;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How a wait ended.
pub enum Waited {
    Done(String),
    /// Still the worker's (or the gate's) after the time allowed.
    TimedOut(String),
    /// Ctrl-C: still the worker's, in this state.
    Interrupted(String),
}

/// Where a migration the worker runs is.
struct Seen {
    status: String,
    done: i32,
    all: i32,
    gate: Option<String>,
    /// The first phase not done: its kind and table.
    step: Option<String>,
    /// Its backfill's percent done, and time left.
    percent: Option<f64>,
    eta: Option<String>,
    /// How far through its watch the gate is, 0 to 1.
    watched: Option<f64>,
}

impl Seen {
    fn busy(&self) -> bool {
        matches!(self.status.as_str(), "pending" | "running")
    }

    fn gate_open(&self) -> bool {
        self.status == "applied"
            && matches!(
                self.gate.as_deref(),
                Some("waiting" | "watching" | "rolling back" | "recovering")
            )
    }

    /// The state a person is told: the worker's while it runs, then the gate's.
    fn state(&self) -> String {
        match &self.gate {
            Some(state) if self.status == "applied" => state.clone(),
            _ => self.status.clone(),
        }
    }

    /// Percent of the whole: phases done, and the running backfill's share of its phase;
    /// then the watch's time.
    fn percent(&self) -> u64 {
        if self.busy() && self.all > 0 {
            let part = self.percent.unwrap_or(0.0) / 100.0;
            return ((self.done as f64 + part) / self.all as f64 * 100.0).clamp(0.0, 100.0) as u64;
        }
        (self.watched.unwrap_or(1.0) * 100.0).clamp(0.0, 100.0) as u64
    }

    fn message(&self, version: &str) -> String {
        if self.busy() && self.all > 0 {
            let mut m = format!(
                "{version} phase {} of {}",
                (self.done + 1).min(self.all),
                self.all
            );
            if let Some(step) = &self.step {
                m.push_str(&format!(": {step}"));
            }
            if let Some(eta) = self.eta.as_ref().filter(|e| *e != "00:00:00") {
                m.push_str(&format!(", {eta} left"));
            }
            return m;
        }
        match &self.gate {
            Some(gate) if self.status == "applied" => format!("{version} health gate: {gate}"),
            _ => format!("{version} {}", self.status),
        }
    }
}

fn look(client: &mut Client, version: &str) -> Result<Seen> {
    let rows = client
        .query_typed(
            "SELECT h.status, \
                    (SELECT count(*) FROM migrate.steps s WHERE s.version = h.version \
                       AND s.state = 'done')::int, \
                    (SELECT count(*) FROM migrate.steps s WHERE s.version = h.version)::int, \
                    w.state, \
                    (SELECT concat_ws(' ', s.kind, s.target_table) FROM migrate.steps s \
                     WHERE s.version = h.version AND s.state <> 'done' ORDER BY s.phase LIMIT 1), \
                    (SELECT b.percent::float8 FROM migrate.backfill_progress b \
                     WHERE b.version = h.version AND b.state <> 'done' ORDER BY b.phase LIMIT 1), \
                    (SELECT b.eta::text FROM migrate.backfill_progress b \
                     WHERE b.version = h.version AND b.state <> 'done' ORDER BY b.phase LIMIT 1), \
                    extract(epoch FROM now() - w.started_at)::float8 \
                      / nullif(extract(epoch FROM w.watch), 0)::float8 \
             FROM migrate.history h LEFT JOIN migrate.watch_records w USING (version) \
             WHERE h.version_key = migrate.version_key($1)",
            &[(&version, Type::TEXT)],
        )
        .context("reading migrate.history")?;
    let Some(r) = rows.first() else {
        bail!("version {version} is no longer recorded");
    };
    Ok(Seen {
        status: r.get(0),
        done: r.get(1),
        all: r.get(2),
        gate: r.get(3),
        // A table's name is the database's text: shown cleaned.
        step: r
            .get::<_, Option<String>>(4)
            .filter(|s| !s.is_empty())
            .map(|s| crate::report::clean(&s)),
        percent: r.get(5),
        eta: r.get(6),
        watched: r.get(7),
    })
}

/// A bar on a terminal; lines (each phase as it is done, each state of the gate) anywhere
/// else, so logs of a pipeline read as a story.
enum Shown {
    Bar(ProgressBar),
    Lines { phases: (i32, i32), state: String },
}

impl Shown {
    fn new(out: &Out) -> Shown {
        if out.human() && std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos:>3}% {elapsed}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            Shown::Bar(bar)
        } else {
            Shown::Lines {
                phases: (-1, -1),
                state: String::new(),
            }
        }
    }

    fn update(&mut self, seen: &Seen, version: &str, out: &Out, started: Instant) {
        match self {
            Shown::Bar(bar) => {
                bar.set_message(seen.message(version));
                bar.set_position(seen.percent());
            }
            Shown::Lines { phases, state } => {
                let elapsed = started.elapsed().as_secs_f64();
                if seen.all > 0 && (seen.done, seen.all) != *phases {
                    out.say(&format!(
                        "  {version} phase {} of {} done ({elapsed:.0} s)",
                        seen.done, seen.all
                    ));
                    *phases = (seen.done, seen.all);
                }
                if let Some(gate) = seen
                    .gate
                    .as_deref()
                    .filter(|g| g != state && *g != "waiting")
                {
                    out.say(&format!("  {version} health gate: {gate} ({elapsed:.0} s)"));
                    *state = gate.to_string();
                }
            }
        }
    }

    /// The bar goes: the verb's own line says how it ended.
    fn finish(self) {
        if let Shown::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Waits for a migration the worker runs, then, when it is watched, for its health gate
/// to settle.
pub fn wait_for(
    client: &mut Client,
    m: &Migration,
    out: &mut Out,
    limit: Duration,
) -> Result<Waited> {
    let started = Instant::now();
    let mut shown = Shown::new(out);
    // A short phase is seen done soon after it is; a long one is looked at twice a second.
    let mut pause = Duration::from_millis(20);
    let mut last = String::from("running");
    loop {
        let seen = match look(client, &m.version) {
            Ok(seen) => seen,
            // Ctrl-C cancelled the look itself: the migration goes on as it was.
            Err(e)
                if e.downcast_ref::<postgres::Error>()
                    .is_some_and(interrupt::cancelled) =>
            {
                shown.finish();
                return Ok(Waited::Interrupted(last));
            }
            Err(e) => return Err(e),
        };
        last = seen.state();
        shown.update(&seen, &m.version, out, started);
        let settled = !seen.busy() && !seen.gate_open();
        let outcome = if settled {
            Some(Waited::Done(seen.state()))
        } else if interrupt::interrupted() {
            Some(Waited::Interrupted(seen.state()))
        } else if started.elapsed() >= limit {
            Some(Waited::TimedOut(seen.state()))
        } else {
            None
        };
        if let Some(outcome) = outcome {
            shown.finish();
            return Ok(outcome);
        }
        // Short sleeps, so that Ctrl-C is answered at once.
        let until = Instant::now() + pause;
        while Instant::now() < until && !interrupt::interrupted() {
            std::thread::sleep(
                Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())),
            );
        }
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// What the worker's failed phase reported.
pub fn failed_phase(client: &mut Client, version: &str) -> Result<(String, String)> {
    Ok(client
        .query_typed(
            "SELECT coalesce(s.error_sqlstate, ''), coalesce(s.error_message, '') \
             FROM migrate.steps s JOIN migrate.history h ON h.version = s.version \
             WHERE h.version_key = migrate.version_key($1) AND s.state IN ('failed', 'cancelled') \
             ORDER BY s.phase LIMIT 1",
            &[(&version, Type::TEXT)],
        )?
        .first()
        .map(|r| (r.get(0), r.get(1)))
        .unwrap_or_default())
}

/// The version as the history spells it (`1.2` for `1_2` or `1.2.0`), for the functions that
/// look a version up by its text; as given when it is not recorded.
pub fn recorded(client: &mut Client, version: &str) -> Result<String> {
    Ok(client
        .query_typed(
            "SELECT coalesce((SELECT h.version FROM migrate.history h \
                              WHERE h.version_key = migrate.version_key($1)), $1)",
            &[(&version, Type::TEXT)],
        )
        .context("reading migrate.history")?[0]
        .get(0))
}
