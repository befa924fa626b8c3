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

/// The settings of service `name` in a service file's text, as libpq reads them: a line is
/// trimmed at both ends, `[name]` opens the first section of that name (exactly: `[ name ]`
/// is another), up to the next section; `key=value` is split at the first `=` and neither
/// side trimmed; a key given twice keeps its first value; a line that is not `key=value` is
/// an error (never skipped: it may be the sslmode).
pub fn service_section(text: &str, name: &str) -> Result<Option<Vec<(String, String)>>, String> {
    let mut found: Option<Vec<(String, String)>> = None;
    let mut in_section = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            if found.is_some() {
                break;
            }
            in_section = header
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(']'));
            if in_section {
                found = Some(Vec::new());
            }
            continue;
        }
        let (true, Some(settings)) = (in_section, found.as_mut()) else {
            continue;
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("syntax error in service file, line {}", n + 1));
        };
        if !settings.iter().any(|(k, _)| k == key) {
            settings.push((key.to_string(), value.to_string()));
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

/// A `.pgpass` field: what it matches (`None`: anything, for a field that is `*`
/// unescaped); `\\` escapes the next character (`\\*` is a star, `\\:` a colon).
fn fields(line: &str) -> Vec<Option<String>> {
    let mut out: Vec<(String, bool)> = vec![(String::new(), false)];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        let field = out.last_mut().expect("one field at least");
        match c {
            '\\' => match chars.next() {
                Some(next) => {
                    field.0.push(next);
                    field.1 = true;
                }
                // Nothing after it: libpq keeps it.
                None => field.0.push('\\'),
            },
            // A field, the password included, ends at an unescaped colon.
            ':' => out.push((String::new(), false)),
            c => field.0.push(c),
        }
    }
    out.into_iter()
        .map(|(text, escaped)| (escaped || text != "*").then_some(text))
        .collect()
}

/// The password a password file's text has for this host, port, database and user: the
/// first line that matches, as libpq reads it (a comment is a line that begins with `#`).
pub fn password_in(text: &str, host: &str, port: &str, dbname: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let f = fields(line);
        if f.len() < 5 {
            continue;
        }
        let matches =
            |pattern: &Option<String>, value: &str| pattern.as_deref().is_none_or(|p| p == value);
        if matches(&f[0], host)
            && matches(&f[1], port)
            && matches(&f[2], dbname)
            && matches(&f[3], user)
        {
            return Some(f[4].clone().unwrap_or_else(|| "*".into()));
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

/// Whether a client's private key may be used, as libpq judges it: a key of root's may be
/// read by its group (a key shared through a group, as Debian's ssl-cert), any other's by its
/// owner only.
pub fn key_file_usable(key: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let shown = key.display();
    let meta = std::fs::metadata(key)
        .map_err(|_| format!("certificate present, but not private key file \"{shown}\""))?;
    if !meta.is_file() {
        return Err(format!(
            "private key file \"{shown}\" is not a regular file"
        ));
    }
    let allowed = if meta.uid() == 0 { 0o740 } else { 0o700 };
    if meta.mode() & 0o777 & !allowed != 0 {
        return Err(format!(
            "private key file \"{shown}\" has group or world access; file must have permissions \
             u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or \
             less if owned by root"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn a_service_is_its_section_only() {
        let text = "# comment\n[other]\nhost=elsewhere\n\n[billing]\nhost=db1\nport=5433\ndbname=bill\nport=1\n[last]\nuser=x\n[billing]\nuser=late\n";
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
        // As libpq: no trimming inside a line, and only `[name]` is the section.
        assert_eq!(
            service_section("[s]\nhost = db1\n", "s").unwrap().unwrap(),
            [("host ".to_string(), " db1".to_string())]
        );
        assert_eq!(service_section("[ s ]\nhost=db1\n", "s"), Ok(None));
        assert_eq!(
            service_section("  [s] trailing\nport=1\n[st]\nport=2\n", "s")
                .unwrap()
                .unwrap(),
            [("port".to_string(), "1".to_string())]
        );
        assert_eq!(
            service_section("[st]\nport=2\n[s]\nport=1\n", "s")
                .unwrap()
                .unwrap(),
            [("port".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn an_escaped_star_is_a_star_and_only_a_leading_hash_is_a_comment() {
        let text = "\\*:*:*:*:escaped\n*:*:*:*:any\n";
        assert_eq!(
            password_in(text, "*", "1", "d", "u").as_deref(),
            Some("escaped")
        );
        assert_eq!(
            password_in(text, "host", "1", "d", "u").as_deref(),
            Some("any")
        );
        assert_eq!(
            password_in("h:1:d:u:ends\\\n", "h", "1", "d", "u").as_deref(),
            Some("ends\\")
        );
        let text = " #h:1:d:u:spaced\n";
        assert_eq!(
            password_in(text, " #h", "1", "d", "u").as_deref(),
            Some("spaced")
        );
    }

    #[test]
    fn a_key_file_is_judged_by_its_owner_as_libpq_does() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pg_migrate_key_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("client.key");
        let missing = key_file_usable(&key).unwrap_err();
        assert!(
            missing.contains("certificate present, but not private key file"),
            "{missing}"
        );
        std::fs::write(&key, "k").unwrap();
        let with = |mode: u32| {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            key_file_usable(&key)
        };
        assert_eq!(with(0o600), Ok(()));
        assert!(with(0o644).unwrap_err().contains("0640"));
        let mine_0640 = with(0o640);
        // Group read is allowed to a key root owns, whoever runs this; to no other.
        let owned_by_root = std::fs::metadata(&key).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        });
        assert_eq!(mine_0640.is_ok(), owned_by_root.unwrap());
        assert!(with(0o660).is_err());
        assert!(key_file_usable(&dir)
            .unwrap_err()
            .contains("not a regular file"));
        std::fs::remove_dir_all(&dir).unwrap();
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
