//! Admin endpoints for a control plane that runs without Redis (one
//! gateway): `GET /admin/edges` lists the edges online here, and
//! `POST /admin/revoke/{sid}?exp=<unix s>` revokes a session exactly as a
//! Redis publish would. Both need `Authorization: Bearer <admin.token>`;
//! with no token configured they do not exist (404). A source address that
//! fails the token `auth.admin_failures_per_minute` times is refused with
//! 429 before its token is looked at, until a try refills.

use std::net::IpAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::guard::guarded;
use crate::auth::revocations::ttl_until;
use crate::cluster::revocation_link;
use crate::ids::SessionId;
use crate::shard::{Shard, Shared};
use crate::wire::http::{HttpError, Request};

/// What an admin request gets: status, content type, body.
pub type Answer = (u16, &'static str, Vec<u8>);

fn authorised(shard: &Shard, source: Option<IpAddr>, req: &Request) -> Result<(), HttpError> {
    let shared = &shard.shared;
    let want = &shared.cfg.admin.token;
    if want.is_empty() {
        return Err(HttpError::new(404, "no such endpoint"));
    }
    let check = || {
        let given = req
            .header("authorization")
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or(HttpError::new(401, "admin bearer token required"))?;
        // Digests have equal length: compared in constant time.
        let a = Sha256::digest(given.as_bytes());
        let b = Sha256::digest(want.as_bytes());
        if bool::from(a.ct_eq(&b)) {
            Ok(())
        } else {
            Err(HttpError::new(401, "admin token is not valid"))
        }
    };
    guarded(
        &shared.admin_lockout,
        source,
        &shard.metrics().admin_auth_failures,
        "too many failed admin authentications from this address; retry later",
        check,
    )
}

pub fn handle(shard: &Shard, source: Option<IpAddr>, req: &Request) -> Result<Answer, HttpError> {
    authorised(shard, source, req)?;
    let shared: &Shared = &shard.shared;
    let path = req.path.as_str();
    if path == "/admin/edges" {
        if req.method != "GET" {
            return Err(HttpError::new(405, "use GET"));
        }
        let mut body = serde_json::json!({
            "public_url": shared.public_url,
            "edges": shared.registry.online(),
        });
        if let Some((_, url)) = &shared.flight {
            body["flight_url"] = url.as_str().into();
        }
        return Ok((200, "application/json", body.to_string().into_bytes()));
    }
    if let Some(sid) = path.strip_prefix("/admin/revoke/") {
        if req.method != "POST" {
            return Err(HttpError::new(405, "use POST"));
        }
        let sid = SessionId::parse(sid).ok_or(HttpError::new(400, "invalid session id"))?;
        let exp = query_param(req.query.as_deref(), "exp")
            .map(|v| v.parse::<u64>())
            .transpose()
            .map_err(|_| HttpError::new(400, "exp must be unix seconds"))?;
        let ttl = exp.map_or(
            Duration::from_secs(shared.cfg.revocation.default_ttl_s),
            ttl_until,
        );
        revocation_link::apply(shared, sid.clone(), ttl);
        let body = serde_json::json!({"session_id": sid.as_str(), "revoked": true});
        return Ok((200, "application/json", body.to_string().into_bytes()));
    }
    Err(HttpError::new(404, "no such endpoint"))
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}
