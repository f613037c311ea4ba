//! A session's outgoing frames handed to the front that speaks for its
//! client, in process, instead of written to a socket pair.
//!
//! A front (Arrow Flight) reaches a shard through a Unix socket pair
//! carrying an ordinary WebSocket session; written there, each byte of a
//! `DoGet` was copied into the kernel by the shard, out of it by the
//! front, and woke the front's thread once per write. With an egress the
//! session's outbox passes the frames it would have written — the same
//! `Bytes`, in the same order, nothing re-framed — over a bounded channel,
//! and the socket pair carries only the request head, its answer and what
//! the front sends the session (actions, pongs). The channel's depth and
//! the outbox's cap bound what a slow front can make the shard hold, and
//! the outbox's stall timeout holds for a front that stops taking them as
//! for a socket that stops draining.

use bytes::Bytes;

/// Batches of frames a session's writer hands over at once.
pub type Batch = Vec<Bytes>;

/// The shard's end: the outbox of the session sends each gathered batch.
#[derive(Debug)]
pub struct Egress(pub(crate) flume::Sender<Batch>);

/// The front's end: every frame of the session, in order; disconnected
/// once the session's writer has finished (after its close frame).
pub type Ingress = flume::Receiver<Batch>;

/// Batches in flight between a session and its front: each is at most
/// the outbox's gathered write (1 MiB), so four are what one socket's
/// buffers held.
pub const DEPTH: usize = 4;

/// A new pair of ends.
pub fn channel() -> (Egress, Ingress) {
    let (tx, rx) = flume::bounded(DEPTH);
    (Egress(tx), rx)
}
