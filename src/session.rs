//! A browser session on `/stream/{sid}`: handshake → authenticate → serve
//! its actions (query mode) or pair it with an edge (relay mode) → close.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use monoio::io::{AsyncWriteRentExt, OwnedReadHalf, Splitable};
use monoio::net::TcpStream;
use serde_json::{json, Value};

use crate::frame::{parse_close, MaskRule, Opcode};
use crate::http::{self, HttpError, Request};
use crate::ids::{EdgeId, SessionId};
use crate::keepalive::{self, Liveness};
use crate::outbox::Outbox;
use crate::protocol::{self, close, Action};
use crate::query::QueryMode;
use crate::quota::Quota;
use crate::reader::{FrameReader, Interrupter, ReadError, TextAssembler};
use crate::shard::{reject, Shard};
use crate::token::{Claims, Mode, TokenError};
use crate::{fanout, query, relay};

pub type BrowserReader = FrameReader<OwnedReadHalf<TcpStream>>;

/// What to do after an action.
pub enum Flow {
    Continue,
    /// Send `{"type":"error","code":kind,…}` and close with `code`.
    Close(u16, &'static str, String),
    /// The session is already closing.
    Ended,
}

/// One authenticated browser session, owned by its shard.
pub struct Session {
    pub shard: Rc<Shard>,
    pub sid: SessionId,
    pub claims: Claims,
    pub edge: EdgeId,
    pub outbox: Outbox,
    pub quota: Quota,
    /// Set when the token's expiry cuts running streams.
    pub expires: Option<Instant>,
    /// The browser left or the session is closing: stop everything.
    pub gone: Cell<bool>,
    /// Interrupts the read of whatever connector connection serves us now.
    pub upstream: RefCell<Option<Interrupter>>,
    reader: RefCell<Option<Interrupter>>,
    /// Subscribed live feed, if any.
    pub feed: RefCell<Option<fanout::Subscription>>,
    next_request: Cell<u64>,
}

impl Session {
    pub fn send(&self, v: &Value) {
        let _ = self.outbox.push(protocol::text(v));
    }

    /// Error message then close frame; nothing is queued after them.
    pub fn fail(&self, code: u16, kind: &str, message: &str) {
        if self.outbox.is_open() {
            tracing::debug!(sid = %self.sid, code, kind, message, "closing session");
            let _ = self.outbox.push(protocol::error(kind, message));
            self.outbox.close(protocol::closing(code, message));
        }
        self.stop();
    }

    /// Revoked: the error and close go out ahead of any data still queued.
    pub fn revoke(&self) {
        self.outbox.discard_pending();
        self.fail(close::REVOKED, "revoked", "session revoked");
    }

    /// Stops the session's tasks (reader, upstream) without a message.
    pub fn stop(&self) {
        self.gone.set(true);
        if let Some(i) = self.upstream.borrow().as_ref() {
            i.interrupt();
        }
        if let Some(i) = self.reader.borrow().as_ref() {
            i.interrupt();
        }
    }

    pub fn request_id(&self, prefix: &str) -> String {
        let n = self.next_request.get() + 1;
        self.next_request.set(n);
        format!("{prefix}{n}")
    }

    /// Whether the token has expired and the config cuts running streams.
    pub fn expired(&self) -> bool {
        self.expires.is_some_and(|t| Instant::now() >= t)
    }
}

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
pub async fn run(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    req: Request,
    buffered: BytesMut,
    sid: SessionId,
) {
    let cfg = shard.cfg().clone();
    if shard.shared.is_draining() {
        return reject(&shard, stream, &HttpError::new(503, "gateway is draining")).await;
    }
    let up = match http::validate_upgrade(&req) {
        Ok(u) => u,
        Err(e) => return reject(&shard, stream, &e).await,
    };
    if shard.shared.sessions.load(Relaxed) >= cfg.limits.max_sessions {
        return reject(
            &shard,
            stream,
            &HttpError::new(503, "session limit reached"),
        )
        .await;
    }
    let token = header_token(&req);
    drop(req);
    if stream
        .write_all(http::switching_protocols(&up.accept, None))
        .await
        .0
        .is_err()
    {
        return;
    }
    let _count = SessionCount::new(&shard);
    let (rd, wr) = stream.into_split();
    let outbox = Outbox::new(cfg.limits.session_buffer_bytes);
    outbox.attach(wr, Duration::from_millis(cfg.timeouts.write_stall_ms));
    // An idle session reads only small JSON messages: a small buffer (it
    // starts in what is left of the request head's).
    let mut reader = FrameReader::new(rd, buffered, MaskRule::Required, cfg.limits.max_text_bytes)
        .with_chunk(512);

    // Boxed: the session's task does not keep the authentication state.
    match Box::pin(authenticate(&shard, &mut reader, &outbox, token, &sid)).await {
        Err((code, kind, message)) => {
            let _ = outbox.push(protocol::error(kind, &message));
            outbox.close(protocol::closing(code, &message));
        }
        Ok(claims) => serve(shard, sid, claims, reader, outbox.clone()).await,
    }
    outbox.close(protocol::closing(close::NORMAL, ""));
    outbox.finished().await;
}

async fn authenticate(
    shard: &Shard,
    reader: &mut BrowserReader,
    outbox: &Outbox,
    token: Option<String>,
    sid: &SessionId,
) -> Result<Claims, (u16, &'static str, String)> {
    let token = match token {
        Some(t) => t,
        None => {
            let wait = Duration::from_millis(shard.cfg().timeouts.auth_ms);
            let max = shard.cfg().limits.max_text_bytes;
            let first = match monoio::time::timeout(wait, next_text(reader, outbox, max)).await {
                Err(_) => {
                    return Err((
                        close::AUTH_TIMEOUT,
                        "auth_timeout",
                        "no auth message received in time".into(),
                    ))
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(t)) => t,
            };
            match serde_json::from_str::<Action>(&first) {
                Ok(Action { auth: Some(t), .. }) => t,
                _ => {
                    shard.metrics().auth_failure(TokenError::Missing);
                    return Err((
                        close::BAD_TOKEN,
                        "unauthorized",
                        "first message must be {\"auth\": \"<token>\"}".into(),
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
            (close::BAD_TOKEN, "unauthorized", e.to_string())
        })
}

/// Reads one whole text message, answering control frames.
async fn next_text(
    reader: &mut BrowserReader,
    outbox: &Outbox,
    max: usize,
) -> Result<String, (u16, &'static str, String)> {
    let mut text = TextAssembler::new(max);
    loop {
        let f = reader.next().await.map_err(read_failure)?;
        match f.message {
            Opcode::Ping => {
                let _ = outbox.push(protocol::pong(f.payload()));
            }
            Opcode::Pong => {}
            Opcode::Close => return Err((close::NORMAL, "closed", "closed by client".into())),
            Opcode::Text => {
                if let Some(t) = text
                    .push(&f)
                    .map_err(|e| (e.close_code(), "protocol_error", e.to_string()))?
                {
                    return Ok(t);
                }
            }
            _ => {
                return Err((
                    close::BAD_REQUEST,
                    "bad_request",
                    "expected a text message".into(),
                ))
            }
        }
    }
}

fn read_failure(e: ReadError) -> (u16, &'static str, String) {
    match e {
        ReadError::Protocol(p) => (p.close_code(), "protocol_error", p.to_string()),
        other => (close::GOING_AWAY, "closed", other.to_string()),
    }
}

async fn serve(
    shard: Rc<Shard>,
    sid: SessionId,
    claims: Claims,
    reader: BrowserReader,
    outbox: Outbox,
) {
    let Some(edge) = EdgeId::parse(&claims.edge) else {
        let _ = outbox.push(protocol::error(
            "bad_request",
            "token names an invalid edge id",
        ));
        outbox.close(protocol::closing(close::BAD_REQUEST, "invalid edge id"));
        return;
    };
    if let Some(t) = shard.shared.registry.tenant_of(&edge) {
        if !t.is_empty() && t != claims.tenant {
            let _ = outbox.push(protocol::error(
                "forbidden",
                "edge belongs to another tenant",
            ));
            outbox.close(protocol::closing(
                close::FORBIDDEN,
                "edge belongs to another tenant",
            ));
            return;
        }
    }
    let cfg = shard.cfg();
    let expires = cfg.auth.enforce_expiry_mid_stream.then(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Instant::now() + Duration::from_secs(claims.exp.saturating_sub(now) + cfg.auth.leeway_s)
    });
    let quota = Quota::new(claims.quota.or(Some(cfg.limits.default_quota_bytes)));
    tracing::info!(%sid, sub = %claims.sub, %edge, mode = ?claims.mode, shard = shard.id, "session open");
    let sess = Rc::new(Session {
        shard: shard.clone(),
        sid,
        edge,
        quota,
        expires,
        outbox,
        gone: Cell::new(false),
        upstream: RefCell::new(None),
        reader: RefCell::new(Some(reader.interrupter())),
        feed: RefCell::new(None),
        next_request: Cell::new(0),
        claims,
    });
    let weak = Rc::downgrade(&sess);
    let _closer = shard.on_close_all(Rc::new(move || {
        if let Some(s) = weak.upgrade() {
            s.fail(close::GOING_AWAY, "shutting_down", "gateway shutting down");
        }
    }));
    // Registered before the check: a revocation that lands after the check
    // finds the session in the shard's table.
    let weak = Rc::downgrade(&sess);
    let _revoker = shard.on_revoke(
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
        return;
    }
    match sess.claims.mode {
        Mode::Query => serve_actions(&sess, reader).await,
        Mode::Relay => Box::pin(relay::run(&sess, reader)).await,
    }
    fanout::unsubscribe(&sess);
    tracing::info!(sid = %sess.sid, bytes = sess.quota.used(), "session closed");
}

/// A validated browser request.
enum BrowserRequest {
    List,
    Query(String, QueryMode),
    Subscribe(String),
}

async fn serve_actions(sess: &Rc<Session>, reader: BrowserReader) {
    let cfg = sess.shard.cfg();
    let (tx, rx) = flume::bounded(cfg.limits.max_pending_actions.max(1));
    let live = keepalive::watch(
        Duration::from_millis(cfg.timeouts.ping_interval_ms),
        Duration::from_millis(cfg.timeouts.idle_timeout_ms),
        reader.interrupter(),
        Some(sess.outbox.clone()),
    );
    let reading = monoio::spawn(read_actions(sess.clone(), reader, tx, live));
    while let Ok(req) = rx.recv_async().await {
        if sess.gone.get() {
            break;
        }
        let flow = match req {
            BrowserRequest::List => list(sess),
            // Boxed: an idle session does not carry a query's state.
            BrowserRequest::Query(d, mode) => Box::pin(query::run(sess, &d, mode)).await,
            BrowserRequest::Subscribe(d) => fanout::subscribe(sess, &d),
        };
        match flow {
            Flow::Continue => {}
            Flow::Close(code, kind, msg) => {
                sess.fail(code, kind, &msg);
                break;
            }
            Flow::Ended => break,
        }
    }
    sess.stop();
    reading.await;
}

/// The browser's half: control frames, and actions queued for the session.
async fn read_actions(
    sess: Rc<Session>,
    mut reader: BrowserReader,
    tx: flume::Sender<BrowserRequest>,
    live: Rc<Liveness>,
) {
    let max = sess.shard.cfg().limits.max_text_bytes;
    let mut text = TextAssembler::new(max);
    loop {
        // A client that sends (pings, actions) but does not read its answers
        // is not read either until it does: its answers stay bounded.
        if sess.outbox.space().await.is_err() {
            break;
        }
        let f = match reader.next().await {
            Ok(f) => f,
            Err(ReadError::Interrupted) => {
                if live.timed_out() {
                    sess.fail(close::GOING_AWAY, "idle_timeout", "no traffic from client");
                    break;
                }
                if sess.gone.get() {
                    break;
                }
                continue;
            }
            Err(ReadError::Protocol(e)) => {
                sess.shard.metrics().protocol_errors.fetch_add(1, Relaxed);
                sess.fail(e.close_code(), "protocol_error", &e.to_string());
                break;
            }
            Err(_) => break,
        };
        live.seen();
        match f.message {
            Opcode::Ping => {
                let _ = sess.outbox.push(protocol::pong(f.payload()));
            }
            Opcode::Pong => {}
            Opcode::Close => {
                let status = match parse_close(f.payload()) {
                    Ok(s) => s.map_or(close::NORMAL, |s| s.code),
                    Err(_) => close::PROTOCOL,
                };
                sess.outbox.close(protocol::closing(status, ""));
                break;
            }
            Opcode::Text => {
                let t = match text.push(&f) {
                    Ok(Some(t)) => t,
                    Ok(None) => continue,
                    Err(e) => {
                        sess.shard.metrics().protocol_errors.fetch_add(1, Relaxed);
                        sess.fail(e.close_code(), "protocol_error", &e.to_string());
                        break;
                    }
                };
                match parse_action(&t) {
                    Ok(req) => {
                        if tx.try_send(req).is_err() {
                            sess.fail(
                                close::BAD_REQUEST,
                                "bad_request",
                                "too many pending actions",
                            );
                            break;
                        }
                    }
                    Err(msg) => {
                        sess.shard.metrics().protocol_errors.fetch_add(1, Relaxed);
                        sess.fail(close::BAD_REQUEST, "bad_request", &msg);
                        break;
                    }
                }
            }
            _ => {
                sess.fail(
                    close::BAD_REQUEST,
                    "bad_request",
                    "binary messages are not accepted in query mode",
                );
                break;
            }
        }
    }
    live.stop();
    sess.stop();
}

fn parse_action(text: &str) -> Result<BrowserRequest, String> {
    let a: Action = serde_json::from_str(text).map_err(|e| format!("invalid JSON message: {e}"))?;
    let dataset = || match &a.dataset {
        Some(d) if !d.is_empty() && d.len() <= 256 => Ok(d.clone()),
        _ => Err(format!(
            "action {:?} needs a \"dataset\"",
            a.action.as_deref().unwrap_or("")
        )),
    };
    match a.action.as_deref() {
        Some("list") => Ok(BrowserRequest::List),
        Some("query") => {
            let mode = match a.mode.as_deref() {
                None | Some("stream") => QueryMode::Stream,
                Some("buffered") => QueryMode::Buffered,
                Some("offload") => QueryMode::Offload,
                Some(m) => {
                    return Err(format!(
                        "unknown query mode {m:?} (stream, buffered or offload)"
                    ))
                }
            };
            Ok(BrowserRequest::Query(dataset()?, mode))
        }
        Some("subscribe") => Ok(BrowserRequest::Subscribe(dataset()?)),
        Some(other) => Err(format!("unknown action {other:?}")),
        None if a.auth.is_some() => Err("already authenticated".into()),
        None => Err("message has no \"action\"".into()),
    }
}

fn list(sess: &Session) -> Flow {
    match sess.shard.shared.registry.datasets(&sess.edge) {
        None => Flow::Close(
            close::EDGE_OFFLINE,
            "edge_offline",
            format!("edge {} is offline", sess.edge),
        ),
        Some(all) => {
            let visible: Vec<_> = all
                .into_iter()
                .filter(|d| sess.claims.may_read(d))
                .collect();
            sess.send(
                &json!({"type": "datasets", "edge": sess.edge.as_str(), "datasets": visible}),
            );
            Flow::Continue
        }
    }
}

/// Checks a dataset request against the token and the edge; the `Flow`
/// to return when it is refused.
pub fn check_dataset(sess: &Session, dataset: &str) -> Option<Flow> {
    if !sess.claims.may_read(dataset) {
        return Some(Flow::Close(
            close::FORBIDDEN,
            "forbidden",
            format!("token does not allow dataset {dataset:?}"),
        ));
    }
    match sess.shard.shared.registry.datasets(&sess.edge) {
        None => Some(Flow::Close(
            close::EDGE_OFFLINE,
            "edge_offline",
            format!("edge {} is offline", sess.edge),
        )),
        Some(ds) if !ds.contains(dataset) => Some(Flow::Close(
            close::NOT_FOUND,
            "unknown_dataset",
            format!("edge {} has no dataset {dataset:?}", sess.edge),
        )),
        Some(_) => None,
    }
}
