//! `migrate.sum`: an integrity file over the migration folder (Atlas's idea). Two branches
//! that each add a migration both change it, so they conflict in git, not in production;
//! a file edited, added or removed without `pg-migrate hash` is found before anything runs.
//! It detects mistakes, not an attacker: whoever can edit the files can run `hash`.
//!
//! Format: the first line `h1:<sha256 of every line after it>`, then one line per file,
//! `<path> h1:<the extension's checksum of its text>` (sha256 of its bytes when it is not
//! UTF-8), in path order.

use crate::checksum::{normalized_checksum, sha256_hex, CURRENT_ALGORITHM};
use std::path::Path;

pub const FILE: &str = "migrate.sum";

/// How the folder differs from its `migrate.sum`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mismatch {
    pub missing_sum: bool,
    /// The sum file was edited by hand (its own first line does not match).
    pub tampered: bool,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Mismatch {
    pub fn is_clean(&self) -> bool {
        *self == Mismatch::default()
    }

    pub fn describe(&self) -> String {
        if self.missing_sum {
            return format!("{FILE} is missing");
        }
        let mut parts = Vec::new();
        if self.tampered {
            parts.push(format!("{FILE} itself was edited"));
        }
        for (what, files) in [
            ("not in it", &self.added),
            ("changed since", &self.changed),
            ("gone since", &self.removed),
        ] {
            if !files.is_empty() {
                parts.push(format!("{what}: {}", files.join(", ")));
            }
        }
        parts.join("; ")
    }
}

/// The sum file's text for `files` (relative paths) in `dir`.
pub fn compute(dir: &Path, files: &[String]) -> std::io::Result<String> {
    let mut body = String::new();
    for file in files {
        let bytes = std::fs::read(dir.join(file))?;
        // Of the text as the extension's checksum sees it: a checkout that turned line ends
        // into CRLF, or an editor's BOM, is the same migration.
        let hash = match std::str::from_utf8(&bytes) {
            Ok(text) => normalized_checksum(text, CURRENT_ALGORITHM).unwrap_or_default(),
            Err(_) => sha256_hex(&bytes),
        };
        body.push_str(&format!("{file} h1:{hash}\n"));
    }
    Ok(format!("h1:{}\n{body}", sha256_hex(body.as_bytes())))
}

/// Compares the folder with its sum file.
pub fn check(dir: &Path, files: &[String]) -> std::io::Result<Mismatch> {
    let recorded = match std::fs::read_to_string(dir.join(FILE)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Mismatch {
                missing_sum: true,
                ..Mismatch::default()
            })
        }
        Err(e) => return Err(e),
    };
    let now = compute(dir, files)?;
    let entries = |text: &str| -> Vec<(String, String)> {
        text.lines()
            .skip(1)
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(f, h)| (f.to_string(), h.to_string()))
            .collect()
    };
    let (before, after) = (entries(&recorded), entries(&now));
    let find = |list: &[(String, String)], f: &str| {
        list.iter()
            .find(|(name, _)| name == f)
            .map(|(_, h)| h.clone())
    };
    let mut m = Mismatch::default();
    let (head, body) = recorded.split_once('\n').unwrap_or((&recorded, ""));
    m.tampered = head != format!("h1:{}", sha256_hex(body.as_bytes()));
    for (file, hash) in &after {
        match find(&before, file) {
            None => m.added.push(file.clone()),
            Some(h) if &h != hash => m.changed.push(file.clone()),
            _ => {}
        }
    }
    for (file, _) in &before {
        if find(&after, file).is_none() {
            m.removed.push(file.clone());
        }
    }
    Ok(m)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn an_edit_an_addition_and_a_removal_are_each_named() {
        let dir = std::env::temp_dir().join(format!("pg-migrate-sum-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("V1__a.sql"), "CREATE TABLE a (id int);").unwrap();
        std::fs::write(dir.join("V2__b.sql"), "CREATE TABLE b (id int);").unwrap();
        let files = vec!["V1__a.sql".to_string(), "V2__b.sql".to_string()];
        std::fs::write(dir.join(FILE), compute(&dir, &files).unwrap()).unwrap();
        assert!(check(&dir, &files).unwrap().is_clean());
        std::fs::write(dir.join("V2__b.sql"), "CREATE TABLE b (id bigint);").unwrap();
        std::fs::write(dir.join("V3__c.sql"), "CREATE TABLE c (id int);").unwrap();
        let now = vec!["V2__b.sql".to_string(), "V3__c.sql".to_string()];
        let m = check(&dir, &now).unwrap();
        assert_eq!(
            (m.added, m.changed, m.removed, m.tampered),
            (
                vec!["V3__c.sql".to_string()],
                vec!["V2__b.sql".to_string()],
                vec!["V1__a.sql".to_string()],
                false
            )
        );
        let mut text = std::fs::read_to_string(dir.join(FILE)).unwrap();
        text.push_str("V9__z.sql h1:00\n");
        std::fs::write(dir.join(FILE), text).unwrap();
        assert!(check(&dir, &files).unwrap().tampered);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
