//! One authentication attempt behind a per-address [`Lockout`], built so
//! that a guesser can never lock the right caller out: an address that
//! shares a host, a NAT or a proxy with a service (the control plane
//! reporting to the gateway, the gateway reporting to the control plane)
//! keeps being served as long as what it presents is right.
//!
//! So the secret is always checked, in constant time, and a right one
//! always passes. The lockout decides what a *wrong* one gets: 401 while
//! the address has tries left, 429 with `Retry-After` once it has none.
//! Guessing is defeated by the secrets' length (edge keys and admin tokens
//! of at least 16 characters, generated at random by `sluice-control`),
//! not by the lockout; what the lockout bounds is the failure's cost — a
//! locked-out address is neither logged again nor tracked anew — and it
//! tells a misconfigured client to stop. Every failure is counted.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::auth::lockout::{LockedOut, Lockout};
use crate::wire::http::HttpError;

/// Runs `attempt` for `source`; a failure costs the address a try, and
/// once it has none left a failure is answered 429 with `locked_reason`.
/// Every refusal adds to `failures`.
pub fn guarded<T>(
    lockout: &Lockout,
    source: Option<IpAddr>,
    failures: &AtomicU64,
    locked_reason: &'static str,
    attempt: impl FnOnce() -> Result<T, HttpError>,
) -> Result<T, HttpError> {
    let locked = source.and_then(|ip| lockout.check(ip).err());
    let refusal = match attempt() {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    failures.fetch_add(1, Relaxed);
    if let Some(LockedOut(wait)) = locked {
        let retry_s = wait.as_secs() + 1;
        tracing::debug!(
            ?source,
            retry_s,
            "{} authentication refused: address locked out",
            lockout.what()
        );
        return Err(HttpError::new(429, locked_reason).retry_after(retry_s));
    }
    if let Some(ip) = source {
        lockout.failed(ip);
    }
    Err(refusal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(given: &str) -> Result<(), HttpError> {
        if given == "right-token-0123456789" {
            Ok(())
        } else {
            Err(HttpError::new(401, "wrong"))
        }
    }

    #[test]
    fn a_locked_out_address_still_passes_with_the_right_secret() {
        let lockout = Lockout::new("admin", 3, 16);
        let failures = AtomicU64::new(0);
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let try_with = |t: &str| guarded(&lockout, Some(ip), &failures, "locked", || check(t));
        for _ in 0..3 {
            assert_eq!(try_with("guess").unwrap_err().status, 401);
        }
        for _ in 0..1000 {
            assert_eq!(try_with("guess").unwrap_err().status, 429);
        }
        assert!(lockout.check(ip).is_err(), "the address is locked out");
        assert!(try_with("right-token-0123456789").is_ok());
        assert_eq!(failures.load(Relaxed), 1003);
    }
}
