//! Connecting as PostgreSQL's own tools do: a connection string or URL (`--url`, then
//! `DATABASE_URL`), else flags over the service's settings (`PGSERVICE`) over the `PG*`
//! environment variables; the password, when none is given, from the password file.

use crate::tls;
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

/// The connection settings read from flags, a service and the environment, each with its
/// environment variable.
const SETTINGS: [(&str, &str); 9] = [
    ("host", "PGHOST"),
    ("port", "PGPORT"),
    ("user", "PGUSER"),
    ("dbname", "PGDATABASE"),
    ("password", "PGPASSWORD"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
    ("options", "PGOPTIONS"),
    ("application_name", "PGAPPNAME"),
];

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `key='value'` as a connection string quotes it.
pub fn pair(key: &str, value: &str) -> String {
    format!(
        "{key}='{}'",
        value.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

impl Target {
    pub fn config(&self) -> Result<(Config, tls::Settings)> {
        if let Some(url) = &self.url {
            if self.host.is_some() {
                anyhow::bail!("give the host in the connection string or with --host, not both");
            }
            let (url, given) = tls::split(url)?;
            let tls = tls::settings(&given, &[])?;
            let mut config = Config::from_str(&url).context("reading the connection string")?;
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
            config.ssl_mode(tls.mode.negotiation());
            return Ok((config, tls));
        }
        // Flags first, then the service's settings, then the environment, then libpq's
        // defaults (Debian's socket folder, the login name), as libpq orders them.
        let service = match env("PGSERVICE") {
            Some(name) => crate::pgfiles::service(&name).map_err(anyhow::Error::msg)?,
            None => Vec::new(),
        };
        if let Some((key, _)) = service
            .iter()
            .find(|(k, _)| !SETTINGS.iter().chain(&tls::SETTINGS).any(|(s, _)| s == k))
        {
            anyhow::bail!(
                "service \"{}\" sets {key}, which pg-migrate does not read: it reads {}",
                env("PGSERVICE").unwrap_or_default(),
                SETTINGS
                    .iter()
                    .chain(&tls::SETTINGS)
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let from_service = |key: &str| {
            service
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let flags = [
            ("host", self.host.clone()),
            ("port", self.port.map(|p| p.to_string())),
            ("user", self.user.clone()),
            ("dbname", self.dbname.clone()),
        ];
        let defaults = [
            ("host", Some("/var/run/postgresql".to_string())),
            ("user", env("USER")),
            ("application_name", Some("pg-migrate".to_string())),
        ];
        let conninfo: Vec<String> = SETTINGS
            .iter()
            .filter_map(|(key, variable)| {
                let given = |list: &[(&str, Option<String>)]| {
                    list.iter()
                        .find(|(k, _)| k == key)
                        .and_then(|(_, v)| v.clone())
                };
                given(&flags)
                    .or_else(|| from_service(key))
                    .or_else(|| env(variable))
                    .or_else(|| given(&defaults))
                    .map(|v| pair(key, &v))
            })
            .collect();
        let tls = tls::settings(&[], &service)?;
        let mut config = Config::from_str(&conninfo.join(" "))
            .context("reading the PG* environment variables")?;
        config.ssl_mode(tls.mode.negotiation());
        Ok((config, tls))
    }

    /// The configuration with the password file's password when none was given.
    fn with_password(&self) -> Result<(Config, tls::Settings)> {
        let (mut config, tls) = self.config()?;
        if config.get_password().is_some() {
            return Ok((config, tls));
        }
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(name)) => name.clone(),
            Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = config
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432)
            .to_string();
        let user = config.get_user().unwrap_or_default().to_string();
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        if let Some(password) = crate::pgfiles::password(&host, &port, &dbname, &user) {
            config.password(password);
        }
        Ok((config, tls))
    }

    /// One session for the whole run: never a second one holding a snapshot while the
    /// first waits (a `CREATE INDEX CONCURRENTLY` would wait for it for ever).
    pub fn connect(&self) -> Result<Client> {
        let (config, tls) = self.with_password()?;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let context = || {
            format!(
                "connecting to {} as {}",
                hosts.join(","),
                config.get_user().unwrap_or("?")
            )
        };
        let client = if tls.mode == tls::Mode::Disable {
            config.connect(NoTls).with_context(context)?
        } else {
            config
                .connect(tls::connector(&tls)?)
                .with_context(context)?
        };
        // Ctrl-C cancels what this session runs.
        crate::interrupt::guard(&client);
        Ok(client)
    }
}
