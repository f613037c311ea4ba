//! The edge endpoints: `GET /ws/connect` (seed 001 connector workers) and
//! `GET /edge/{edge_id}` (seed 000 relay edges), from the upgrade through
//! authentication and `register` to the idle pool.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::BytesMut;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::auth::edge_auth::{self, Grant, Transport};
use crate::auth::guard::guarded;
use crate::edge::conn::EdgeConn;
use crate::edge::idle::{idle, mind};
use crate::ids::EdgeId;
use crate::registry::{ConnKind, RegisterError};
use crate::shard::reply::reject;
use crate::shard::{ConnMeta, Shard};
use crate::wire::frame::MaskRule;
use crate::wire::http::{self, HttpError, Request, FAST_PATH_PROTOCOL};
use crate::wire::message::{self, close};
use crate::wire::peer::{Direct, Incoming, Peer, PeerError};
use crate::wire::reader::FrameReader;
use sluice_protocol::connector::{ConnectorAction, Register, RegisterAnswer, Registered};

/// Upgrade checks shared by both endpoints; returns whether the fast path
/// was negotiated.
fn accept_upgrade(shard: &Shard, req: &Request) -> Result<(http::Upgrade, bool), HttpError> {
    if shard.shared.is_draining() {
        return Err(HttpError::new(503, "gateway is draining"));
    }
    let up = http::validate_upgrade(req)?;
    let fast = up.protocols.iter().any(|p| p == FAST_PATH_PROTOCOL);
    Ok((up, fast))
}

async fn switch(stream: &mut TcpStream, up: &http::Upgrade, fast: bool) -> bool {
    let resp = http::switching_protocols(&up.accept, fast.then_some(FAST_PATH_PROTOCOL));
    stream.write_all(resp).await.0.is_ok()
}

/// Authenticates an edge connection at its upgrade (see [`edge_auth`]),
/// unless its source address is locked out for failing too often.
fn authenticate(
    shard: &Shard,
    transport: &Transport,
    req: &Request,
    stream: &TcpStream,
) -> Result<Grant, HttpError> {
    let s = &shard.shared;
    let source = transport.source(|| stream.peer_addr().ok().map(|a| a.ip()));
    guarded(
        &s.edge_lockout,
        source,
        &shard.metrics().edge_auth_failures,
        "too many failed authentications from this address; retry later",
        || edge_auth::authenticate(&s.cfg, &s.edge_keys, transport, req),
    )
}

/// `GET /ws/connect`: authenticate by `Edge-Key` or client certificate,
/// wait for `register`, then serve requests until the connector leaves.
pub async fn serve_worker(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    req: Request,
    buffered: BytesMut,
    transport: Transport,
) {
    let (up, fast) = match accept_upgrade(&shard, &req) {
        Ok(x) => x,
        Err(e) => return reject(&shard, stream, &e).await,
    };
    let grant = match authenticate(&shard, &transport, &req, &stream) {
        Ok(g) => g,
        Err(e) => return reject(&shard, stream, &e).await,
    };
    if !switch(&mut stream, &up, fast).await {
        return;
    }
    let cfg = shard.cfg();
    let rule = if fast {
        MaskRule::Forbidden
    } else {
        MaskRule::Required
    };
    let mut reader = FrameReader::new(stream, buffered, rule, cfg.limits.max_frame_bytes)
        .with_chunk(cfg.limits.read_chunk_bytes);
    let wait = Duration::from_millis(cfg.timeouts.auth_ms);
    let first =
        monoio::time::timeout(wait, read_text(&mut reader, cfg.limits.max_text_bytes)).await;
    let (code, reason) = match first {
        Err(_) => (
            close::AUTH_TIMEOUT,
            "register not received in time".to_owned(),
        ),
        Ok(Err((code, reason))) => (code, reason),
        Ok(Ok(text)) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) if v.get("action").is_some_and(|a| a != "register") => (
                close::BAD_REQUEST,
                "first message must be a register action".into(),
            ),
            Ok(v) => match serde_json::from_value::<ConnectorAction>(v) {
                Ok(ConnectorAction::Register(r)) => {
                    return register(shard, reader, r, grant, fast).await;
                }
                Err(e) => (close::BAD_REQUEST, format!("invalid register message: {e}")),
            },
            Err(e) => (close::BAD_REQUEST, format!("invalid register message: {e}")),
        },
    };
    refuse(&shard, reader, code, &reason).await;
}

async fn refuse(shard: &Shard, mut reader: FrameReader<TcpStream>, code: u16, reason: &str) {
    shard.metrics().protocol_errors.fetch_add(1, Relaxed);
    tracing::info!(code, reason, "connector refused");
    let io = reader.io_mut();
    let _ = io.write_all(message::connector_error(reason)).await;
    let _ = io.write_all(message::closing(code, reason)).await;
}

/// Reads until one whole text message (the `register`).
async fn read_text(
    reader: &mut FrameReader<TcpStream>,
    max: usize,
) -> Result<String, (u16, String)> {
    let mut peer = Peer::new(reader, Direct, max);
    loop {
        match peer.next().await {
            Ok(Incoming::Text(t)) => return Ok(t),
            Ok(Incoming::Interrupted) => {}
            Ok(Incoming::Close(_)) => return Err((close::NORMAL, "closed before register".into())),
            Ok(Incoming::Data(_)) => {
                return Err((
                    close::BAD_REQUEST,
                    "expected a text register message".into(),
                ))
            }
            Err(PeerError::Protocol(p)) => return Err((p.close_code(), p.to_string())),
            Err(e) => return Err((close::GOING_AWAY, e.to_string())),
        }
    }
}

async fn register(
    shard: Rc<Shard>,
    reader: FrameReader<TcpStream>,
    r: Register,
    grant: Grant,
    fast: bool,
) {
    let edge_name = r.edge().to_owned();
    let Some(edge) = EdgeId::parse(&edge_name) else {
        return refuse(&shard, reader, close::BAD_REQUEST, "invalid edge id").await;
    };
    if let Some(t) = grant.tenant.as_ref().filter(|t| t.as_str() != r.tenant_id) {
        shard.metrics().edge_auth_failures.fetch_add(1, Relaxed);
        tracing::warn!(certificate = %t, registered = ?r.tenant_id, "connector's certificate names another tenant");
        return refuse(
            &shard,
            reader,
            close::FORBIDDEN,
            "client certificate names another tenant than register's tenant_id",
        )
        .await;
    }
    if !grant.allows(edge.as_str()) {
        shard.metrics().edge_auth_failures.fetch_add(1, Relaxed);
        let why = if grant.tenant.is_some() && grant.edges.len() == 1 {
            "client certificate does not cover this edge (see tls.tenant_edges)"
        } else {
            "Edge-Key does not belong to this edge"
        };
        return refuse(&shard, reader, close::FORBIDDEN, why).await;
    }
    let datasets: Vec<String> = r.datasets.into_iter().filter(|d| !d.is_empty()).collect();
    let conn = shard.shared.registry.new_conn_id();
    let version = r.version.unwrap_or_default();
    let c = EdgeConn {
        meta: ConnMeta {
            conn,
            edge,
            fast_path: fast,
        },
        kind: ConnKind::Worker,
        reader,
    };
    // Minded before the registry shows it and before the `ok`: once the
    // connector reads `ok`, a session can be served by it (a take that
    // comes first waits in the slot until the `ok` is written).
    let take = mind(&shard, &c);
    let added = shard.shared.registry.add(
        &c.meta.edge,
        &r.tenant_id,
        &version,
        ConnKind::Worker,
        conn,
        shard.id,
        datasets.clone(),
        shard.cfg().limits.max_edge_connections,
    );
    let refused = match added {
        Err(RegisterError::TooManyConnections) => {
            Some((close::QUOTA, "too many connections for this edge"))
        }
        Err(RegisterError::TenantMismatch) => {
            Some((close::FORBIDDEN, "edge is registered to another tenant"))
        }
        Ok(()) => None,
    };
    if let Some((code, reason)) = refused {
        shard.idle.borrow_mut().remove(&conn);
        return refuse(&shard, c.reader, code, reason).await;
    }
    tracing::info!(edge = %c.meta.edge, %conn, tenant = ?r.tenant_id, version = ?version, datasets = datasets.len(), fast, "connector worker registered");
    let ok = RegisterAnswer::Ok {
        data: Registered {
            session_id: conn.to_string(),
        },
    };
    let mut c = c;
    let _ = c.reader.io_mut().write_all(message::text(&ok)).await;
    shard.metrics().connector_conns_active.fetch_add(1, Relaxed);
    monoio::spawn(idle(shard, c, take));
}

/// `GET /edge/{edge_id}`: authenticate, then wait in the edge's relay pool.
pub async fn serve_relay(
    shard: Rc<Shard>,
    stream: TcpStream,
    req: Request,
    buffered: BytesMut,
    edge: EdgeId,
    transport: Transport,
) {
    let (up, fast) = match accept_upgrade(&shard, &req) {
        Ok(x) => x,
        Err(e) => return reject(&shard, stream, &e).await,
    };
    match authenticate(&shard, &transport, &req, &stream) {
        Ok(g) if g.allows(edge.as_str()) => {}
        Ok(_) => {
            shard.metrics().edge_auth_failures.fetch_add(1, Relaxed);
            let e = HttpError::new(401, "credentials do not cover this edge");
            return reject(&shard, stream, &e).await;
        }
        Err(e) => return reject(&shard, stream, &e).await,
    }
    let cfg = shard.cfg();
    let rule = if fast {
        MaskRule::Forbidden
    } else {
        MaskRule::Required
    };
    let conn = shard.shared.registry.new_conn_id();
    let mut c = EdgeConn {
        meta: ConnMeta {
            conn,
            edge,
            fast_path: fast,
        },
        kind: ConnKind::Relay,
        reader: FrameReader::new(stream, buffered, rule, cfg.limits.max_frame_bytes)
            .with_chunk(cfg.limits.read_chunk_bytes),
    };
    // In the pool before the 101 goes out, so a session arriving right
    // after the edge sees its handshake complete finds it. A session that
    // takes it meanwhile gets it once the 101 is written (the take waits in
    // the slot until the idle task runs).
    let take = mind(&shard, &c);
    let added = shard.shared.registry.add(
        &c.meta.edge,
        "",
        "",
        ConnKind::Relay,
        conn,
        shard.id,
        Vec::new(),
        cfg.limits.max_edge_connections,
    );
    if added.is_err() {
        shard.idle.borrow_mut().remove(&conn);
        let (stream, _) = c.reader.into_parts();
        let e = HttpError::new(429, "too many connections for this edge");
        return reject(&shard, stream, &e).await;
    }
    let resp = http::switching_protocols(&up.accept, fast.then_some(FAST_PATH_PROTOCOL));
    if c.reader.io_mut().write_all(resp).await.0.is_err() {
        shard.idle.borrow_mut().remove(&conn);
        if let Some(reply) = take.borrow_mut().take() {
            let _ = reply.send(None);
        }
        shard.shared.registry.remove(&c.meta.edge, conn);
        return;
    }
    tracing::info!(edge = %c.meta.edge, %conn, "relay edge connected");
    shard.metrics().relay_conns_active.fetch_add(1, Relaxed);
    monoio::spawn(idle(shard, c, take));
}
