//! One shard: a thread, a monoio runtime, a listener, and the sessions that
//! hash to it.
//!
//! Everything a shard owns is `Rc`/`RefCell`: no locks, no atomics on the
//! data path. Shards talk to each other only through their mailboxes, for
//! rare events: a browser socket accepted on the wrong shard, a connector
//! worker moving to the shard of the session it will serve, shutdown.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use crate::config::Config;
use crate::edge_auth::Transport;
use crate::edge_key::EdgeKeys;
use crate::fanout::{self, FeedKey, Feeds, LocalFeeds};
use crate::handoff::{self, Detached};
use crate::http::{self, HttpError, Request};
use crate::ids::{ConnId, EdgeId, SessionId};
use crate::metrics::{Metrics, ShardMetrics, Snapshot};
use crate::reader::Interrupter;
use crate::registry::Registry;
use crate::revocation::Revocations;
use crate::token::Verifier;
use crate::{connector, session};

/// State every shard can see. Read-mostly; the registry is the only part
/// that takes a lock, and only per stream.
pub struct Shared {
    pub cfg: Config,
    pub verifier: Verifier,
    pub edge_keys: EdgeKeys,
    pub registry: Registry,
    pub feeds: Feeds,
    pub metrics: Metrics,
    pub mailboxes: Vec<flume::Sender<ShardMsg>>,
    pub draining: AtomicBool,
    /// Browser sessions open on all shards (for `limits.max_sessions`).
    pub sessions: AtomicUsize,
    pub revocations: Revocations,
    /// Where clients reach this gateway (`registry.public_url`, or
    /// `ws://` + the listening address).
    pub public_url: String,
    /// The dashboard's files.
    pub web: crate::static_files::StaticFiles,
    /// The TLS listener's certificates and counters, when it is on.
    pub tls: Option<Arc<crate::tls::Material>>,
}

impl Shared {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn shard_count(&self) -> usize {
        self.mailboxes.len()
    }

    pub fn snapshot(&self) -> Snapshot {
        let r = self.registry.stats();
        Snapshot {
            edges_online: r.edges_online,
            workers_idle: r.workers_idle,
            workers_busy: r.workers_busy,
            relay_idle: r.relay_idle,
            ready: !self.is_draining() && self.revocations.healthy(),
            revocation_link: self
                .revocations
                .enabled()
                .then(|| self.revocations.healthy()),
            revocations_received: self.revocations.received.load(Ordering::Relaxed),
            revocations_remembered: self.revocations.len(),
            tls: self.tls.as_ref().map(|m| {
                let s = &m.stats;
                crate::metrics::TlsSnapshot {
                    handshakes: s.handshakes.load(Ordering::Relaxed),
                    handshake_failures: s.handshake_failures.load(Ordering::Relaxed),
                    refused_over_limit: s.refused_over_limit.load(Ordering::Relaxed),
                    active: s.active.load(Ordering::Relaxed),
                    reloads: s.reloads.load(Ordering::Relaxed),
                    reload_failures: s.reload_failures.load(Ordering::Relaxed),
                    cert_not_after: s.cert_not_after.load(Ordering::Relaxed),
                }
            }),
        }
    }
}

/// Identity of a connector/edge connection, carried with it across shards.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub conn: ConnId,
    pub edge: EdgeId,
    /// Frames arrive in server wire format (fast-path subprotocol).
    pub fast_path: bool,
}

/// A connection leaving one shard for another.
#[derive(Debug)]
pub struct MovedConn {
    pub sock: Detached,
    pub meta: ConnMeta,
}

pub enum ShardMsg {
    /// A connection the TLS front accepted and decrypts: this end of it
    /// carries plaintext, and `transport` says what its handshake proved.
    AdoptTls {
        sock: Detached,
        transport: Transport,
    },
    /// A browser socket accepted elsewhere whose session lives here.
    AdoptBrowser {
        sock: Detached,
        req: Box<Request>,
        sid: SessionId,
    },
    /// Hand idle connection `conn` to the caller (None if it is gone).
    Take {
        conn: ConnId,
        reply: flume::Sender<Option<MovedConn>>,
    },
    /// The live feed this shard owns has no viewers left.
    FeedIdle { key: FeedKey },
    /// Shutdown: close every session (1001) and connection on this shard.
    CloseAll,
    /// Close every session with this id (4410): it was revoked.
    Revoke(SessionId),
}

/// An idle connection's slot, so the shard can take it or close it.
pub struct IdleSlot {
    pub interrupter: Interrupter,
    pub take: Rc<RefCell<Option<flume::Sender<Option<MovedConn>>>>>,
}

/// What closes each session open under one id (a browser may reconnect
/// with the same token while its first connection is still open).
type Closers = HashMap<u64, Rc<dyn Fn()>>;

/// Per-thread shard context.
pub struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub idle: RefCell<HashMap<ConnId, IdleSlot>>,
    pub feeds: LocalFeeds,
    /// Closers of everything open here, run on shutdown.
    closers: RefCell<HashMap<u64, Rc<dyn Fn()>>>,
    /// Closers of the sessions open here, by session id, run on revocation.
    revokers: RefCell<HashMap<SessionId, Closers>>,
    next_local: Cell<u64>,
    pub closing: Cell<bool>,
}

/// Removes a closer when the thing it closes ends.
pub struct CloserGuard {
    shard: Rc<Shard>,
    id: u64,
}

impl Drop for CloserGuard {
    fn drop(&mut self) {
        self.shard.closers.borrow_mut().remove(&self.id);
    }
}

/// Removes a session's revoker when the session ends.
pub struct RevokerGuard {
    shard: Rc<Shard>,
    sid: SessionId,
    id: u64,
}

impl Drop for RevokerGuard {
    fn drop(&mut self) {
        let mut map = self.shard.revokers.borrow_mut();
        if let Some(m) = map.get_mut(&self.sid) {
            m.remove(&self.id);
            if m.is_empty() {
                map.remove(&self.sid);
            }
        }
    }
}

impl Shard {
    pub fn metrics(&self) -> &ShardMetrics {
        &self.shared.metrics.shards[self.id]
    }

    pub fn cfg(&self) -> &Config {
        &self.shared.cfg
    }

    pub fn on_close_all(self: &Rc<Self>, f: Rc<dyn Fn()>) -> CloserGuard {
        let id = self.next_local.get();
        self.next_local.set(id + 1);
        self.closers.borrow_mut().insert(id, f);
        CloserGuard {
            shard: self.clone(),
            id,
        }
    }

    /// Registers what closes session `sid` if it is revoked.
    pub fn on_revoke(self: &Rc<Self>, sid: &SessionId, f: Rc<dyn Fn()>) -> RevokerGuard {
        let id = self.next_local.get();
        self.next_local.set(id + 1);
        self.revokers
            .borrow_mut()
            .entry(sid.clone())
            .or_default()
            .insert(id, f);
        RevokerGuard {
            shard: self.clone(),
            sid: sid.clone(),
            id,
        }
    }

    fn revoke(&self, sid: &SessionId) {
        let closers: Vec<_> = self
            .revokers
            .borrow()
            .get(sid)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for c in closers {
            c();
        }
    }

    fn close_all(&self) {
        self.closing.set(true);
        let closers: Vec<_> = self.closers.borrow().values().cloned().collect();
        for c in closers {
            c();
        }
        let idle: Vec<_> = self
            .idle
            .borrow()
            .values()
            .map(|s| s.interrupter.clone())
            .collect();
        for i in idle {
            i.interrupt();
        }
    }
}

/// Runs shard `id` until the process exits.
pub async fn run(
    id: usize,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    mailbox: flume::Receiver<ShardMsg>,
) {
    let shard = Rc::new(Shard {
        id,
        shared,
        idle: RefCell::new(HashMap::new()),
        feeds: LocalFeeds::default(),
        closers: RefCell::new(HashMap::new()),
        revokers: RefCell::new(HashMap::new()),
        next_local: Cell::new(0),
        closing: Cell::new(false),
    });
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(shard = id, error = %e, "cannot register listener");
            return;
        }
    };
    monoio::spawn(mailbox_loop(shard.clone(), mailbox));
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                monoio::spawn(handle_connection(shard.clone(), stream, Transport::Plain));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(shard = id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn mailbox_loop(shard: Rc<Shard>, mailbox: flume::Receiver<ShardMsg>) {
    while let Ok(msg) = mailbox.recv_async().await {
        match msg {
            ShardMsg::AdoptTls { sock, transport } => match handoff::attach(sock) {
                Ok((stream, _)) => {
                    monoio::spawn(handle_connection(shard.clone(), stream, transport));
                }
                Err(e) => tracing::warn!(error = %e, "cannot adopt TLS connection"),
            },
            ShardMsg::AdoptBrowser { sock, req, sid } => match handoff::attach(sock) {
                Ok((stream, buffered)) => {
                    monoio::spawn(Box::pin(session::run(
                        shard.clone(),
                        stream,
                        *req,
                        buffered,
                        sid,
                    )));
                }
                Err(e) => tracing::warn!(error = %e, "cannot adopt browser socket"),
            },
            ShardMsg::Take { conn, reply } => {
                let slot = shard.idle.borrow_mut().remove(&conn);
                match slot {
                    Some(slot) => {
                        *slot.take.borrow_mut() = Some(reply);
                        slot.interrupter.interrupt();
                    }
                    None => {
                        let _ = reply.send(None);
                    }
                }
            }
            ShardMsg::FeedIdle { key } => fanout::on_idle(&shard, &key),
            ShardMsg::CloseAll => shard.close_all(),
            ShardMsg::Revoke(sid) => shard.revoke(&sid),
        }
    }
}

/// Reads the request head, answers plain HTTP, and routes upgrades.
async fn handle_connection(shard: Rc<Shard>, mut stream: TcpStream, transport: Transport) {
    let cfg = shard.cfg();
    let deadline = Duration::from_millis(cfg.timeouts.handshake_ms);
    let head = monoio::time::timeout(deadline, read_head(&mut stream, cfg)).await;
    let (req, buffered) = match head {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => return, // closed before sending a request
        Ok(Err(e)) => return reject(&shard, stream, &e).await,
        Err(_) => {
            return reject(
                &shard,
                stream,
                &HttpError::new(408, "request head not received in time"),
            )
            .await
        }
    };
    let path = req.path.clone();
    match path.as_str() {
        "/healthz" => respond(stream, 200, "text/plain", b"ok\n".to_vec()).await,
        "/readyz" => {
            let (status, body) = if shard.shared.is_draining() {
                (503, "draining\n")
            } else if !shard.shared.revocations.healthy() {
                (503, "revocation link to Redis down\n")
            } else {
                (200, "ready\n")
            };
            respond(stream, status, "text/plain", body.as_bytes().to_vec()).await
        }
        p if p.starts_with("/admin/") => match crate::admin::handle(&shard.shared, &req) {
            Ok((status, ctype, body)) => respond(stream, status, ctype, body).await,
            Err(e) => reject(&shard, stream, &e).await,
        },
        "/metrics" => {
            let body = shard.shared.metrics.render(&shard.shared.snapshot());
            respond(stream, 200, "text/plain; version=0.0.4", body.into_bytes()).await
        }
        // Each long-lived connection gets a task of its own sized for its
        // endpoint, and this one (which held the request head) ends.
        "/ws/connect" => {
            monoio::spawn(Box::pin(connector::serve_worker(
                shard, stream, req, buffered, transport,
            )));
        }
        p if p.starts_with("/edge/") => match EdgeId::parse(&p["/edge/".len()..]) {
            Some(edge) => {
                monoio::spawn(Box::pin(connector::serve_relay(
                    shard, stream, req, buffered, edge, transport,
                )));
            }
            None => {
                reject(
                    &shard,
                    stream,
                    &HttpError::new(400, "invalid edge id in path"),
                )
                .await
            }
        },
        p if p.starts_with("/stream/") => match SessionId::parse(&p["/stream/".len()..]) {
            Some(sid) => {
                let target = sid.shard(shard.shared.shard_count());
                if target == shard.id {
                    monoio::spawn(Box::pin(session::run(shard, stream, req, buffered, sid)));
                } else {
                    let msg = ShardMsg::AdoptBrowser {
                        sock: handoff::detach(stream, buffered),
                        req: Box::new(req),
                        sid,
                    };
                    if shard.shared.mailboxes[target].send(msg).is_err() {
                        tracing::error!(target, "shard mailbox closed");
                    }
                }
            }
            None => {
                reject(
                    &shard,
                    stream,
                    &HttpError::new(400, "invalid session id in path"),
                )
                .await
            }
        },
        p => match shard.shared.web.get(p) {
            Some((body, ctype)) if req.method == "GET" => {
                let _ = stream.write_all(http::static_response(ctype, &body)).await;
                let _ = monoio::io::AsyncWriteRent::shutdown(&mut stream).await;
            }
            Some(_) => reject(&shard, stream, &HttpError::new(405, "use GET")).await,
            None if p == "/" => {
                let why = shard.shared.web.missing().unwrap_or("no dashboard");
                respond(
                    stream,
                    404,
                    "text/plain; charset=utf-8",
                    format!("{why}\n").into_bytes(),
                )
                .await
            }
            None => reject(&shard, stream, &HttpError::new(404, "no such endpoint")).await,
        },
    }
}

/// Reads until a whole request head has arrived (or the limit is hit).
async fn read_head(
    stream: &mut TcpStream,
    cfg: &Config,
) -> Result<Option<(Request, BytesMut)>, HttpError> {
    let max = cfg.limits.max_header_bytes;
    let mut buf = BytesMut::with_capacity(1024.min(max));
    loop {
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(max.min(buf.capacity() * 2).max(1024));
        }
        let (res, b) = stream.read(crate::reader::spare(&mut buf)).await;
        buf = b.into_inner();
        match res {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(HttpError::new(400, "connection closed mid-request")),
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
        if let Some(req) = http::parse_request(&buf, max, cfg.limits.max_headers)? {
            let rest = buf.split_off(req.head_len);
            return Ok(Some((req, rest)));
        }
    }
}

pub async fn respond(mut stream: TcpStream, status: u16, ctype: &str, body: Vec<u8>) {
    let _ = stream.write_all(http::response(status, ctype, &body)).await;
    let _ = monoio::io::AsyncWriteRent::shutdown(&mut stream).await;
}

pub async fn reject(shard: &Shard, mut stream: TcpStream, e: &HttpError) {
    ShardMetrics::inc(&shard.metrics().http_rejections);
    tracing::debug!(status = e.status, reason = e.reason, "request rejected");
    let _ = stream.write_all(http::error_response(e)).await;
    let _ = monoio::io::AsyncWriteRent::shutdown(&mut stream).await;
}
