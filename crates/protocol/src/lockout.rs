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
//! An IPv6 client is counted by its /64, the block one host or one site is
//! given: counting single addresses would hand each attacker 2⁶⁴ fresh
//! tries. IPv4-mapped IPv6 addresses count as the IPv4 address.
//!
//! Each table is bounded (`auth.edge_failure_sources`,
//! `auth.admin_failure_sources`, `--admin-failure-sources`): when full,
//! entries whose tries have all refilled go first (looked for at most once
//! a second, so a full table costs a guesser's failures nothing extra); if
//! none has, the new address is not tracked (it is still refused on each
//! bad secret, only not locked out).

use crate::sync::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Lockout {
    /// What fails here, for the log: "edge", "admin".
    what: &'static str,
    per_minute: u32,
    max_sources: usize,
    sources: Mutex<Sources>,
}

#[derive(Default)]
struct Sources {
    tries: HashMap<IpAddr, Tries>,
    /// When a full table was last swept for refilled entries.
    swept: Option<Instant>,
}

/// What an address is counted as: itself (IPv4), its /64 (IPv6).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
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
            sources: Mutex::new(Sources::default()),
        }
    }

    fn refill(&self, t: &mut Tries, now: Instant) {
        let per_s = f64::from(self.per_minute) / 60.0;
        let cap = f64::from(self.per_minute);
        t.left = (t.left + now.duration_since(t.at).as_secs_f64() * per_s).min(cap);
        t.at = now;
    }

    /// What fails here ("edge", "admin"), for log lines.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Whether `ip` may try now; `Err` while it is locked out.
    pub fn check(&self, ip: IpAddr) -> Result<(), LockedOut> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut map = lock(&self.sources);
        let Some(t) = map.tries.get_mut(&source_key(ip)) else {
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
        let key = source_key(ip);
        let mut guard = lock(&self.sources);
        let map = &mut *guard;
        if !map.tries.contains_key(&key) && map.tries.len() >= self.max_sources {
            let due = map
                .swept
                .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
            if due {
                map.swept = Some(now);
                let per_s = cap / 60.0;
                map.tries
                    .retain(|_, t| t.left + now.duration_since(t.at).as_secs_f64() * per_s < cap);
            }
            if map.tries.len() >= self.max_sources {
                return;
            }
        }
        let t = map.tries.entry(key).or_insert(Tries {
            left: cap,
            at: now,
            failures: 0,
            locked: false,
        });
        self.refill(t, now);
        t.left = (t.left - 1.0).max(0.0);
        t.failures += 1;
        if t.failures == 1 {
            tracing::info!(ip = %key, "failed {} authentication", self.what);
        }
        if t.left < 1.0 && !t.locked {
            t.locked = true;
            tracing::warn!(ip = %key, failures = t.failures, per_minute = self.per_minute, "too many failed {} authentications: address locked out", self.what);
            t.failures = 0;
        }
    }

    pub fn tracked(&self) -> usize {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tries
            .len()
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

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_and_a_mapped_ipv4_as_itself() {
        let l = Lockout::new("admin", 2, 16);
        for a in ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9"] {
            l.failed(a.parse().unwrap());
        }
        let other_host_same_64: IpAddr = "2001:db8:1:2:abcd::77".parse().unwrap();
        assert!(l.check(other_host_same_64).is_err(), "one /64, one count");
        assert!(l.check("2001:db8:1:3::1".parse().unwrap()).is_ok());
        l.failed("10.1.1.1".parse().unwrap());
        l.failed("::ffff:10.1.1.1".parse().unwrap());
        assert!(l.check("10.1.1.1".parse().unwrap()).is_err());
        assert_eq!(l.tracked(), 2);
    }
}
