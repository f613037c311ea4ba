//! What is online on this gateway, shared by its shards: the edges and
//! their connections (idle or busy, on which shard), the live feeds, and
//! what each session has spent.

mod edges;
mod feeds;
mod spend;

pub use edges::*;
pub use feeds::{lock, Entry, Event, Feeds};
pub use spend::{
    EndReports, Ended, Joined, OpenError, RemoteJoin, Spend, SpendLink, SpendRequest, Spends,
    SPEND_QUEUE,
};
