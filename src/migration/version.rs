//! Migration versions and their natural order.
//!
//! A version is one or more dot-separated runs of digits: `1`, `1.2`, `2.0.1`, or a timestamp
//! such as `20261124093000`. Segments compare as numbers (`1.2` < `1.10` < `2` < `10`), so the
//! order never depends on how a deploy tool sorts file names. Leading zeros and trailing zero
//! segments do not change a version's place: `1`, `1.0` and `01` are the same version, and the
//! history refuses to hold two spellings of it.

use crate::errors::Problem;
use pgrx::prelude::*;
use pgrx::{AnyNumeric, PgSqlErrorCode};
use std::cmp::Ordering;

/// Long enough for any timestamp scheme, short enough to read in `migrate.status`.
pub const MAX_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    text: String,
    /// Digit strings without leading zeros; trailing zero segments dropped (at least one kept).
    key: Vec<String>,
}

impl Version {
    pub fn parse(input: Option<&str>) -> Result<Version, Problem> {
        let text = input.ok_or_else(|| {
            Problem::new(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                "version must not be NULL",
                "Every migration is recorded under a version, which orders it among the others.",
                "Pass a version such as '42', '1.2' or '20261124093000'.",
            )
        })?;
        let malformed = |why: String| {
            Problem::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid version \"{text}\""),
                why,
                "Use dot-separated numbers such as '42', '1.2', '2.0.1', or a timestamp such as \
                 '20261124093000'; put words into the description argument.",
            )
        };
        if text.is_empty() {
            return Err(malformed("The version is empty.".into()));
        }
        if text.len() > MAX_LEN {
            return Err(malformed(format!(
                "The version is {} characters long; the limit is {MAX_LEN}.",
                text.len()
            )));
        }
        let mut key = Vec::new();
        for (i, segment) in text.split('.').enumerate() {
            if segment.is_empty() {
                return Err(malformed(format!("Segment {} is empty.", i + 1)));
            }
            if let Some(bad) = segment.chars().find(|c| !c.is_ascii_digit()) {
                return Err(malformed(format!(
                    "Versions contain only digits and dots; found {bad:?} in segment {}.",
                    i + 1
                )));
            }
            let digits = segment.trim_start_matches('0');
            key.push(if digits.is_empty() {
                "0".to_string()
            } else {
                digits.to_string()
            });
        }
        while key.len() > 1 && key.last().is_some_and(|s| s == "0") {
            key.pop();
        }
        Ok(Version {
            text: text.to_string(),
            key,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The key as PostgreSQL `numeric[]` text, e.g. `{1,2}`; arrays of numerics order exactly
    /// like [`Version`]s, which lets SQL sort the history by this key.
    pub fn key_segments(&self) -> &[String] {
        &self.key
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        for (a, b) in self.key.iter().zip(&other.key) {
            let by_value = a.len().cmp(&b.len()).then_with(|| a.cmp(b));
            if by_value != Ordering::Equal {
                return by_value;
            }
        }
        self.key.len().cmp(&other.key.len())
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// `migrate.version_key(version)`: the sort key of a version as `numeric[]`. The history stores
/// it as a generated column, so ordering and uniqueness are enforced by PostgreSQL itself.
#[pg_extern(immutable, strict, parallel_safe)]
fn version_key(version: &str) -> Vec<AnyNumeric> {
    use crate::errors::OrRaise;
    Version::parse(Some(version))
        .or_raise()
        .key_segments()
        .iter()
        .map(|digits| {
            AnyNumeric::try_from(digits.as_str()).expect("a run of ASCII digits is a numeric")
        })
        .collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(Some(s)).unwrap()
    }

    #[test]
    fn natural_order() {
        let ordered = [
            "0.9",
            "1",
            "1.1",
            "1.2",
            "1.10",
            "2",
            "2.0.1",
            "10",
            "20261124093000",
        ];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
            assert!(v(pair[1]) > v(pair[0]));
        }
    }

    #[test]
    fn equivalent_spellings_share_a_key() {
        assert_eq!(v("1").cmp(&v("1.0")), Ordering::Equal);
        assert_eq!(v("1").cmp(&v("01.0.0")), Ordering::Equal);
        assert_eq!(v("1.0.2").key_segments(), ["1", "0", "2"]);
        assert_eq!(v("0").key_segments(), ["0"]);
        assert_eq!(v("0.0").key_segments(), ["0"]);
        assert_ne!(v("1").as_str(), v("1.0").as_str());
    }

    #[test]
    fn huge_segments_compare_by_value() {
        assert!(v("99999999999999999999999") < v("100000000000000000000000"));
        assert!(v("1.99999999999999999999") < v("2"));
    }

    #[test]
    fn malformed_versions_are_refused_with_reasons() {
        for (input, why) in [
            ("", "empty"),
            ("v1", "'v'"),
            ("1..2", "Segment 2 is empty"),
            (".1", "Segment 1 is empty"),
            ("1.", "Segment 2 is empty"),
            ("1 ", "' '"),
            ("1-2", "'-'"),
            ("١", "'١'"),
        ] {
            let p = Version::parse(Some(input)).unwrap_err();
            assert_eq!(
                p.code,
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "{input}"
            );
            assert!(p.detail.contains(why), "{input}: {}", p.detail);
            assert!(p.message.contains("invalid version"));
            assert!(!p.hint.is_empty());
        }
        let long = "1".repeat(MAX_LEN + 1);
        assert!(Version::parse(Some(&long))
            .unwrap_err()
            .detail
            .contains("limit"));
        let null = Version::parse(None).unwrap_err();
        assert_eq!(null.code, PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED);
    }
}
