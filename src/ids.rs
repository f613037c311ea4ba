//! Identifiers that carry their invariants, so that a string from the
//! network is checked once, at the edge, and never again.

use std::fmt;

/// Longest id accepted in a URL path or a register message.
pub const MAX_ID_LEN: usize = 128;

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':'))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Accepts 1–128 characters of `[A-Za-z0-9._~:-]`.
            pub fn parse(s: &str) -> Option<Self> {
                valid_id(s).then(|| Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// A browser session's id, from `/stream/{sid}` and the token's `sid`.
    SessionId
);
id_type!(
    /// An edge (one connector deployment) id.
    EdgeId
);

impl SessionId {
    /// The shard that owns this session. FNV-1a: stable across restarts and
    /// builds, so a reconnecting session lands where it did before.
    pub fn shard(&self, shards: usize) -> usize {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in self.0.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        (h % shards.max(1) as u64) as usize
    }
}

/// A gateway-assigned id for one connector or edge connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{:x}", self.0)
    }
}

/// A live feed: one edge's dataset, fanned out to every viewer.
pub type FeedKey = (EdgeId, String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(SessionId::parse("s-9f3b2e1a").is_some());
        assert!(SessionId::parse("").is_none());
        assert!(SessionId::parse("a/b").is_none());
        assert!(SessionId::parse(&"x".repeat(129)).is_none());
        assert!(EdgeId::parse("edge acme").is_none());
    }

    #[test]
    fn sharding_spreads_and_is_stable() {
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            let sid = SessionId::parse(&format!("s{i}")).unwrap();
            let s = sid.shard(4);
            assert_eq!(s, sid.shard(4));
            seen[s] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
    }
}
