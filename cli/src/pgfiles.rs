//! libpq's connection files, read as libpq reads them: the connection service file
//! (`pg_service.conf`) and the password file (`.pgpass`). The `postgres` crate reads
//! neither.

use std::path::{Path, PathBuf};

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The settings of service `name` in a service file's text: `[name]` then `key=value`
/// lines until the next section. None when the file has no such section.
pub fn service_section(text: &str, name: &str) -> Option<Vec<(String, String)>> {
    let mut found = None;
    let mut current: Option<&str> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(section.trim());
            if current == Some(name) && found.is_none() {
                found = Some(Vec::new());
            }
            continue;
        }
        if current != Some(name) {
            continue;
        }
        if let (Some(settings), Some((key, value))) = (found.as_mut(), line.split_once('=')) {
            let settings: &mut Vec<(String, String)> = settings;
            settings.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    found
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
            if let Some(settings) = service_section(&text, name) {
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
            ':' if out.len() < 5 => out.push(String::new()),
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
    // libpq looks up a socket connection (a directory) as "localhost".
    let host = if host.starts_with('/') {
        "localhost"
    } else {
        host
    };
    password_in(&text, host, port, dbname, user)
}

fn private(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file).is_ok_and(|m| m.permissions().mode() & 0o077 == 0)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn a_service_is_its_section_only() {
        let text = "# comment\n[other]\nhost=elsewhere\n\n[billing]\nhost = db1\nport=5433\ndbname=bill\n[last]\nuser=x\n";
        assert_eq!(
            service_section(text, "billing").unwrap(),
            [
                ("host".to_string(), "db1".to_string()),
                ("port".into(), "5433".into()),
                ("dbname".into(), "bill".into())
            ]
        );
        assert_eq!(service_section(text, "missing"), None);
    }

    #[test]
    fn the_first_matching_password_line_wins_with_wildcards_and_escapes() {
        let text = "# a comment\nother:5432:*:*:no\nlocalhost:5432:app:deploy:first\n*:*:*:deploy:second\nh\\:x:1:d:u:p\\:w\n";
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
    }
}
