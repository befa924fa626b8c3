//! The errors a watch counts: SQLSTATEs that a schema change which breaks its clients, or
//! that holds locks too long, makes them raise. Plain Rust: the hook in `pg::error_hook`
//! counts what `classify` says, in shared memory, per database.

/// A kind of error a watch follows. The order is the counters' in shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A column, table, function or object the query names is gone: the signature of a
    /// change that broke a client (42703, 42P01, 42883, 42704).
    UndefinedObject,
    /// `lock_timeout` expired (55P03).
    LockTimeout,
    /// A statement timeout or a cancel (57014).
    Canceled,
    /// A deadlock (40P01).
    Deadlock,
    /// A serialization failure (40001).
    Serialization,
    /// Any error reported at ERROR level or above, those above included.
    AnyError,
}

impl Signal {
    pub const ALL: [Signal; 6] = [
        Signal::UndefinedObject,
        Signal::LockTimeout,
        Signal::Canceled,
        Signal::Deadlock,
        Signal::Serialization,
        Signal::AnyError,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::UndefinedObject => "undefined object",
            Signal::LockTimeout => "lock timeout",
            Signal::Canceled => "statement canceled",
            Signal::Deadlock => "deadlock",
            Signal::Serialization => "serialization failure",
            Signal::AnyError => "any error",
        }
    }

    /// The SQLSTATEs it counts; none for `AnyError`, which counts them all.
    pub fn sqlstates(self) -> &'static [&'static [u8; 5]] {
        match self {
            Signal::UndefinedObject => &[b"42703", b"42P01", b"42883", b"42704"],
            Signal::LockTimeout => &[b"55P03"],
            Signal::Canceled => &[b"57014"],
            Signal::Deadlock => &[b"40P01"],
            Signal::Serialization => &[b"40001"],
            Signal::AnyError => &[],
        }
    }
}

/// The five characters of a SQLSTATE from PostgreSQL's packed code (`MAKE_SQLSTATE`: six
/// bits per character, the first lowest).
pub fn unpack(code: i32) -> [u8; 5] {
    let mut out = [0u8; 5];
    for (i, c) in out.iter_mut().enumerate() {
        *c = (((code >> (6 * i)) & 0x3F) as u8).wrapping_add(b'0');
    }
    out
}

/// The counter, besides `AnyError`'s, an error of `code` adds to. Called from the log hook:
/// no allocation, no panic.
pub fn classify(code: i32) -> Option<usize> {
    let state = unpack(code);
    Signal::ALL
        .iter()
        .find(|s| s.sqlstates().iter().any(|x| **x == state))
        .map(|s| s.index())
}

#[cfg(test)]
mod unit {
    use super::*;

    /// MAKE_SQLSTATE, as PostgreSQL's elog.h defines it.
    fn make(s: &[u8; 5]) -> i32 {
        s.iter()
            .enumerate()
            .map(|(i, c)| (((*c - b'0') & 0x3F) as i32) << (6 * i))
            .sum()
    }

    #[test]
    fn sqlstates_unpack_as_postgresql_packs_them() {
        // As the server's own codes.
        use pgrx::PgSqlErrorCode as E;
        assert_eq!(&unpack(E::ERRCODE_UNDEFINED_COLUMN as i32), b"42703");
        assert_eq!(&unpack(E::ERRCODE_LOCK_NOT_AVAILABLE as i32), b"55P03");
        assert_eq!(make(b"40P01"), E::ERRCODE_T_R_DEADLOCK_DETECTED as i32);
        for s in Signal::ALL.iter().flat_map(|s| s.sqlstates()) {
            assert_eq!(&unpack(make(s)), *s);
        }
    }

    #[test]
    fn each_sqlstate_counts_for_its_signal_and_others_for_none() {
        assert_eq!(
            classify(make(b"42P01")),
            Some(Signal::UndefinedObject.index())
        );
        assert_eq!(classify(make(b"57014")), Some(Signal::Canceled.index()));
        assert_eq!(classify(make(b"40P01")), Some(Signal::Deadlock.index()));
        assert_eq!(
            classify(make(b"40001")),
            Some(Signal::Serialization.index())
        );
        // A syntax error or a permission error is no sign of a broken schema.
        assert_eq!(classify(make(b"42601")), None);
        assert_eq!(classify(make(b"42501")), None);
        assert_eq!(Signal::ALL.last().map(|s| s.index()), Some(5));
    }
}
