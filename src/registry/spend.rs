//! What a session (its `sid`, whatever connections carry it) has spent and
//! holds on this gateway: the bytes counted against its quota, and the
//! connections open with its token. A token reused over several
//! connections, sequential or concurrent, on any shard, shares one count:
//! the quota belongs to the session, not to a socket.
//!
//! A session ends when its last connection has been closed for
//! `timeouts.session_end_ms` (a reconnect within that time continues it,
//! quota and all). An ended session is remembered until its token expires,
//! and its token cannot open new streams: the control plane has given its
//! slot to someone else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::spent::SpentSessions;
use crate::ids::SessionId;

/// One session's spend, shared by its connections.
pub struct Spend {
    limit: Option<u64>,
    used: AtomicU64,
    /// What this gateway may deliver in all (used included): the quota on
    /// a single gateway; with Redis, what it reserved of what the other
    /// gateways left (`cluster::spend_link`). `u64::MAX`: unlimited.
    cap: AtomicU64,
}

impl Spend {
    /// Charges `len` bytes if they fit; otherwise charges nothing. A frame
    /// is admitted whole or not at all, so the count is exactly the payload
    /// bytes the session received, across all its connections.
    pub fn admit(&self, len: u64) -> bool {
        let cap = self.cap.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                let next = used.saturating_add(len);
                (next <= cap).then_some(next)
            })
            .is_ok()
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Sets what this gateway may deliver in all (a reservation landed).
    pub fn set_cap(&self, cap: u64) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// Gives up what is reserved and unused: the cap shrinks to what was
    /// used, and the difference is returned for the shared count.
    pub fn release_unused(&self) -> u64 {
        let used = self.used();
        let cap = self.cap.swap(used, Ordering::Relaxed);
        cap.saturating_sub(used)
    }
}

struct Held {
    spend: Arc<Spend>,
    conns: u32,
    /// Bumped by every open: an end scheduled before a reconnect is void.
    generation: u64,
    /// The token's expiry: the latest the entry can matter.
    until: Instant,
}

/// Why a session's token may not open another connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// The session ended (or was released); its token is spent.
    Ended,
    /// `limits.max_connections_per_session` connections are open already.
    TooManyConnections { max: u32 },
}

/// An ended session, as reported to the control plane (or Redis): its
/// stream slot is free, and of its quota grant only `bytes` were used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub sid: SessionId,
    pub tenant: String,
    /// The control plane's client id (the token's `client` claim), which
    /// names its Redis keys; absent in tokens not signed by it.
    pub client: Option<String>,
    /// The token's expiry (Unix seconds).
    pub exp: u64,
    pub bytes: u64,
}

/// Where ended sessions go: a bounded queue to the reporting thread.
pub struct EndReports {
    tx: Option<flume::Sender<Ended>>,
    /// Taken into the queue; each ends as `sent` or `failed`.
    queued: AtomicU64,
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

impl EndReports {
    /// `None`: nobody to report to (slots then free at token expiry).
    pub fn new(tx: Option<flume::Sender<Ended>>) -> Self {
        Self {
            tx,
            queued: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues a report without waiting: a shard never blocks on the
    /// control plane. A full queue drops the report (counted).
    pub fn report(&self, end: Ended) {
        if let Some(tx) = &self.tx {
            // Counted before the send, so that `pending` never sees a
            // report finished that it did not see queued.
            self.queued.fetch_add(1, Ordering::SeqCst);
            if tx.try_send(end).is_err() {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Reports queued and not yet sent or given up on: a stopping gateway
    /// waits for them (the sessions its drain closed are among them).
    pub fn pending(&self) -> u64 {
        let done = self.sent.load(Ordering::SeqCst) + self.failed.load(Ordering::SeqCst);
        self.queued.load(Ordering::SeqCst).saturating_sub(done)
    }
}

/// A connection's place in its session.
pub struct Joined {
    pub spend: Arc<Spend>,
    /// No other connection of the session is open on this gateway: with
    /// Redis, this one reserves the session's remaining quota for it.
    pub first: bool,
}

pub struct Spends {
    live: Mutex<HashMap<SessionId, Held>>,
    ended: Mutex<SpentSessions>,
}

impl Spends {
    /// `cap`: most ended sessions remembered (`limits.max_spent_sessions`).
    pub fn new(cap: usize) -> Self {
        Self {
            live: Mutex::default(),
            ended: Mutex::new(SpentSessions::new(cap)),
        }
    }

    /// Joins (or starts) the session `sid` for one more connection.
    /// `limit` is the token's quota (`None`: unlimited); `ttl` how long the
    /// token stays valid.
    pub fn open(
        &self,
        sid: &SessionId,
        limit: Option<u64>,
        max_conns: u32,
        ttl: Duration,
    ) -> Result<Joined, OpenError> {
        let now = Instant::now();
        if self.is_ended(sid, now) {
            return Err(OpenError::Ended);
        }
        let mut live = lock(&self.live);
        let held = live.entry(sid.clone()).or_insert_with(|| Held {
            spend: Arc::new(Spend {
                limit,
                used: AtomicU64::new(0),
                cap: AtomicU64::new(limit.unwrap_or(u64::MAX)),
            }),
            conns: 0,
            generation: 0,
            until: now + ttl,
        });
        if max_conns > 0 && held.conns >= max_conns {
            return Err(OpenError::TooManyConnections { max: max_conns });
        }
        held.conns += 1;
        held.generation += 1;
        Ok(Joined {
            spend: held.spend.clone(),
            first: held.conns == 1,
        })
    }

    /// A connection of the session closed. `Some(generation)` when it was
    /// the last: call [`Spends::end_if_idle`] with it once
    /// `session_end_ms` has passed.
    pub fn close(&self, sid: &SessionId) -> Option<u64> {
        let mut live = lock(&self.live);
        let held = live.get_mut(sid)?;
        held.conns = held.conns.saturating_sub(1);
        (held.conns == 0).then_some(held.generation)
    }

    /// A connection that was refused after it joined leaves without
    /// ending anything (the session may live on another gateway).
    pub fn abandon(&self, sid: &SessionId) {
        let mut live = lock(&self.live);
        if let Some(held) = live.get_mut(sid) {
            held.conns = held.conns.saturating_sub(1);
            if held.conns == 0 && held.spend.used() == 0 {
                live.remove(sid);
            }
        }
    }

    /// Ends the session if no connection reopened it since `generation`;
    /// returns the bytes it used. `remember`: refuse its token here from
    /// now on (single gateway; with Redis the end is decided there, and
    /// comes back as a revocation when the session has no connection on
    /// any gateway).
    pub fn end_if_idle(&self, sid: &SessionId, generation: u64, remember: bool) -> Option<u64> {
        let mut live = lock(&self.live);
        let held = live.get(sid)?;
        if held.conns > 0 || held.generation != generation {
            return None;
        }
        let held = live.remove(sid)?;
        drop(live);
        if remember {
            self.mark_ended(sid.clone(), held.until);
        }
        Some(held.spend.used())
    }

    /// Remembers that `sid`'s token is spent until `until`.
    pub fn mark_ended(&self, sid: SessionId, until: Instant) {
        lock(&self.ended).insert(&sid, until);
    }

    pub fn is_ended(&self, sid: &SessionId, now: Instant) -> bool {
        lock(&self.ended).contains(sid, now)
    }

    /// Ended sessions forgotten before expiry because the set was full.
    pub fn forgotten(&self) -> u64 {
        lock(&self.ended).forgotten()
    }

    /// Sessions with at least one connection, and ended ones remembered.
    pub fn counts(&self) -> (usize, usize) {
        (lock(&self.live).len(), lock(&self.ended).len())
    }
}

use sluice_protocol::sync::lock;

// ---- The session's count across gateways (Redis); the thread that talks
// to Redis is `cluster::spend_link`, which explains the protocol.

/// Requests waiting for the link thread.
pub const SPEND_QUEUE: usize = 4096;

/// What a join learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteJoin {
    /// Over the connection limit, counting every gateway.
    TooMany,
    /// Counted; this much of the quota is reserved here.
    Reserved(u64),
    /// Counted; nothing to reserve (no quota, or not the first here).
    Counted,
}

pub enum SpendRequest {
    Join {
        sid: SessionId,
        exp: u64,
        max_conns: u32,
        limit: u64,
        first: bool,
        reply: flume::Sender<Result<RemoteJoin, String>>,
    },
    Leave {
        sid: SessionId,
        exp: u64,
        unused: u64,
    },
}

pub struct SpendLink {
    tx: flume::Sender<SpendRequest>,
    wait: Duration,
    /// Joins or leaves that could not reach Redis (local count used).
    pub failures: AtomicU64,
}

impl SpendLink {
    /// A link whose requests go to `tx` (the thread `cluster::spend_link`
    /// starts); a join waits at most `wait` for Redis.
    pub fn new(tx: flume::Sender<SpendRequest>, wait: Duration) -> Self {
        SpendLink {
            tx,
            wait,
            failures: AtomicU64::new(0),
        }
    }

    /// Counts a connection of `sid` and, for its first here, reserves what
    /// is left of `limit` (0 = no quota).
    pub async fn join(
        &self,
        sid: &SessionId,
        exp: u64,
        max_conns: u32,
        limit: u64,
        first: bool,
    ) -> Result<RemoteJoin, String> {
        let (reply, rx) = flume::bounded(1);
        let req = SpendRequest::Join {
            sid: sid.clone(),
            exp,
            max_conns,
            limit,
            first,
            reply,
        };
        let res = match self.tx.try_send(req) {
            Err(_) => Err("link queue full".to_owned()),
            Ok(()) => match monoio::time::timeout(self.wait, rx.recv_async()).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err("link thread gone".to_owned()),
                Err(_) => Err("Redis did not answer in time".to_owned()),
            },
        };
        if res.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    /// Uncounts a connection; `unused` goes back to the session's quota.
    pub fn leave(&self, sid: &SessionId, exp: u64, unused: u64) {
        let req = SpendRequest::Leave {
            sid: sid.clone(),
            exp,
            unused,
        };
        if self.tx.try_send(req).is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    #[test]
    fn end_reports_are_pending_until_sent_or_failed_and_a_full_queue_drops() {
        let ended = |n: &str| Ended {
            sid: sid(n),
            tenant: "acme".into(),
            client: None,
            exp: 0,
            bytes: 0,
        };
        let (tx, rx) = flume::bounded(2);
        let r = EndReports::new(Some(tx));
        for n in ["a", "b", "c"] {
            r.report(ended(n));
        }
        assert_eq!(
            r.dropped.load(Ordering::Relaxed),
            1,
            "the third found the queue full"
        );
        assert_eq!(r.pending(), 2);
        // The reporter takes one: still pending while it is in flight.
        let _ = rx.recv().unwrap();
        assert_eq!(r.pending(), 2);
        r.sent.fetch_add(1, Ordering::Relaxed);
        let _ = rx.recv().unwrap();
        r.failed.fetch_add(1, Ordering::Relaxed);
        assert_eq!(r.pending(), 0);
        // Nobody to report to: nothing is ever pending.
        let none = EndReports::new(None);
        none.report(ended("d"));
        assert_eq!(none.pending(), 0);
    }

    #[test]
    fn connections_of_one_session_share_its_quota_exactly() {
        let s = Spends::new(1000);
        let ttl = Duration::from_secs(60);
        let a = s.open(&sid("s1"), Some(100), 2, ttl).unwrap();
        let b = s.open(&sid("s1"), Some(999), 2, ttl).unwrap();
        assert!(a.first && !b.first);
        let (a, b) = (a.spend, b.spend);
        assert_eq!(
            s.open(&sid("s1"), Some(100), 2, ttl).err(),
            Some(OpenError::TooManyConnections { max: 2 })
        );
        assert!(a.admit(60));
        assert!(!b.admit(41), "the first connection spent 60 of 100");
        assert!(b.admit(40));
        assert_eq!(a.used(), 100);
        // Sequential: the last connection closes, a reconnect continues.
        assert_eq!(s.close(&sid("s1")), None);
        let gen = s.close(&sid("s1")).unwrap();
        let c = s.open(&sid("s1"), None, 2, ttl).unwrap().spend;
        assert!(!c.admit(1));
        // A reservation of another gateway's leftovers: the cap moves.
        c.set_cap(150);
        assert!(c.admit(50));
        assert_eq!(c.release_unused(), 0);
        c.set_cap(170);
        assert_eq!(c.release_unused(), 20, "reserved 170, used 150");
        assert!(!c.admit(1), "nothing left once released");
        assert_eq!(s.end_if_idle(&sid("s1"), gen, true), None, "reopened since");
        let gen = s.close(&sid("s1")).unwrap();
        assert_eq!(s.end_if_idle(&sid("s1"), gen, true), Some(150));
        assert_eq!(
            s.open(&sid("s1"), Some(100), 2, ttl).err(),
            Some(OpenError::Ended)
        );
        assert_eq!(s.counts(), (0, 1));
        // Unlimited, and 0 = no connection limit.
        let u = s.open(&sid("s2"), None, 0, ttl).unwrap().spend;
        assert!(u.admit(u64::MAX));
    }
}
