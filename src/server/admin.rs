//! The admin listener (`admin.listen`, loopback by default), for a control
//! plane that runs without Redis (one gateway): `GET /admin/edges` lists
//! the edges online here, and `POST /admin/revoke/{sid}?exp=<unix s>`
//! revokes a session exactly as a Redis publish would. Both need
//! `Authorization: Bearer <admin.token>`; with no token configured the
//! listener is not opened.
//!
//! It is a port of its own, not a path on the public one, so that no
//! client of the data plane can reach it, and the lockout after failed
//! tokens ([`guarded`]) never stands between the right token and the
//! service that presents it. It also answers `/healthz`, `/readyz` and
//! `/metrics`, for operators who keep those off the public port too.
//! Admin traffic is rare: one tokio thread serves it, a few connections at
//! a time, each with a deadline for its request head.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::guard::guarded;
use crate::auth::revocations::ttl_until;
use crate::cluster::revocation_link;
use crate::ids::SessionId;
use crate::shard::Shared;
use crate::wire::http::{self, HttpError, Request};

/// Admin connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;

/// Starts the admin thread on a bound listener.
pub fn start(shared: Arc<Shared>, listener: std::net::TcpListener) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the admin thread")?;
    std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || rt.block_on(serve(shared, listener)))
        .context("cannot spawn the admin thread")?;
    tracing::info!(%addr, "admin listening");
    Ok(addr)
}

async fn serve(shared: Arc<Shared>, listener: std::net::TcpListener) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "cannot register the admin listener"),
    };
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            continue; // closed at once: the admin port is for a few callers
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _place = place;
            let deadline = Duration::from_millis(shared.cfg.timeouts.handshake_ms);
            let _ = tokio::time::timeout(deadline, answer(&shared, tcp, peer.ip())).await;
        });
    }
}

/// Reads one request head (bounded) and answers it; the connection closes.
async fn answer(shared: &Shared, mut tcp: tokio::net::TcpStream, peer: IpAddr) {
    let limits = &shared.cfg.limits;
    let mut buf = Vec::with_capacity(1024);
    let req = loop {
        let mut chunk = [0u8; 2048];
        let n = match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        match http::parse_request(&buf, limits.max_header_bytes, limits.max_headers) {
            Ok(Some(r)) => break r,
            Ok(None) => continue,
            Err(e) => return write(&mut tcp, &http::error_response(&e)).await,
        }
    };
    let bytes = match route(shared, peer, &req) {
        Ok((status, ctype, body)) => http::response(status, ctype, &body),
        Err(e) => http::error_response(&e),
    };
    write(&mut tcp, &bytes).await;
}

async fn write(tcp: &mut tokio::net::TcpStream, bytes: &[u8]) {
    let _ = tcp.write_all(bytes).await;
    let _ = tcp.shutdown().await;
}

fn route(shared: &Shared, peer: IpAddr, req: &Request) -> Result<Answer, HttpError> {
    match req.path.as_str() {
        "/healthz" => Ok((200, "text/plain", b"ok\n".to_vec())),
        "/readyz" => {
            let ready = !shared.is_draining() && shared.revocations.healthy();
            let (status, body) = if ready {
                (200, "ready\n")
            } else {
                (503, "not ready\n")
            };
            Ok((status, "text/plain", body.as_bytes().to_vec()))
        }
        "/metrics" => {
            let body = shared.metrics.render(&shared.snapshot());
            Ok((200, "text/plain; version=0.0.4", body.into_bytes()))
        }
        _ => handle(shared, Some(peer), req),
    }
}

/// What an admin request gets: status, content type, body.
pub type Answer = (u16, &'static str, Vec<u8>);

fn authorised(shared: &Shared, source: Option<IpAddr>, req: &Request) -> Result<(), HttpError> {
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
        &shared.metrics.shards[0].admin_auth_failures,
        "too many failed admin authentications from this address; retry later",
        check,
    )
}

fn handle(shared: &Shared, source: Option<IpAddr>, req: &Request) -> Result<Answer, HttpError> {
    authorised(shared, source, req)?;
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
