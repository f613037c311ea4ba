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

use crate::ids::SessionId;

/// One session's spend, shared by its connections.
pub struct Spend {
    limit: Option<u64>,
    used: AtomicU64,
}

impl Spend {
    /// Charges `len` bytes if they fit; otherwise charges nothing. A frame
    /// is admitted whole or not at all, so the count is exactly the payload
    /// bytes the session received, across all its connections.
    pub fn admit(&self, len: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                let next = used.saturating_add(len);
                match self.limit {
                    Some(limit) if next > limit => None,
                    _ => Some(next),
                }
            })
            .is_ok()
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
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
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

impl EndReports {
    /// `None`: nobody to report to (slots then free at token expiry).
    pub fn new(tx: Option<flume::Sender<Ended>>) -> Self {
        Self {
            tx,
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues a report without waiting: a shard never blocks on the
    /// control plane. A full queue drops the report (counted).
    pub fn report(&self, end: Ended) {
        if let Some(tx) = &self.tx {
            if tx.try_send(end).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Default)]
pub struct Spends {
    live: Mutex<HashMap<SessionId, Held>>,
    ended: Mutex<HashMap<SessionId, Instant>>,
}

impl Spends {
    /// Joins (or starts) the session `sid` for one more connection.
    /// `limit` is the token's quota (`None`: unlimited); `ttl` how long the
    /// token stays valid.
    pub fn open(
        &self,
        sid: &SessionId,
        limit: Option<u64>,
        max_conns: u32,
        ttl: Duration,
    ) -> Result<Arc<Spend>, OpenError> {
        let now = Instant::now();
        if self.is_ended(sid, now) {
            return Err(OpenError::Ended);
        }
        let mut live = lock(&self.live);
        let held = live.entry(sid.clone()).or_insert_with(|| Held {
            spend: Arc::new(Spend {
                limit,
                used: AtomicU64::new(0),
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
        Ok(held.spend.clone())
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

    /// Ends the session if no connection reopened it since `generation`;
    /// returns the bytes it used.
    pub fn end_if_idle(&self, sid: &SessionId, generation: u64) -> Option<u64> {
        let mut live = lock(&self.live);
        let held = live.get(sid)?;
        if held.conns > 0 || held.generation != generation {
            return None;
        }
        let held = live.remove(sid)?;
        drop(live);
        self.mark_ended(sid.clone(), held.until);
        Some(held.spend.used())
    }

    /// Remembers that `sid`'s token is spent until `until`.
    pub fn mark_ended(&self, sid: SessionId, until: Instant) {
        let mut ended = lock(&self.ended);
        let now = Instant::now();
        // Bounded without a sweeper: expired entries go when the map doubles.
        if ended.len() >= 1024 && ended.len().is_power_of_two() {
            ended.retain(|_, u| *u > now);
        }
        ended.insert(sid, until);
    }

    pub fn is_ended(&self, sid: &SessionId, now: Instant) -> bool {
        lock(&self.ended).get(sid).is_some_and(|u| *u > now)
    }

    /// Sessions with at least one connection, and ended ones remembered.
    pub fn counts(&self) -> (usize, usize) {
        (lock(&self.live).len(), lock(&self.ended).len())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    #[test]
    fn connections_of_one_session_share_its_quota_exactly() {
        let s = Spends::default();
        let ttl = Duration::from_secs(60);
        let a = s.open(&sid("s1"), Some(100), 2, ttl).unwrap();
        let b = s.open(&sid("s1"), Some(999), 2, ttl).unwrap();
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
        let c = s.open(&sid("s1"), None, 2, ttl).unwrap();
        assert!(!c.admit(1));
        assert_eq!(s.end_if_idle(&sid("s1"), gen), None, "reopened since");
        let gen = s.close(&sid("s1")).unwrap();
        assert_eq!(s.end_if_idle(&sid("s1"), gen), Some(100));
        assert_eq!(
            s.open(&sid("s1"), Some(100), 2, ttl).err(),
            Some(OpenError::Ended)
        );
        assert_eq!(s.counts(), (0, 1));
        // Unlimited, and 0 = no connection limit.
        let u = s.open(&sid("s2"), None, 0, ttl).unwrap();
        assert!(u.admit(u64::MAX));
    }
}
