//! What the front hands a worker task to write to its shard connection:
//! the replies and chunks of the requests it routed there.

use std::sync::Arc;

use bytes::Bytes;

/// What the front writes to a worker's shard connection.
#[derive(Debug)]
pub enum Out {
    /// A JSON reply for request `tag` (the front's id for it).
    Text { tag: Arc<str>, json: String },
    /// A binary message of request `tag`: whole Arrow IPC messages.
    Binary { tag: Arc<str>, data: Bytes },
    /// `register` again (the connector's datasets changed).
    Register(String),
    /// Request `tag`'s `Serve` call broke off: the connection breaks, as
    /// a WebSocket connector's would, so the shard ends the stream with
    /// `edge_disconnected` (4503) instead of a faked end.
    Break { tag: Arc<str> },
}
