//! Script checksums.
//!
//! The checksum that decides "same migration or not" is taken over a normalised script, so that
//! an editor adding a BOM, git converting line endings or trailing whitespace does not look like
//! drift. The raw-bytes checksum is kept beside it for forensics, and every recorded checksum
//! names its algorithm so that a future normalisation can be introduced by re-checking old rows
//! with the algorithm they were recorded with.

use sha2::{Digest, Sha256};

/// Algorithm 1: UTF-8 BOM removed, CRLF turned into LF, whitespace at the end of every line and
/// at the end of the script removed, then SHA-256.
pub const CURRENT_ALGORITHM: i16 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksums {
    pub normalized: String,
    pub raw: String,
    pub algorithm: i16,
}

impl Checksums {
    pub fn of(script: &str) -> Checksums {
        Checksums {
            normalized: normalized_checksum(script, CURRENT_ALGORITHM)
                .expect("the current algorithm is known"),
            raw: sha256_hex(script.as_bytes()),
            algorithm: CURRENT_ALGORITHM,
        }
    }
}

/// The checksum of `script` under `algorithm`, or `None` for an algorithm this build does not
/// know (a history row written by a newer pg_migrate).
pub fn normalized_checksum(script: &str, algorithm: i16) -> Option<String> {
    match algorithm {
        1 => Some(sha256_hex(normalize_v1(script).as_bytes())),
        _ => None,
    }
}

fn normalize_v1(script: &str) -> String {
    let script = script.strip_prefix('\u{feff}').unwrap_or(script);
    let unix = script.replace("\r\n", "\n");
    let mut out = String::with_capacity(unix.len());
    for line in unix.split('\n') {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn editor_and_platform_noise_does_not_change_the_checksum() {
        let canonical = "CREATE TABLE t (id int);\nALTER TABLE t ADD COLUMN x int;";
        let same = Checksums::of(canonical).normalized;
        for variant in [
            "\u{feff}CREATE TABLE t (id int);\nALTER TABLE t ADD COLUMN x int;",
            "CREATE TABLE t (id int);\r\nALTER TABLE t ADD COLUMN x int;\r\n",
            "CREATE TABLE t (id int);   \t\nALTER TABLE t ADD COLUMN x int;  \n\n\n",
            "\u{feff}CREATE TABLE t (id int); \r\nALTER TABLE t ADD COLUMN x int;\r\n\r\n",
        ] {
            assert_eq!(Checksums::of(variant).normalized, same, "{variant:?}");
            assert_ne!(Checksums::of(variant).raw, Checksums::of(canonical).raw);
        }
    }

    #[test]
    fn meaningful_changes_change_the_checksum() {
        let base = Checksums::of("CREATE TABLE t (id int);").normalized;
        for changed in [
            "CREATE TABLE t (id bigint);",
            "CREATE TABLE t  (id int);",
            "  CREATE TABLE t (id int);",
            "CREATE TABLE t (id int);\n-- note",
        ] {
            assert_ne!(Checksums::of(changed).normalized, base, "{changed:?}");
        }
    }

    #[test]
    fn unknown_algorithms_are_reported_not_guessed() {
        assert!(normalized_checksum("x", 1).is_some());
        assert_eq!(normalized_checksum("x", 2), None);
        assert_eq!(Checksums::of("x").algorithm, CURRENT_ALGORITHM);
    }
}
