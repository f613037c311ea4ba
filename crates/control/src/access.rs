//! The access decision: the one place that says yes or no to a read.
//! Checks run from cheapest and least revealing to most: who is asking,
//! what they ask for, whether their plan allows it, whether the edge can
//! serve it; only then is a stream slot reserved and a token signed.

use sluice_protocol::sync::lock;
use std::collections::HashMap;
use std::sync::Mutex;

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::edges::Online;
use crate::error::ApiError;
use crate::keys::{self, now_s};
use crate::secret::MasterKey;
use crate::store::{Limits, Refused, SessionRecord, Store};
use crate::tenants::Tenant;
use crate::userauth::User;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    pub client_id: String,
    pub dataset_id: String,
    #[serde(default)]
    pub requested_ops: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Granted {
    pub session_id: String,
    pub session_token: String,
    pub data_plane_url: String,
    /// The same gateway's Arrow Flight endpoint, when it has one: `do_get`
    /// there with `Ticket(dataset)` and `authorization: Bearer
    /// <session_token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flight_url: Option<String>,
    /// RFC 3339, as seed 000 shows it.
    pub expires_at: String,
    pub expires_at_unix: u64,
    pub edge_id: String,
    /// The dataset's name at the connector (what the client asks the
    /// gateway for).
    pub dataset: String,
    /// Bytes the session may receive (0 = no limit).
    pub quota_bytes: u64,
}

/// The session token's claims: what the gateway's `token::Claims` reads.
#[derive(Debug, Serialize)]
struct SessionClaims<'a> {
    sid: &'a str,
    sub: &'a str,
    tenant: &'a str,
    edge: &'a str,
    mode: &'static str,
    datasets: [&'a str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    quota: Option<u64>,
    exp: u64,
    iat: u64,
    jti: &'a str,
    iss: &'static str,
    client: &'a str,
}

pub const ISSUER: &str = "sluice-control";

/// What the decision needs besides the request.
pub struct Ctx<'a> {
    pub tenant: &'a Tenant,
    pub user: &'a User,
    pub master: &'a MasterKey,
    pub store: &'a Store,
    pub signers: &'a Signers,
}

/// Private keys opened once per kid: opening is a decryption, and an
/// expanded [`SigningKey`] signs without re-deriving its public half (a
/// generic JWT library re-parses the PKCS#8 key on every signature, which
/// doubled the curve work of a decision).
#[derive(Default)]
pub struct Signers(Mutex<HashMap<String, Arc<SigningKey>>>);

impl Signers {
    fn get(
        &self,
        kid: &str,
        sealed: &str,
        master: &MasterKey,
    ) -> Result<Arc<SigningKey>, ApiError> {
        let mut m = lock(&self.0);
        if let Some(k) = m.get(kid) {
            return Ok(k.clone());
        }
        let unavailable = |e: String| {
            tracing::error!(%kid, error = %e, "cannot open a signing key");
            ApiError::new(
                503,
                "secret_unavailable",
                "the tenant's signing key cannot be opened",
            )
        };
        let der = master
            .open(sealed)
            .map_err(|e| unavailable(e.to_string()))?;
        let k = SigningKey::from_pkcs8_der(&der).map_err(|e| unavailable(e.to_string()))?;
        let k = Arc::new(k);
        m.insert(kid.to_owned(), k.clone());
        Ok(k)
    }
}

/// A compact JWS (RFC 7515) with `alg: EdDSA` (RFC 8037).
fn sign_jwt(claims: &impl Serialize, kid: &str, key: &SigningKey) -> String {
    let header = serde_json::json!({"typ": "JWT", "alg": "EdDSA", "kid": kid});
    let mut out = B64URL.encode(header.to_string());
    out.push('.');
    out.push_str(&B64URL.encode(serde_json::to_vec(claims).expect("claims serialise")));
    let sig = key.sign(out.as_bytes());
    out.push('.');
    out.push_str(&B64URL.encode(sig.to_bytes()));
    out
}

/// Checks that need no I/O: client, dataset, plan, edge, key. Returns the
/// dataset's edge id on success.
pub fn check<'t>(t: &'t Tenant, user: &User, req: &AccessRequest) -> Result<Checked<'t>, ApiError> {
    let ops = req
        .requested_ops
        .clone()
        .unwrap_or_else(|| vec!["read".into()]);
    if let Some(op) = ops.iter().find(|o| o.as_str() != "read") {
        return Err(ApiError::new(
            403,
            "op_not_permitted",
            format!("operation {op:?} is not permitted (only \"read\")"),
        ));
    }
    let client = t.client(&req.client_id).ok_or_else(|| {
        ApiError::new(
            404,
            "unknown_client",
            format!("no client {:?} in this tenant", req.client_id),
        )
    })?;
    if client.disabled {
        return Err(ApiError::new(403, "client_disabled", "client is disabled"));
    }
    if user.client_id.as_deref().is_some_and(|c| c != client.id) || !client.may_act_as(&user.sub) {
        return Err(ApiError::new(
            403,
            "client_not_permitted",
            "this user may not act for this client",
        ));
    }
    let dataset = t.dataset(&req.dataset_id).ok_or_else(|| {
        ApiError::new(
            404,
            "unknown_dataset",
            format!("no dataset {:?} in this tenant", req.dataset_id),
        )
    })?;
    if !client.may_read(&dataset.id) {
        return Err(ApiError::new(
            403,
            "dataset_not_granted",
            "this client may not read this dataset",
        ));
    }
    let plan = t.plan(&client.plan).ok_or_else(|| {
        ApiError::new(
            409,
            "plan_missing",
            format!(
                "client's plan {:?} is not defined in this tenant",
                client.plan
            ),
        )
    })?;
    if t.edge(&dataset.edge).is_none() {
        return Err(ApiError::new(
            409,
            "edge_not_configured",
            format!(
                "dataset's edge {:?} is not defined in this tenant",
                dataset.edge
            ),
        ));
    }
    let key = keys::active(t).ok_or_else(|| {
        ApiError::new(
            409,
            "no_signing_key",
            "tenant has no signing key (run `sluice-control keys rotate`)",
        )
    })?;
    Ok(Checked {
        client_id: &client.id,
        dataset_id: &dataset.id,
        dataset_name: dataset.connector_name(),
        edge: &dataset.edge,
        limits: Limits {
            max_streams: plan.max_streams,
            session_quota: plan.session_quota_bytes,
            hourly_quota: plan.hourly_quota_bytes,
        },
        kid: &key.kid,
        sealed_key: &key.private,
    })
}

pub struct Checked<'t> {
    pub client_id: &'t str,
    pub dataset_id: &'t str,
    pub dataset_name: &'t str,
    pub edge: &'t str,
    pub limits: Limits,
    kid: &'t str,
    sealed_key: &'t str,
}

pub fn new_session_id() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("s-{}", hex::encode(b))
}

/// Reserves the slot and signs. `gateway` is the holder of the edge.
pub async fn grant(ctx: &Ctx<'_>, c: &Checked<'_>, gateway: &Online) -> Result<Granted, ApiError> {
    let gateway_url = gateway.url.as_str();
    let now = now_s();
    let exp = now + ctx.tenant.settings.session_ttl_s.max(1);
    let sid = new_session_id();
    let rec = SessionRecord {
        sid: sid.clone(),
        tenant: ctx.tenant.slug.to_string(),
        client_id: c.client_id.to_owned(),
        sub: ctx.user.sub.clone(),
        edge_id: c.edge.to_owned(),
        dataset: c.dataset_name.to_owned(),
        exp,
        quota: 0,
    };
    let key = ctx.signers.get(c.kid, c.sealed_key, ctx.master)?;
    let quota = match ctx.store.reserve(&rec, c.limits, now).await? {
        Ok(q) => q,
        Err(Refused::TooManyStreams) => {
            return Err(ApiError::new(
                429,
                "too_many_streams",
                format!("plan allows {} concurrent streams", c.limits.max_streams),
            ))
        }
        Err(Refused::HourlyQuotaExhausted) => {
            return Err(ApiError::new(
                429,
                "hourly_quota_exhausted",
                "plan's hourly byte quota is used up",
            ))
        }
    };
    let claims = SessionClaims {
        sid: &sid,
        sub: &ctx.user.sub,
        tenant: ctx.tenant.slug.as_str(),
        edge: c.edge,
        mode: "query",
        datasets: [c.dataset_name],
        quota: (quota > 0).then_some(quota),
        exp,
        iat: now,
        jti: &sid,
        iss: ISSUER,
        client: c.client_id,
    };
    let token = sign_jwt(&claims, c.kid, &key);
    let base = gateway_url.trim_end_matches('/');
    Ok(Granted {
        data_plane_url: format!("{base}/stream/{sid}"),
        flight_url: gateway.flight_url.clone(),
        session_id: sid,
        session_token: token,
        expires_at: chrono::DateTime::from_timestamp(exp as i64, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        expires_at_unix: exp,
        edge_id: c.edge.to_owned(),
        dataset: c.dataset_name.to_owned(),
        quota_bytes: quota,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePrivateKey;

    #[test]
    fn tokens_verify_with_a_standard_jwt_library() {
        let sk = SigningKey::generate(&mut rand::rngs::OsRng);
        let t = sign_jwt(
            &serde_json::json!({"sub": "a", "exp": 4_000_000_000u64}),
            "k1",
            &sk,
        );
        let x = B64URL.encode(sk.verifying_key().as_bytes());
        let key = jsonwebtoken::DecodingKey::from_ed_components(&x).unwrap();
        let v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        let d = jsonwebtoken::decode::<serde_json::Value>(&t, &key, &v).unwrap();
        assert_eq!(d.header.kid.as_deref(), Some("k1"));
        assert_eq!(d.claims["sub"], "a");
        let other = SigningKey::generate(&mut rand::rngs::OsRng);
        let x2 = B64URL.encode(other.verifying_key().as_bytes());
        let key2 = jsonwebtoken::DecodingKey::from_ed_components(&x2).unwrap();
        assert!(jsonwebtoken::decode::<serde_json::Value>(&t, &key2, &v).is_err());
        // The PKCS#8 form stored at rest opens to the same key.
        let der = sk.to_pkcs8_der().unwrap();
        assert_eq!(
            SigningKey::from_pkcs8_der(der.as_bytes())
                .unwrap()
                .to_bytes(),
            sk.to_bytes()
        );
    }
}
