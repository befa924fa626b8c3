//! Ctrl-C. The first one asks the server to cancel the statement it is running, as psql
//! does: a `migrate.apply` under way rolls back whole, and a wait for the worker stops,
//! leaving the worker's phases to go on. A second one exits at once.

use postgres::{CancelToken, Client, NoTls};
use postgres_openssl::MakeTlsConnector;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The session's cancel key, and the TLS its connection used: a cancel request goes the same
/// way (a server that requires TLS would refuse it in the clear).
static TOKEN: Mutex<Option<(CancelToken, Option<MakeTlsConnector>)>> = Mutex::new(None);

/// The exit code of a run stopped by Ctrl-C, as shells report a SIGINT.
pub const EXIT: i32 = 130;

pub fn install() {
    // A second Ctrl-C exits without waiting for the server: a statement still running goes
    // on there (to its commit, if the cancel did not get through) until it notices the
    // connection is gone; the message of the first says whether the cancel was sent.
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(EXIT);
        }
        match TOKEN.lock().ok().and_then(|t| t.clone()) {
            Some((token, tls)) => {
                // From a thread of its own: a cancel connection that hangs must not keep a
                // second Ctrl-C from exiting.
                std::thread::spawn(move || {
                    let sent = match tls {
                        Some(tls) => token.cancel_query(tls),
                        None => token.cancel_query(NoTls),
                    };
                    if let Err(e) = sent {
                        // Not cancelled: the statement runs on. Said, so that nobody takes
                        // the exit for a rollback.
                        anstream::eprintln!(
                            "pg-migrate: could not send the cancel request ({e}); the \
                             statement goes on in the server"
                        );
                    }
                });
            }
            // Not connected yet (or a verb that needs no session): nothing to roll back.
            None => std::process::exit(EXIT),
        }
    });
}

/// The session whose statement Ctrl-C cancels, and its TLS.
pub fn guard(client: &Client, tls: Option<MakeTlsConnector>) {
    if let Ok(mut t) = TOKEN.lock() {
        *t = Some((client.cancel_token(), tls));
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Whether `e` is the server's answer to our cancel request.
pub fn cancelled(e: &postgres::Error) -> bool {
    interrupted() && e.code() == Some(&postgres::error::SqlState::QUERY_CANCELED)
}
