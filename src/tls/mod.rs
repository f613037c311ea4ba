//! Certificate material: loading and reloading the listener's certificate,
//! key and client CA, the trust roots for outgoing HTTPS, and the
//! development certificates of `sluice certs`. The TLS front that uses it
//! is `server::tls_front`; [`offload`] says whether the kernel could take
//! the crypto over.

pub mod certs;
pub mod material;
pub mod offload;

pub use material::{Material, MaterialError};
