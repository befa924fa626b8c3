//! The schema fingerprint's arithmetic. Each described object has a SHA-256 hash
//! (`migrate.object_hash`); the schema's state is the sum, modulo 2^2048, of those hashes each
//! expanded to 2048 bits, and its fingerprint is the SHA-256 of that state, as 64 hex digits.
//! A sum does not depend on the order of the objects, and it can be brought up to date with
//! the hashes of the objects a migration changed alone: subtract the old ones, add the new
//! ones. That keeps recording a migration's fingerprint independent of the size of the
//! schema. The width is what makes it hard to forge: finding objects whose hashes add up to
//! a chosen sum costs about 2^(2·sqrt(n)) hashes for an n-bit sum (Wagner's generalised
//! birthday attack), 2^32 for 256 bits, about 2^90 for 2048.

use crate::errors::{OrRaise, Problem};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use sha2::{Digest, Sha256};

const BYTES: usize = 256;

/// A 2048-bit number, big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sum([u8; BYTES]);

impl Default for Sum {
    fn default() -> Self {
        Sum([0; BYTES])
    }
}

/// A 32-byte hash spread over 2048 bits: SHA-256 of the hash and a counter, eight times.
fn expand(hash: &[u8; 32]) -> [u8; BYTES] {
    let mut out = [0u8; BYTES];
    for (i, chunk) in out.chunks_mut(32).enumerate() {
        let mut h = Sha256::new();
        h.update(hash);
        h.update([i as u8]);
        chunk.copy_from_slice(&h.finalize());
    }
    out
}

impl Sum {
    pub fn add(&mut self, hash: &[u8; 32]) {
        let e = expand(hash);
        let mut carry = 0u16;
        for i in (0..BYTES).rev() {
            let s = u16::from(self.0[i]) + u16::from(e[i]) + carry;
            self.0[i] = s as u8;
            carry = s >> 8;
        }
    }

    pub fn subtract(&mut self, hash: &[u8; 32]) {
        let e = expand(hash);
        let mut borrow = 0i16;
        for i in (0..BYTES).rev() {
            let d = i16::from(self.0[i]) - i16::from(e[i]) - borrow;
            self.0[i] = d.rem_euclid(256) as u8;
            borrow = i16::from(d < 0);
        }
    }

    /// The fingerprint: the SHA-256 of the state, in hex.
    pub fn fingerprint(&self) -> String {
        crate::migration::checksum::sha256_hex(&self.0)
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Sum> {
        Some(Sum(bytes.try_into().ok()?))
    }
}

/// The hash one object adds to a fingerprint, as `migrate.object_hash(kind, identity,
/// description)` computes it: of its kind, identity and description's jsonb text.
pub fn object_hash(kind: &str, identity: &str, description: &str) -> [u8; 32] {
    hash_of_parts(kind.as_bytes(), identity.as_bytes(), description.as_bytes())
}

fn hash_of_parts(kind: &[u8], identity: &[u8], description: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [kind, b"\n", identity, b"\n", description] {
        h.update(part);
    }
    h.finalize().into()
}

/// `migrate.object_hash(kind, identity, description)`: the hash one object adds to a
/// fingerprint, of its kind, identity and description's jsonb text (canonical: keys sorted,
/// one spelling of every value), in UTF-8. Native, not SQL: convert_to is stable, so the
/// planner could not inline the SQL function, and migrate.schema_objects computes it for
/// every row a migration writes.
#[pg_extern(sql = "
    CREATE FUNCTION migrate.object_hash(kind text, identity text, description jsonb)
    RETURNS bytea IMMUTABLE STRICT PARALLEL SAFE
    LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
")]
fn object_hash_of_row(fcinfo: pg_sys::FunctionCallInfo) -> Option<Vec<u8>> {
    use crate::pg::hash_input::{any_null, jsonb_arg, text_arg};
    if any_null(fcinfo, 3) {
        return None;
    }
    Some(
        hash_of_parts(
            &text_arg(fcinfo, 0),
            &text_arg(fcinfo, 1),
            &jsonb_arg(fcinfo, 2),
        )
        .to_vec(),
    )
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
type Hashes<'a> = pgrx::Array<'a, &'a [u8]>;

/// Open to every role: an array can hold millions of hashes, each eight SHA-256s to spread,
/// so cancellation is answered as the sum goes.
fn sum_of(start: Sum, minus: Option<Hashes>, plus: Hashes) -> Sum {
    let mut sum = start;
    for (i, h) in minus.iter().flat_map(|a| a.iter()).flatten().enumerate() {
        if i % 4096 == 0 {
            pgrx::check_for_interrupts!();
        }
        sum.subtract(hash(h).or_raise());
    }
    for (i, h) in plus.iter().flatten().enumerate() {
        if i % 4096 == 0 {
            pgrx::check_for_interrupts!();
        }
        sum.add(hash(h).or_raise());
    }
    sum
}

/// `migrate.hash_sum(hashes)`: the fingerprint of objects with these hashes (NULLs skipped).
#[pg_extern(immutable, parallel_safe)]
fn hash_sum(hashes: Hashes) -> String {
    sum_of(Sum::default(), None, hashes).fingerprint()
}

/// `migrate.hash_state(hashes)`: the state of objects with these hashes, which
/// `hash_state_adjust` brings up to date and `state_fingerprint` turns into the fingerprint.
#[pg_extern(immutable, parallel_safe)]
fn hash_state(hashes: Hashes) -> Vec<u8> {
    sum_of(Sum::default(), None, hashes).0.to_vec()
}

/// `migrate.hash_state_adjust(state, removed, added)`: the state after the objects with
/// hashes `removed` left it and those with hashes `added` joined it.
#[pg_extern(immutable, parallel_safe)]
fn hash_state_adjust<'a>(state: &[u8], removed: Hashes<'a>, added: Hashes<'a>) -> Vec<u8> {
    let start = Sum::from_bytes(state).unwrap_or_else(|| {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "not a fingerprint state",
            format!("A state is {BYTES} bytes; this one has {}.", state.len()),
            "Pass the state pg_migrate recorded (migrate.schema_state.state).",
        )
        .raise()
    });
    sum_of(start, Some(removed), added).0.to_vec()
}

/// `migrate.state_fingerprint(state)`: the fingerprint of a state.
#[pg_extern(immutable, parallel_safe)]
fn state_fingerprint(state: &[u8]) -> String {
    crate::migration::checksum::sha256_hex(state)
}

#[cfg(test)]
mod unit {
    use super::*;

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
        assert_eq!(Sum::from_bytes(&x.0), Some(x));
        assert_ne!(x.fingerprint(), y.fingerprint());
        assert_eq!(x.fingerprint().len(), 64);
    }

    #[test]
    fn adding_and_subtracting_wraps_around() {
        let a = h("a");
        let mut x = Sum::default();
        x.subtract(&a);
        x.add(&a);
        assert_eq!(x, Sum::default());
        // The same object twice is not the same as once, nor as none.
        let mut once = Sum::default();
        once.add(&a);
        let mut twice = once;
        twice.add(&a);
        assert_ne!(twice, once);
        assert_ne!(twice, Sum::default());
    }

    #[test]
    fn only_a_full_state_is_a_state() {
        assert!(Sum::from_bytes(&[0; 32]).is_none());
        assert!(Sum::from_bytes(&[0; BYTES]).is_some());
    }
}
