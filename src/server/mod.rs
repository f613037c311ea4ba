//! The top of the gateway: start the shards and the fronts (TLS, Arrow
//! Flight, the gRPC connector tunnel), accept and route each connection,
//! serve the admin endpoints, run each shard's mailbox.

pub mod accept;
pub mod admin;
mod flight;
mod front;
mod h2_front;
mod h2_gate;
mod mailbox;
mod pair;
mod route;
pub mod start;
pub mod tls_front;
mod tunnel;

pub use start::Gateway;
