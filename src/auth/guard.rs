//! One authentication attempt behind a per-address [`Lockout`]: refused
//! with 429 (and `Retry-After`) while the address is out of tries, counted
//! either way, and a failure costs the address a try. The edge endpoints
//! and the admin endpoints share it; each brings its own table and counter.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::auth::lockout::{LockedOut, Lockout};
use crate::wire::http::HttpError;

/// Runs `attempt` for `source` unless it is locked out (then 429 with
/// `locked_reason`). Every refusal, locked out or failed, adds to
/// `failures`.
pub fn guarded<T>(
    lockout: &Lockout,
    source: Option<IpAddr>,
    failures: &AtomicU64,
    locked_reason: &'static str,
    attempt: impl FnOnce() -> Result<T, HttpError>,
) -> Result<T, HttpError> {
    if let Some(LockedOut(wait)) = source.and_then(|ip| lockout.check(ip).err()) {
        failures.fetch_add(1, Relaxed);
        let retry_s = wait.as_secs() + 1;
        tracing::debug!(
            ?source,
            retry_s,
            "{} authentication refused: address locked out",
            lockout.what()
        );
        return Err(HttpError::new(429, locked_reason).retry_after(retry_s));
    }
    attempt().inspect_err(|_| {
        failures.fetch_add(1, Relaxed);
        if let Some(ip) = source {
            lockout.failed(ip);
        }
    })
}
