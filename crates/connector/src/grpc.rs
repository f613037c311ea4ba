//! Seed 002's transport: the connector ↔ gateway tunnel as gRPC over
//! HTTP/2 with mutual TLS (`transport = "grpc"`), the contract in
//! `crates/protocol/proto/tunnel.proto`.
//!
//! One `Connect` call carries the registration, the gateway's requests and
//! the flight-info answers; each `do_get` is served on a `Serve` call of its
//! own (start, chunks of whole IPC messages, end), so HTTP/2 flow control
//! paces every request separately. The datasets, the reading and the
//! framing are the WebSocket workers' own ([`crate::stream`],
//! [`crate::live`]); reconnects back off with jitter; on shutdown running
//! streams get a grace period, as on WebSocket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use sluice_protocol::tunnel::connector_tunnel_client::ConnectorTunnelClient;
use sluice_protocol::tunnel::{
    connector_message, data_message, gateway_message, ArrowChunk, ConnectorMessage, DataMessage,
    Failure, FlightInfo, RegisterRequest, StreamEnd, StreamStart,
};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

use crate::redial::Backoff;
use crate::stream::{Outcome, Piece};
use crate::worker::Shared;

/// The largest message either side sends: a chunk is at most
/// `chunk_bytes` (1 MiB) of IPC messages, a single large message more.
const MAX_MESSAGE: usize = 64 << 20;

/// Runs the tunnel until `stop` turns true, reconnecting with backoff.
pub async fn run(
    sh: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut avail: watch::Receiver<Vec<String>>,
) {
    let mut backoff = Backoff::new(&sh.cfg);
    loop {
        if *stop.borrow() {
            return;
        }
        let registered = AtomicBool::new(false);
        match session(&sh, &mut stop, &mut avail, &registered).await {
            Ok(()) => return,
            Err(e) => backoff.failed("gRPC tunnel", registered.load(Ordering::Relaxed), &e),
        }
        backoff.wait(&mut stop).await;
    }
}

/// The HTTP/2 channel: plain, or TLS with `[mtls]`'s CA and client
/// certificate (ALPN h2).
async fn channel(sh: &Shared) -> Result<Channel> {
    let g = &sh.cfg.gateway;
    let (tls, rest) = if let Some(r) = g.strip_prefix("https://").or(g.strip_prefix("grpcs://")) {
        (true, r)
    } else {
        (
            false,
            g.trim_start_matches("http://")
                .trim_start_matches("grpc://"),
        )
    };
    let authority = rest.trim_end_matches('/').to_owned();
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .with_context(|| format!("gateway {g:?}"))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20));
    if !tls {
        return endpoint
            .connect()
            .await
            .map_err(|e| anyhow!("cannot reach the gateway at {g}: {}", root(&e)));
    }
    let mut config = (*sh.cfg.tls.clone().expect("finish built the TLS config")).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let host = authority
        .rsplit_once(':')
        .map_or(authority.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|_| anyhow!("gateway host {host:?} is not a valid TLS server name"))?;
    let dial = tower::service_fn(move |_: tonic::transport::Uri| {
        let (connector, name, authority) = (connector.clone(), name.clone(), authority.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&authority).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(dial)
        .await
        .map_err(|e| anyhow!("cannot reach the gateway at {g} over TLS: {} (check mtls.ca_cert, and that the gateway trusts this site's certificate)", root(&e)))
}

fn root(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Adds the edge key (when there is one) to a call.
fn with_key<T>(sh: &Shared, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    let key = sh.cfg.edge_key.expose();
    if !key.is_empty() {
        if let Ok(v) = key.parse() {
            req.metadata_mut().insert("edge-key", v);
        }
    }
    req
}

fn register(sh: &Shared, names: &[String]) -> ConnectorMessage {
    let r = sh.register(names);
    ConnectorMessage {
        request_id: String::new(),
        kind: Some(connector_message::Kind::Register(RegisterRequest {
            edge_id: r.edge_id.unwrap_or_default(),
            version: r.version.unwrap_or_default(),
            tenant_id: r.tenant_id,
            datasets: r.datasets,
        })),
    }
}

/// Requests being served, by the gateway's id: their cancel flags.
type Running = Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>;

async fn session(
    sh: &Arc<Shared>,
    stop: &mut watch::Receiver<bool>,
    avail: &mut watch::Receiver<Vec<String>>,
    registered: &AtomicBool,
) -> Result<()> {
    let client = ConnectorTunnelClient::new(channel(sh).await?)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<ConnectorMessage>(16);
    let names = avail.borrow_and_update().clone();
    tx.send(register(sh, &names)).await?;
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut inbound = client
        .clone()
        .connect(with_key(sh, outbound))
        .await
        .map_err(|s| {
            anyhow!(
                "the gateway refused the connector: {} ({:?})",
                s.message(),
                s.code()
            )
        })?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .map_err(|_| anyhow!("no answer to register within 10 s"))?
        .map_err(|s| {
            anyhow!(
                "the gateway refused the registration: {} ({:?})",
                s.message(),
                s.code()
            )
        })?;
    match first.and_then(|m| m.kind) {
        Some(gateway_message::Kind::Registered(r)) => {
            registered.store(true, Ordering::Relaxed);
            tracing::info!(session = %r.session_id, datasets = names.len(), "registered with the gateway over gRPC");
        }
        Some(gateway_message::Kind::Error(f)) => {
            bail!("the gateway refused the registration: {}", f.message)
        }
        _ => bail!("the gateway's first message was not registered"),
    }
    let running: Running = Arc::default();
    let mut serving = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            m = inbound.message() => {
                let m = m
                    .map_err(|s| anyhow!("the tunnel failed: {} ({:?})", s.message(), s.code()))?
                    .ok_or_else(|| anyhow!("the gateway ended the tunnel"))?;
                let rid = m.request_id;
                match m.kind {
                    Some(gateway_message::Kind::GetFlightInfo(g)) => {
                        let (sh, tx) = (sh.clone(), tx.clone());
                        tokio::spawn(async move {
                            let name = g.path.first().cloned().unwrap_or_default();
                            let answer = match sh.info(&name).await {
                                Ok(data) => flight_info(data),
                                Err(e) => connector_message::Kind::Error(Failure { message: e }),
                            };
                            let _ = tx.send(ConnectorMessage { request_id: rid, kind: Some(answer) }).await;
                        });
                    }
                    Some(gateway_message::Kind::DoGet(d)) => {
                        let cancel = Arc::new(AtomicBool::new(false));
                        running.lock().expect("running lock").insert(rid.clone(), cancel.clone());
                        let (sh, client, tx, running) = (sh.clone(), client.clone(), tx.clone(), running.clone());
                        serving.spawn(async move {
                            serve(&sh, client, &tx, &rid, &d.ticket, d.live, cancel).await;
                            running.lock().expect("running lock").remove(&rid);
                        });
                    }
                    Some(gateway_message::Kind::Cancel(_)) => {
                        if let Some(c) = running.lock().expect("running lock").get(&rid) {
                            c.store(true, Ordering::Relaxed);
                        }
                    }
                    Some(gateway_message::Kind::Error(f)) => {
                        tracing::warn!(error = %f.message, "the gateway reported an error");
                    }
                    Some(gateway_message::Kind::Registered(_)) | None => {}
                }
            }
            changed = avail.changed() => {
                if changed.is_ok() {
                    let names = avail.borrow_and_update().clone();
                    tracing::info!(datasets = ?names, "dataset list changed; registering again");
                    tx.send(register(sh, &names)).await?;
                }
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    // Let running streams finish; past the grace, end them
                    // with an error.
                    let all = async { while serving.join_next().await.is_some() {} };
                    if tokio::time::timeout(Duration::from_secs(10), all).await.is_err() {
                        for c in running.lock().expect("running lock").values() {
                            c.store(true, Ordering::Relaxed);
                        }
                        let all = async { while serving.join_next().await.is_some() {} };
                        let _ = tokio::time::timeout(Duration::from_secs(2), all).await;
                    }
                    return Ok(());
                }
            }
        }
    }
}

fn flight_info(data: serde_json::Value) -> connector_message::Kind {
    let schema = data["schema"]
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .unwrap_or_default();
    connector_message::Kind::FlightInfo(FlightInfo {
        schema: schema.into(),
        total_records: data["rows"].as_i64().unwrap_or(-1),
        total_bytes: data["bytes"].as_i64().unwrap_or(-1),
        json: data.to_string(),
    })
}

/// One `do_get` on a `Serve` call: start, the IPC messages, end or error.
async fn serve(
    sh: &Arc<Shared>,
    mut client: ConnectorTunnelClient<Channel>,
    tx: &mpsc::Sender<ConnectorMessage>,
    rid: &str,
    name: &str,
    live: bool,
    cancel: Arc<AtomicBool>,
) {
    let refuse = |message: String| ConnectorMessage {
        request_id: rid.to_owned(),
        kind: Some(connector_message::Kind::Error(Failure { message })),
    };
    let Some(ds) = sh.find(name) else {
        let _ = tx.send(refuse(format!("unknown dataset {name:?}"))).await;
        return;
    };
    if ds.live_only() && !live {
        let _ = tx
            .send(refuse(format!(
                "dataset {name} is a live feed: subscribe to it"
            )))
            .await;
        return;
    }
    // The reader runs on a blocking thread; a small queue between it and
    // the call lets HTTP/2 flow control pace it.
    let (dtx, drx) = mpsc::channel::<DataMessage>(4);
    let (chunk, rid_owned) = (sh.cfg.chunk_bytes, rid.to_owned());
    let producer = tokio::task::spawn_blocking(move || {
        let send = |k: data_message::Kind| dtx.blocking_send(DataMessage { kind: Some(k) }).is_ok();
        let emit = |p: Piece| match p {
            Piece::Start(schema) => send(data_message::Kind::Start(StreamStart {
                request_id: rid_owned.clone(),
                schema: base64::engine::general_purpose::STANDARD
                    .decode(schema)
                    .unwrap_or_default()
                    .into(),
            })),
            Piece::Data(m) => send(data_message::Kind::Chunk(ArrowChunk {
                data: Bytes::from(m),
            })),
        };
        let outcome = if live {
            crate::live::run(&ds, chunk, &cancel, emit)
        } else {
            crate::stream::run(&ds, chunk, &cancel, emit)
        };
        match outcome {
            Outcome::Done { bytes, rows } => {
                tracing::info!(dataset = ds.name(), rows, bytes, "stream complete");
                send(data_message::Kind::End(StreamEnd {
                    total_bytes: bytes as i64,
                }));
            }
            Outcome::Failed(message) => {
                tracing::warn!(dataset = ds.name(), error = %message, "stream failed");
                send(data_message::Kind::Error(Failure { message }));
            }
            Outcome::Gone => {}
        }
    });
    // A Serve call opens with `start`: a stream that fails before it (the
    // query is refused, the file is gone) is answered on Connect instead.
    let mut drx = drx;
    let first = match drx.recv().await {
        Some(
            m @ DataMessage {
                kind: Some(data_message::Kind::Start(_)),
            },
        ) => m,
        Some(DataMessage {
            kind: Some(data_message::Kind::Error(f)),
        }) => {
            let _ = tx.send(refuse(f.message)).await;
            let _ = producer.await;
            return;
        }
        _ => {
            let _ = producer.await;
            return;
        }
    };
    let rest =
        futures_util::stream::unfold(
            drx,
            |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
        );
    let outbound =
        futures_util::StreamExt::chain(futures_util::stream::once(async { first }), rest);
    match client.serve(with_key(sh, outbound)).await {
        Ok(s) if s.get_ref().cancelled => {
            tracing::info!(dataset = name, "stream cancelled by the gateway")
        }
        Ok(_) => {}
        Err(s) => {
            tracing::warn!(dataset = name, status = ?s.code(), error = %s.message(), "Serve call failed")
        }
    }
    // The call is over: a producer still running stops at its next send.
    let _ = producer.await;
}
