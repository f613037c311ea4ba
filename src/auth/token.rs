//! Session tokens, verified offline: HS256 with a shared secret, or EdDSA
//! (Ed25519) with public keys from the config or a JWKS file. No call to the
//! control plane, no database: a verified [`Claims`] is all a session needs.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use std::sync::Arc;

use crate::auth::jwks::{self, JwksCache};
use crate::config::Auth;
use crate::ids::SessionId;

/// What a session may do, as the control plane signed it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sid: String,
    pub sub: String,
    pub tenant: String,
    pub edge: String,
    #[serde(default)]
    pub mode: Mode,
    /// Allow-list of datasets; absent = every dataset of the edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datasets: Option<Vec<String>>,
    /// Bytes the session may receive; absent = the gateway's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The control plane's client id: names the keys of the session's
    /// stream slot when its end is reported through Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Query,
    Relay,
}

impl Claims {
    pub fn may_read(&self, dataset: &str) -> bool {
        match &self.datasets {
            None => true,
            Some(list) => list.iter().any(|d| d == dataset),
        }
    }
}

/// Why a token was refused; the label is the metrics `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("no token presented")]
    Missing,
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token was issued for another session")]
    WrongSession,
    #[error("token is signed with an unknown key or algorithm")]
    UnknownKey,
    /// Names the claim when it can be told (a missing or empty one).
    #[error("token claims are invalid{}", .0.map(|c| format!(": `{c}` is missing, empty or of the wrong type")).unwrap_or_default())]
    BadClaims(Option<&'static str>),
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
}

impl TokenError {
    pub fn label(self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::WrongSession => "wrong_session",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadClaims(_) => "bad_claims",
            TokenError::NotYetValid => "not_yet_valid",
        }
    }

    pub const ALL: [TokenError; 8] = [
        TokenError::Missing,
        TokenError::Malformed,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::WrongSession,
        TokenError::UnknownKey,
        TokenError::BadClaims(None),
        TokenError::NotYetValid,
    ];
}

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("auth.ed25519_keys.{kid}: {msg}")]
    BadKey { kid: String, msg: String },
    #[error("JWKS file {path}: {msg}")]
    Jwks { path: String, msg: String },
}

/// Verifies tokens with the keys the config names. Cheap to share: built
/// once, cloned into each shard.
#[derive(Clone)]
pub struct Verifier {
    hs256: Option<DecodingKey>,
    ed25519: HashMap<String, DecodingKey>,
    /// Per-tenant keys from the control plane's JWKS endpoint.
    jwks: Option<Arc<JwksCache>>,
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.is_some())
            .field("ed25519_kids", &self.ed25519.keys().collect::<Vec<_>>())
            .field("jwks_url", &self.jwks.is_some())
            .finish()
    }
}

impl Verifier {
    /// The per-tenant JWKS cache, when `auth.jwks_url` is set.
    pub fn jwks(&self) -> Option<&JwksCache> {
        self.jwks.as_deref()
    }

    pub fn from_config(auth: &Auth) -> Result<Self, KeyError> {
        let hs256 = (!auth.hs256_secret.is_empty())
            .then(|| DecodingKey::from_secret(auth.hs256_secret.as_bytes()));
        let mut ed25519 = HashMap::new();
        for (kid, x) in &auth.ed25519_keys {
            let key = DecodingKey::from_ed_components(x).map_err(|e| KeyError::BadKey {
                kid: kid.clone(),
                msg: e.to_string(),
            })?;
            ed25519.insert(kid.clone(), key);
        }
        if !auth.jwks_file.is_empty() {
            let err = |msg: String| KeyError::Jwks {
                path: auth.jwks_file.clone(),
                msg,
            };
            let text = std::fs::read_to_string(&auth.jwks_file).map_err(|e| err(e.to_string()))?;
            ed25519.extend(jwks::parse(&text).map_err(err)?);
        }
        let jwks = JwksCache::start(auth).map_err(|e| KeyError::Jwks {
            path: auth.jwks_url.clone(),
            msg: format!("cannot start the JWKS fetcher: {e}"),
        })?;
        Ok(Self {
            hs256,
            ed25519,
            jwks,
            leeway: auth.leeway_s,
        })
    }

    pub fn has_keys(&self) -> bool {
        self.hs256.is_some() || !self.ed25519.is_empty() || self.jwks.is_some()
    }

    /// [`Verifier::verify`], fetching the token's tenant's keys from the
    /// control plane once when the token names a key we do not have yet.
    pub async fn verify_fetching(
        &self,
        token: &str,
        path_sid: &SessionId,
    ) -> Result<Claims, TokenError> {
        match self.verify(token, path_sid) {
            Err(TokenError::UnknownKey) => {
                let (Some(cache), Some(tenant)) = (&self.jwks, jwks::unverified_tenant(token))
                else {
                    return Err(TokenError::UnknownKey);
                };
                cache.refresh(&tenant).await;
                self.verify(token, path_sid)
            }
            other => other,
        }
    }

    /// Keys that may have signed an EdDSA token: configured ones (trusted
    /// for every tenant), then the claimed tenant's own published keys.
    fn ed_keys(&self, token: &str, kid: Option<&str>) -> Vec<DecodingKey> {
        let mut keys: Vec<DecodingKey> = match kid {
            Some(k) => self.ed25519.get(k).cloned().into_iter().collect(),
            None => self.ed25519.values().cloned().collect(),
        };
        if let (Some(cache), Some(tenant)) = (&self.jwks, jwks::unverified_tenant(token)) {
            keys.extend(cache.key(&tenant, kid));
        }
        keys
    }

    /// Verifies signature, expiry and claim shape, and that the token was
    /// issued for the session named in the URL path.
    pub fn verify(&self, token: &str, path_sid: &SessionId) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.set_required_spec_claims(&["exp"]);
        // A token may carry `nbf`; one used before it is refused.
        validation.validate_nbf = true;
        validation.validate_aud = false;
        let claims = match header.alg {
            Algorithm::HS256 => {
                let key = self.hs256.as_ref().ok_or(TokenError::UnknownKey)?;
                decode(token, key, &validation)?
            }
            Algorithm::EdDSA => {
                // With a kid there is at most one key per source; without
                // one, the first key whose signature checks wins.
                let mut last = TokenError::UnknownKey;
                let mut found = None;
                for key in self.ed_keys(token, header.kid.as_deref()) {
                    match decode(token, &key, &validation) {
                        Ok(c) => {
                            found = Some(c);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                found.ok_or(last)?
            }
            _ => return Err(TokenError::UnknownKey),
        };
        if claims.sid != path_sid.as_str() {
            return Err(TokenError::WrongSession);
        }
        for (name, value) in [
            ("sub", &claims.sub),
            ("tenant", &claims.tenant),
            ("edge", &claims.edge),
        ] {
            if value.is_empty() {
                return Err(TokenError::BadClaims(Some(name)));
            }
        }
        Ok(claims)
    }
}

fn decode(token: &str, key: &DecodingKey, v: &Validation) -> Result<Claims, TokenError> {
    use jsonwebtoken::errors::ErrorKind;
    jsonwebtoken::decode::<Claims>(token, key, v)
        .map(|d| d.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => TokenError::UnknownKey,
            ErrorKind::MissingRequiredClaim(c) => TokenError::BadClaims(claim_name(c)),
            ErrorKind::Json(j) => TokenError::BadClaims(missing_field(&j.to_string())),
            _ => TokenError::Malformed,
        })
}

/// The claims a session token carries, by name, for error messages.
const CLAIM_NAMES: [&str; 11] = [
    "sid", "sub", "tenant", "edge", "mode", "datasets", "quota", "exp", "jti", "client", "nbf",
];

fn claim_name(c: &str) -> Option<&'static str> {
    CLAIM_NAMES.iter().copied().find(|n| *n == c)
}

/// serde's "missing field `tenant`" (and "unknown variant … for `mode`"
/// has no field name; only what can be named is).
fn missing_field(msg: &str) -> Option<&'static str> {
    let rest = msg.split("missing field `").nth(1)?;
    claim_name(rest.split('`').next()?)
}

/// Signs an HS256 token. The gateway never signs; the load generator,
/// benchmarks and tests do, as the control plane would.
pub fn sign_hs256(claims: &Claims, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing cannot fail")
}

/// Signs an EdDSA token with a PKCS#8 DER private key.
pub fn sign_ed25519(claims: &Claims, pkcs8_der: &[u8], kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(pkcs8_der))
        .expect("EdDSA signing with a valid key cannot fail")
}

pub fn now_s() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sid: &str, exp: u64) -> Claims {
        Claims {
            sid: sid.into(),
            sub: "alice".into(),
            tenant: "acme".into(),
            edge: "edge-a".into(),
            mode: Mode::Query,
            datasets: None,
            quota: None,
            exp,
            jti: Some("j1".into()),
            client: None,
        }
    }

    fn verifier(secret: &str) -> Verifier {
        Verifier::from_config(&Auth {
            hs256_secret: secret.into(),
            ..Auth::default()
        })
        .unwrap()
    }

    #[test]
    fn a_token_used_before_its_nbf_is_refused() {
        let v = verifier("s3cret");
        let sid = SessionId::parse("s1").unwrap();
        let sign = |nbf: u64| {
            let mut c = serde_json::to_value(claims("s1", now_s() + 600)).unwrap();
            c["nbf"] = nbf.into();
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &c,
                &EncodingKey::from_secret(b"s3cret"),
            )
            .unwrap()
        };
        assert_eq!(
            v.verify(&sign(now_s() + 3600), &sid).unwrap_err(),
            TokenError::NotYetValid
        );
        assert!(v.verify(&sign(now_s() - 10), &sid).is_ok());
    }

    #[test]
    fn a_missing_or_empty_claim_is_named() {
        let v = verifier("k");
        let sid = SessionId::parse("s1").unwrap();
        let sign = |c: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &c,
                &EncodingKey::from_secret(b"k"),
            )
            .unwrap()
        };
        let exp = now_s() + 60;
        let no_tenant = sign(serde_json::json!({"sid": "s1", "sub": "a", "edge": "e", "exp": exp}));
        let e = v.verify(&no_tenant, &sid).unwrap_err();
        assert_eq!(e, TokenError::BadClaims(Some("tenant")));
        assert!(e.to_string().contains("`tenant`"), "{e}");
        let empty_edge = sign(
            serde_json::json!({"sid": "s1", "sub": "a", "tenant": "t", "edge": "", "exp": exp}),
        );
        assert_eq!(
            v.verify(&empty_edge, &sid).unwrap_err(),
            TokenError::BadClaims(Some("edge"))
        );
        let no_exp = sign(serde_json::json!({"sid": "s1", "sub": "a", "tenant": "t", "edge": "e"}));
        assert_eq!(
            v.verify(&no_exp, &sid).unwrap_err(),
            TokenError::BadClaims(Some("exp"))
        );
    }

    #[test]
    fn hs256_paths() {
        let v = verifier("s3cret");
        let sid = SessionId::parse("s1").unwrap();
        let t = sign_hs256(&claims("s1", now_s() + 60), b"s3cret");
        assert_eq!(v.verify(&t, &sid).unwrap().sub, "alice");
        let other = SessionId::parse("s2").unwrap();
        assert_eq!(v.verify(&t, &other), Err(TokenError::WrongSession));
        let bad = sign_hs256(&claims("s1", now_s() + 60), b"other");
        assert_eq!(v.verify(&bad, &sid), Err(TokenError::BadSignature));
        let old = sign_hs256(&claims("s1", now_s() - 120), b"s3cret");
        assert_eq!(v.verify(&old, &sid), Err(TokenError::Expired));
        assert_eq!(v.verify("abc", &sid), Err(TokenError::Malformed));
        assert_eq!(v.verify("", &sid), Err(TokenError::Missing));
    }
}
