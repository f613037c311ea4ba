//! Read a request head (bounded in size and time), then route it by its
//! path: plain HTTP answered here (health,
//! readiness, metrics, admin, the dashboard's files), upgrades handed to the
//! edge endpoints or to the session's own shard.

use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::auth::edge_auth::Transport;
use crate::config::Config;
use crate::edge;
use crate::ids::{EdgeId, SessionId};
use crate::session::browser;
use crate::shard::metrics::{Front, Refused, ShardMetrics};
use crate::shard::reply::{answer, reject, respond};
use crate::shard::{Shard, ShardMsg, Shared};
use crate::wire::egress::Egress;
use crate::wire::handoff;
use crate::wire::http::{self, HttpError, Request};

/// Reads the request head, answers plain HTTP, and routes upgrades.
pub async fn handle_connection(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    transport: Transport,
    egress: Option<Egress>,
) {
    let cfg = shard.cfg();
    // Sockets that never finish a request head are bounded as a whole, so
    // they cannot take the descriptors and memory established sessions
    // need. At the bound a newcomer evicts the oldest waiting connection
    // of its shard (a real client sends its head at once; the ones that
    // linger are the slow or idle), so the gateway stays reachable — its
    // `/metrics` included — through a flood of idle sockets.
    let max = cfg.limits.max_pending_handshakes;
    let count: fn(&Shared) -> &AtomicUsize = |s| &s.pending_handshakes;
    let pending = match shard.shared.admit(count, max) {
        Some(p) => p,
        None if shard.evict_oldest_handshake() => shard.shared.admit_anyway(count),
        None => {
            let e = HttpError::new(
                503,
                "too many connections are waiting to send a request; retry",
            )
            .retry_after(1);
            return reject(&shard, stream, &e).await;
        }
    };
    let listed = shard.handshake_started();
    let deadline = Duration::from_millis(cfg.timeouts.handshake_ms);
    let head = monoio::select! {
        head = monoio::time::timeout(deadline, read_head(&mut stream, cfg)) => Some(head),
        _ = listed.evicted.recv_async() => None,
    };
    drop(listed);
    drop(pending);
    let Some(head) = head else {
        ShardMetrics::inc(&shard.metrics().handshakes_evicted);
        let e = HttpError::new(408, "request head too slow while others were waiting");
        return reject(&shard, stream, &e).await;
    };
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
        "/healthz" => answer(stream, &req.method, 200, "text/plain", b"ok\n".to_vec()).await,
        "/readyz" => {
            let (status, body) = if shard.shared.is_draining() {
                (503, "draining\n")
            } else if !shard.shared.revocations.healthy() {
                (503, "revocation link to Redis down\n")
            } else {
                (200, "ready\n")
            };
            let body = body.as_bytes().to_vec();
            answer(stream, &req.method, status, "text/plain", body).await
        }
        // The admin endpoints have a listener of their own (`admin.listen`).
        p if p.starts_with("/admin/") => {
            let e = HttpError::new(
                404,
                "no such endpoint (admin endpoints are on admin.listen)",
            );
            reject(&shard, stream, &e).await
        }
        "/metrics" => {
            let body = shard.shared.metrics.render(&shard.shared.snapshot());
            let ctype = "text/plain; version=0.0.4";
            answer(stream, &req.method, 200, ctype, body.into_bytes()).await
        }
        // Each long-lived connection gets a task of its own sized for its
        // endpoint, and this one (which held the request head) ends.
        "/ws/connect" => {
            monoio::spawn(Box::pin(edge::serve_worker(
                shard, stream, req, buffered, transport,
            )));
        }
        p if p.starts_with("/edge/") => match EdgeId::parse(&p["/edge/".len()..]) {
            Some(edge) => {
                monoio::spawn(Box::pin(edge::serve_relay(
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
                let front = front_of(&transport);
                to_session(shard, stream, req, buffered, sid, front, egress).await
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
        let (res, b) = stream.read(crate::wire::reader::spare(&mut buf)).await;
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

/// A browser session's connection goes to the shard that owns its id:
/// this one, or another through its mailbox (full: 503, counted against
/// the `front` it came in by).
async fn to_session(
    shard: Rc<Shard>,
    stream: TcpStream,
    req: Request,
    buffered: BytesMut,
    sid: SessionId,
    front: Front,
    egress: Option<Egress>,
) {
    let target = sid.shard(shard.shared.shard_count());
    if target == shard.id {
        let session = browser::run(shard, stream, req, buffered, sid, egress);
        monoio::spawn(Box::pin(session));
    } else if shard.shared.mailboxes[target].is_full() {
        shard.shared.metrics.fronts.count(front, Refused::ShardBusy);
        let e = HttpError::new(503, "gateway busy; retry").retry_after(1);
        reject(&shard, stream, &e).await
    } else {
        let msg = ShardMsg::AdoptBrowser {
            sock: handoff::detach(stream, buffered),
            req: Box::new(req),
            sid,
            egress,
        };
        // Filled meanwhile (another task on this shard): the socket closes
        // with the message.
        if shard.shared.mailboxes[target].try_send(msg).is_err() {
            shard.shared.metrics.fronts.count(front, Refused::ShardBusy);
            ShardMetrics::inc(&shard.metrics().http_rejections);
            tracing::warn!(target, "shard mailbox full; connection dropped");
        }
    }
}

/// The front a connection came in by, for the refusal series: a session
/// arrives on `/stream/` from the shards' own listener, the TLS listener
/// or Flight (the tunnel's workers use `/ws/connect`).
fn front_of(t: &Transport) -> Front {
    match t {
        Transport::Plain => Front::Ws,
        Transport::Tls { .. } => Front::Wss,
        Transport::Fronted { .. } => Front::Flight,
    }
}
