//! The live feeds running on this gateway, shared by its shards: for each
//! feed, the shard that owns it (reads the connector) and one bounded
//! channel per shard that has viewers. Behaviour is in `session::fanout`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::ids::FeedKey;
use crate::wire::reader::Wire;

#[derive(Clone)]
pub enum Event {
    /// `stream_start`, as a ready text frame.
    Start(Bytes),
    /// A binary data frame and its payload length.
    Frame(Wire, u64),
    /// The feed ended (`stream_end` or an error), as a ready text frame.
    End(Bytes),
}

pub struct Entry {
    /// Per shard: the channel to its distributor, while it has viewers.
    pub slots: Vec<Option<flume::Sender<Event>>>,
    pub owner: usize,
    /// `stream_start` and the first binary frame, once seen.
    pub header: Vec<Wire>,
    pub header_done: bool,
}

/// All live feeds (shared by the shards).
#[derive(Default)]
pub struct Feeds {
    pub map: Mutex<HashMap<FeedKey, Arc<Mutex<Entry>>>>,
}

/// Locks a feed table or entry; a panic elsewhere never leaves a feed
/// unusable (the data is plain values).
pub use sluice_protocol::sync::lock;
