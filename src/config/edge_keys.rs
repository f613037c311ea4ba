//! Edge pre-shared keys, held only as SHA-256 hashes and compared in
//! constant time, so neither the config nor a memory dump nor a timing probe
//! gives a key away.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EdgeKeyError {
    #[error("edge_keys.{edge}: expected sha256:<64 hex digits> (use `sluice hash-key`)")]
    BadHash { edge: String },
}

/// The shortest edge key accepted anywhere (configured, hashed, or
/// presented): 22 characters are what 128 random bits take in base64url,
/// the form `sluice-control edge add` generates (32 random bytes).
pub const MIN_EDGE_KEY_CHARS: usize = 22;

/// SHA-256 of a pre-shared key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHash(…)")
    }
}

impl KeyHash {
    pub fn of(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sha256:")?;
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }

    pub fn to_config_string(self) -> String {
        let mut s = String::from("sha256:");
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    fn matches(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// The edges allowed to connect, and their key hashes.
#[derive(Debug, Clone, Default)]
pub struct EdgeKeys {
    keys: Vec<(String, KeyHash)>,
}

impl EdgeKeys {
    pub fn from_config(map: &BTreeMap<String, String>) -> Result<Self, EdgeKeyError> {
        let mut keys = Vec::with_capacity(map.len());
        for (edge, hash) in map {
            let h =
                KeyHash::parse(hash).ok_or_else(|| EdgeKeyError::BadHash { edge: edge.clone() })?;
            keys.push((edge.clone(), h));
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `presented` is the key of `edge`.
    pub fn verify(&self, edge: &str, presented: &[u8]) -> bool {
        let h = KeyHash::of(presented);
        // Every entry is compared, so the time taken says nothing about which
        // edge ids exist or how much of a key matched.
        let mut ok = false;
        for (id, k) in &self.keys {
            let m = k.matches(&h);
            ok |= m & (id == edge);
        }
        ok
    }

    /// The edges whose key is `presented` (a key may be shared by a tenant's edges).
    pub fn edges_for(&self, presented: &[u8]) -> Vec<String> {
        let h = KeyHash::of(presented);
        let mut out = Vec::new();
        for (id, k) in &self.keys {
            if k.matches(&h) {
                out.push(id.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_roundtrip_and_verify() {
        let h = KeyHash::of(b"key1");
        let s = h.to_config_string();
        assert_eq!(KeyHash::parse(&s), Some(h));
        assert!(KeyHash::parse("sha256:zz").is_none());
        let mut map = BTreeMap::new();
        map.insert("edge-a".to_string(), s);
        map.insert(
            "edge-b".to_string(),
            KeyHash::of(b"key2").to_config_string(),
        );
        let keys = EdgeKeys::from_config(&map).unwrap();
        assert!(keys.verify("edge-a", b"key1"));
        assert!(!keys.verify("edge-a", b"key2"));
        assert!(!keys.verify("edge-c", b"key1"));
        assert_eq!(keys.edges_for(b"key2"), vec!["edge-b".to_string()]);
        assert!(format!("{h:?}").find("key1").is_none());
    }
}
