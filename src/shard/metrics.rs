//! Counters in Prometheus text format.
//!
//! Each shard writes only its own counters (relaxed atomics on a cache line
//! no other core writes), and `/metrics` sums them at scrape time, so
//! counting costs the hot path nothing but an uncontended add.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::auth::token::TokenError;

#[derive(Default)]
#[repr(align(128))]
pub struct ShardMetrics {
    pub sessions_active: AtomicI64,
    pub sessions_total: AtomicU64,
    pub connector_conns_active: AtomicI64,
    pub relay_conns_active: AtomicI64,
    /// Payload bytes of data frames delivered to browsers (what quotas count).
    pub bytes_forwarded: AtomicU64,
    pub frames_forwarded: AtomicU64,
    /// Payload bytes of data frames from browsers to relay edges.
    pub bytes_upstream: AtomicU64,
    pub streams_started: AtomicU64,
    pub streams_completed: AtomicU64,
    pub streams_failed: AtomicU64,
    pub streams_cancelled: AtomicU64,
    pub quota_closes: AtomicU64,
    pub revoked_closes: AtomicU64,
    pub slow_viewer_closes: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub http_rejections: AtomicU64,
    /// Connections evicted while sending their request head, to make room.
    pub handshakes_evicted: AtomicU64,
    /// Sessions evicted before authenticating, to make room.
    pub unauthenticated_evicted: AtomicU64,
    pub auth_failures: [AtomicU64; TokenError::ALL.len()],
    pub edge_auth_failures: AtomicU64,
    /// Admin requests refused for a missing or wrong token, or locked out.
    pub admin_auth_failures: AtomicU64,
}

impl ShardMetrics {
    /// Data frames handed to a browser's outbox: `frames` of them,
    /// `bytes` of payload (what quotas count).
    #[inline]
    pub fn forwarded(&self, bytes: u64, frames: u64) {
        self.bytes_forwarded.fetch_add(bytes, Relaxed);
        self.frames_forwarded.fetch_add(frames, Relaxed);
    }

    pub fn auth_failure(&self, e: TokenError) {
        let i = TokenError::ALL.iter().position(|x| *x == e).unwrap_or(0);
        self.auth_failures[i].fetch_add(1, Relaxed);
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
}

pub struct Metrics {
    pub shards: Vec<ShardMetrics>,
    /// Written by the fronts' accept loops and hand-offs, on any thread.
    pub fronts: FrontRefusals,
    /// Written by the shard that acted on a revocation.
    pub revocations: RevocationLatency,
}

/// Gauges owned by other parts (the edge registry), passed in at render time.
pub struct Snapshot {
    pub edges_online: usize,
    pub workers_idle: usize,
    pub workers_busy: usize,
    pub relay_idle: usize,
    pub ready: bool,
    /// `None` when revocation is off; else whether the Redis link is up.
    pub revocation_link: Option<bool>,
    pub revocations_received: u64,
    pub revocations_remembered: usize,
    /// JWKS fetches ok, failed, skipped, and tenants cached (`None`: no
    /// `auth.jwks_url`).
    pub jwks: Option<[u64; 4]>,
    pub pending_handshakes: usize,
    pub unauthenticated: usize,
    /// Sessions with a connection open; ended sessions remembered.
    pub sessions_live: usize,
    pub sessions_ended: usize,
    /// Revoked and ended ids forgotten before expiry (the set was full).
    pub spent_forgotten: [u64; 2],
    /// Session-end reports: sent, failed, dropped (queue full).
    pub end_reports: [u64; 3],
    /// `None` when there is no TLS listener.
    pub tls: Option<TlsSnapshot>,
    /// `None` when there is no Flight listener.
    pub flight: Option<Arc<FlightStats>>,
    /// `None` when there is no gRPC listener.
    pub grpc: Option<Arc<TunnelStats>>,
    /// The dependencies this gateway is configured to use.
    pub dependencies: Vec<&'static crate::shard::health::Outage>,
}

/// An HTTP/2 front's connections that have not yet made an authenticated
/// call (`max_unauthenticated`, closed past `timeouts.auth_ms`).
#[derive(Debug, Default)]
pub struct PreAuthStats {
    /// Open now.
    pub open: AtomicU64,
    /// Closed without ever authenticating: past the deadline, or evicted
    /// for a newer one at the bound.
    pub closed: AtomicU64,
}

/// The gRPC connector tunnel's counters (`[grpc] listen`).
#[derive(Debug, Default)]
pub struct TunnelStats {
    pub preauth: Arc<PreAuthStats>,
    /// gRPC connectors registered now.
    pub connectors: AtomicU64,
    /// `Connect` and `Serve` calls refused (bad first message, unknown
    /// request, the gateway's register refusal).
    pub refused: AtomicU64,
    /// `ArrowChunk`s passed to the shards.
    pub chunks: AtomicU64,
}

/// The Flight front's counters (`[flight] listen`).
#[derive(Debug, Default)]
pub struct FlightStats {
    pub preauth: Arc<PreAuthStats>,
    /// Calls received.
    pub calls: AtomicU64,
    /// Calls refused or failed (a status other than OK).
    pub refused: AtomicU64,
    /// `FlightData` messages sent by `DoGet`.
    pub messages: AtomicU64,
    /// Token sessions the front holds open.
    pub sessions: AtomicU64,
}

pub struct TlsSnapshot {
    pub handshakes: u64,
    pub handshake_failures: u64,
    pub active: i64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub cert_not_after: i64,
}

/// One unlabelled series: its help, its type and its value.
fn series(out: &mut String, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
    );
}

/// How long a shard took to act on a revocation: from the moment the
/// gateway had it (the Redis link read it, or the admin endpoint took it)
/// to the moment every connection of the session had its 4410 close
/// queued, which an idle socket writes at once. With the loader's split
/// (`sluice-loadtest revoke`: publish → a plain subscriber → the 4410 at
/// the browser) it says which side a slow revocation was slow on.
#[derive(Debug, Default)]
pub struct RevocationLatency {
    /// Counts at or under each of [`Self::BOUNDS_US`]; the last, +Inf.
    buckets: [AtomicU64; Self::BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl RevocationLatency {
    pub const BOUNDS_US: [u64; 10] = [
        50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000,
    ];

    pub fn record(&self, took: std::time::Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        let i = Self::BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(Self::BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn render(&self, out: &mut String) {
        let name = "sluice_revocation_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} A revocation, from the gateway having it to every connection of the session having its 4410 queued\n# TYPE {name} histogram"
        );
        let mut total = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Relaxed);
            let le = match Self::BOUNDS_US.get(i) {
                Some(us) => format!("{}", *us as f64 / 1e6),
                None => "+Inf".into(),
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {total}");
        }
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

/// A way into the gateway, as the refusal series names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// The shards' own listener (`ws://`, `http://`).
    Ws,
    /// The TLS listener (`wss://`, `https://`, mutual-TLS connectors).
    Wss,
    Flight,
    Grpc,
}

impl Front {
    pub const ALL: [Front; 4] = [Front::Ws, Front::Wss, Front::Flight, Front::Grpc];

    pub fn label(self) -> &'static str {
        match self {
            Front::Ws => "ws",
            Front::Wss => "wss",
            Front::Flight => "flight",
            Front::Grpc => "grpc",
        }
    }
}

/// Why a front turned a connection away before serving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The front's `max_connections` were all open.
    MaxConnections,
    /// The session's shard had no room in its mailbox (answered 503).
    ShardBusy,
    /// The process was out of file descriptors.
    OutOfDescriptors,
}

impl Refused {
    pub const ALL: [Refused; 3] = [
        Refused::MaxConnections,
        Refused::ShardBusy,
        Refused::OutOfDescriptors,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::ShardBusy => "shard_busy",
            Refused::OutOfDescriptors => "out_of_descriptors",
        }
    }
}

/// Connections every front refused, by front and reason: one series
/// (`sluice_front_refusals_total`) however many fronts there are, so a
/// limit reached on any way in shows the same way.
#[derive(Debug, Default)]
pub struct FrontRefusals([[AtomicU64; Refused::ALL.len()]; Front::ALL.len()]);

impl FrontRefusals {
    pub fn count(&self, front: Front, why: Refused) {
        self.0[front as usize][why as usize].fetch_add(1, Relaxed);
    }

    pub fn get(&self, front: Front, why: Refused) -> u64 {
        self.0[front as usize][why as usize].load(Relaxed)
    }

    fn render(&self, out: &mut String) {
        let name = "sluice_front_refusals_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connections a front turned away before serving them, by front and reason\n# TYPE {name} counter"
        );
        for f in Front::ALL {
            for r in Refused::ALL {
                let (front, reason) = (f.label(), r.label());
                let v = self.get(f, r);
                let _ = writeln!(out, "{name}{{front=\"{front}\",reason=\"{reason}\"}} {v}");
            }
        }
    }
}

impl Metrics {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            fronts: FrontRefusals::default(),
            revocations: RevocationLatency::default(),
        }
    }

    pub fn render(&self, snap: &Snapshot) -> String {
        let mut out = String::with_capacity(4096);
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "sluice_ready",
            "1 while accepting new sessions",
            snap.ready as i64,
        );
        if let Some(up) = snap.revocation_link {
            gauge(
                "sluice_revocation_link_up",
                "1 while subscribed to the Redis revocation channel",
                up as i64,
            );
            gauge(
                "sluice_revocations_remembered",
                "Revoked session ids kept until their tokens expire",
                snap.revocations_remembered as i64,
            );
        }
        gauge(
            "sluice_edges_online",
            "Edges with at least one connection",
            snap.edges_online as i64,
        );
        gauge(
            "sluice_connector_workers_idle",
            "Connector worker connections waiting for a request",
            snap.workers_idle as i64,
        );
        gauge(
            "sluice_connector_workers_busy",
            "Connector worker connections serving a stream",
            snap.workers_busy as i64,
        );
        gauge(
            "sluice_relay_edges_idle",
            "Relay edge connections waiting in a pool",
            snap.relay_idle as i64,
        );

        sluice_protocol::outage::render(&mut out, &snap.dependencies);
        if let Some(g) = &snap.grpc {
            let get = |a: &AtomicU64| a.load(Relaxed);
            series(
                &mut out,
                "sluice_grpc_connectors",
                "gauge",
                "Connectors registered over the gRPC tunnel",
                get(&g.connectors),
            );
            series(
                &mut out,
                "sluice_grpc_refused_total",
                "counter",
                "gRPC tunnel calls refused (bad first message, unknown request, register refused)",
                get(&g.refused),
            );
            series(
                &mut out,
                "sluice_grpc_chunks_total",
                "counter",
                "ArrowChunks passed from gRPC connectors to the shards",
                get(&g.chunks),
            );
            preauth_series(&mut out, "grpc", &g.preauth);
        }
        if let Some(f) = &snap.flight {
            let get = |a: &AtomicU64| a.load(Relaxed);
            series(
                &mut out,
                "sluice_flight_calls_total",
                "counter",
                "Arrow Flight calls received",
                get(&f.calls),
            );
            series(
                &mut out,
                "sluice_flight_refused_total",
                "counter",
                "Arrow Flight calls that ended with a status other than OK",
                get(&f.refused),
            );
            series(
                &mut out,
                "sluice_flight_messages_total",
                "counter",
                "FlightData messages sent by DoGet",
                get(&f.messages),
            );
            series(
                &mut out,
                "sluice_flight_sessions",
                "gauge",
                "Session tokens with a gateway session held open by the Flight front",
                get(&f.sessions),
            );
            preauth_series(&mut out, "flight", &f.preauth);
        }
        if let Some(t) = &snap.tls {
            series(
                &mut out,
                "sluice_tls_connections_active",
                "gauge",
                "TLS connections past the handshake",
                t.active,
            );
            series(
                &mut out,
                "sluice_tls_handshakes_total",
                "counter",
                "TLS handshakes completed",
                t.handshakes as i64,
            );
            series(
                &mut out,"sluice_tls_handshake_failures_total", "counter", "TLS handshakes failed or timed out (bad client certificate, wrong CA, expired, not TLS)", t.handshake_failures as i64);
            series(
                &mut out,
                "sluice_tls_reloads_total",
                "counter",
                "Certificate reloads that took effect",
                t.reloads as i64,
            );
            series(
                &mut out,
                "sluice_tls_reload_failures_total",
                "counter",
                "Certificate reloads refused (the previous certificate stays)",
                t.reload_failures as i64,
            );
            series(
                &mut out,
                "sluice_tls_certificate_not_after_seconds",
                "gauge",
                "Unix time the serving certificate expires",
                t.cert_not_after,
            );
        }
        let _ = writeln!(
            out,
            "# HELP sluice_pending_handshakes Connections whose request head has not arrived\n# TYPE sluice_pending_handshakes gauge\nsluice_pending_handshakes {}\n# HELP sluice_unauthenticated_sessions Upgraded browser sessions not yet authenticated\n# TYPE sluice_unauthenticated_sessions gauge\nsluice_unauthenticated_sessions {}",
            snap.pending_handshakes, snap.unauthenticated
        );
        let _ = writeln!(
            out,
            "# HELP sluice_session_ids_live Sessions (token sids) with a connection open or ending\n# TYPE sluice_session_ids_live gauge\nsluice_session_ids_live {}\n# HELP sluice_session_ids_ended Ended sessions remembered until their tokens expire\n# TYPE sluice_session_ids_ended gauge\nsluice_session_ids_ended {}",
            snap.sessions_live, snap.sessions_ended
        );
        let _ = writeln!(
            out,
            "# HELP sluice_spent_sessions_forgotten_total Revoked or ended session ids forgotten before their tokens expired, because limits.max_spent_sessions were remembered\n# TYPE sluice_spent_sessions_forgotten_total counter"
        );
        for (set, n) in ["revoked", "ended"].iter().zip(snap.spent_forgotten) {
            let _ = writeln!(
                out,
                "sluice_spent_sessions_forgotten_total{{set=\"{set}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP sluice_session_end_reports_total Session ends reported to the control plane or Redis\n# TYPE sluice_session_end_reports_total counter"
        );
        for (result, n) in ["sent", "failed", "dropped"].iter().zip(snap.end_reports) {
            let _ = writeln!(
                out,
                "sluice_session_end_reports_total{{result=\"{result}\"}} {n}"
            );
        }
        if let Some([ok, failed, skipped, cached]) = snap.jwks {
            let _ = writeln!(
                out,
                "# HELP sluice_jwks_fetches_total JWKS fetches from the control plane (skipped: over auth.jwks_fetches_per_minute or queue full)\n# TYPE sluice_jwks_fetches_total counter\nsluice_jwks_fetches_total{{result=\"ok\"}} {ok}\nsluice_jwks_fetches_total{{result=\"failed\"}} {failed}\nsluice_jwks_fetches_total{{result=\"skipped\"}} {skipped}\n# HELP sluice_jwks_tenants_cached Tenants whose keys (or failed fetch) are cached\n# TYPE sluice_jwks_tenants_cached gauge\nsluice_jwks_tenants_cached {cached}"
            );
        }
        if snap.revocation_link.is_some() {
            let _ = writeln!(
                out,
                "# HELP sluice_revocations_received_total Revocations received (channel and resync)\n# TYPE sluice_revocations_received_total counter\nsluice_revocations_received_total {}",
                snap.revocations_received
            );
        }
        type Get = fn(&ShardMetrics) -> i64;
        let per_shard: [(&str, &str, &str, Get); 20] = [
            (
                "sluice_sessions_active",
                "gauge",
                "Browser sessions open",
                |s| s.sessions_active.load(Relaxed),
            ),
            (
                "sluice_sessions_total",
                "counter",
                "Browser sessions accepted",
                |s| s.sessions_total.load(Relaxed) as i64,
            ),
            (
                "sluice_connector_connections_active",
                "gauge",
                "Connector worker connections open",
                |s| s.connector_conns_active.load(Relaxed),
            ),
            (
                "sluice_relay_connections_active",
                "gauge",
                "Relay edge connections open",
                |s| s.relay_conns_active.load(Relaxed),
            ),
            (
                "sluice_bytes_forwarded_total",
                "counter",
                "Payload bytes of data frames delivered to browsers",
                |s| s.bytes_forwarded.load(Relaxed) as i64,
            ),
            (
                "sluice_frames_forwarded_total",
                "counter",
                "Data frames delivered to browsers",
                |s| s.frames_forwarded.load(Relaxed) as i64,
            ),
            (
                "sluice_bytes_upstream_total",
                "counter",
                "Payload bytes of data frames from browsers to relay edges",
                |s| s.bytes_upstream.load(Relaxed) as i64,
            ),
            (
                "sluice_streams_started_total",
                "counter",
                "Streams requested from connectors",
                |s| s.streams_started.load(Relaxed) as i64,
            ),
            (
                "sluice_streams_completed_total",
                "counter",
                "Streams that ended with stream_end",
                |s| s.streams_completed.load(Relaxed) as i64,
            ),
            (
                "sluice_streams_failed_total",
                "counter",
                "Streams that ended with an error",
                |s| s.streams_failed.load(Relaxed) as i64,
            ),
            (
                "sluice_streams_cancelled_total",
                "counter",
                "Streams cancelled because the browser left",
                |s| s.streams_cancelled.load(Relaxed) as i64,
            ),
            (
                "sluice_revoked_closes_total",
                "counter",
                "Sessions closed (4410) or refused because they were revoked",
                |s| s.revoked_closes.load(Relaxed) as i64,
            ),
            (
                "sluice_quota_closes_total",
                "counter",
                "Sessions closed with 4429 for exceeding their byte quota",
                |s| s.quota_closes.load(Relaxed) as i64,
            ),
            (
                "sluice_slow_viewer_closes_total",
                "counter",
                "Live-feed viewers dropped for falling behind (4409)",
                |s| s.slow_viewer_closes.load(Relaxed) as i64,
            ),
            (
                "sluice_protocol_errors_total",
                "counter",
                "Connections closed for a WebSocket or message protocol violation",
                |s| s.protocol_errors.load(Relaxed) as i64,
            ),
            (
                "sluice_http_rejections_total",
                "counter",
                "Requests answered with an HTTP error status",
                |s| s.http_rejections.load(Relaxed) as i64,
            ),
            (
                "sluice_handshakes_evicted_total",
                "counter",
                "Connections closed while still sending their request head, to make room for newer ones (limits.max_pending_handshakes)",
                |s| s.handshakes_evicted.load(Relaxed) as i64,
            ),
            (
                "sluice_unauthenticated_evicted_total",
                "counter",
                "Upgraded sessions closed (4408) before authenticating, to make room for newer ones (limits.max_unauthenticated)",
                |s| s.unauthenticated_evicted.load(Relaxed) as i64,
            ),
            (
                "sluice_edge_auth_failures_total",
                "counter",
                "Connector or edge connections refused for a bad Edge-Key",
                |s| s.edge_auth_failures.load(Relaxed) as i64,
            ),
            (
                "sluice_admin_auth_failures_total",
                "counter",
                "Admin requests refused for a missing or wrong admin token, or from an address locked out (auth.admin_failures_per_minute)",
                |s| s.admin_auth_failures.load(Relaxed) as i64,
            ),
        ];
        for (name, kind, help, get) in per_shard {
            let total: i64 = self.shards.iter().map(get).sum();
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {total}"
            );
            for (i, s) in self.shards.iter().enumerate() {
                let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", get(s));
            }
        }
        let name = "sluice_auth_failures_total";
        let _ = writeln!(
            out,
            "# HELP {name} Browser sessions refused, by reason\n# TYPE {name} counter"
        );
        for (i, e) in TokenError::ALL.iter().enumerate() {
            let total: u64 = self
                .shards
                .iter()
                .map(|s| s.auth_failures[i].load(Relaxed))
                .sum();
            let _ = writeln!(out, "{name}{{reason=\"{}\"}} {total}", e.label());
        }
        self.fronts.render(&mut out);
        self.revocations.render(&mut out);
        out
    }
}

/// An HTTP/2 front's pre-authentication series.
fn preauth_series(out: &mut String, front: &str, p: &PreAuthStats) {
    series(
        out,
        &format!("sluice_{front}_unauthenticated_connections"),
        "gauge",
        "Connections that have not made an authenticated call yet",
        p.open.load(Relaxed),
    );
    series(
        out,
        &format!("sluice_{front}_unauthenticated_closed_total"),
        "counter",
        "Connections closed before any authenticated call: past timeouts.auth_ms, or evicted at max_unauthenticated",
        p.closed.load(Relaxed),
    );
}
