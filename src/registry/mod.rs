//! What is online on this gateway, shared by its shards: the edges and
//! their connections (idle or busy, on which shard), and the live feeds.

mod edges;
mod feeds;

pub use edges::*;
pub use feeds::{lock, Entry, Event, Feeds};
