//! Seed 002's connector tunnel (`[grpc] listen`): connectors dial out over
//! gRPC (HTTP/2, TLS, usually mutual with the tenant as the certificate's
//! CN) instead of WebSocket. The contract is
//! `crates/protocol/proto/tunnel.proto`.
//!
//! A gRPC call is not a socket a shard can adopt, so the front stands in:
//! each `Connect` becomes `grpc.workers_per_connector` ordinary connector
//! workers on the shards ([`worker`]), spread over them as accepted
//! sockets are; each request the shards send goes to the connector on
//! `Connect`; each `Serve` call's chunks go, as the bytes HTTP/2 delivered,
//! to the worker that asked, in one `writev` with their frame header. From
//! the shard on, the stream is a WebSocket connector's: the browser cannot
//! tell. The cost is the one local hop; `sluice-loadtest grpc` measures it.

mod out;
mod routes;
mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine;
use sluice_protocol::connector::{Register, Reply};
use sluice_protocol::tunnel::connector_tunnel_server::{ConnectorTunnel, ConnectorTunnelServer};
use sluice_protocol::tunnel::{
    connector_message, data_message, gateway_message, ConnectorMessage, DataMessage,
    GatewayMessage, Registered, ServeSummary,
};
use tokio::sync::{mpsc, watch};
use tonic::codegen::http;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::edge_auth;
use crate::auth::guard::guarded;
use crate::server::front;
use crate::server::h2_front::{self, FrontInfo};
use crate::server::h2_gate::{self, Check};
use crate::shard::metrics::{Front, TunnelStats};
use crate::shard::Shared;
use crate::tls::Material;
use out::Out;
use routes::{Owner, Routes};
use worker::{Identity, Worker};

/// Starts the gRPC threads on a bound listener.
pub fn start(
    shared: Arc<Shared>,
    tls: Option<Arc<Material>>,
    listener: std::net::TcpListener,
    stats: Arc<TunnelStats>,
) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let threads = match shared.cfg.grpc.threads {
        0 => shared.shard_count(),
        n => n,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("sluice-grpc")
        .enable_all()
        .build()
        .context("cannot start the gRPC threads")?;
    std::thread::Builder::new()
        .name("sluice-grpc-accept".into())
        .spawn(move || rt.block_on(serve(shared, tls, listener, stats)))
        .context("cannot spawn the gRPC accept thread")?;
    Ok(addr)
}

async fn serve(
    shared: Arc<Shared>,
    tls: Option<Arc<Material>>,
    listener: std::net::TcpListener,
    stats: Arc<TunnelStats>,
) {
    let Some(listener) = front::listen(listener, Front::Grpc) else {
        return;
    };
    let cfg = &shared.cfg;
    let g = &cfg.grpc;
    let preauth = h2_front::PreAuth {
        max: g.max_unauthenticated,
        deadline: Duration::from_millis(cfg.timeouts.auth_ms),
        stats: stats.preauth.clone(),
    };
    let incoming = h2_front::incoming(
        shared.clone(),
        listener,
        tls,
        g.max_connections,
        preauth,
        Front::Grpc,
    );
    let max = g.max_message_bytes;
    let limits = h2_gate::Limits {
        max_concurrent_streams: g.max_streams_per_connection,
        max_local_error_reset_streams: g.max_local_error_reset_streams,
        max_pending_accept_reset_streams: g.max_pending_accept_reset_streams,
        max_header_list_bytes: g.max_header_list_bytes,
        keepalive: Duration::from_millis(cfg.timeouts.ping_interval_ms),
        max_connection_age: Duration::from_millis(g.max_connection_age_ms),
    };
    let gate = EdgeCheck {
        shared: shared.clone(),
        stats: stats.clone(),
    };
    let tunnel = Tunnel {
        shared: shared.clone(),
        stats,
        routes: Arc::new(Routes::default()),
        next_worker: AtomicUsize::new(0),
        next_tag: AtomicU64::new(0),
    };
    let service = ConnectorTunnelServer::new(tunnel)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let served = limits
        .apply(tonic::transport::Server::builder())
        // Connectors send MBs per request: large windows and frames mean
        // fewer reads and window updates per MB. A caller that has not
        // authenticated never gets a stream whose body is read (the gate
        // answers it at its headers), so these are not its to fill.
        .initial_stream_window_size(Some(g.stream_window_bytes))
        .initial_connection_window_size(Some(g.connection_window_bytes))
        .max_frame_size(Some(1 << 20))
        .add_service(h2_gate::Gate::new(service, gate))
        .serve_with_incoming(incoming)
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "gRPC server stopped");
    }
}

struct Tunnel {
    shared: Arc<Shared>,
    stats: Arc<TunnelStats>,
    routes: Arc<Routes>,
    /// Spreads workers over the shards as accepted sockets are spread.
    next_worker: AtomicUsize,
    next_tag: AtomicU64,
}

/// The tunnel's gate: the connector's credentials (`edge-key`, a client
/// certificate, as `tls.connector_auth` says) are checked on a call's
/// headers, behind the same per-address lockout as WebSocket connectors,
/// before its first message is read.
struct EdgeCheck {
    shared: Arc<Shared>,
    stats: Arc<TunnelStats>,
}

impl Check for EdgeCheck {
    fn check(
        &self,
        headers: &http::HeaderMap,
        front: &FrontInfo,
    ) -> Pin<Box<dyn Future<Output = Result<(), Status>> + Send>> {
        let s = &self.shared;
        let key = headers.get("edge-key").and_then(|v| v.to_str().ok());
        let transport = front.transport();
        let checked = guarded(
            &s.edge_lockout,
            front.peer.map(|p| p.ip()),
            &s.metrics.shards[0].edge_auth_failures,
            "too many failed authentications from this address; retry later",
            || edge_auth::authenticate_key(&s.cfg, &s.edge_keys, &transport, key),
        );
        let answer = checked.map(drop).map_err(|e| {
            self.stats.refused.fetch_add(1, Relaxed);
            match e.status {
                429 => Status::resource_exhausted(e.reason),
                _ => Status::unauthenticated(e.reason),
            }
        });
        Box::pin(std::future::ready(answer))
    }
}

fn front_of<T>(req: &Request<T>) -> Result<(FrontInfo, Option<String>), Status> {
    let front = req
        .extensions()
        .get::<FrontInfo>()
        .cloned()
        .ok_or_else(|| Status::internal("connection without front info"))?;
    let key = req
        .metadata()
        .get("edge-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    Ok((front, key))
}

/// 64 bits from the kernel's random source, for request ids no other
/// connector can guess.
fn random_word() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u64::from_le_bytes(b)
}

impl Tunnel {
    fn refused(&self, s: Status) -> Status {
        self.stats.refused.fetch_add(1, Relaxed);
        s
    }
}

type ConnectStream = futures_util::stream::BoxStream<'static, Result<GatewayMessage, Status>>;

#[tonic::async_trait]
impl ConnectorTunnel for Tunnel {
    type ConnectStream = ConnectStream;

    async fn connect(
        &self,
        req: Request<Streaming<ConnectorMessage>>,
    ) -> Result<Response<ConnectStream>, Status> {
        let (front, edge_key) = front_of(&req)?;
        let mut inbound = req.into_inner();
        let cfg = &self.shared.cfg;
        let wait = Duration::from_millis(cfg.timeouts.handshake_ms);
        let first = match tokio::time::timeout(wait, inbound.message()).await {
            Ok(Ok(m)) => m,
            Ok(Err(s)) => return Err(self.refused(s)),
            Err(_) => {
                return Err(self.refused(Status::deadline_exceeded(
                    "no register message received in time",
                )))
            }
        };
        let Some(connector_message::Kind::Register(r)) = first.and_then(|m| m.kind) else {
            return Err(self.refused(Status::invalid_argument(
                "the first message on Connect must be register",
            )));
        };
        let owner = Owner {
            tenant: front.tenant.clone(),
            edge_key: edge_key.clone(),
        };
        let id = Arc::new(Identity {
            front,
            edge_key,
            register: register_of(r),
            owner,
        });
        // Every worker registers now, so a refusal is this call's status.
        let k = cfg.grpc.workers_per_connector;
        let n = self.shared.shard_count();
        let first_shard = self.next_worker.fetch_add(k, Relaxed);
        let mut pairs = Vec::with_capacity(k);
        for i in 0..k {
            let target = (first_shard + i) % n;
            let pair = worker::open(&self.shared, &id, target)
                .await
                .map_err(|s| self.refused(s))?;
            pairs.push((target, pair));
        }
        let base = format!(
            "t{}-{:016x}",
            self.next_tag.fetch_add(1, Relaxed),
            random_word()
        );
        let (to_connector, from_gateway) = mpsc::channel(64);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut outs = Vec::with_capacity(k);
        for (i, (target, pair)) in pairs.into_iter().enumerate() {
            let (out_tx, out) = mpsc::channel(cfg.grpc.queue_chunks);
            outs.push(out_tx.clone());
            let w = Worker {
                shared: self.shared.clone(),
                id: id.clone(),
                routes: self.routes.clone(),
                tag: format!("{base}.{i}"),
                target,
                to_connector: to_connector.clone(),
                out_tx,
                out,
                stop: stop_rx.clone(),
            };
            tokio::spawn(w.run(pair));
        }
        let hello = GatewayMessage {
            request_id: String::new(),
            kind: Some(gateway_message::Kind::Registered(Registered {
                session_id: base.clone(),
            })),
        };
        let _ = to_connector.send(Ok(hello)).await;
        self.stats.connectors.fetch_add(1, Relaxed);
        tracing::info!(edge = id.register.edge(), tenant = %id.register.tenant_id, workers = k, "gRPC connector registered");
        let answers = Answers {
            routes: self.routes.clone(),
            owner: id.owner.clone(),
            outs,
            to_connector,
        };
        let stats = self.stats.clone();
        let edge = id.register.edge().to_owned();
        tokio::spawn(async move {
            answers.pump(&mut inbound).await;
            // The connector left: its workers leave the shards.
            let _ = stop_tx.send(true);
            stats.connectors.fetch_sub(1, Relaxed);
            tracing::info!(%edge, "gRPC connector disconnected");
        });
        let stream = futures_util::stream::unfold(from_gateway, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn serve(
        &self,
        req: Request<Streaming<DataMessage>>,
    ) -> Result<Response<ServeSummary>, Status> {
        let (front, edge_key) = front_of(&req)?;
        let owner = Owner {
            tenant: front.tenant,
            edge_key,
        };
        let mut s = req.into_inner();
        let wait = Duration::from_millis(self.shared.cfg.timeouts.handshake_ms);
        let first = match tokio::time::timeout(wait, s.message()).await {
            Ok(m) => m?.and_then(|m| m.kind),
            Err(_) => {
                return Err(self.refused(Status::deadline_exceeded(
                    "no start message received in time",
                )))
            }
        };
        let Some(data_message::Kind::Start(start)) = first else {
            return Err(self.refused(Status::invalid_argument(
                "the first message of Serve must be start",
            )));
        };
        let Some((tag, h)) = self.routes.take_get(&start.request_id, &owner) else {
            return Err(self.refused(Status::not_found(format!(
                "no do_get {:?} is waiting for this connector",
                start.request_id
            ))));
        };
        let _listed = Listed(&self.routes, tag.clone());
        let schema = base64::engine::general_purpose::STANDARD.encode(&start.schema);
        let json = Reply::stream_start(&h.rid, &schema).to_json();
        let gone = || Status::unavailable("the request's gateway worker closed");
        h.out
            .send(Out::Text {
                tag: tag.clone(),
                json,
            })
            .await
            .map_err(|_| gone())?;
        let mut bytes = 0u64;
        let cancelled = |bytes| {
            Ok(Response::new(ServeSummary {
                bytes_forwarded: bytes as i64,
                cancelled: true,
            }))
        };
        loop {
            let m = tokio::select! {
                _ = h.cancel.notified() => return cancelled(bytes),
                m = s.message() => m,
            };
            if h.cancelled.load(Relaxed) {
                return cancelled(bytes);
            }
            let json = match m.map(|m| m.and_then(|m| m.kind)) {
                Ok(Some(data_message::Kind::Chunk(c))) => {
                    bytes += c.data.len() as u64;
                    self.stats.chunks.fetch_add(1, Relaxed);
                    let data = c.data;
                    let out = Out::Binary {
                        tag: tag.clone(),
                        data,
                    };
                    h.out.send(out).await.map_err(|_| gone())?;
                    continue;
                }
                Ok(Some(data_message::Kind::End(e))) => {
                    Reply::stream_end(&h.rid, e.total_bytes.max(0) as u64, None).to_json()
                }
                Ok(Some(data_message::Kind::Error(f))) => {
                    Reply::error(&h.rid, &f.message).to_json()
                }
                Ok(Some(data_message::Kind::Start(_))) | Ok(None) => {
                    let _ = h.out.send(Out::Break { tag: tag.clone() }).await;
                    let why = "Serve: a second start, or a message with no kind";
                    return Err(self.refused(Status::invalid_argument(why)));
                }
                Err(st) => {
                    // The connector vanished mid-stream: the browser gets
                    // edge_disconnected (4503), never a faked end.
                    let _ = h.out.send(Out::Break { tag: tag.clone() }).await;
                    return Err(st);
                }
            };
            h.out
                .send(Out::Text { tag, json })
                .await
                .map_err(|_| gone())?;
            return Ok(Response::new(ServeSummary {
                bytes_forwarded: bytes as i64,
                cancelled: false,
            }));
        }
    }
}

/// Keeps a `do_get` listed while its `Serve` call runs.
struct Listed<'a>(&'a Routes, Arc<str>);

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.0.remove(&self.1);
    }
}

fn register_of(r: sluice_protocol::tunnel::RegisterRequest) -> Register {
    Register {
        edge_id: (!r.edge_id.is_empty()).then_some(r.edge_id),
        version: (!r.version.is_empty()).then_some(r.version),
        tenant_id: r.tenant_id,
        datasets: r.datasets,
    }
}

/// What the connector says on `Connect` after registering.
struct Answers {
    routes: Arc<Routes>,
    owner: Owner,
    outs: Vec<mpsc::Sender<Out>>,
    to_connector: mpsc::Sender<Result<GatewayMessage, Status>>,
}

impl Answers {
    /// Passes the connector's answer to request `tag` to the worker that
    /// asked; a late answer (the request was cancelled) is dropped.
    async fn answer(&self, tag: String, reply: impl FnOnce(&str) -> Reply) {
        let Some(r) = self.routes.take_for(&tag, &self.owner) else {
            return;
        };
        let json = reply(&r.rid).to_json();
        let _ = r
            .out
            .send(Out::Text {
                tag: tag.into(),
                json,
            })
            .await;
    }

    async fn pump(&self, inbound: &mut Streaming<ConnectorMessage>) {
        loop {
            let m = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => return,
            };
            let tag = m.request_id;
            match m.kind {
                Some(connector_message::Kind::FlightInfo(fi)) => {
                    self.answer(tag, |rid| {
                        let mut data = serde_json::from_str::<serde_json::Value>(&fi.json)
                            .ok()
                            .filter(|v| v.is_object())
                            .unwrap_or_else(|| serde_json::json!({}));
                        data["schema"] = base64::engine::general_purpose::STANDARD
                            .encode(&fi.schema)
                            .into();
                        if fi.total_records >= 0 {
                            data["rows"] = fi.total_records.into();
                        }
                        if fi.total_bytes >= 0 {
                            data["bytes"] = fi.total_bytes.into();
                        }
                        Reply::flight_info(rid, data)
                    })
                    .await;
                }
                Some(connector_message::Kind::Error(f)) => {
                    self.answer(tag, |rid| Reply::error(rid, &f.message)).await;
                }
                Some(connector_message::Kind::Register(r)) => {
                    // The datasets changed: every worker registers again.
                    let json = serde_json::to_string(
                        &sluice_protocol::connector::ConnectorAction::Register(register_of(r)),
                    )
                    .expect("register serializes");
                    for o in &self.outs {
                        let _ = o.send(Out::Register(json.clone())).await;
                    }
                }
                None => {
                    let why = "Connect: a message with no kind (register, flight_info or error)";
                    let _ = self
                        .to_connector
                        .send(Err(Status::invalid_argument(why)))
                        .await;
                    return;
                }
            }
        }
    }
}
