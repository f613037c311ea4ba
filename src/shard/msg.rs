//! What shards say to each other through their mailboxes: rare events
//! only (a socket to adopt, an idle connection to hand over, shutdown,
//! revocation), never per frame.

use crate::auth::edge_auth::Transport;
use crate::ids::{ConnId, EdgeId, FeedKey, SessionId};
use crate::wire::egress::Egress;
use crate::wire::handoff::Detached;
use crate::wire::http::Request;

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
    /// A connection a front accepted (the TLS front, which decrypts it, or
    /// the Flight front, which speaks for a Flight client): this end of it
    /// carries plain HTTP/WebSocket, and `transport` says what the front's
    /// handshake proved.
    AdoptFronted {
        sock: Detached,
        transport: Transport,
        /// Where a browser session opened on it sends its frames instead
        /// of the socket (`wire::egress`), when the front takes them so.
        egress: Option<Egress>,
    },
    /// A browser socket accepted elsewhere whose session lives here.
    AdoptBrowser {
        sock: Detached,
        req: Box<Request>,
        sid: SessionId,
        egress: Option<Egress>,
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
    /// Close this session's connections (4410); `at`: when the gateway
    /// had the revocation, for `sluice_revocation_seconds`.
    Revoke {
        sid: SessionId,
        at: std::time::Instant,
    },
}
