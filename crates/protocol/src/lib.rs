//! Sluice's wire protocol, shared by the gateway, the connector, the fetch
//! client, the load generator and the demo, so that every side agrees on
//! one definition of each message; and the few small pieces every program
//! needs alike (units, suggestions, the lockout, secrets).
//!
//! - [`connector`]: seed 001 between a connector and the gateway
//!   (`register`, `get_flight_info`, `do_get`, `cancel`, and the
//!   connector's `flight_info`, `stream_start`, `stream_end`, `offload`,
//!   `error` replies);
//! - [`browser`]: between a browser and the gateway (`auth`, `list`,
//!   `query`, `subscribe`, and the gateway's events);
//! - [`relay`]: the `paired` message of relay mode (seed 000);
//! - [`close`]: the WebSocket close codes, and [`ErrorCode`] /
//!   [`Refusal`]: why a session ends;
//! - [`slots`]: the control plane's stream slots and grants in Redis,
//!   which gateways update when a session ends;
//! - [`units`]: sizes and durations as the command lines take them;
//! - [`suggest`]: "did you mean" for misspelled names;
//! - [`lockout`]: failed authentications limited per source address (the
//!   gateway's edge keys and admin token, the control plane's tokens);
//! - [`outage`]: a dependency that is down, logged once and counted;
//! - [`secret`]: a configured secret that `Debug` never shows;
//! - [`sync`]: the one poison-tolerant way to take a lock;
//! - `tunnel` (feature `grpc`): seed 002's gRPC tunnel between a connector
//!   and the gateway, generated from `proto/tunnel.proto`.
//!
//! Messages serialize with their tag first and their fields in the order
//! the protocol has always written them, so the bytes on the wire are
//! those documented in `docs/protocol.md`.
#![forbid(unsafe_code)]

pub mod browser;
pub mod close;
pub mod connector;
mod error;
pub mod lockout;
pub mod outage;
pub mod relay;
pub mod secret;
pub mod slots;
pub mod suggest;
pub mod sync;
pub mod units;

/// Seed 002's gRPC tunnel (`proto/tunnel.proto`, package
/// `sluice.tunnel.v1`): messages, the `ConnectorTunnel` server trait and
/// its client.
#[cfg(feature = "grpc")]
#[allow(clippy::all, missing_docs)]
pub mod tunnel {
    tonic::include_proto!("sluice.tunnel.v1");
}

pub use error::{ErrorCode, Refusal};

/// The subprotocol a connector offers to send frames already in server →
/// client wire format (unmasked), so the gateway forwards them untouched.
pub const FAST_PATH_PROTOCOL: &str = "sluice.frames.v1";
