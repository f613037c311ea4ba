//! One worker slot of a gRPC connector: a connector worker connection on a
//! shard (`/ws/connect`, fast path) that the front speaks for.
//!
//! The shard sees an ordinary worker: it registers with the connector's
//! `RegisterRequest`, under what the gRPC handshake proved (certificate
//! tenant, `edge-key`), and gets `get_flight_info`, `do_get` and `cancel`
//! requests. The front passes each request to the connector on its
//! `Connect` stream, under an id of its own, and writes back what comes on
//! `Connect` (flight info, errors) and on the request's `Serve` call
//! (`stream_start`, the chunks as binary messages, `stream_end`): the
//! chunks are the bytes HTTP/2 delivered, written to the shard with their
//! frame header in one `writev`, so the shard forwards them as it forwards a
//! WebSocket connector's.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::connector::{
    ConnectorAction, FromGateway, GatewayRequest, Register, RegisterAnswer, Reply,
};
use sluice_protocol::tunnel::{
    gateway_message, DoGetRequest, GatewayMessage, GetFlightInfoRequest,
};
use sluice_protocol::FAST_PATH_PROTOCOL;
use tokio::sync::{mpsc, watch, Notify};
use tonic::Status;

use super::out::Out;
use super::routes::{Kind, Owner, Route, Routes};
use crate::server::h2_front::FrontInfo;
use crate::server::pair::{Message, Pair, PairError, Speaker};
use crate::shard::Shared;
use crate::wire::frame::Opcode;

/// Everything a worker needs to (re)open its shard connection.
#[derive(Clone)]
pub struct Identity {
    pub front: FrontInfo,
    pub edge_key: Option<String>,
    pub register: Register,
    pub owner: Owner,
}

/// Opens the shard connection and registers; the gateway's refusal is the
/// connector's error.
pub async fn open(shared: &Shared, id: &Identity, target: usize) -> Result<Pair, Status> {
    let mut headers = vec![("Sec-WebSocket-Protocol", FAST_PATH_PROTOCOL)];
    if let Some(k) = &id.edge_key {
        headers.push(("Edge-Key", k.as_str()));
    }
    let mut pair = Pair::open(
        shared,
        target,
        id.front.transport(),
        "/ws/connect",
        &headers,
        Speaker::TUNNEL,
    )
    .await
    .map_err(|e| match e {
        PairError::Http(401, body) => {
            Status::unauthenticated(format!("gateway refused the connector: {body}"))
        }
        PairError::Http(403, body) => {
            Status::permission_denied(format!("gateway refused the connector: {body}"))
        }
        PairError::Http(429 | 503, body) => Status::unavailable(body),
        other => Status::unavailable(other.to_string()),
    })?;
    let json = serde_json::to_string(&ConnectorAction::Register(id.register.clone()))
        .expect("register serializes");
    pair.send(Opcode::Text, json.as_bytes())
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    loop {
        match pair.next().await {
            Ok(Message::Text(t)) => match serde_json::from_slice::<RegisterAnswer>(&t) {
                Ok(RegisterAnswer::Ok { .. }) => return Ok(pair),
                Ok(RegisterAnswer::Error { error }) => {
                    return Err(Status::permission_denied(format!(
                        "register refused: {error}"
                    )))
                }
                Err(_) => continue,
            },
            Ok(Message::Binary(_)) => continue,
            Ok(Message::Close(c)) => {
                let why = c
                    .map(|c| format!("{} {}", c.code, c.reason))
                    .unwrap_or_default();
                return Err(Status::permission_denied(format!(
                    "register refused: {why}"
                )));
            }
            Err(e) => return Err(Status::unavailable(e.to_string())),
        }
    }
}

pub struct Worker {
    pub shared: Arc<Shared>,
    pub id: Arc<Identity>,
    pub routes: Arc<Routes>,
    /// The front's ids for this worker's requests start with it.
    pub tag: String,
    pub target: usize,
    pub to_connector: mpsc::Sender<Result<GatewayMessage, Status>>,
    pub out_tx: mpsc::Sender<Out>,
    pub out: mpsc::Receiver<Out>,
    pub stop: watch::Receiver<bool>,
}

impl Worker {
    /// Serves the shard connection until the connector leaves; a
    /// connection that breaks is opened again.
    pub async fn run(mut self, mut pair: Pair) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let stopped = self.serve(&mut pair).await;
            self.routes.drop_worker(&self.tag);
            if stopped || *self.stop.borrow() {
                return;
            }
            // Broken (a Serve call broke off, the shard retired the worker):
            // a fresh connection takes the slot.
            loop {
                tokio::select! {
                    _ = self.stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                match open(&self.shared, &self.id, self.target).await {
                    Ok(p) => {
                        pair = p;
                        backoff = Duration::from_millis(100);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "gRPC connector worker cannot re-register");
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    /// `true`: the connector left (stop); `false`: the connection broke.
    async fn serve(&mut self, pair: &mut Pair) -> bool {
        // Requests the shard cancelled: their late output is dropped.
        let mut cancelled: HashSet<Arc<str>> = HashSet::new();
        loop {
            tokio::select! {
                _ = self.stop.changed() => {
                    // The connector left: what it handed over before (a
                    // Serve call it saw complete) still reaches the shard.
                    // (The connection closes after this, so a broken-off
                    // request's end needs no break of its own.)
                    while let Ok(o) = self.out.try_recv() {
                        if write(pair, o, &mut cancelled).await.is_err() {
                            break;
                        }
                    }
                    return true;
                }
                m = pair.next() => match m {
                    Ok(Message::Text(t)) => {
                        if self.on_request(pair, &t, &mut cancelled).await.is_err() {
                            return false;
                        }
                    }
                    Ok(Message::Binary(_)) => {}
                    Ok(Message::Close(_)) | Err(_) => return false,
                },
                o = self.out.recv() => {
                    let Some(o) = o else { return true };
                    if !matches!(write(pair, o, &mut cancelled).await, Ok(true)) {
                        return false;
                    }
                }
            }
        }
    }

    async fn on_request(
        &self,
        pair: &mut Pair,
        text: &[u8],
        cancelled: &mut HashSet<Arc<str>>,
    ) -> Result<(), PairError> {
        let Ok(FromGateway::Request(req)) = serde_json::from_slice::<FromGateway>(text) else {
            return Ok(()); // an answer to a re-register
        };
        let rid = req.request_id().to_owned();
        let tag: Arc<str> = format!("{}.{rid}", self.tag).into();
        let kind = match req {
            GatewayRequest::GetFlightInfo { descriptor, .. } => {
                self.route(&tag, &rid, Kind::Info);
                gateway_message::Kind::GetFlightInfo(GetFlightInfoRequest {
                    path: descriptor.path,
                })
            }
            GatewayRequest::DoGet { offload: true, .. } => {
                let no = Reply::error(
                    &rid,
                    "offload is not available from a connector on the gRPC transport; query it streamed",
                );
                return pair.send(Opcode::Text, no.to_json().as_bytes()).await;
            }
            GatewayRequest::DoGet { ticket, live, .. } => {
                self.route(&tag, &rid, Kind::Get);
                gateway_message::Kind::DoGet(DoGetRequest { ticket, live })
            }
            GatewayRequest::Cancel { .. } => {
                if let Some(r) = self.routes.remove(&tag) {
                    r.cancelled.store(true, Relaxed);
                    r.cancel.notify_one();
                }
                cancelled.insert(tag.clone());
                // The shard waits for the request's end before it reuses
                // the worker: the cancel is it.
                let end = Reply::error(&rid, "cancelled by the gateway");
                pair.send(Opcode::Text, end.to_json().as_bytes()).await?;
                gateway_message::Kind::Cancel(Default::default())
            }
        };
        let msg = GatewayMessage {
            request_id: tag.to_string(),
            kind: Some(kind),
        };
        // A full queue means the connector stopped reading its requests.
        let _ = self.to_connector.send(Ok(msg)).await;
        Ok(())
    }

    fn route(&self, tag: &Arc<str>, rid: &str, kind: Kind) {
        self.routes.insert(
            tag.clone(),
            Route {
                rid: rid.to_owned(),
                kind,
                worker: self.tag.clone(),
                owner: self.id.owner.clone(),
                out: self.out_tx.clone(),
                cancelled: Arc::new(AtomicBool::new(false)),
                cancel: Arc::new(Notify::new()),
                taken: false,
            },
        );
    }
}

/// Writes one `Out` to the shard, dropping what belongs to a cancelled
/// request. `Ok(false)`: a live request's `Serve` call broke off, and the
/// connection must break with it.
async fn write(
    pair: &mut Pair,
    o: Out,
    cancelled: &mut HashSet<Arc<str>>,
) -> Result<bool, PairError> {
    match o {
        Out::Text { tag, .. } | Out::Binary { tag, .. } if cancelled.contains(&tag) => Ok(true),
        Out::Text { json, .. } | Out::Register(json) => pair
            .send(Opcode::Text, json.as_bytes())
            .await
            .map(|()| true),
        Out::Binary { data, .. } => pair.send(Opcode::Binary, &data).await.map(|()| true),
        Out::Break { tag } => Ok(cancelled.remove(&tag)),
    }
}
