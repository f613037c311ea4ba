//! Which edges are online, which of their connections are idle, and on which
//! shard each one sits.
//!
//! This is the one structure all shards share. It is touched when a
//! connection registers, when a session asks for a worker, and when a worker
//! goes idle again — per stream, never per frame — so a mutex is the honest
//! choice: the data path itself stays shard-local.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::ids::{ConnId, EdgeId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// A seed-001 `/ws/connect` worker: serves requests one at a time.
    Worker,
    /// A seed-000 `/edge/{id}` connection: consumed by one relay session.
    Relay,
}

#[derive(Debug)]
struct Slot {
    kind: ConnKind,
    shard: usize,
    idle: bool,
    datasets: Vec<String>,
    /// Who holds this worker while it is busy.
    holder: Option<Holder>,
}

/// Who a worker serves: the session's tenant and subject (the token's
/// `sub`, the user or client it was issued to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Who<'a> {
    pub tenant: &'a str,
    pub sub: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    tenant: String,
    sub: String,
}

impl Holder {
    fn of(who: Who<'_>) -> Self {
        Holder {
            tenant: who.tenant.to_owned(),
            sub: who.sub.to_owned(),
        }
    }
}

#[derive(Debug, Default)]
struct Edge {
    tenant: String,
    version: String,
    conns: HashMap<ConnId, Slot>,
    /// Idle relay connections, oldest first.
    relay_idle: VecDeque<ConnId>,
    /// Sessions waiting for a connection of this edge to become idle.
    /// Sessions waiting for a connection, and whom each serves.
    waiters: Vec<(flume::Sender<()>, Holder)>,
}

impl Edge {
    /// An edge registered without a tenant (a plain `edge_keys` entry)
    /// serves any tenant's sessions, as it always has.
    fn tenant_may_pair(&self, tenant: &str) -> bool {
        self.tenant.is_empty() || self.tenant == tenant
    }

    /// Whether `who` must leave an idle worker to others: it already holds
    /// its fair share of this edge's workers — `share` of them (at least
    /// one), per subject, and per tenant where the edge serves several —
    /// and another subject is waiting for one. Without contention a
    /// subject may use every worker; with it, one whose sessions stop
    /// reading, or that opens many at once, cannot keep them all: past its
    /// share it waits like a session that found none idle, and the workers
    /// it gives back go to the others.
    fn over_share(&self, who: Who<'_>, share: f64) -> bool {
        if share <= 0.0 || share >= 1.0 {
            return false;
        }
        let others_wait = self
            .waiters
            .iter()
            .any(|(w, h)| !w.is_disconnected() && (h.tenant != who.tenant || h.sub != who.sub));
        if !others_wait {
            return false;
        }
        let workers = self.conns.values().filter(|s| s.kind == ConnKind::Worker);
        let cap = ((workers.clone().count() as f64 * share).floor() as usize).max(1);
        let held = |f: &dyn Fn(&Holder) -> bool| {
            workers
                .clone()
                .filter(|s| s.holder.as_ref().is_some_and(f))
                .count()
        };
        let by_sub = held(&|h| h.tenant == who.tenant && h.sub == who.sub);
        let by_tenant = || held(&|h| h.tenant == who.tenant);
        by_sub >= cap || (self.tenant.is_empty() && by_tenant() >= cap)
    }

    fn datasets(&self) -> BTreeSet<String> {
        self.conns
            .values()
            .filter(|s| s.kind == ConnKind::Worker)
            .flat_map(|s| s.datasets.iter().cloned())
            .collect()
    }

    /// Wakes every waiter but keeps it listed until it has looked again
    /// (its receiver drops when it does): meanwhile it still counts as
    /// waiting, so a subject over its share cannot take the worker first.
    fn wake_all(&mut self) {
        self.waiters.retain(|(w, _)| !w.is_disconnected());
        for (w, _) in &self.waiters {
            let _ = w.try_send(());
        }
    }

    fn wake_one(&mut self) {
        while let Some((w, _)) = self.waiters.pop() {
            if w.send(()).is_ok() {
                break;
            }
        }
    }
}

/// Result of asking for a connection.
pub enum Acquire {
    /// Reserved for the caller: it is no longer idle in the registry.
    Got {
        conn: ConnId,
        shard: usize,
    },
    /// The edge is online but every connection is busy; the receiver fires
    /// when one becomes idle (then ask again).
    Busy(flume::Receiver<()>),
    Offline,
    /// The edge online under this id belongs to another tenant than the
    /// session's: an edge id can change hands while a session waits.
    OtherTenant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    TooManyConnections,
    TenantMismatch,
}

#[derive(Default)]
pub struct Registry {
    edges: Mutex<HashMap<EdgeId, Edge>>,
    next_conn: AtomicU64,
    /// Told (without blocking) when the set of online edges or their
    /// datasets change, so the edge announcer need not wait a heartbeat.
    changed: std::sync::OnceLock<flume::Sender<()>>,
    /// The part of an edge's workers one subject (or, on a shared edge,
    /// one tenant) may hold (`limits.worker_share`); 0 or 1 = no limit.
    worker_share: f64,
}

/// An online edge, as the admin endpoint and the edge announcer see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OnlineEdge {
    pub edge: String,
    pub tenant: String,
    pub workers: usize,
    pub datasets: Vec<String>,
}

/// Figures for `/metrics`.
pub struct RegistryStats {
    pub edges_online: usize,
    pub workers_idle: usize,
    pub workers_busy: usize,
    pub relay_idle: usize,
}

impl Registry {
    /// A registry whose subjects may each hold `share` of an edge's
    /// workers (see `limits.worker_share`).
    pub fn with_worker_share(share: f64) -> Self {
        Registry {
            worker_share: share,
            ..Registry::default()
        }
    }

    /// Subscribes `tx` to change signals (one subscriber).
    pub fn on_change(&self, tx: flume::Sender<()>) {
        let _ = self.changed.set(tx);
    }

    fn signal(&self) {
        if let Some(tx) = self.changed.get() {
            let _ = tx.try_send(());
        }
    }

    /// Every online edge, sorted by id.
    pub fn online(&self) -> Vec<OnlineEdge> {
        let g = self.lock();
        let mut v: Vec<_> = g
            .iter()
            .map(|(id, e)| OnlineEdge {
                edge: id.to_string(),
                tenant: e.tenant.clone(),
                workers: e
                    .conns
                    .values()
                    .filter(|c| c.kind == ConnKind::Worker)
                    .count(),
                datasets: e.datasets().into_iter().collect(),
            })
            .collect();
        v.sort_by(|a, b| a.edge.cmp(&b.edge));
        v
    }

    pub fn new_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EdgeId, Edge>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every update is a single insert/remove), so poisoning is ignored.
        sluice_protocol::sync::lock(&self.edges)
    }

    /// Adds a connection, idle. An edge keeps one tenant for its lifetime.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &self,
        edge: &EdgeId,
        tenant: &str,
        version: &str,
        kind: ConnKind,
        conn: ConnId,
        shard: usize,
        datasets: Vec<String>,
        max_conns: usize,
    ) -> Result<(), RegisterError> {
        let mut g = self.lock();
        let e = g.entry(edge.clone()).or_default();
        // The first tenant named owns the edge while it has connections.
        // Relay edges name none (""): they join whatever the edge has.
        match (e.conns.is_empty(), tenant.is_empty()) {
            (true, _) => e.tenant = tenant.to_owned(),
            (false, true) => {}
            (false, false) if e.tenant.is_empty() => e.tenant = tenant.to_owned(),
            (false, false) if e.tenant != tenant => return Err(RegisterError::TenantMismatch),
            (false, false) => {}
        }
        if e.conns.len() >= max_conns {
            return Err(RegisterError::TooManyConnections);
        }
        e.version = version.to_owned();
        e.conns.insert(
            conn,
            Slot {
                kind,
                shard,
                idle: true,
                datasets,
                holder: None,
            },
        );
        if kind == ConnKind::Relay {
            e.relay_idle.push_back(conn);
        }
        e.wake_one();
        drop(g);
        self.signal();
        Ok(())
    }

    pub fn remove(&self, edge: &EdgeId, conn: ConnId) {
        let mut g = self.lock();
        if let Some(e) = g.get_mut(edge) {
            e.conns.remove(&conn);
            e.relay_idle.retain(|c| *c != conn);
            if e.conns.is_empty() {
                // Wake waiters so they see "offline" at once.
                for (w, _) in e.waiters.drain(..) {
                    let _ = w.send(());
                }
                g.remove(edge);
            }
        }
        drop(g);
        self.signal();
    }

    /// A worker re-registered: its dataset list changed.
    pub fn update_datasets(&self, edge: &EdgeId, conn: ConnId, datasets: Vec<String>) {
        let mut g = self.lock();
        if let Some(s) = g.get_mut(edge).and_then(|e| e.conns.get_mut(&conn)) {
            s.datasets = datasets;
        }
        drop(g);
        self.signal();
    }

    /// A worker finished its request and waits, idle, on `shard`.
    pub fn release(&self, edge: &EdgeId, conn: ConnId, shard: usize) {
        let mut g = self.lock();
        if let Some(e) = g.get_mut(edge) {
            if let Some(s) = e.conns.get_mut(&conn) {
                s.idle = true;
                s.shard = shard;
                s.holder = None;
                // Woken: every waiter, since one over its share may be
                // first in line and would pass the worker on to no one.
                e.wake_all();
            }
        }
    }

    /// Reserves an idle connection of `kind` for a session of `tenant`,
    /// preferring one already on `prefer_shard` (no socket has to move).
    /// The tenant is checked here, at every pairing, under the same lock
    /// that hands the connection out: an edge that went offline and came
    /// back registered by another tenant never serves the old session.
    pub fn acquire(
        &self,
        edge: &EdgeId,
        kind: ConnKind,
        dataset: Option<&str>,
        who: Who<'_>,
        prefer_shard: usize,
    ) -> Acquire {
        let mut g = self.lock();
        let Some(e) = g.get_mut(edge) else {
            return Acquire::Offline;
        };
        if !e.tenant_may_pair(who.tenant) {
            return Acquire::OtherTenant;
        }
        let found = match kind {
            ConnKind::Relay => e.relay_idle.pop_front(),
            ConnKind::Worker if e.over_share(who, self.worker_share) => None,
            ConnKind::Worker => {
                let mut best: Option<ConnId> = None;
                for (id, s) in &e.conns {
                    let serves = dataset.is_none_or(|d| s.datasets.iter().any(|x| x == d));
                    if s.kind == ConnKind::Worker && s.idle && serves {
                        if s.shard == prefer_shard {
                            best = Some(*id);
                            break;
                        }
                        best.get_or_insert(*id);
                    }
                }
                best
            }
        };
        match found {
            Some(conn) => {
                let slot = e.conns.get_mut(&conn).expect("idle conn has a slot");
                slot.idle = false;
                if kind == ConnKind::Worker {
                    slot.holder = Some(Holder::of(who));
                }
                Acquire::Got {
                    conn,
                    shard: slot.shard,
                }
            }
            None => {
                let any = e.conns.values().any(|s| s.kind == kind);
                if !any {
                    return Acquire::Offline;
                }
                let (tx, rx) = flume::bounded(1);
                e.waiters.retain(|(w, _)| !w.is_disconnected());
                e.waiters.push((tx, Holder::of(who)));
                Acquire::Busy(rx)
            }
        }
    }

    /// Datasets the edge's workers serve to a session of `tenant` (one
    /// look under the lock): `None` when no worker is online,
    /// `Some(Err(()))` when the edge belongs to another tenant.
    pub fn datasets_for(
        &self,
        edge: &EdgeId,
        tenant: &str,
    ) -> Option<Result<BTreeSet<String>, ()>> {
        self.lock()
            .get(edge)
            .filter(|e| e.conns.values().any(|c| c.kind == ConnKind::Worker))
            .map(|e| {
                if e.tenant_may_pair(tenant) {
                    Ok(e.datasets())
                } else {
                    Err(())
                }
            })
    }

    /// Whether a session of `tenant` may use `edge` now (`None`: offline).
    pub fn tenant_may_pair(&self, edge: &EdgeId, tenant: &str) -> Option<bool> {
        self.lock().get(edge).map(|e| e.tenant_may_pair(tenant))
    }

    pub fn stats(&self) -> RegistryStats {
        let g = self.lock();
        let mut s = RegistryStats {
            edges_online: g.len(),
            workers_idle: 0,
            workers_busy: 0,
            relay_idle: 0,
        };
        for e in g.values() {
            for c in e.conns.values() {
                match (c.kind, c.idle) {
                    (ConnKind::Worker, true) => s.workers_idle += 1,
                    (ConnKind::Worker, false) => s.workers_busy += 1,
                    (ConnKind::Relay, true) => s.relay_idle += 1,
                    _ => {}
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tenant: &str) -> Who<'_> {
        Who {
            tenant,
            sub: "alice",
        }
    }

    #[test]
    fn one_subject_cannot_take_every_worker_of_an_edge() {
        let r = Registry::with_worker_share(0.5);
        let e = EdgeId::parse("edge-a").unwrap();
        for _ in 0..4 {
            let id = r.new_conn_id();
            r.add(&e, "t", "1", ConnKind::Worker, id, 0, vec!["d".into()], 8)
                .unwrap();
        }
        let alice = Who {
            tenant: "t",
            sub: "alice",
        };
        let bob = Who {
            tenant: "t",
            sub: "bob",
        };
        let take = |who| r.acquire(&e, ConnKind::Worker, Some("d"), who, 0);
        // No one else wants one: Alice may take them all.
        let mut held = Vec::new();
        for _ in 0..4 {
            let Acquire::Got { conn, .. } = take(alice) else {
                panic!("alice gets a worker")
            };
            held.push(conn);
        }
        // Bob waits; Alice's next query waits behind him, over her share.
        let Acquire::Busy(bob_waits) = take(bob) else {
            panic!("every worker is busy")
        };
        let Acquire::Busy(_alice_waits) = take(alice) else {
            panic!("busy")
        };
        r.release(&e, held.pop().unwrap(), 0);
        assert!(bob_waits.try_recv().is_ok());
        assert!(
            matches!(take(alice), Acquire::Busy(_)),
            "alice holds her share while bob waits"
        );
        assert!(
            matches!(take(bob), Acquire::Got { .. }),
            "the worker is bob's"
        );
        // Without a share (the default), one subject may take them all.
        let all = Registry::default();
        for _ in 0..3 {
            let id = all.new_conn_id();
            all.add(&e, "t", "1", ConnKind::Worker, id, 0, vec![], 8)
                .unwrap();
        }
        for _ in 0..3 {
            assert!(matches!(
                all.acquire(&e, ConnKind::Worker, None, alice, 0),
                Acquire::Got { .. }
            ));
        }
    }

    #[test]
    fn acquire_prefers_local_and_waits() {
        let r = Registry::default();
        let e = EdgeId::parse("edge-a").unwrap();
        let (a, b) = (r.new_conn_id(), r.new_conn_id());
        r.add(&e, "t", "1", ConnKind::Worker, a, 0, vec!["d".into()], 8)
            .unwrap();
        r.add(&e, "t", "1", ConnKind::Worker, b, 1, vec!["d".into()], 8)
            .unwrap();
        assert_eq!(
            r.add(
                &e,
                "other",
                "1",
                ConnKind::Worker,
                r.new_conn_id(),
                0,
                vec![],
                8
            ),
            Err(RegisterError::TenantMismatch)
        );
        match r.acquire(&e, ConnKind::Worker, Some("d"), t("t"), 1) {
            Acquire::Got { conn, shard } => assert_eq!((conn, shard), (b, 1)),
            _ => panic!("expected the shard-1 worker"),
        }
        assert!(
            matches!(r.acquire(&e, ConnKind::Worker, Some("d"), t("t"), 1), Acquire::Got { conn, .. } if conn == a)
        );
        assert!(matches!(
            r.acquire(&e, ConnKind::Worker, Some("d"), t("other"), 0),
            Acquire::OtherTenant
        ));
        let Acquire::Busy(rx) = r.acquire(&e, ConnKind::Worker, Some("d"), t("t"), 0) else {
            panic!("expected busy")
        };
        r.release(&e, a, 1);
        assert!(rx.try_recv().is_ok());
        assert!(matches!(
            r.acquire(&e, ConnKind::Relay, None, t("t"), 0),
            Acquire::Offline
        ));
        r.remove(&e, a);
        r.remove(&e, b);
        assert!(matches!(
            r.acquire(&e, ConnKind::Worker, None, t("t"), 0),
            Acquire::Offline
        ));
        assert_eq!(r.stats().edges_online, 0);
    }
}
