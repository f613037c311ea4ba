//! A browser session's state, shared by the code that serves its actions
//! (query, fan-out, relay): who it is, where its frames go, what it may
//! still spend, and how to stop it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use monoio::io::OwnedReadHalf;
use monoio::net::TcpStream;
use sluice_protocol::browser::ServerEvent;

use crate::auth::token::Claims;
use crate::ids::{EdgeId, FeedKey, SessionId};
use crate::session::quota::Quota;
use crate::shard::Shard;
use crate::wire::message::{self, close, ErrorCode, Refusal};
use crate::wire::outbox::Outbox;
use crate::wire::reader::{FrameReader, Interrupter};

pub type BrowserReader = FrameReader<OwnedReadHalf<TcpStream>>;

/// What to do after an action.
pub enum Flow {
    Continue,
    /// Send `{"type":"error",…}` and close the session.
    Close(Refusal),
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
    pub(crate) reader: RefCell<Option<Interrupter>>,
    /// Subscribed live feed, if any.
    pub feed: RefCell<Option<FeedKey>>,
    pub(crate) next_request: Cell<u64>,
}

impl Session {
    pub fn send(&self, event: &ServerEvent) {
        let _ = self.outbox.push(message::text(event));
    }

    /// Error message then close frame; nothing is queued after them.
    pub fn fail(&self, why: Refusal) {
        if self.outbox.is_open() {
            tracing::debug!(sid = %self.sid, close = why.close, code = %why.code, message = %why.message, "closing session");
            let _ = self.outbox.push(message::error(&why));
            self.outbox.close(message::closing(why.close, &why.message));
        }
        self.stop();
    }

    /// Revoked: the error and close go out ahead of any data still queued.
    pub fn revoke(&self) {
        self.outbox.discard_pending();
        self.fail(Refusal::new(
            close::REVOKED,
            ErrorCode::Revoked,
            "session revoked",
        ));
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

    /// The lines a stream forwarding into `to` touches per frame, beside
    /// its reader: for `FrameReader::hint_wakeups`.
    pub fn frame_lines(&self, to: &Outbox) -> [*const (); 4] {
        [
            std::ptr::from_ref(&self.expires).cast(),
            std::ptr::from_ref(&self.quota).cast(),
            self.quota.counter_addr(),
            to.addr(),
        ]
    }

    /// Whether the token has expired and the config cuts running streams.
    pub fn expired(&self) -> bool {
        self.expires.is_some_and(|t| Instant::now() >= t)
    }
}

/// Checks a dataset request against the token and the edge; the `Flow`
/// to return when it is refused.
pub fn check_dataset(sess: &Session, dataset: &str) -> Option<Flow> {
    if !sess.claims.may_read(dataset) {
        return Some(Flow::Close(Refusal::new(
            close::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "token does not allow dataset {dataset:?}; it allows {}",
                sess.claims
                    .datasets
                    .iter()
                    .flatten()
                    .map(|d| format!("{d:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )));
    }
    let registry = &sess.shard.shared.registry;
    match registry.datasets_for(&sess.edge, &sess.claims.tenant) {
        None => Some(Flow::Close(Refusal::new(
            close::EDGE_OFFLINE,
            ErrorCode::EdgeOffline,
            format!("edge {} is offline", sess.edge),
        ))),
        Some(Err(())) => Some(Flow::Close(other_tenant())),
        Some(Ok(ds)) if !ds.iter().any(|d| d == dataset) => {
            // Name what may be read instead (never a dataset the token
            // does not allow: `list` would not show it either).
            let readable: Vec<String> = ds
                .iter()
                .filter(|d| sess.claims.may_read(d))
                .map(|d| format!("{d:?}"))
                .collect();
            let hint = if readable.is_empty() {
                "it serves none this token may read".to_owned()
            } else {
                format!("it serves {}", readable.join(", "))
            };
            Some(Flow::Close(Refusal::new(
                close::NOT_FOUND,
                ErrorCode::UnknownDataset,
                format!("edge {} has no dataset {dataset:?}; {hint}", sess.edge),
            )))
        }
        Some(Ok(_)) => None,
    }
}

/// The edge now online under the token's edge id belongs to another tenant
/// (checked at every pairing, not only when the session opened).
pub fn other_tenant() -> Refusal {
    Refusal::forbidden("edge belongs to another tenant")
}
