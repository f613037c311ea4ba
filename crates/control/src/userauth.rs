//! Who is calling: the bearer JWT a user brings to `/control/access`,
//! checked with the tenant's own settings (an HS256 secret, or the keys of
//! its identity provider from a JWKS file or URL).
//!
//! JWKS from a URL are cached and fetched again when a token names a `kid`
//! the cache lacks, at most once per [`REFETCH_MIN`] per URL, so a stream
//! of made-up kids cannot turn this service into a load generator against
//! the identity provider.

use sluice_protocol::sync::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::error::ApiError;
use crate::secret::MasterKey;
use crate::tenants::Tenant;

const REFETCH_MIN: Duration = Duration::from_secs(5);
const MAX_AGE: Duration = Duration::from_secs(300);

/// A user the tenant vouched for.
#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub sub: String,
    pub exp: u64,
    /// When present, the only tenant this token is good for.
    #[serde(default)]
    pub tenant: Option<String>,
    /// When present, the only client this user may act for.
    #[serde(default)]
    pub client_id: Option<String>,
}

/// Longest life a development user token gets.
pub const MAX_DEV_TOKEN_TTL_S: u64 = 86_400;

/// Signs a development user token with tenant `t`'s HS256 user secret:
/// what its identity provider would issue, with the `iss` and `aud` the
/// tenant requires, bound to the tenant (and to `client` when given).
pub fn dev_token(
    t: &Tenant,
    master: &MasterKey,
    sub: &str,
    client: Option<&str>,
    ttl_s: u64,
) -> anyhow::Result<String> {
    use anyhow::{bail, Context};
    let cfg = &t.settings.user_auth;
    if cfg.hs256_secret.is_empty() {
        bail!(
            "tenant {} does not take HS256 user tokens: set its secret with `sluice-control tenant add {} --user-hs256-secret-env VAR` (at least 32 bytes), or get tokens from its identity provider",
            t.slug,
            t.slug
        );
    }
    if sub.trim().is_empty() {
        bail!("--sub must not be empty");
    }
    if ttl_s == 0 || ttl_s > MAX_DEV_TOKEN_TTL_S {
        bail!("--ttl must be between 1s and 24h");
    }
    let secret = master.open(&cfg.hs256_secret).context(
        "cannot open the tenant's user secret (is SLUICE_MASTER_KEY the one it was sealed with?)",
    )?;
    let mut claims = serde_json::json!({
        "sub": sub,
        "exp": crate::keys::now_s() + ttl_s,
        "tenant": t.slug.as_str(),
    });
    if let Some(c) = client {
        claims["client_id"] = c.into();
    }
    if !cfg.issuer.is_empty() {
        claims["iss"] = cfg.issuer.as_str().into();
    }
    if !cfg.audience.is_empty() {
        claims["aud"] = cfg.audience.as_str().into();
    }
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )?)
}

struct Fetched {
    set: JwkSet,
    at: Instant,
}

pub struct UserAuth {
    http: reqwest::Client,
    hs256: Mutex<HashMap<String, DecodingKey>>,
    jwks: tokio::sync::Mutex<HashMap<String, Fetched>>,
}

impl UserAuth {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            hs256: Mutex::new(HashMap::new()),
            jwks: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    pub async fn verify(
        &self,
        t: &Tenant,
        master: &MasterKey,
        bearer: Option<&str>,
    ) -> Result<User, ApiError> {
        let token = bearer.ok_or_else(|| {
            ApiError::new(
                401,
                "missing_token",
                "Authorization: Bearer <user JWT> required",
            )
        })?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::new(401, "invalid_token", "bearer token is not a JWT"))?;
        let cfg = &t.settings.user_auth;
        let mut v = Validation::new(header.alg);
        v.set_required_spec_claims(&["exp", "sub"]);
        v.leeway = 30;
        if cfg.issuer.is_empty() {
            v.iss = None;
        } else {
            v.set_issuer(&[&cfg.issuer]);
            v.required_spec_claims.insert("iss".into());
        }
        if cfg.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&[&cfg.audience]);
        }
        let user = if header.alg == Algorithm::HS256 {
            if cfg.hs256_secret.is_empty() {
                return Err(ApiError::new(
                    401,
                    "invalid_token",
                    "this tenant does not accept HS256 user tokens",
                ));
            }
            let key = self.hs256_key(&cfg.hs256_secret, master)?;
            decode(token, &key, &v)?
        } else {
            let kid = header.kid.as_deref();
            let key = self.jwks_key(t, kid, header.alg).await?;
            decode(token, &key, &v)?
        };
        if let Some(claimed) = &user.tenant {
            if claimed != t.slug.as_str() {
                return Err(ApiError::new(
                    403,
                    "wrong_tenant",
                    "user token was issued for another tenant",
                ));
            }
        }
        Ok(user)
    }

    fn hs256_key(&self, sealed: &str, master: &MasterKey) -> Result<DecodingKey, ApiError> {
        let mut c = lock(&self.hs256);
        if let Some(k) = c.get(sealed) {
            return Ok(k.clone());
        }
        let secret = master.open(sealed).map_err(|e| {
            tracing::error!(error = %e, "cannot open a tenant's user HS256 secret");
            ApiError::new(
                503,
                "secret_unavailable",
                "tenant user-auth secret cannot be opened",
            )
        })?;
        let k = DecodingKey::from_secret(&secret);
        c.insert(sealed.to_owned(), k.clone());
        Ok(k)
    }

    async fn jwks_key(
        &self,
        t: &Tenant,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, ApiError> {
        let cfg = &t.settings.user_auth;
        let pick = |set: &JwkSet| -> Option<DecodingKey> {
            let jwk = match kid {
                Some(k) => set.find(k)?,
                None if set.keys.len() == 1 => &set.keys[0],
                None => return None,
            };
            DecodingKey::from_jwk(jwk).ok()
        };
        let unknown = || {
            ApiError::new(
                401,
                "invalid_token",
                format!("user token signed ({alg:?}) with a key the tenant does not publish"),
            )
        };
        if !cfg.jwks_file.is_empty() {
            let text = tokio::fs::read_to_string(&cfg.jwks_file).await.map_err(|e| {
                tracing::error!(file = %cfg.jwks_file, error = %e, "cannot read user JWKS file");
                ApiError::new(503, "jwks_unavailable", "tenant's user JWKS cannot be read")
            })?;
            let set: JwkSet = serde_json::from_str(&text).map_err(|e| {
                tracing::error!(file = %cfg.jwks_file, error = %e, "user JWKS file is invalid");
                ApiError::new(503, "jwks_unavailable", "tenant's user JWKS is invalid")
            })?;
            return pick(&set).ok_or_else(unknown);
        }
        if cfg.jwks_url.is_empty() {
            return Err(ApiError::new(
                401,
                "invalid_token",
                "this tenant accepts no asymmetric user tokens (no user JWKS configured)",
            ));
        }
        let url = &cfg.jwks_url;
        let mut cache = self.jwks.lock().await;
        if let Some(f) = cache.get(url) {
            let fresh = f.at.elapsed() < MAX_AGE;
            if fresh {
                if let Some(k) = pick(&f.set) {
                    return Ok(k);
                }
                if f.at.elapsed() < REFETCH_MIN {
                    return Err(unknown());
                }
            }
        }
        let set = self.fetch(url).await?;
        let key = pick(&set);
        cache.insert(
            url.clone(),
            Fetched {
                set,
                at: Instant::now(),
            },
        );
        key.ok_or_else(unknown)
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet, ApiError> {
        let unavailable = |e: String| {
            tracing::warn!(%url, error = %e, "cannot fetch user JWKS");
            ApiError::new(
                503,
                "jwks_unavailable",
                "tenant's identity provider keys are unreachable",
            )
        };
        let resp = self
            .http
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("HTTP {}", resp.status())));
        }
        resp.json::<JwkSet>()
            .await
            .map_err(|e| unavailable(e.to_string()))
    }
}

fn decode(token: &str, key: &DecodingKey, v: &Validation) -> Result<User, ApiError> {
    use jsonwebtoken::errors::ErrorKind;
    jsonwebtoken::decode::<User>(token, key, v)
        .map(|d| d.claims)
        .map_err(|e| {
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "user token has expired",
                ErrorKind::InvalidSignature => "user token signature is invalid",
                ErrorKind::InvalidIssuer => "user token has the wrong issuer",
                ErrorKind::InvalidAudience => "user token has the wrong audience",
                ErrorKind::MissingRequiredClaim(_) => "user token lacks a required claim",
                ErrorKind::InvalidAlgorithm => "user token algorithm does not match the key",
                _ => "user token is invalid",
            };
            ApiError::new(401, "invalid_token", why)
        })
}
