//! The schema fingerprint's arithmetic. A fingerprint is the sum, modulo 2^256, of one
//! SHA-256 hash per described object (`migrate.object_hash`), as 64 hex digits. A sum does not
//! depend on the order of the objects, and it can be brought up to date with the hashes of
//! the objects a migration changed alone: subtract the old ones, add the new ones. That is
//! what keeps recording a migration's fingerprint independent of the size of the schema.

use crate::errors::{OrRaise, Problem};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// A 256-bit number, big-endian, as SHA-256 prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sum([u8; 32]);

impl Sum {
    /// Adds a hash. Anything but 32 bytes is not a hash and was refused before.
    pub fn add(&mut self, hash: &[u8; 32]) {
        let mut carry = 0u16;
        for i in (0..32).rev() {
            let s = u16::from(self.0[i]) + u16::from(hash[i]) + carry;
            self.0[i] = s as u8;
            carry = s >> 8;
        }
    }

    pub fn subtract(&mut self, hash: &[u8; 32]) {
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(self.0[i]) - i16::from(hash[i]) - borrow;
            self.0[i] = d.rem_euclid(256) as u8;
            borrow = i16::from(d < 0);
        }
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(text: &str) -> Option<Sum> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Sum(out))
    }
}

/// A hash as 32 bytes, or why not.
pub fn hash(bytes: &[u8]) -> Result<&[u8; 32], Problem> {
    bytes.try_into().map_err(|_| {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("a hash of {} bytes is not a SHA-256 hash", bytes.len()),
            "A fingerprint sums the 32-byte SHA-256 hashes of objects (migrate.object_hash).",
            "Pass hashes made by migrate.object_hash.",
        )
    })
}

// Strict functions (pgrx declares them so): NULL in, NULL out; callers pass '{}' for none.
type Hashes<'a> = Option<pgrx::Array<'a, &'a [u8]>>;

fn sum_of(start: Sum, minus: Hashes, plus: Hashes) -> Sum {
    let mut sum = start;
    for h in minus.iter().flat_map(|a| a.iter()).flatten() {
        sum.subtract(hash(h).or_raise());
    }
    for h in plus.iter().flat_map(|a| a.iter()).flatten() {
        sum.add(hash(h).or_raise());
    }
    sum
}

/// `migrate.hash_sum(hashes)`: the fingerprint of objects with these hashes (NULLs skipped).
#[pg_extern(immutable, parallel_safe)]
fn hash_sum(hashes: Hashes) -> String {
    sum_of(Sum::default(), None, hashes).hex()
}

/// `migrate.fingerprint_adjust(fingerprint, removed, added)`: a fingerprint after the objects
/// with hashes `removed` left it and those with hashes `added` joined it.
#[pg_extern(immutable, parallel_safe)]
fn fingerprint_adjust<'a>(fingerprint: &str, removed: Hashes<'a>, added: Hashes<'a>) -> String {
    let start = Sum::from_hex(fingerprint).unwrap_or_else(|| {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "not a fingerprint",
            "A fingerprint is 64 hexadecimal digits.",
            "Pass a fingerprint pg_migrate recorded.",
        )
        .raise()
    });
    sum_of(start, removed, added).hex()
}

#[cfg(test)]
mod unit {
    use super::*;
    use sha2::{Digest, Sha256};

    fn h(s: &str) -> [u8; 32] {
        Sha256::digest(s.as_bytes()).into()
    }

    #[test]
    fn a_sum_is_independent_of_order_and_undone_by_subtracting() {
        let (a, b, c) = (h("a"), h("b"), h("c"));
        let mut x = Sum::default();
        for v in [&a, &b, &c] {
            x.add(v);
        }
        let mut y = Sum::default();
        for v in [&c, &a, &b] {
            y.add(v);
        }
        assert_eq!(x, y);
        x.subtract(&b);
        let mut z = Sum::default();
        z.add(&a);
        z.add(&c);
        assert_eq!(x, z);
        assert_eq!(Sum::from_hex(&x.hex()), Some(x));
    }

    #[test]
    fn sums_wrap_around_modulo_two_to_the_256() {
        let mut x = Sum::default();
        x.add(&[0xff; 32]);
        x.add(&{
            let mut one = [0; 32];
            one[31] = 1;
            one
        });
        assert_eq!(x, Sum::default());
        x.subtract(&[0xff; 32]);
        let mut one = Sum::default();
        one.0[31] = 1;
        assert_eq!(x, one);
    }

    #[test]
    fn only_64_hex_digits_are_a_fingerprint() {
        assert!(Sum::from_hex("ab").is_none());
        assert!(Sum::from_hex(&"zz".repeat(32)).is_none());
        assert!(Sum::from_hex(&"é".repeat(32)).is_none());
        assert!(Sum::from_hex(&"0f".repeat(32)).is_some());
    }
}
