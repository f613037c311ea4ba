//! Failed authentications, rate-limited per source address, one table per
//! secret: the gateway's edge keys (`auth.edge_failures_per_minute`) and
//! admin token (`auth.admin_failures_per_minute`), the control plane's
//! admin and gateway tokens (`--admin-failures-per-minute`). Each failure
//! costs the address one of its tries per minute, refilled continuously;
//! with none left the address is refused (429) before its secret is even
//! looked at, until a try refills. Failures are logged counted — the
//! first, then one warning per lockout with the tally — never one line per
//! attempt, so a guessing client cannot flood the log either.
//!
//! Each table is bounded (`auth.edge_failure_sources`,
//! `auth.admin_failure_sources`, `--admin-failure-sources`): when full,
//! entries whose tries have all refilled go first; if none has, the new
//! address is not tracked (it is still refused on each bad secret, only not
//! locked out).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Lockout {
    /// What fails here, for the log: "edge", "admin".
    what: &'static str,
    per_minute: u32,
    max_sources: usize,
    sources: Mutex<HashMap<IpAddr, Tries>>,
}

struct Tries {
    /// Tries left (fractional: refilled continuously).
    left: f64,
    at: Instant,
    /// Failures since the address was last locked out (for the log).
    failures: u64,
    locked: bool,
}

/// The address must wait this long for its next try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockedOut(pub Duration);

impl Lockout {
    pub fn new(what: &'static str, per_minute: u32, max_sources: usize) -> Self {
        Self {
            what,
            per_minute,
            max_sources,
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, t: &mut Tries, now: Instant) {
        let per_s = f64::from(self.per_minute) / 60.0;
        let cap = f64::from(self.per_minute);
        t.left = (t.left + now.duration_since(t.at).as_secs_f64() * per_s).min(cap);
        t.at = now;
    }

    /// Whether `ip` may try now; `Err` while it is locked out.
    pub fn check(&self, ip: IpAddr) -> Result<(), LockedOut> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut map = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = map.get_mut(&ip) else {
            return Ok(());
        };
        self.refill(t, now);
        if t.left >= 1.0 {
            t.locked = false;
            return Ok(());
        }
        let per_s = f64::from(self.per_minute) / 60.0;
        Err(LockedOut(Duration::from_secs_f64((1.0 - t.left) / per_s)))
    }

    /// Records a failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if self.per_minute == 0 {
            return;
        }
        let now = Instant::now();
        let cap = f64::from(self.per_minute);
        let mut map = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&ip) && map.len() >= self.max_sources {
            let per_s = cap / 60.0;
            map.retain(|_, t| t.left + now.duration_since(t.at).as_secs_f64() * per_s < cap);
            if map.len() >= self.max_sources {
                return;
            }
        }
        let t = map.entry(ip).or_insert(Tries {
            left: cap,
            at: now,
            failures: 0,
            locked: false,
        });
        self.refill(t, now);
        t.left = (t.left - 1.0).max(0.0);
        t.failures += 1;
        if t.failures == 1 {
            tracing::info!(%ip, "failed {} authentication", self.what);
        }
        if t.left < 1.0 && !t.locked {
            t.locked = true;
            tracing::warn!(%ip, failures = t.failures, per_minute = self.per_minute, "too many failed {} authentications: address locked out", self.what);
            t.failures = 0;
        }
    }

    pub fn tracked(&self) -> usize {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_locked_out_after_its_tries_and_others_are_not() {
        let l = Lockout::new("edge", 3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(a).is_ok());
            l.failed(a);
        }
        let LockedOut(wait) = l.check(a).unwrap_err();
        assert!(
            wait > Duration::from_secs(10) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(l.check(b).is_ok(), "another address is unaffected");
        // Bounded: a third address is not tracked while the two are.
        l.failed(b);
        l.failed("10.0.0.3".parse().unwrap());
        assert_eq!(l.tracked(), 2);
        // Off.
        let off = Lockout::new("edge", 0, 2);
        off.failed(a);
        assert!(off.check(a).is_ok());
    }
}
