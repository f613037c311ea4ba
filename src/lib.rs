//! Sluice gateway: the data plane between edge connectors and browsers.
//!
//! Read top to bottom, a session goes: [`shard`] accepts and reads the
//! request head → [`http`] validates the upgrade → [`session`] authenticates
//! with [`token`] → [`connector`] pairs it with an edge connection (moved to
//! the session's shard by [`handoff`]) → [`query`], [`fanout`] or [`relay`]
//! forward frames read by [`reader`] into an [`outbox`] → close codes from
//! [`protocol`].

pub mod admin;
pub mod announce;
pub mod certs;
pub mod config;
pub mod connector;
pub mod edge_auth;
pub mod edge_key;
pub mod fanout;
pub mod frame;
pub mod handoff;
pub mod http;
pub mod ids;
pub mod jwks;
pub mod keepalive;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod query;
pub mod quota;
pub mod reader;
pub mod registry;
pub mod relay;
pub mod revocation;
pub mod server;
pub mod session;
pub mod shard;
pub mod static_files;
pub mod tls;
pub mod token;
pub mod utf8;
