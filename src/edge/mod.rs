//! Edge connections: connectors and relay edges dial in, authenticate,
//! register and wait in the idle pool; sessions take one, use it, and give
//! it back.

mod conn;
mod endpoint;
mod idle;
mod lease;

pub use conn::EdgeConn;
pub use endpoint::{serve_relay, serve_worker};
pub use idle::take;
pub use lease::{acquire, Lease, RelayHold, Release, Unavailable};
