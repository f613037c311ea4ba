//! What every shard of one gateway sees: configuration, verifiers, the
//! edge registry, metrics, the mailboxes. Read-mostly; the registry is the
//! only part that takes a lock, and only per stream.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::auth::lockout::Lockout;
use crate::auth::revocations::Revocations;
use crate::auth::token::Verifier;
use crate::config::{Config, EdgeKeys};
use crate::registry::{EndReports, Feeds, Registry, SpendLink, Spends};
use crate::shard::metrics::{FlightStats, Metrics, Snapshot, TlsSnapshot, TunnelStats};
use crate::shard::{health, ShardMsg};
use crate::static_files::StaticFiles;
use crate::tls::Material;

/// State every shard can see.
pub struct Shared {
    pub cfg: Config,
    pub verifier: Verifier,
    pub edge_keys: EdgeKeys,
    pub registry: Registry,
    pub feeds: Feeds,
    pub metrics: Metrics,
    pub mailboxes: Vec<flume::Sender<ShardMsg>>,
    pub draining: AtomicBool,
    /// Browser sessions open on all shards (for `limits.max_sessions`).
    pub sessions: AtomicUsize,
    /// Connections whose request head has not arrived yet
    /// (`limits.max_pending_handshakes`).
    pub pending_handshakes: AtomicUsize,
    /// Upgraded browser sessions not yet authenticated
    /// (`limits.max_unauthenticated`).
    pub unauthenticated: AtomicUsize,
    pub revocations: Revocations,
    /// Source addresses that failed edge authentication too often.
    pub edge_lockout: Lockout,
    /// Failed admin-token checks per source address.
    pub admin_lockout: Lockout,
    /// Per-session spend and connections, across shards.
    pub spends: Spends,
    /// The same count across gateways, with Redis.
    pub spend_link: Option<SpendLink>,
    pub end_reports: EndReports,
    /// Where clients reach this gateway (`registry.public_url`, or
    /// `ws://` + the listening address).
    pub public_url: String,
    /// The dashboard's files.
    pub web: StaticFiles,
    /// The TLS listener's certificates and counters, when it is on.
    pub tls: Option<Arc<Material>>,
    /// The Flight front's counters and where clients reach it, when it is on.
    pub flight: Option<(Arc<FlightStats>, String)>,
    /// The gRPC connector tunnel's counters, when it is on.
    pub grpc: Option<Arc<TunnelStats>>,
}

/// A place in one of the gateway's bounded counts, given back on drop.
pub struct Admitted {
    shared: Arc<Shared>,
    count: fn(&Shared) -> &AtomicUsize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        (self.count)(&self.shared).fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// Takes a place in `count` if fewer than `max` are taken.
    pub fn admit(
        self: &Arc<Self>,
        count: fn(&Shared) -> &AtomicUsize,
        max: usize,
    ) -> Option<Admitted> {
        let c = count(self);
        if c.fetch_add(1, Ordering::Relaxed) >= max {
            c.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitted {
            shared: self.clone(),
            count,
        })
    }

    /// Takes a place in `count` even past its bound: for a newcomer that
    /// evicted an older holder, whose place frees as soon as it ends.
    pub fn admit_anyway(self: &Arc<Self>, count: fn(&Shared) -> &AtomicUsize) -> Admitted {
        count(self).fetch_add(1, Ordering::Relaxed);
        Admitted {
            shared: self.clone(),
            count,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The dependencies this gateway is configured to use.
    fn dependencies(&self) -> Vec<&'static health::Outage> {
        let mut deps = Vec::new();
        if !self.cfg.revocation.redis_url.is_empty() {
            deps.push(&health::REDIS);
        } else if !self.cfg.control.url.is_empty() {
            deps.push(&health::CONTROL_PLANE);
        }
        deps
    }

    pub fn shard_count(&self) -> usize {
        self.mailboxes.len()
    }

    pub fn snapshot(&self) -> Snapshot {
        let r = self.registry.stats();
        Snapshot {
            edges_online: r.edges_online,
            workers_idle: r.workers_idle,
            workers_busy: r.workers_busy,
            relay_idle: r.relay_idle,
            ready: !self.is_draining() && self.revocations.healthy(),
            revocation_link: self
                .revocations
                .enabled()
                .then(|| self.revocations.healthy()),
            revocations_received: self.revocations.received.load(Ordering::Relaxed),
            revocations_remembered: self.revocations.len(),
            jwks: self.verifier.jwks().map(|j| {
                [
                    j.fetched.load(Ordering::Relaxed),
                    j.failed.load(Ordering::Relaxed),
                    j.skipped.load(Ordering::Relaxed),
                    j.cached() as u64,
                ]
            }),
            pending_handshakes: self.pending_handshakes.load(Ordering::Relaxed),
            unauthenticated: self.unauthenticated.load(Ordering::Relaxed),
            sessions_live: self.spends.counts().0,
            sessions_ended: self.spends.counts().1,
            spent_forgotten: [self.revocations.forgotten(), self.spends.forgotten()],
            end_reports: [
                self.end_reports.sent.load(Ordering::Relaxed),
                self.end_reports.failed.load(Ordering::Relaxed),
                self.end_reports.dropped.load(Ordering::Relaxed),
            ],
            tls: self.tls.as_ref().map(|m| {
                let s = &m.stats;
                TlsSnapshot {
                    handshakes: s.handshakes.load(Ordering::Relaxed),
                    handshake_failures: s.handshake_failures.load(Ordering::Relaxed),
                    active: s.active.load(Ordering::Relaxed),
                    reloads: s.reloads.load(Ordering::Relaxed),
                    reload_failures: s.reload_failures.load(Ordering::Relaxed),
                    cert_not_after: s.cert_not_after.load(Ordering::Relaxed),
                }
            }),
            flight: self.flight.as_ref().map(|(s, _)| s.clone()),
            grpc: self.grpc.clone(),
            dependencies: self.dependencies(),
        }
    }
}
