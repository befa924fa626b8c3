//! Connecting as PostgreSQL's own tools do: a connection string or URL (`--url`, then
//! `DATABASE_URL`), else the `PG*` environment variables, with flags over both.

use anyhow::{Context, Result};
use postgres::{Client, Config, NoTls};
use std::str::FromStr;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct Target {
    /// A connection string or URL (postgres://user@host/db); else DATABASE_URL, else PG*.
    #[arg(
        short = 'd',
        long = "url",
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub url: Option<String>,
    /// Host name, or a directory holding the server's Unix socket (PGHOST).
    #[arg(short = 'h', long, global = true)]
    pub host: Option<String>,
    /// Port (PGPORT).
    #[arg(short = 'p', long, global = true)]
    pub port: Option<u16>,
    /// Role to connect as (PGUSER).
    #[arg(short = 'U', long, global = true)]
    pub user: Option<String>,
    /// Database (PGDATABASE).
    #[arg(long, global = true)]
    pub dbname: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `key='value'` as a connection string quotes it.
fn pair(key: &str, value: &str) -> String {
    format!(
        "{key}='{}'",
        value.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

impl Target {
    pub fn config(&self) -> Result<Config> {
        if let Some(url) = &self.url {
            if self.host.is_some() {
                anyhow::bail!("give the host in the connection string or with --host, not both");
            }
            let mut config = Config::from_str(url).context("reading the connection string")?;
            if let Some(port) = self.port {
                config.port(port);
            }
            if let Some(user) = &self.user {
                config.user(user);
            }
            if let Some(db) = &self.dbname {
                config.dbname(db);
            }
            if config.get_application_name().is_none() {
                config.application_name("pg-migrate");
            }
            return Ok(config);
        }
        // Flags first, then the environment, then libpq's defaults (Debian's socket folder,
        // the login name).
        let fields = [
            (
                "host",
                self.host.clone().or_else(|| env("PGHOST")),
                Some("/var/run/postgresql".to_string()),
            ),
            (
                "port",
                self.port.map(|p| p.to_string()).or_else(|| env("PGPORT")),
                None,
            ),
            (
                "user",
                self.user.clone().or_else(|| env("PGUSER")),
                env("USER"),
            ),
            (
                "dbname",
                self.dbname.clone().or_else(|| env("PGDATABASE")),
                None,
            ),
            ("password", env("PGPASSWORD"), None),
            ("connect_timeout", env("PGCONNECT_TIMEOUT"), None),
            ("target_session_attrs", env("PGTARGETSESSIONATTRS"), None),
            ("options", env("PGOPTIONS"), None),
            (
                "application_name",
                env("PGAPPNAME"),
                Some("pg-migrate".to_string()),
            ),
        ];
        let conninfo: Vec<String> = fields
            .into_iter()
            .filter_map(|(key, given, default)| given.or(default).map(|v| pair(key, &v)))
            .collect();
        Config::from_str(&conninfo.join(" ")).context("reading the PG* environment variables")
    }

    /// One session for the whole run: never a second one holding a snapshot while the
    /// first waits (a `CREATE INDEX CONCURRENTLY` would wait for it for ever).
    pub fn connect(&self) -> Result<Client> {
        let config = self.config()?;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        // No TLS in this client yet: a password and the migrations would cross the network
        // in the clear. Local sockets and loopback only, unless the caller asked for
        // sslmode=disable themselves.
        let local = |h: &str| h.starts_with('/') || matches!(h, "localhost" | "127.0.0.1" | "::1");
        let asked_plain = self
            .url
            .as_deref()
            .is_some_and(|u| u.contains("sslmode=disable"))
            || env("PGSSLMODE").as_deref() == Some("disable");
        if !asked_plain {
            if let Some(remote) = hosts.iter().find(|h| !local(h)) {
                anyhow::bail!(
                    "pg-migrate does not speak TLS yet, and {remote} is not a local host: \
                     connect through a Unix socket or an SSH tunnel to localhost, or set \
                     sslmode=disable (PGSSLMODE=disable) to send it in the clear"
                );
            }
        }
        config.connect(NoTls).with_context(|| {
            format!(
                "connecting to {} as {}",
                hosts.join(","),
                config.get_user().unwrap_or("?")
            )
        })
    }
}
