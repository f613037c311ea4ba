//! The shard: one thread, one monoio runtime, the sessions that hash to it.
//! Shards share [`Shared`] and talk only through their mailboxes
//! ([`ShardMsg`]), for rare events; forwarding never crosses a shard.

pub mod health;
mod local;
pub mod metrics;
mod msg;
pub mod reply;
mod shared;

pub use local::{CloserGuard, IdleSlot, RevokerGuard, Shard, Waiting};
pub use msg::{ConnMeta, MovedConn, ShardMsg};
pub use shared::Shared;
