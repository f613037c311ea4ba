//! Secrets at rest: edge keys, users' HS256 secrets and private signing
//! keys are sealed with XChaCha20-Poly1305 under a master key that lives
//! only in the environment (`SLUICE_MASTER_KEY`, base64 of 32 bytes), never
//! in the data directory. A copied data directory leaks nothing without it.
//!
//! Sealed text is `v1:<base64(nonce ‖ ciphertext ‖ tag)>`; the random
//! 192-bit nonce makes nonce reuse a non-issue without any counter state
//! shared between control-plane nodes.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::XChaCha20Poly1305;
use thiserror::Error;

pub const MASTER_KEY_ENV: &str = "SLUICE_MASTER_KEY";
const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 24;

#[derive(Debug, Error)]
pub enum SecretError {
    #[error("{MASTER_KEY_ENV} is not set (base64 of 32 random bytes; `sluice-control master-key` makes one)")]
    MissingKey,
    #[error("{MASTER_KEY_ENV} must be base64 of exactly 32 bytes")]
    BadKey,
    #[error("sealed secret is malformed (expected v1:<base64>)")]
    Malformed,
    #[error(
        "sealed secret does not open with this master key (wrong key, or the file was altered)"
    )]
    WrongKey,
}

/// The key that seals every secret in the data directory.
pub struct MasterKey(XChaCha20Poly1305);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn from_env() -> Result<Self, SecretError> {
        let v = std::env::var(MASTER_KEY_ENV).map_err(|_| SecretError::MissingKey)?;
        Self::from_base64(&v)
    }

    pub fn from_base64(s: &str) -> Result<Self, SecretError> {
        let raw = B64.decode(s.trim()).map_err(|_| SecretError::BadKey)?;
        if raw.len() != 32 {
            return Err(SecretError::BadKey);
        }
        let cipher = XChaCha20Poly1305::new_from_slice(&raw).map_err(|_| SecretError::BadKey)?;
        Ok(Self(cipher))
    }

    /// A fresh random master key, base64.
    pub fn generate() -> String {
        B64.encode(XChaCha20Poly1305::generate_key(&mut OsRng))
    }

    pub fn seal(&self, plain: &[u8]) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self
            .0
            .encrypt(&nonce, plain)
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        format!("{PREFIX}{}", B64.encode(out))
    }

    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, SecretError> {
        let b = sealed.strip_prefix(PREFIX).ok_or(SecretError::Malformed)?;
        let raw = B64.decode(b).map_err(|_| SecretError::Malformed)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(SecretError::Malformed);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        self.0
            .decrypt(nonce.into(), ct)
            .map_err(|_| SecretError::WrongKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_refuse_tampering() {
        let k = MasterKey::from_base64(&MasterKey::generate()).unwrap();
        let s = k.seal(b"edge-key-123");
        assert!(s.starts_with("v1:"));
        assert!(!s.contains("edge-key-123"));
        assert_eq!(k.open(&s).unwrap(), b"edge-key-123");
        assert_ne!(k.seal(b"x"), k.seal(b"x"), "fresh nonce each time");
        let other = MasterKey::from_base64(&MasterKey::generate()).unwrap();
        assert!(matches!(other.open(&s), Err(SecretError::WrongKey)));
        let mut raw = B64.decode(&s[3..]).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let altered = format!("v1:{}", B64.encode(raw));
        assert!(matches!(k.open(&altered), Err(SecretError::WrongKey)));
        assert!(matches!(k.open("plain"), Err(SecretError::Malformed)));
        assert!(matches!(
            MasterKey::from_base64("c2hvcnQ="),
            Err(SecretError::BadKey)
        ));
    }
}
