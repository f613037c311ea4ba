//! The top of the gateway: start the shards, the TLS front and the Flight
//! front, accept and
//! route each connection, serve the admin endpoints, run each shard's
//! mailbox.

pub mod accept;
pub mod admin;
mod flight;
mod mailbox;
mod pair;
mod route;
pub mod start;
pub mod tls_front;

pub use start::Gateway;
