//! Sluice gateway: the data plane between edge connectors and browsers.
//!
//! The folders are layers; each imports only those listed before it:
//!
//! | layer | what it holds |
//! |---|---|
//! | [`config`], [`ids`], [`static_files`] | settings, identifiers, the dashboard's files |
//! | [`wire`] | RFC 6455 frames, the HTTP upgrade, readers, bounded outboxes, socket handoff, a fronted session's in-process egress |
//! | [`tls`] | certificate material, `sluice certs`, whether the kernel offers kTLS |
//! | [`auth`] | session tokens, JWKS, edge credentials, revoked sessions |
//! | [`registry`] | edges online, their connections, live feeds, session spend |
//! | [`shard`] | a shard's state, its mailbox messages, metrics |
//! | [`edge`] | edge endpoints, the idle pool, leasing a connection to a session |
//! | [`session`] | the browser session: authenticate, query, fan-out, relay, quota |
//! | [`cluster`] | Redis links: revocations in; edge registry, session ends and spend out |
//! | [`server`] | start, accept, route; the fronts (TLS, Arrow Flight, the gRPC connector tunnel) and what they share; admin endpoints |
//!
//! A browser connection goes: `server::accept` → `server::route` →
//! `session::browser` (handshake, authenticate with `auth::token`) →
//! `edge::acquire` (pair) → `session::query` / `fanout` / `relay`
//! (forward) → close codes from `sluice_protocol`. `docs/architecture.md`
//! tells the whole story.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod ids;
pub mod registry;
pub mod server;
pub mod session;
pub mod shard;
pub mod static_files;
pub mod tls;
pub mod wire;

pub use auth::token::{Claims, Mode, Verifier};
pub use config::Config;
pub use ids::{ConnId, EdgeId, SessionId};
pub use server::Gateway;
pub use sluice_protocol as protocol;
