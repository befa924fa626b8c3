//! libpq's connection files, read as libpq reads them: the connection service file
//! (`pg_service.conf`) and the password file (`.pgpass`). The `postgres` crate reads
//! neither.

use std::path::{Path, PathBuf};

/// Debian's libpq's default socket folder.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The settings of service `name` in a service file's text, as libpq reads them: the first
/// section of that name, to the next section; a key given twice keeps its first value; a
/// line that is not `key=value` is an error (never skipped: it may be the sslmode).
pub fn service_section(text: &str, name: &str) -> Result<Option<Vec<(String, String)>>, String> {
    let mut found: Option<Vec<(String, String)>> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if found.is_some() {
                break;
            }
            if section.trim() == name {
                found = Some(Vec::new());
            }
            continue;
        }
        let Some(settings) = found.as_mut() else {
            continue;
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("syntax error in service file, line {}", n + 1));
        };
        let key = key.trim().to_string();
        if !settings.iter().any(|(k, _)| *k == key) {
            settings.push((key, value.trim().to_string()));
        }
    }
    Ok(found)
}

/// Service `name`'s settings, from the user's file (`PGSERVICEFILE`, else
/// `~/.pg_service.conf`) or else the system's (`PGSYSCONFDIR`, else Debian's
/// `/etc/postgresql-common`), as libpq looks them up. An error names a service no file has.
pub fn service(name: &str) -> Result<Vec<(String, String)>, String> {
    let user = env("PGSERVICEFILE")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".pg_service.conf")));
    let system = env("PGSYSCONFDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/postgresql-common"))
        .join("pg_service.conf");
    for file in user.into_iter().chain(std::iter::once(system)) {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Some(settings) =
                service_section(&text, name).map_err(|e| format!("{e} (\"{}\")", file.display()))?
            {
                return Ok(settings);
            }
        }
    }
    Err(format!(
        "definition of service \"{name}\" not found (in PGSERVICEFILE, ~/.pg_service.conf or \
         PGSYSCONFDIR/pg_service.conf)"
    ))
}

/// One `.pgpass` field: `*` matches anything; `\:` and `\\` are escapes.
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    out.last_mut().expect("one field at least").push(next);
                }
            }
            // A field, the password included, ends at an unescaped colon.
            ':' => out.push(String::new()),
            c => out.last_mut().expect("one field at least").push(c),
        }
    }
    out
}

/// The password a password file's text has for this host, port, database and user: the
/// first line that matches, as libpq reads it.
pub fn password_in(text: &str, host: &str, port: &str, dbname: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f = fields(line);
        if f.len() < 5 {
            continue;
        }
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        if matches(&f[0], host)
            && matches(&f[1], port)
            && matches(&f[2], dbname)
            && matches(&f[3], user)
        {
            return Some(f[4].clone());
        }
    }
    None
}

/// The password file's password (`PGPASSFILE`, else `~/.pgpass`). Ignored, with a warning as
/// libpq gives, when others may read it.
pub fn password(host: &str, port: &str, dbname: &str, user: &str) -> Option<String> {
    let file = env("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".pgpass")))?;
    let text = std::fs::read_to_string(&file).ok()?;
    if !private(&file) {
        anstream::eprintln!(
            "WARNING: password file \"{}\" has group or world access; permissions should be \
             u=rw (0600) or less",
            file.display()
        );
        return None;
    }
    // libpq looks up a connection through its default socket folder as "localhost"; any
    // other folder by its path.
    let host = if host.trim_end_matches('/') == DEFAULT_SOCKET_DIR {
        "localhost"
    } else {
        host
    };
    password_in(&text, host, port, dbname, user)
}

pub fn private(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file).is_ok_and(|m| m.permissions().mode() & 0o077 == 0)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn a_service_is_its_section_only() {
        let text = "# comment\n[other]\nhost=elsewhere\n\n[billing]\nhost = db1\nport=5433\ndbname=bill\nport=1\n[last]\nuser=x\n[billing]\nuser=late\n";
        assert_eq!(
            service_section(text, "billing").unwrap().unwrap(),
            [
                ("host".to_string(), "db1".to_string()),
                ("port".into(), "5433".into()),
                ("dbname".into(), "bill".into())
            ]
        );
        assert_eq!(service_section(text, "missing"), Ok(None));
        assert!(service_section("[s]\nsslmode verify-full\n", "s").is_err());
    }

    #[test]
    fn the_first_matching_password_line_wins_with_wildcards_and_escapes() {
        let text = "# a comment\nother:5432:*:*:no\nlocalhost:5432:app:deploy:first\n*:*:*:deploy:second\nh\\:x:1:d:u:p\\:w\nz:1:d:u:pw:trailing\n";
        assert_eq!(
            password_in(text, "localhost", "5432", "app", "deploy").as_deref(),
            Some("first")
        );
        assert_eq!(
            password_in(text, "db2", "6432", "x", "deploy").as_deref(),
            Some("second")
        );
        assert_eq!(
            password_in(text, "h:x", "1", "d", "u").as_deref(),
            Some("p:w")
        );
        assert_eq!(password_in(text, "db2", "6432", "x", "someone"), None);
        assert_eq!(password_in(text, "z", "1", "d", "u").as_deref(), Some("pw"));
    }
}
