//! A dependency that goes down (Redis, the control plane, etcd) is logged
//! once when it goes, counted while it stays down — in a metric and in one
//! summary line a minute — and logged once when it returns. Never one line
//! per session or per retry: an outage that lasts four minutes under load
//! must not bury everything else in the log.

use crate::sync::lock;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a dependency that stays down is summarised.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// One dependency's health, as its callers see it.
pub struct Outage {
    what: &'static str,
    down: AtomicBool,
    /// Failures since the process started.
    failures: AtomicU64,
    /// Times it went down.
    outages: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    since: Option<Instant>,
    summarised: Option<Instant>,
    /// Failures since the last line about this outage.
    unreported: u64,
    /// Failures in this outage.
    in_outage: u64,
}

impl Outage {
    /// `what` names the dependency in the log and the metrics
    /// ("redis", "control plane").
    pub const fn new(what: &'static str) -> Self {
        Outage {
            what,
            down: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            state: Mutex::new(State {
                since: None,
                summarised: None,
                unreported: 0,
                in_outage: 0,
            }),
        }
    }

    pub fn what(&self) -> &'static str {
        self.what
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    pub fn outages(&self) -> u64 {
        self.outages.load(Relaxed)
    }

    /// A call to the dependency failed with `error`.
    pub fn failed(&self, error: &dyn Display) {
        self.failed_at(error, Instant::now());
    }

    fn failed_at(&self, error: &dyn Display, now: Instant) {
        self.failures.fetch_add(1, Relaxed);
        let mut s = lock(&self.state);
        s.in_outage += 1;
        let Some(since) = s.since else {
            s.since = Some(now);
            s.summarised = Some(now);
            s.unreported = 0;
            self.down.store(true, Relaxed);
            self.outages.fetch_add(1, Relaxed);
            tracing::warn!(dependency = self.what, %error, "{} is down: failures are counted (sluice_dependency_failures_total) and summarised once a minute until it returns", self.what);
            return;
        };
        s.unreported += 1;
        if s.summarised
            .is_none_or(|t| now.duration_since(t) >= SUMMARY_EVERY)
        {
            tracing::warn!(
                dependency = self.what,
                failures = s.unreported,
                down_s = now.duration_since(since).as_secs(),
                last_error = %error,
                "{} still down",
                self.what
            );
            s.summarised = Some(now);
            s.unreported = 0;
        }
    }

    /// A call to the dependency succeeded.
    pub fn ok(&self) {
        if !self.down.load(Relaxed) {
            return;
        }
        let mut s = lock(&self.state);
        if let Some(since) = s.since.take() {
            self.down.store(false, Relaxed);
            tracing::info!(
                dependency = self.what,
                down_s = since.elapsed().as_secs(),
                failures = s.in_outage,
                "{} is back",
                self.what
            );
            s.in_outage = 0;
            s.unreported = 0;
        }
    }
}

/// A metric family: name, type, help, and its value for one dependency.
type Family = (&'static str, &'static str, &'static str, fn(&Outage) -> u64);

/// The dependencies' health in Prometheus text, each family's HELP and
/// TYPE once: up (1) or down (0) now, failures and outages so far, one
/// series per dependency (`dependency="redis"`). The gateway's and the
/// control plane's `/metrics` both use it.
pub fn render(out: &mut String, deps: &[&Outage]) {
    use std::fmt::Write as _;
    let families: [Family; 3] = [
        (
            "sluice_dependency_up",
            "gauge",
            "Whether the dependency answered its last call (1) or is down (0)",
            |d| u64::from(!d.is_down()),
        ),
        (
            "sluice_dependency_failures_total",
            "counter",
            "Calls to the dependency that failed",
            Outage::failures,
        ),
        (
            "sluice_dependency_outages_total",
            "counter",
            "Times the dependency went down",
            Outage::outages,
        ),
    ];
    if deps.is_empty() {
        return;
    }
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for d in deps {
            let _ = writeln!(out, "{name}{{dependency=\"{}\"}} {}", d.what(), value(d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_counted_and_ends_once() {
        let o = Outage::new("redis");
        let t0 = Instant::now();
        for i in 0..1000 {
            o.failed_at(&"connection refused", t0 + Duration::from_millis(i));
        }
        assert!(o.is_down());
        assert_eq!((o.failures(), o.outages()), (1000, 1));
        {
            let s = o.state.lock().unwrap();
            assert_eq!(s.unreported, 999, "no summary within the first minute");
        }
        o.failed_at(
            &"still refused",
            t0 + SUMMARY_EVERY + Duration::from_secs(1),
        );
        assert_eq!(o.state.lock().unwrap().unreported, 0, "one summary line");
        o.ok();
        assert!(!o.is_down());
        o.ok();
        o.failed(&"again");
        assert_eq!(o.outages(), 2);
    }

    #[test]
    fn the_metrics_name_each_dependency_under_one_help_line() {
        let (a, b) = (Outage::new("redis"), Outage::new("etcd"));
        a.failed(&"down");
        let mut out = String::new();
        render(&mut out, &[&a, &b]);
        assert_eq!(out.matches("# HELP sluice_dependency_up ").count(), 1);
        assert!(out.contains("sluice_dependency_up{dependency=\"redis\"} 0\n"));
        assert!(out.contains("sluice_dependency_up{dependency=\"etcd\"} 1\n"));
        assert!(out.contains("sluice_dependency_failures_total{dependency=\"redis\"} 1\n"));
    }
}
