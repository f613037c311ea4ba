//! Who may do what: session tokens verified offline (HS256 or EdDSA, keys
//! from config or a JWKS), edge credentials (`Edge-Key` or a client
//! certificate), the sessions revoked since their token was issued, and
//! the compact set that remembers spent session ids.

pub mod dev_token;
pub mod edge_auth;
pub mod guard;
pub mod jwks;
pub use sluice_protocol::lockout;
pub mod revocations;
pub mod spent;
pub mod token;
