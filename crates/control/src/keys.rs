//! Each tenant's Ed25519 signing keys: created only by `keys rotate`, never
//! on read. With several control-plane nodes sharing a data directory, a
//! node that minted a key on demand would publish a JWKS the others do not
//! know; so a tenant without a key gets a clear 409 until an operator
//! rotates one in.
//!
//! The newest key signs. A rotated-out key stays in the JWKS until every
//! token it could have signed has expired (`retired_at + session_ttl_s`),
//! so rotation never cuts a live session.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use serde::Serialize;

use crate::secret::MasterKey;
use crate::tenants::{KeyFile, Tenant};

/// Grace past a retired key's last possible token, for clock skew.
pub const RETIRE_GRACE_S: u64 = 60;

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Makes a new signing key for `t`, retires the current one, and drops
/// keys no token can still need. Returns the new kid.
pub fn rotate(t: &mut Tenant, master: &MasterKey) -> String {
    let now = now_s();
    let ttl = t.settings.session_ttl_s;
    t.keys
        .retain(|k| k.retired_at.is_none_or(|r| r + ttl + RETIRE_GRACE_S > now));
    for k in &mut t.keys {
        k.retired_at.get_or_insert(now);
    }
    let sk = SigningKey::generate(&mut rand::rngs::OsRng);
    let der = sk
        .to_pkcs8_der()
        .expect("PKCS#8 encoding of an Ed25519 key cannot fail");
    let public_x = B64URL.encode(sk.verifying_key().as_bytes());
    let kid = format!(
        "{}-{}-{}",
        t.slug,
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        &hex::encode(&sk.verifying_key().as_bytes()[..4])
    );
    t.keys.push(KeyFile {
        kid: kid.clone(),
        created_at: now,
        retired_at: None,
        public_x,
        private: master.seal(der.as_bytes()),
    });
    kid
}

/// The key that signs new tokens: the newest not retired.
pub fn active(t: &Tenant) -> Option<&KeyFile> {
    t.keys.iter().rev().find(|k| k.retired_at.is_none())
}

/// Keys a verifier may still meet in a live token.
pub fn published(t: &Tenant, now: u64) -> impl Iterator<Item = &KeyFile> {
    let ttl = t.settings.session_ttl_s;
    t.keys
        .iter()
        .filter(move |k| k.retired_at.is_none_or(|r| r + ttl + RETIRE_GRACE_S > now))
}

#[derive(Serialize)]
pub struct Jwk<'a> {
    kty: &'static str,
    crv: &'static str,
    alg: &'static str,
    #[serde(rename = "use")]
    use_: &'static str,
    kid: &'a str,
    x: &'a str,
}

#[derive(Serialize)]
pub struct Jwks<'a> {
    pub keys: Vec<Jwk<'a>>,
}

pub fn jwks(t: &Tenant, now: u64) -> Jwks<'_> {
    Jwks {
        keys: published(t, now)
            .map(|k| Jwk {
                kty: "OKP",
                crv: "Ed25519",
                alg: "EdDSA",
                use_: "sig",
                kid: &k.kid,
                x: &k.public_x,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenants::TenantSlug;

    fn tenant() -> Tenant {
        Tenant::new(TenantSlug::parse("acme").unwrap())
    }

    #[test]
    fn rotation_keeps_the_previous_key_published_until_its_tokens_expire() {
        let m = MasterKey::from_base64(&MasterKey::generate()).unwrap();
        let mut t = tenant();
        assert!(active(&t).is_none(), "no key is ever made on read");
        let k1 = rotate(&mut t, &m);
        let k2 = rotate(&mut t, &m);
        assert_ne!(k1, k2);
        assert_eq!(active(&t).unwrap().kid, k2);
        let now = now_s();
        let kids: Vec<_> = jwks(&t, now)
            .keys
            .iter()
            .map(|k| k.kid.to_owned())
            .collect();
        assert_eq!(kids, vec![k1.clone(), k2.clone()]);
        let later = now + 900 + RETIRE_GRACE_S + 1;
        let kids: Vec<_> = jwks(&t, later)
            .keys
            .iter()
            .map(|k| k.kid.to_owned())
            .collect();
        assert_eq!(kids, vec![k2]);
        assert!(!t.keys[0].private.contains(&t.keys[0].public_x));
    }
}
