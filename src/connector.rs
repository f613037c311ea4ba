//! The connector side: `/ws/connect` workers (seed 001) and `/edge/{id}`
//! relay connections (seed 000), from the upgrade to the idle pool, and the
//! moves that bring an idle connection to the shard of the session it serves.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use serde_json::json;

use crate::edge_auth::{self, Grant, Transport};
use crate::frame::{parse_close, MaskRule, Opcode};
use crate::handoff;
use crate::http::{self, HttpError, Request, FAST_PATH_PROTOCOL};
use crate::ids::EdgeId;
use crate::keepalive;
use crate::protocol::{self, close, Register};
use crate::reader::{FrameReader, ReadError, TextAssembler};
use crate::registry::{Acquire, ConnKind, RegisterError};
use crate::shard::{reject, ConnMeta, IdleSlot, MovedConn, Shard, ShardMsg};

/// A connector or relay-edge connection owned by the current shard.
pub struct EdgeConn {
    pub meta: ConnMeta,
    pub kind: ConnKind,
    pub reader: FrameReader<TcpStream>,
}

impl EdgeConn {
    /// Writes a frame directly. Only for a connection with no outbox, i.e.
    /// while one task owns it (idle, or a query worker between reads).
    pub async fn send(&mut self, frame: Bytes) -> std::io::Result<()> {
        let (r, _) = self.reader.io_mut().write_all(frame).await;
        r.map(|_| ())
    }

    pub async fn send_json(&mut self, v: &serde_json::Value) -> std::io::Result<()> {
        self.send(protocol::text(v)).await
    }
}

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

/// Authenticates an edge connection at its upgrade (see [`edge_auth`]).
fn authenticate(shard: &Shard, transport: &Transport, req: &Request) -> Result<Grant, HttpError> {
    let s = &shard.shared;
    edge_auth::authenticate(&s.cfg, &s.edge_keys, transport, req).inspect_err(|_| {
        shard.metrics().edge_auth_failures.fetch_add(1, Relaxed);
    })
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
    let grant = match authenticate(&shard, &transport, &req) {
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
        Ok(Ok(text)) => match serde_json::from_str::<Register>(&text) {
            Ok(r) if r.action == "register" => {
                return register(shard, reader, r, grant, fast).await;
            }
            Ok(_) => (
                close::BAD_REQUEST,
                "first message must be a register action".into(),
            ),
            Err(e) => (close::BAD_REQUEST, format!("invalid register message: {e}")),
        },
    };
    refuse(&shard, reader, code, &reason).await;
}

async fn refuse(shard: &Shard, mut reader: FrameReader<TcpStream>, code: u16, reason: &str) {
    shard.metrics().protocol_errors.fetch_add(1, Relaxed);
    tracing::info!(code, reason, "connector refused");
    let io = reader.io_mut();
    let _ = io.write_all(protocol::connector_error(reason)).await;
    let _ = io.write_all(protocol::closing(code, reason)).await;
}

/// Reads frames until one whole text message; control frames are answered.
async fn read_text(
    reader: &mut FrameReader<TcpStream>,
    max: usize,
) -> Result<String, (u16, String)> {
    let mut text = TextAssembler::new(max);
    loop {
        let f = reader.next().await.map_err(|e| match e {
            ReadError::Protocol(p) => (p.close_code(), p.to_string()),
            other => (close::GOING_AWAY, other.to_string()),
        })?;
        match f.message {
            Opcode::Text => {
                if let Some(t) = text.push(&f).map_err(|p| (p.close_code(), p.to_string()))? {
                    return Ok(t);
                }
            }
            Opcode::Ping => {
                let pong = protocol::pong(f.payload());
                let _ = reader.io_mut().write_all(pong).await;
            }
            Opcode::Close => return Err((close::NORMAL, "closed before register".into())),
            Opcode::Pong => {}
            _ => {
                return Err((
                    close::BAD_REQUEST,
                    "expected a text register message".into(),
                ))
            }
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
    let edge_name = r.edge_id.clone().unwrap_or_else(|| r.tenant_id.clone());
    let Some(edge) = EdgeId::parse(&edge_name) else {
        return refuse(&shard, reader, close::BAD_REQUEST, "invalid edge id").await;
    };
    if let Some(t) = grant.tenant.as_ref().filter(|t| t.as_str() != r.tenant_id) {
        shard.metrics().edge_auth_failures.fetch_add(1, Relaxed);
        tracing::warn!(certificate = %t, registered = %r.tenant_id, "connector's certificate names another tenant");
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
    tracing::info!(edge = %c.meta.edge, %conn, tenant = %r.tenant_id, %version, datasets = datasets.len(), fast, "connector worker registered");
    let ok = json!({"status": "ok", "data": {"session_id": conn.to_string()}});
    let mut c = c;
    let _ = c.reader.io_mut().write_all(protocol::text(&ok)).await;
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
    match authenticate(&shard, &transport, &req) {
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

type TakeCell = Rc<RefCell<Option<flume::Sender<Option<MovedConn>>>>>;

/// Gives the shard a handle on an idle connection, so a session can take
/// it. Done before the registry shows the connection as idle: a `Take`
/// that arrives before the idle task first runs finds the slot, and the
/// task hands the connection over as soon as it starts.
fn mind(shard: &Shard, c: &EdgeConn) -> TakeCell {
    let take: TakeCell = Rc::new(RefCell::new(None));
    shard.idle.borrow_mut().insert(
        c.meta.conn,
        IdleSlot {
            interrupter: c.reader.interrupter(),
            take: take.clone(),
        },
    );
    take
}

/// Puts a connection back in the pool on this shard.
pub fn park(shard: Rc<Shard>, c: EdgeConn) {
    let take = mind(&shard, &c);
    shard
        .shared
        .registry
        .release(&c.meta.edge, c.meta.conn, shard.id);
    monoio::spawn(idle(shard, c, take));
}

fn gauge(shard: &Shard, kind: ConnKind) -> &std::sync::atomic::AtomicI64 {
    match kind {
        ConnKind::Worker => &shard.metrics().connector_conns_active,
        ConnKind::Relay => &shard.metrics().relay_conns_active,
    }
}

/// Minds an idle connection: answers pings, keeps it alive, notices when
/// it dies, accepts a re-register (dataset list refresh), and hands it over
/// when a session on any shard takes it.
async fn idle(shard: Rc<Shard>, mut c: EdgeConn, take: TakeCell) {
    let t = &shard.cfg().timeouts;
    let live = keepalive::watch(
        Duration::from_millis(t.ping_interval_ms),
        Duration::from_millis(t.idle_timeout_ms),
        c.reader.interrupter(),
        None,
    );
    let mut text = TextAssembler::new(shard.cfg().limits.max_text_bytes);
    let reason: (u16, String) = loop {
        match c.reader.next().await {
            Ok(f) => {
                live.seen();
                match f.message {
                    Opcode::Ping => {
                        let pong = protocol::pong(f.payload());
                        if c.send(pong).await.is_err() {
                            break (close::GOING_AWAY, "write failed".into());
                        }
                    }
                    Opcode::Close => {
                        let code = parse_close(f.payload())
                            .ok()
                            .flatten()
                            .map_or(close::NORMAL, |s| s.code);
                        break (code, "connector closed".into());
                    }
                    Opcode::Text if c.kind == ConnKind::Worker => match text.push(&f) {
                        Ok(Some(t)) => refresh(&shard, &c, &t),
                        Ok(None) => {}
                        Err(e) => break (e.close_code(), e.to_string()),
                    },
                    // Late frames of a cancelled stream, pongs: nothing to do.
                    _ => {}
                }
            }
            Err(ReadError::Interrupted) => {
                if let Some(reply) = take.borrow_mut().take() {
                    live.stop();
                    hand_over(&shard, c, reply);
                    return;
                }
                if shard.closing.get() {
                    break (close::GOING_AWAY, "gateway shutting down".into());
                }
                if live.timed_out() {
                    break (close::GOING_AWAY, "idle timeout".into());
                }
                if live.take_ping_due() {
                    let ping = protocol::ping();
                    if c.send(ping).await.is_err() {
                        break (close::GOING_AWAY, "write failed".into());
                    }
                }
            }
            Err(ReadError::Protocol(e)) => break (e.close_code(), e.to_string()),
            Err(e) => break (close::GOING_AWAY, e.to_string()),
        }
    };
    live.stop();
    shard.idle.borrow_mut().remove(&c.meta.conn);
    retire(&shard, c, reason.0, &reason.1).await;
}

/// Ends a connection for good: close frame, registry, gauges.
pub async fn retire(shard: &Shard, mut c: EdgeConn, code: u16, reason: &str) {
    shard.shared.registry.remove(&c.meta.edge, c.meta.conn);
    gauge(shard, c.kind).fetch_sub(1, Relaxed);
    tracing::info!(edge = %c.meta.edge, conn = %c.meta.conn, code, reason, "edge connection closed");
    let _ = monoio::time::timeout(
        Duration::from_millis(500),
        c.send(protocol::closing(code, reason)),
    )
    .await;
}

fn refresh(shard: &Shard, c: &EdgeConn, text: &str) {
    if let Ok(r) = serde_json::from_str::<Register>(text) {
        if r.action == "register" {
            shard
                .shared
                .registry
                .update_datasets(&c.meta.edge, c.meta.conn, r.datasets);
        }
    }
}

fn hand_over(shard: &Rc<Shard>, c: EdgeConn, reply: flume::Sender<Option<MovedConn>>) {
    gauge(shard, c.kind).fetch_sub(1, Relaxed);
    let kind = c.kind;
    let meta = c.meta.clone();
    let (stream, buffered) = c.reader.into_parts();
    let moved = MovedConn {
        sock: handoff::detach(stream, buffered),
        meta,
    };
    if let Err(flume::SendError(Some(back))) = reply.send(Some(moved)) {
        // The session gave up waiting: keep the connection here, idle.
        if let Some(c) = adopt(shard, back, kind) {
            park(shard.clone(), c);
        }
    }
}

/// Wraps a moved connection in this shard's runtime.
fn adopt(shard: &Shard, moved: MovedConn, kind: ConnKind) -> Option<EdgeConn> {
    let rule = if moved.meta.fast_path {
        MaskRule::Forbidden
    } else {
        MaskRule::Required
    };
    match handoff::attach(moved.sock) {
        Ok((stream, buffered)) => {
            gauge(shard, kind).fetch_add(1, Relaxed);
            Some(EdgeConn {
                reader: FrameReader::new(
                    stream,
                    buffered,
                    rule,
                    shard.cfg().limits.max_frame_bytes,
                )
                .with_chunk(shard.cfg().limits.read_chunk_bytes),
                meta: moved.meta,
                kind,
            })
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot adopt moved connection");
            shard
                .shared
                .registry
                .remove(&moved.meta.edge, moved.meta.conn);
            None
        }
    }
}

/// Why no connection could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The edge has no connection of this kind at all.
    Offline,
    /// All busy for the whole wait.
    Busy,
}

/// Takes an idle connection of `edge` (serving `dataset`, for workers) and
/// brings it to this shard, waiting up to `timeouts.pair_wait_ms`.
pub async fn acquire(
    shard: &Rc<Shard>,
    edge: &EdgeId,
    kind: ConnKind,
    dataset: Option<&str>,
) -> Result<EdgeConn, Unavailable> {
    let deadline = Instant::now() + Duration::from_millis(shard.cfg().timeouts.pair_wait_ms);
    loop {
        match shard.shared.registry.acquire(edge, kind, dataset, shard.id) {
            Acquire::Got { conn, shard: owner } => {
                let (tx, rx) = flume::bounded(1);
                if shard.shared.mailboxes[owner]
                    .send(ShardMsg::Take { conn, reply: tx })
                    .is_err()
                {
                    continue;
                }
                if let Ok(Some(moved)) = rx.recv_async().await {
                    if let Some(c) = adopt(shard, moved, kind) {
                        return Ok(c);
                    }
                }
                // It died on the way; ask again.
            }
            Acquire::Busy(wake) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero()
                    || monoio::time::timeout(left, wake.recv_async())
                        .await
                        .is_err()
                {
                    return Err(Unavailable::Busy);
                }
            }
            Acquire::Offline => return Err(Unavailable::Offline),
        }
    }
}

/// Tells the connector to stop request `rid`, and waits (bounded by
/// `timeouts.cancel_drain_ms`) for its `stream_end`/`error` so the worker can
/// be reused; a connector that does not confirm in time is disconnected.
pub async fn cancel(shard: &Rc<Shard>, mut w: EdgeConn, rid: &str) {
    let wait = Duration::from_millis(shard.cfg().timeouts.cancel_drain_ms);
    let max = shard.cfg().limits.max_text_bytes;
    let drained = monoio::time::timeout(wait, async {
        if w.send_json(&json!({"action": "cancel", "request_id": rid}))
            .await
            .is_err()
        {
            return false;
        }
        let mut text = TextAssembler::new(max);
        loop {
            match w.reader.next().await {
                Ok(f) if f.message == Opcode::Text => {
                    let Ok(Some(t)) = text.push(&f) else { continue };
                    if let Ok(r) = serde_json::from_str::<protocol::Reply>(&t) {
                        let ends = matches!(r.kind.as_deref(), Some("stream_end") | Some("error"));
                        if ends && r.request_id.as_deref() == Some(rid) {
                            return true;
                        }
                    }
                }
                Ok(f) if f.message == Opcode::Close => return false,
                Ok(_) | Err(ReadError::Interrupted) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    if drained == Ok(true) {
        park(shard.clone(), w);
    } else {
        retire(shard, w, close::GOING_AWAY, "stream not cancelled in time").await;
    }
}
