//! A browser session on `/stream/{sid}`: handshake → authenticate → serve
//! its actions (query mode) or pair it with an edge (relay mode) → close.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use monoio::io::{AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use sluice_protocol::browser::{BrowserAction, ServerEvent};

use crate::auth::token::{Claims, Mode, TokenError};
use crate::ids::{EdgeId, SessionId};
use crate::session::actions::{Actions, Closer};
use crate::session::quota::Quota;
use crate::session::{fanout, other_tenant, query, relay, BrowserReader, Flow, Session};
use crate::shard::metrics::ShardMetrics;
use crate::shard::reply::reject;
use crate::shard::{CloserGuard, RevokerGuard, Shard, Shared, Waiting};
use crate::wire::closing;
use crate::wire::egress::Egress;
use crate::wire::frame::MaskRule;
use crate::wire::http::{self, HttpError, Request};
use crate::wire::keepalive::{self, Liveness};
use crate::wire::message::{self, close, ErrorCode, Refusal};
use crate::wire::outbox::Outbox;
use crate::wire::peer::{close_code, Incoming, Peer, PeerError, PreAuth, ViaOutbox};
use crate::wire::reader::{FrameReader, Interrupter};

/// Counts an open session on its shard and globally, for exactly its life.
struct SessionCount(Rc<Shard>);

impl SessionCount {
    fn new(shard: &Rc<Shard>) -> Self {
        shard.shared.sessions.fetch_add(1, Relaxed);
        shard.metrics().sessions_active.fetch_add(1, Relaxed);
        shard.metrics().sessions_total.fetch_add(1, Relaxed);
        SessionCount(shard.clone())
    }
}

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.0.shared.sessions.fetch_sub(1, Relaxed);
        self.0.metrics().sessions_active.fetch_sub(1, Relaxed);
    }
}

fn header_token(req: &Request) -> Option<String> {
    if let Some(v) = req.header("authorization") {
        let mut parts = v.splitn(2, ' ');
        if parts
            .next()
            .is_some_and(|s| s.eq_ignore_ascii_case("bearer"))
        {
            return Some(parts.next().unwrap_or("").trim().to_owned());
        }
    }
    req.query_param("token")
}

/// Entry point for a `/stream/{sid}` request on the session's own shard.
///
/// The returned task lives as long as the session, so its state is what an
/// idle session costs. An async fn keeps a slot for every argument and
/// every value moved out of a local for its whole life, so the request,
/// the socket and the handshake's state live in a box freed once the
/// session is open, the reader and the claims travel boxed, and the
/// configuration is borrowed, never copied. (`idle` in the load generator
/// measures the result; `-Zprint-type-sizes` shows the layout.)
pub fn run(
    shard: Rc<Shard>,
    stream: TcpStream,
    req: Request,
    buffered: BytesMut,
    sid: SessionId,
    egress: Option<Egress>,
) -> impl Future<Output = ()> {
    session(Box::pin(open(shard, stream, req, buffered, sid, egress)))
}

async fn session(opening: Pin<Box<impl Future<Output = Option<Opened>>>>) {
    let Some(Opened {
        shard,
        sid,
        authenticated,
        reader,
        outbox,
        _count,
    }) = opening.await
    else {
        return;
    };
    let shared = shard.shared.clone();
    let reader = match authenticated {
        Err(why) => {
            let _ = outbox.push(message::error(&why));
            outbox.close(message::closing(why.close, &why.message));
            Some(reader)
        }
        Ok(claims) => serve(shard, sid, claims, reader, outbox.clone()).await,
    };
    outbox.close(message::closing(close::NORMAL, ""));
    outbox.finished().await;
    if let Some(reader) = reader {
        let linger = Duration::from_millis(shared.cfg.timeouts.close_linger_ms);
        Box::pin(closing::linger(reader.into_parts().0, linger)).await;
    }
}

/// A session past its handshake: authenticated, or refused with a reason
/// still to be sent.
struct Opened {
    shard: Rc<Shard>,
    sid: SessionId,
    authenticated: Result<Box<Claims>, Refusal>,
    reader: Box<BrowserReader>,
    outbox: Outbox,
    _count: SessionCount,
}

/// Handshake → authenticate. `None`: the request was answered with an
/// HTTP error, or the client left before the upgrade was written.
async fn open(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    req: Request,
    buffered: BytesMut,
    sid: SessionId,
    egress: Option<Egress>,
) -> Option<Opened> {
    let shard = &shard;
    let cfg = shard.cfg();
    if shard.shared.is_draining() {
        reject(shard, stream, &HttpError::new(503, "gateway is draining")).await;
        return None;
    }
    let up = match http::validate_upgrade(&req) {
        Ok(u) => u,
        Err(e) => {
            reject(shard, stream, &e).await;
            return None;
        }
    };
    if shard.shared.sessions.load(Relaxed) >= cfg.limits.max_sessions {
        let e = HttpError::new(503, "session limit reached").retry_after(1);
        reject(shard, stream, &e).await;
        return None;
    }
    // Unauthenticated sessions are bounded as a whole, and each may send
    // only a small message (an `auth`) until it has authenticated. At the
    // bound a newcomer evicts this shard's oldest (as for request heads).
    let max = cfg.limits.max_unauthenticated;
    let count: fn(&Shared) -> &AtomicUsize = |s| &s.unauthenticated;
    let unauthenticated = match shard.shared.admit(count, max) {
        Some(p) => p,
        None if shard.evict_oldest(Waiting::Unauthenticated) => shard.shared.admit_anyway(count),
        None => {
            let e =
                HttpError::new(503, "too many sessions are authenticating; retry").retry_after(1);
            reject(shard, stream, &e).await;
            return None;
        }
    };
    let listed = shard.wait_on(Waiting::Unauthenticated);
    let token = header_token(&req);
    drop(req);
    // Through the front's egress, the answer leads the session's frames;
    // else it is written here.
    let answer = http::switching_protocols(&up.accept, None);
    let first = match &egress {
        Some(_) => Bytes::from(answer),
        None => {
            if stream.write_all(answer).await.0.is_err() {
                return None;
            }
            Bytes::new()
        }
    };
    let count = SessionCount::new(shard);
    let (rd, wr) = stream.into_split();
    // Until it authenticates, what the gateway owes a session (pongs, its
    // refusal) is bounded by the auth message's size and must leave within
    // the auth deadline, whether or not the client reads.
    let pre_auth = cfg
        .limits
        .max_auth_message_bytes
        .min(cfg.limits.max_text_bytes);
    let auth_wait = Duration::from_millis(cfg.timeouts.auth_ms);
    let outbox = Outbox::new(pre_auth);
    match egress {
        Some(e) => outbox.attach_egress(wr, e, auth_wait, first),
        None => outbox.attach(wr, auth_wait),
    }
    // An idle session reads only small JSON messages: a small buffer (it
    // starts in what is left of the request head's).
    let mut reader = FrameReader::new(rd, buffered, MaskRule::Required, pre_auth).with_chunk(512);

    let authenticated = monoio::select! {
        a = authenticate(shard, &mut reader, &outbox, token, &sid) => a,
        _ = listed.evicted.recv_async() => {
            ShardMetrics::inc(&shard.metrics().unauthenticated_evicted);
            Err(Refusal::new(
                close::AUTH_TIMEOUT,
                ErrorCode::AuthTimeout,
                "authentication too slow while others were waiting",
            ))
        }
    };
    drop(listed);
    drop(unauthenticated);
    if authenticated.is_ok() {
        outbox.set_limits(
            cfg.limits.session_buffer_bytes,
            Duration::from_millis(cfg.timeouts.write_stall_ms),
        );
    }
    // Past authentication come small actions (or, in relay mode, data, and
    // the relay sets its own chunk). The request head's buffer, or one
    // sized for a token, is more than an idle session needs: the next read
    // takes a small one.
    reader.set_max_payload(cfg.limits.max_text_bytes);
    reader.set_chunk(crate::wire::reader::MIN_CHUNK);
    reader.release_idle_buffer();
    Some(Opened {
        shard: shard.clone(),
        sid,
        authenticated: authenticated.map(Box::new),
        reader: Box::new(reader),
        outbox,
        _count: count,
    })
}

async fn authenticate(
    shard: &Shard,
    reader: &mut BrowserReader,
    outbox: &Outbox,
    token: Option<String>,
    sid: &SessionId,
) -> Result<Claims, Refusal> {
    let token = match token {
        Some(t) => t,
        None => {
            let wait = Duration::from_millis(shard.cfg().timeouts.auth_ms);
            let limits = &shard.cfg().limits;
            let max = limits.max_auth_message_bytes.min(limits.max_text_bytes);
            let first = match monoio::time::timeout(wait, next_text(reader, outbox, max)).await {
                Err(_) => {
                    return Err(Refusal::new(
                        close::AUTH_TIMEOUT,
                        ErrorCode::AuthTimeout,
                        "no auth message received in time",
                    ))
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(t)) => t,
            };
            match BrowserAction::parse(&first) {
                Ok(BrowserAction::Auth(t)) => t,
                _ => {
                    shard.metrics().auth_failure(TokenError::Missing);
                    return Err(Refusal::unauthorized(
                        "first message must be {\"auth\": \"<token>\"}",
                    ));
                }
            }
        }
    };
    shard
        .shared
        .verifier
        .verify_fetching(&token, sid)
        .await
        .map_err(|e| {
            shard.metrics().auth_failure(e);
            tracing::info!(%sid, reason = e.label(), "session refused");
            Refusal::unauthorized(e.to_string())
        })
}

/// Reads one whole text message, answering control frames.
async fn next_text(
    reader: &mut BrowserReader,
    outbox: &Outbox,
    max: usize,
) -> Result<String, Refusal> {
    let mut peer = Peer::new(reader, PreAuth::new(outbox.clone()), max);
    loop {
        match peer.next().await {
            Ok(Incoming::Text(t)) => return Ok(t),
            Ok(Incoming::Interrupted) => {}
            Ok(Incoming::Close(_)) => {
                return Err(Refusal::new(
                    close::NORMAL,
                    ErrorCode::Closed,
                    "closed by client",
                ))
            }
            Ok(Incoming::Data(_)) => return Err(Refusal::bad_request("expected a text message")),
            Err(PeerError::Write(e)) if PreAuth::is_flood(&e) => {
                return Err(Refusal::bad_request(e.to_string()))
            }
            Err(e) => return Err(read_failure(e)),
        }
    }
}

fn read_failure(e: PeerError) -> Refusal {
    match e {
        PeerError::Protocol(p) => {
            Refusal::new(p.close_code(), ErrorCode::ProtocolError, p.to_string())
        }
        PeerError::TimedOut => Refusal::new(
            close::GOING_AWAY,
            ErrorCode::IdleTimeout,
            "no traffic from client",
        ),
        other => Refusal::new(close::GOING_AWAY, ErrorCode::Closed, other.to_string()),
    }
}

/// Serves the session until it ends; gives back the browser's read half
/// (when the session still has it) for the closing handshake.
async fn serve(
    shard: Rc<Shard>,
    sid: SessionId,
    claims: Box<Claims>,
    reader: Box<BrowserReader>,
    outbox: Outbox,
) -> Option<Box<BrowserReader>> {
    // Boxed: the checks and the quota's join are not kept for the
    // session's life, only what `settle` returns.
    let interrupter = reader.interrupter();
    let Some(settled) = Box::pin(settle(shard, sid, claims, interrupter, outbox)).await else {
        // Refused: the reason is queued; the closing handshake still runs.
        return Some(reader);
    };
    let sess = &settled.sess;
    let reader = match sess.claims.mode {
        Mode::Query => Some(serve_actions(sess, reader).await),
        Mode::Relay => Box::pin(relay::run(sess, *reader)).await.map(Box::new),
    };
    fanout::unsubscribe(sess);
    tracing::info!(sid = %sess.sid, bytes = sess.quota.used(), "session closed");
    reader
}

/// An open session, with its registrations in the shard's tables (dropped
/// with it).
struct Settled {
    sess: Rc<Session>,
    _closer: CloserGuard,
    _revoker: RevokerGuard,
}

/// Checks the edge and the tenant, joins the quota and registers the
/// session. `None`: refused (the reason is queued on the outbox).
async fn settle(
    shard: Rc<Shard>,
    sid: SessionId,
    claims: Box<Claims>,
    interrupter: Interrupter,
    outbox: Outbox,
) -> Option<Settled> {
    let Some(edge) = EdgeId::parse(&claims.edge) else {
        let why = Refusal::bad_request("token names an invalid edge id");
        let _ = outbox.push(message::error(&why));
        outbox.close(message::closing(close::BAD_REQUEST, "invalid edge id"));
        return None;
    };
    if shard.shared.registry.tenant_may_pair(&edge, &claims.tenant) == Some(false) {
        let why = other_tenant();
        let _ = outbox.push(message::error(&why));
        outbox.close(message::closing(why.close, &why.message));
        return None;
    }
    let cfg = shard.cfg();
    let expires = cfg.auth.enforce_expiry_mid_stream.then(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Instant::now() + Duration::from_secs(claims.exp.saturating_sub(now) + cfg.auth.leeway_s)
    });
    // A revoked token is told so, even when its session has also ended.
    let joined = if shard.shared.revocations.is_revoked(&sid) {
        shard.metrics().revoked_closes.fetch_add(1, Relaxed);
        Err(Refusal::new(
            close::REVOKED,
            ErrorCode::Revoked,
            "session revoked",
        ))
    } else {
        // Boxed: a reservation's state is not kept for the session's life.
        Box::pin(Quota::join(&shard, &sid, &claims)).await
    };
    let quota = match joined {
        Ok(q) => q,
        Err(why) => {
            let _ = outbox.push(message::error(&why));
            outbox.close(message::closing(why.close, &why.message));
            return None;
        }
    };
    tracing::info!(%sid, sub = ?claims.sub, %edge, mode = ?claims.mode, shard = shard.id, "session open");
    let sess = Rc::new(Session {
        shard: shard.clone(),
        sid,
        edge,
        quota,
        expires,
        outbox,
        gone: Cell::new(false),
        upstream: RefCell::new(None),
        reader: RefCell::new(Some(interrupter)),
        feed: RefCell::new(None),
        next_request: Cell::new(0),
        claims: *claims,
    });
    let weak = Rc::downgrade(&sess);
    let closer = shard.on_close_all(Rc::new(move || {
        if let Some(s) = weak.upgrade() {
            s.fail(Refusal::new(
                close::GOING_AWAY,
                ErrorCode::ShuttingDown,
                "gateway shutting down",
            ));
        }
    }));
    // Registered before the check: a revocation that lands after the check
    // finds the session in the shard's table.
    let weak = Rc::downgrade(&sess);
    let revoker = shard.on_revoke(
        &sess.sid,
        Rc::new(move || {
            if let Some(s) = weak.upgrade() {
                s.shard.metrics().revoked_closes.fetch_add(1, Relaxed);
                s.revoke();
            }
        }),
    );
    if shard.shared.revocations.is_revoked(&sess.sid) {
        shard.metrics().revoked_closes.fetch_add(1, Relaxed);
        sess.revoke();
        return None;
    }
    Some(Settled {
        sess,
        _closer: closer,
        _revoker: revoker,
    })
}

async fn serve_actions(sess: &Rc<Session>, reader: Box<BrowserReader>) -> Box<BrowserReader> {
    let cfg = sess.shard.cfg();
    let actions = Actions::new(cfg.limits.max_pending_actions);
    let live = keepalive::watch(
        Duration::from_millis(cfg.timeouts.ping_interval_ms),
        Duration::from_millis(cfg.timeouts.idle_timeout_ms),
        reader.interrupter(),
        Some(sess.outbox.clone()),
    );
    let closer = Closer(actions.clone());
    let reading = monoio::spawn(Box::pin(read_actions(sess.clone(), reader, closer, live)));
    while let Some(req) = actions.next().await {
        if sess.gone.get() {
            break;
        }
        let flow = match req {
            BrowserAction::List => list(sess),
            BrowserAction::Info { dataset } => Box::pin(query::info(sess, &dataset)).await,
            // A task of its own (so an idle session does not carry a
            // query's state either): each frame of the stream wakes and
            // polls the stream's future alone, not the session's chain of
            // futures above it, whose state is cold by then (that chain
            // was 3 % of the gateway's CPU in fan-in; relay mode's pump
            // was already a task). The session waits for it here, so it
            // never outlives the session.
            BrowserAction::Query { dataset, mode } => {
                monoio::spawn(query::task(sess.clone(), dataset, mode)).await
            }
            BrowserAction::Subscribe { dataset } => fanout::subscribe(sess, &dataset),
            BrowserAction::Auth(_) => Flow::Close(Refusal::bad_request("already authenticated")),
        };
        match flow {
            Flow::Continue => {}
            Flow::Close(why) => {
                sess.fail(why);
                break;
            }
            Flow::Ended => break,
        }
    }
    sess.stop();
    reading.await
}

/// The browser's half: control frames, and actions queued for the session.
async fn read_actions(
    sess: Rc<Session>,
    mut reader: Box<BrowserReader>,
    actions: Closer,
    live: Rc<Liveness>,
) -> Box<BrowserReader> {
    let max = sess.shard.cfg().limits.max_text_bytes;
    let mut peer = Peer::new(&mut reader, ViaOutbox(sess.outbox.clone()), max).watched(live);
    loop {
        // A client that sends actions but does not read its answers is not
        // read either until it does: its answers stay bounded.
        if sess.outbox.space().await.is_err() {
            break;
        }
        let refusal = match peer.next().await {
            Ok(Incoming::Interrupted) if sess.gone.get() => break,
            Ok(Incoming::Interrupted) => continue,
            Ok(Incoming::Close(f)) => {
                sess.outbox.close(message::closing(close_code(&f), ""));
                break;
            }
            Ok(Incoming::Text(t)) => match BrowserAction::parse(&t) {
                Ok(req) => match actions.0.try_push(req) {
                    Ok(()) => continue,
                    Err(_) => Refusal::bad_request("too many pending actions"),
                },
                Err(msg) => {
                    sess.shard.metrics().protocol_errors.fetch_add(1, Relaxed);
                    Refusal::bad_request(msg)
                }
            },
            Ok(Incoming::Data(_)) => {
                Refusal::bad_request("binary messages are not accepted in query mode")
            }
            Err(e @ PeerError::Protocol(_)) => {
                sess.shard.metrics().protocol_errors.fetch_add(1, Relaxed);
                read_failure(e)
            }
            Err(e @ PeerError::TimedOut) => read_failure(e),
            Err(_) => break,
        };
        sess.fail(refusal);
        break;
    }
    drop(peer);
    sess.stop();
    reader
}

fn list(sess: &Session) -> Flow {
    let registry = &sess.shard.shared.registry;
    match registry.datasets_for(&sess.edge, &sess.claims.tenant) {
        None => Flow::Close(Refusal::new(
            close::EDGE_OFFLINE,
            ErrorCode::EdgeOffline,
            format!("edge {} is offline", sess.edge),
        )),
        // Not even the names of another tenant's datasets.
        Some(Err(())) => Flow::Close(other_tenant()),
        Some(Ok(all)) => {
            let visible: Vec<_> = all
                .into_iter()
                .filter(|d| sess.claims.may_read(d))
                .collect();
            sess.send(&ServerEvent::Datasets {
                edge: sess.edge.as_str().to_owned(),
                datasets: visible,
            });
            Flow::Continue
        }
    }
}
