//! Sluice control plane: decides who may read what, signs short-lived
//! session tokens (EdDSA, per-tenant keys published as JWKS), publishes
//! revocations, and knows which gateway holds which edge. It never touches
//! data.
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod audit;
pub mod catalog;
pub mod edges;
pub mod error;
pub mod etcd;
pub mod keys;
pub mod link;
pub mod secret;
pub mod server;
pub mod store;
pub mod tenants;
pub mod tls;
pub mod userauth;
