//! TLS as libpq does it: `sslmode` (`disable`, `allow`, `prefer` (the default), `require`,
//! `verify-ca`, `verify-full`), `sslrootcert` (`system` for the system's store), `sslcert`
//! and `sslkey`, from the connection string, a service or `PGSSL*`. The `postgres` crate
//! knows only the first three modes and none of the files, so these settings are taken out
//! of the string before it reads it, and the OpenSSL connector is built here.

use anyhow::{bail, Context, Result};
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use percent_encoding::percent_decode_str;
use postgres_openssl::MakeTlsConnector;
use std::path::PathBuf;

/// The settings this module reads, each with its environment variable.
pub const SETTINGS: [(&str, &str); 4] = [
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(text: &str) -> Result<Mode> {
        Ok(match text {
            "disable" => Mode::Disable,
            "allow" => Mode::Allow,
            "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => bail!(
                "invalid sslmode value: \"{other}\" (disable, allow, prefer, require, verify-ca \
                 or verify-full)"
            ),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Allow => "allow",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }

    /// What the `postgres` crate is told: whether to ask for TLS, and whether to insist.
    pub fn negotiation(self) -> postgres::config::SslMode {
        use postgres::config::SslMode;
        match self {
            Mode::Disable => SslMode::Disable,
            Mode::Allow | Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub mode: Mode,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

/// A connection string (URL or `key=value` pairs) without its TLS settings, and those
/// settings.
pub fn split(conninfo: &str) -> Result<(String, Vec<(String, String)>)> {
    let tls = |key: &str| SETTINGS.iter().any(|(k, _)| *k == key);
    let mut taken = Vec::new();
    if let Some(scheme) = ["postgresql://", "postgres://"]
        .iter()
        .find(|p| conninfo.starts_with(*p))
    {
        // libpq: the user and password run to an '@' met before any '/' (a '?' in a password
        // is the password's), and the options follow the first '?' after them.
        let after = &conninfo[scheme.len()..];
        let userinfo = after
            .find(['@', '/'])
            .filter(|i| after.as_bytes()[*i] == b'@')
            .map_or(0, |i| i + 1);
        let Some(at) = after[userinfo..].find('?') else {
            return Ok((conninfo.to_string(), taken));
        };
        let (base, query) = conninfo.split_at(scheme.len() + userinfo + at);
        let query = &query[1..];
        let mut kept = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let key = percent_decode_str(key)
                .decode_utf8()
                .context("reading the connection URL")?;
            if tls(&key) {
                let value = percent_decode_str(value)
                    .decode_utf8()
                    .context("reading the connection URL")?;
                taken.push((key.into_owned(), value.into_owned()));
            } else {
                kept.push(part);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, taken));
    }
    let mut kept = Vec::new();
    for (key, value) in pairs(conninfo)? {
        if tls(&key) {
            taken.push((key, value));
        } else {
            kept.push(crate::connect::pair(&key, &value));
        }
    }
    Ok((kept.join(" "), taken))
}

/// `key = value` pairs as libpq reads them: a value in single quotes may hold spaces, with
/// `\'` and `\\` escaped.
fn pairs(text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars
            .peek()
            .copied()
            .filter(|c| *c != '=' && !c.is_whitespace())
        {
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            bail!("missing \"=\" after \"{key}\" in the connection string");
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => bail!("unterminated quoted string in the connection string"),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| !c.is_whitespace()) {
                if c == '\\' {
                    chars.next();
                    value.extend(chars.next());
                } else {
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.push((key, value));
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The TLS settings: the connection string's, then the service's, then `PGSSL*`; `prefer`
/// when none says.
pub fn settings(given: &[(String, String)], service: &[(String, String)]) -> Result<Settings> {
    let value = |key: &str, variable: &str| {
        let from = |list: &[(String, String)]| {
            list.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        from(given)
            .or_else(|| from(service))
            .or_else(|| env(variable))
    };
    let [mode, root_cert, cert, key] = SETTINGS.map(|(k, v)| value(k, v));
    let system = root_cert.as_deref() == Some("system");
    // libpq 16: the system's store is only safe with the host name checked, so it makes
    // verify-full the default and refuses weaker modes.
    let mode =
        Mode::parse(
            mode.as_deref()
                .unwrap_or(if system { "verify-full" } else { "prefer" }),
        )?;
    if system && mode != Mode::VerifyFull {
        bail!(
            "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
            mode.name()
        );
    }
    Ok(Settings {
        mode,
        root_cert,
        cert,
        key,
    })
}

fn in_home(name: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".postgresql").join(name))
}

/// The OpenSSL connector for these settings: certificates checked for `verify-ca` and
/// `verify-full` (the host name too for the latter), and for `require` when a root
/// certificate file is there, as libpq does; the client's certificate when one is given or
/// in `~/.postgresql`.
pub fn connector(s: &Settings) -> Result<MakeTlsConnector> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).context("setting up TLS")?;
    let root = s
        .root_cert
        .clone()
        .or_else(|| in_home("root.crt").map(|p| p.display().to_string()));
    let root_exists = root
        .as_deref()
        .is_some_and(|r| r == "system" || std::path::Path::new(r).exists());
    let verify = match s.mode {
        Mode::VerifyCa | Mode::VerifyFull => {
            if !root_exists {
                bail!(
                    "root certificate file \"{}\" does not exist: either provide the file \
                     (sslrootcert), use the system's store (sslrootcert=system), or change \
                     sslmode to disable server certificate verification",
                    root.unwrap_or_else(|| "~/.postgresql/root.crt".into())
                );
            }
            true
        }
        // libpq: with a root certificate file (given, or ~/.postgresql/root.crt), require
        // checks the chain as verify-ca.
        Mode::Require => root_exists,
        _ => false,
    };
    // The trusted authorities are exactly those asked for: SslConnector::builder starts
    // from the system's store, which would let any public certificate pass.
    let mut store = X509StoreBuilder::new().context("setting up TLS")?;
    if verify {
        match root.as_deref() {
            Some("system") => store
                .set_default_paths()
                .context("reading the system's certificate store")?,
            Some(file) => {
                let pem = std::fs::read(file)
                    .with_context(|| format!("reading the root certificate file \"{file}\""))?;
                let certificates = X509::stack_from_pem(&pem)
                    .with_context(|| format!("reading the root certificate file \"{file}\""))?;
                if certificates.is_empty() {
                    bail!("the root certificate file \"{file}\" holds no certificate");
                }
                for c in certificates {
                    store.add_cert(c).context("reading the root certificates")?;
                }
            }
            None => {}
        }
        builder.set_verify(SslVerifyMode::PEER);
    } else {
        builder.set_verify(SslVerifyMode::NONE);
    }
    builder.set_cert_store(store.build());
    let cert = s.cert.clone().or_else(|| {
        in_home("postgresql.crt")
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
    });
    if let Some(cert) = cert {
        let key = s
            .key
            .clone()
            .or_else(|| in_home("postgresql.key").map(|p| p.display().to_string()));
        builder
            .set_certificate_chain_file(&cert)
            .with_context(|| format!("reading the client certificate \"{cert}\""))?;
        if let Some(key) = key {
            // libpq refuses a key others may read.
            crate::pgfiles::key_file_usable(std::path::Path::new(&key))
                .map_err(anyhow::Error::msg)?;
            builder
                .set_private_key_file(&key, SslFiletype::PEM)
                .with_context(|| format!("reading the client key \"{key}\""))?;
        }
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    let full = s.mode == Mode::VerifyFull;
    connector.set_callback(move |config, _| {
        // verify-ca checks the chain only; verify-full also the name the client connected to.
        config.set_verify_hostname(full);
        Ok(())
    });
    Ok(connector)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn tls_settings_are_taken_out_of_urls_and_pairs() {
        let (rest, taken) =
            split("postgresql://u@db:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.crt")
                .unwrap();
        assert_eq!(rest, "postgresql://u@db:5432/app?application_name=x");
        assert_eq!(
            taken,
            [
                ("sslmode".to_string(), "verify-full".to_string()),
                ("sslrootcert".into(), "/tmp/ca.crt".into())
            ]
        );
        let (rest, taken) =
            split("host=db  sslmode = require dbname='my app' options='-c a=\\'b\\''").unwrap();
        assert_eq!(rest, "host='db' dbname='my app' options='-c a=\\'b\\''");
        assert_eq!(taken, [("sslmode".to_string(), "require".to_string())]);
        assert!(split("host=db sslmode").is_err());
        // A '?' in the password is the password's; an encoded key is the key.
        let (rest, taken) = split("postgresql://u:pa?ss@db/x?%73slmode=require").unwrap();
        assert_eq!(rest, "postgresql://u:pa?ss@db/x");
        assert_eq!(taken, [("sslmode".to_string(), "require".to_string())]);
        assert!(split("host='db").is_err());
    }

    #[test]
    fn the_string_wins_over_the_service_and_modes_are_libpqs() {
        let given = [("sslmode".to_string(), "verify-ca".to_string())];
        let service = [("sslmode".to_string(), "disable".to_string())];
        assert_eq!(settings(&given, &service).unwrap().mode, Mode::VerifyCa);
        assert_eq!(settings(&[], &service).unwrap().mode, Mode::Disable);
        assert!(settings(&[("sslmode".into(), "verify".into())], &[]).is_err());
    }
}
