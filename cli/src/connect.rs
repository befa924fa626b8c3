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
    /// A service of the service file, in place of PGSERVICE: a fleet's target.
    #[arg(skip)]
    pub service: Option<String>,
    /// A fleet's target: what says where to connect and as whom (host, port, user, database,
    /// password, options, service) comes from the fleet file only, never from the PG*
    /// variables, which would send one password to every host.
    #[arg(skip)]
    pub fleet: bool,
}

/// The variables a fleet's targets do not read.
const FLEET_IGNORES: [&str; 8] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGOPTIONS",
    "PGSERVICE",
];

/// The connection settings read from flags, a service and the environment, each with its
/// environment variable.
const SETTINGS: [(&str, &str); 10] = [
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
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
    /// An environment variable, as this target reads it.
    fn var(&self, name: &str) -> Option<String> {
        if self.fleet && FLEET_IGNORES.contains(&name) {
            return None;
        }
        env(name)
    }

    fn service_name(&self) -> Option<String> {
        self.service.clone().or_else(|| self.var("PGSERVICE"))
    }

    pub fn config(&self) -> Result<(Config, tls::Settings)> {
        if let Some(url) = &self.url {
            if self.host.is_some() || self.port.is_some() {
                return Err(crate::report::Usage(
                    "give the host and port in the connection string or with --host and --port, \
                     not both"
                        .into(),
                )
                .into());
            }
            if let Some(service) = self.service_name() {
                return Err(crate::report::Usage(format!(
                    "both a connection string (--url or DATABASE_URL) and PGSERVICE={service} are \
                     given: say which database to migrate with one of them"
                ))
                .into());
            }
            // libpq reads a service named in the string; this client reads PGSERVICE only,
            // and says so rather than connect somewhere else.
            let names_service = url
                .split(|c: char| c.is_whitespace() || c == '?' || c == '&')
                .any(|part| part.trim_start().starts_with("service="));
            if names_service {
                return Err(crate::report::Usage(
                    "a connection string's service= is not read: set PGSERVICE to the service's \
                     name and give no connection string"
                        .into(),
                )
                .into());
            }
            let (url, given) = tls::split(url)?;
            let tls = tls::settings(&given, &[])?;
            let mut config = Config::from_str(&url).context("reading the connection string")?;
            // Every sslmode was taken out above; one the string still has was missed, and
            // would be overridden unseen.
            if config.get_ssl_mode() != postgres::config::SslMode::Prefer {
                anyhow::bail!(
                    "the connection string's sslmode could not be read: write it as ?sslmode=..."
                );
            }
            // What the string leaves out comes from the flags, then the environment, as libpq
            // fills it.
            if let Some(user) = self.user.clone().or_else(|| self.var("PGUSER")) {
                if self.user.is_some() || config.get_user().is_none() {
                    config.user(&user);
                }
            }
            if let Some(db) = self.dbname.clone().or_else(|| self.var("PGDATABASE")) {
                if self.dbname.is_some() || config.get_dbname().is_none() {
                    config.dbname(&db);
                }
            }
            if config.get_password().is_none() {
                if let Some(password) = self.var("PGPASSWORD") {
                    config.password(password);
                }
            }
            if config.get_options().is_none() {
                if let Some(options) = self.var("PGOPTIONS") {
                    config.options(&options);
                }
            }
            if config.get_hosts().is_empty() {
                for host in self
                    .var("PGHOST")
                    .unwrap_or_default()
                    .split(',')
                    .filter(|h| !h.is_empty())
                {
                    if host.starts_with('/') {
                        config.host_path(host);
                    } else {
                        config.host(host);
                    }
                }
            }
            if config.get_hostaddrs().is_empty() {
                if let Some(addr) = self.var("PGHOSTADDR") {
                    for addr in addr.split(',').filter(|a| !a.is_empty()) {
                        config.hostaddr(addr.parse().context("reading PGHOSTADDR")?);
                    }
                }
            }
            if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
                config.host_path(crate::pgfiles::DEFAULT_SOCKET_DIR);
            }
            if config.get_ports().is_empty() {
                for port in self
                    .var("PGPORT")
                    .unwrap_or_default()
                    .split(',')
                    .filter(|p| !p.is_empty())
                {
                    config.port(port.parse().context("reading PGPORT")?);
                }
            }
            // The rest as the other branch reads them, through a conninfo of their own.
            let from_env: Vec<String> = SETTINGS
                .iter()
                .filter(|(key, _)| {
                    matches!(
                        *key,
                        "connect_timeout" | "target_session_attrs" | "application_name"
                    )
                })
                .filter_map(|(key, variable)| self.var(variable).map(|v| pair(key, &v)))
                .collect();
            let more = Config::from_str(&from_env.join(" "))
                .context("reading the PG* environment variables")?;
            // Decided on what the string gave once parsed (spaces may surround its `=`).
            if config.get_connect_timeout().is_none() {
                if let Some(timeout) = more.get_connect_timeout() {
                    config.connect_timeout(*timeout);
                }
            }
            if config.get_target_session_attrs() == postgres::config::TargetSessionAttrs::Any {
                config.target_session_attrs(more.get_target_session_attrs());
            }
            if config.get_application_name().is_none() {
                config.application_name(more.get_application_name().unwrap_or("pg-migrate"));
            }
            config.ssl_mode(tls.mode.negotiation());
            return Ok((config, tls));
        }
        // Flags first, then the service's settings, then the environment, then libpq's
        // defaults (Debian's socket folder, the login name), as libpq orders them.
        let service = match self.service_name() {
            Some(name) => crate::pgfiles::service(&name).map_err(anyhow::Error::msg)?,
            None => Vec::new(),
        };
        if let Some((key, _)) = service
            .iter()
            .find(|(k, _)| !SETTINGS.iter().chain(&tls::SETTINGS).any(|(s, _)| s == k))
        {
            anyhow::bail!(
                "service \"{}\" sets {key}, which pg-migrate does not read: it reads {}",
                self.service_name().unwrap_or_default(),
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
            ("host", Some(crate::pgfiles::DEFAULT_SOCKET_DIR.to_string())),
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
                let set = given(&flags)
                    .or_else(|| from_service(key))
                    .or_else(|| self.var(variable));
                // libpq's default socket folder only when no address is given either.
                let addressed = *key == "host"
                    && (from_service("hostaddr").is_some() || self.var("PGHOSTADDR").is_some());
                set.or_else(|| (!addressed).then(|| given(&defaults)).flatten())
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
        // Each host's password, as libpq looks it up host by host; one password is sent to
        // every host, so it is used only when all of them have the same.
        let hosts = config.get_hosts();
        let ports = config.get_ports();
        let user = config.get_user().unwrap_or_default().to_string();
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        let found: Vec<Option<String>> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let host = match h {
                    postgres::config::Host::Tcp(name) => name.clone(),
                    postgres::config::Host::Unix(path) => path.display().to_string(),
                };
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                crate::pgfiles::password(&host, &port.to_string(), &dbname, &user)
            })
            .collect();
        match found.first() {
            Some(Some(password)) if found.iter().all(|f| f.as_ref() == Some(password)) => {
                config.password(password.clone());
            }
            _ if found.iter().any(Option::is_some) => anyhow::bail!(
                "the password file has a password for some of the hosts and not the same for \
                 all: pg-migrate sends one password to every host; give it with PGPASSWORD"
            ),
            _ => {}
        }
        Ok((config, tls))
    }

    /// One session for the whole run: never a second one holding a snapshot while the
    /// first waits (a `CREATE INDEX CONCURRENTLY` would wait for it for ever).
    pub fn connect(&self) -> Result<Client> {
        let (mut config, tls) = self.with_password()?;
        // What psql would show of the server's messages that matter here: its warnings, and
        // pg_migrate's notices (a standby saying what it shows, a verdict not recorded).
        // Judged by the severity PostgreSQL does not translate (lc_messages may).
        config.notice_callback(|notice| {
            use postgres::error::Severity;
            let severity = match notice.parsed_severity() {
                Some(Severity::Warning) => "warning",
                Some(Severity::Notice) if notice.message().starts_with("pg_migrate:") => "notice",
                _ => return,
            };
            anstream::eprintln!("{severity}: {}", crate::report::clean(notice.message()));
        });
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
        // libpq ignores sslmode on Unix sockets: there is no network to protect.
        // Only when every host is a socket folder and no hostaddr sends it over TCP (an empty
        // list of hosts is not "all sockets").
        let sockets_only = !config.get_hosts().is_empty()
            && config.get_hostaddrs().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| matches!(h, postgres::config::Host::Unix(_)));
        // libpq: verify-full checks the name connected to; with none there is nothing to
        // check it against.
        let named = config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, postgres::config::Host::Tcp(_)));
        if tls.mode == tls::Mode::VerifyFull && !sockets_only && !named {
            anyhow::bail!("host name must be specified for a verified SSL connection");
        }
        let (client, connector) = if tls.mode == tls::Mode::Disable || sockets_only {
            let mut config = config.clone();
            config.ssl_mode(postgres::config::SslMode::Disable);
            (config.connect(NoTls).with_context(context)?, None)
        } else {
            let connector = tls::connector(&tls)?;
            let client = config.connect(connector.clone()).with_context(context)?;
            (client, Some(connector))
        };
        // Ctrl-C cancels what this session runs. (No session settings: behind PgBouncer in
        // transaction mode they would stay with the server connection for other clients.)
        crate::interrupt::guard(&client, connector);
        Ok(client)
    }
}
