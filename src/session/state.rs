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
use crate::registry::Who;
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
///
/// `repr(C)`, the fields every forwarded frame reads first (the outbox,
/// the expiry, the quota's count): with 200 slow streams a session's
/// lines are cold at each frame, and in Rust's own order those three lay
/// on three lines; here they share one, which the stream's reader has
/// loaded ahead ([`Session::frame_lines`]).
#[repr(C)]
pub struct Session {
    pub outbox: Outbox,
    /// Set when the token's expiry cuts running streams.
    pub expires: Option<Instant>,
    pub quota: Quota,
    pub shard: Rc<Shard>,
    pub sid: SessionId,
    pub claims: Claims,
    pub edge: EdgeId,
    /// Interrupts the read of whatever connector connection serves us now.
    pub upstream: RefCell<Option<Interrupter>>,
    pub(crate) reader: RefCell<Option<Interrupter>>,
    /// Subscribed live feed, if any.
    pub feed: RefCell<Option<FeedKey>>,
    pub(crate) next_request: Cell<u64>,
    /// The browser left or the session is closing: stop everything.
    pub gone: Cell<bool>,
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

    /// Whom the edge's workers serve for this session (its fair share).
    pub fn who(&self) -> Who<'_> {
        Who {
            tenant: &self.claims.tenant,
            sub: &self.claims.sub,
        }
    }

    pub fn request_id(&self, prefix: &str) -> String {
        let n = self.next_request.get() + 1;
        self.next_request.set(n);
        format!("{prefix}{n}")
    }

    /// The lines a stream forwarding into `to` touches per frame, beside
    /// its reader: for `FrameReader::hint_wakeups`, which takes four. Each
    /// line is named once (two of these fields may share one), the
    /// outbox's first: a frame goes through all of it, and the session's
    /// fields are one or two lines of their own.
    pub fn frame_lines(&self, to: &Outbox) -> [*const (); 4] {
        let [flag, last] = to.lines();
        let wanted = [
            flag,
            last,
            self.quota.counter_addr(),
            std::ptr::from_ref(&self.outbox).cast(),
            std::ptr::from_ref(&self.expires).cast(),
            self.quota.spend_addr(),
        ];
        distinct_lines(wanted)
    }

    /// Whether the token has expired and the config cuts running streams.
    pub fn expired(&self) -> bool {
        self.expires.is_some_and(|t| Instant::now() >= t)
    }
}

/// The first four of `wanted` that lie on different 64-byte lines, in
/// order; null where fewer than four do.
fn distinct_lines<const N: usize>(wanted: [*const (); N]) -> [*const (); 4] {
    let mut lines = [std::ptr::null(); 4];
    let mut n = 0;
    for p in wanted {
        let line = p as usize / 64;
        if n < lines.len() && !lines[..n].iter().any(|&q| q as usize / 64 == line) {
            lines[n] = p;
            n += 1;
        }
    }
    lines
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hinted_line_is_named_once_in_order() {
        let p = |a: usize| a as *const ();
        let got = distinct_lines([
            p(0x1000),
            p(0x1038),
            p(0x1040),
            p(0x2000),
            p(0x1008),
            p(0x3000),
        ]);
        assert_eq!(got.map(|q| q as usize), [0x1000, 0x1040, 0x2000, 0x3000]);
        let got = distinct_lines([p(0x1000), p(0x1010), p(0x1020)]);
        assert_eq!(got.map(|q| q as usize), [0x1000, 0, 0, 0]);
    }

    /// The fields a forwarded frame reads first share one line whenever
    /// the session starts 16 bytes into one (after its `Rc`'s counts):
    /// moving one of them down the struct fails here.
    #[test]
    fn the_per_frame_fields_lead_the_session() {
        use std::mem::offset_of;
        assert_eq!(offset_of!(Session, outbox), 0);
        assert!(offset_of!(Session, expires) < 48);
        // `Quota` keeps its count's pointer first (quota.rs's tests).
        assert!(offset_of!(Session, quota) + std::mem::size_of::<usize>() <= 48);
    }
}
