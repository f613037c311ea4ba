//! Session ids whose tokens may no longer open a stream (revoked, or ended
//! with their slot given to someone else), each until its token would have
//! expired anyway.
//!
//! This set grows with every session that *ends*, not with the sessions
//! open: a gateway taking a thousand new sessions a second with 15-minute
//! tokens remembers 900,000 ids. So it is compact and bounded:
//!
//! - an id is kept as a 128-bit keyed hash (random keys per process, so no
//!   client can aim for a collision; two ids of the 900,000 share one with
//!   odds near 2⁻⁸⁸) and its deadline as milliseconds: 24 bytes a slot,
//!   where the id's string and an `Instant` took about 300 bytes with the
//!   allocator's share (measured: 10,000 churned sessions grew the gateway
//!   by 3.3 MB, 40,000 by 10.4 MB);
//! - at `limits.max_spent_sessions` ids the expired ones go first, then
//!   the eighth that expire soonest; those are counted
//!   (`sluice_spent_sessions_forgotten_total`) because a forgotten id's
//!   token could open a stream again until it expires.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::Instant;

use crate::ids::SessionId;

/// A session id's 128-bit keyed hash.
type Key = [u64; 2];

/// Spent session ids with their deadlines; see the module docs.
pub struct SpentSessions {
    /// Deadline of each id, milliseconds after `base`.
    ids: HashMap<Key, u64>,
    keys: [RandomState; 2],
    base: Instant,
    cap: usize,
    /// The next purge runs at this many ids: twice what the last one
    /// left, so purging stays a constant cost per insert.
    purge_at: usize,
    forgotten: u64,
}

impl SpentSessions {
    /// A set holding at most `cap` ids (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            ids: HashMap::default(),
            keys: [RandomState::new(), RandomState::new()],
            base: Instant::now(),
            cap: cap.max(1),
            purge_at: 1024,
            forgotten: 0,
        }
    }

    fn key(&self, sid: &SessionId) -> Key {
        let s = sid.as_str();
        [self.keys[0].hash_one(s), self.keys[1].hash_one(s)]
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64
    }

    /// Remembers `sid` until `until` (or until a later deadline it already
    /// had).
    pub fn insert(&mut self, sid: &SessionId, until: Instant) {
        let key = self.key(sid);
        let until = self.ms(until);
        if let Some(d) = self.ids.get_mut(&key) {
            *d = (*d).max(until);
            return;
        }
        // Expired ids go without a sweeper: whenever the set doubles.
        if self.ids.len() >= self.cap.min(self.purge_at) {
            self.purge(Instant::now());
        }
        if self.ids.len() >= self.cap {
            self.forget_soonest();
        }
        self.ids.insert(key, until);
    }

    /// Whether `sid` is remembered and its deadline not passed at `now`.
    pub fn contains(&self, sid: &SessionId, now: Instant) -> bool {
        let now = self.ms(now);
        self.ids.get(&self.key(sid)).is_some_and(|&d| d > now)
    }

    /// Drops the ids whose deadline has passed.
    pub fn purge(&mut self, now: Instant) {
        let now = self.ms(now);
        self.ids.retain(|_, d| *d > now);
        self.purge_at = (self.ids.len() * 2).max(1024);
    }

    /// Full of live ids: forgets the eighth (at least one) that expire
    /// soonest, so the next inserts do not each pay for a pass over the set.
    fn forget_soonest(&mut self) {
        let mut deadlines: Vec<u64> = self.ids.values().copied().collect();
        let n = (self.cap / 8).clamp(1, deadlines.len());
        let (_, &mut cut, _) = deadlines.select_nth_unstable(n - 1);
        let before = self.ids.len();
        self.ids.retain(|_, d| *d > cut);
        let gone = before - self.ids.len();
        self.forgotten += gone as u64;
        // At most once per cap/8 inserts: no flood.
        tracing::warn!(
            limit = self.cap,
            forgotten = gone,
            "spent-session ids at limits.max_spent_sessions: forgot those closest to expiry; \
             their tokens can open streams again until they expire"
        );
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Ids forgotten before their deadline because the set was full.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sid(i: usize) -> SessionId {
        SessionId::parse(&format!("s-{i}")).unwrap()
    }

    #[test]
    fn an_id_is_remembered_until_its_deadline_and_the_later_one_wins() {
        let mut s = SpentSessions::new(100);
        let now = Instant::now();
        s.insert(&sid(1), now + Duration::from_secs(60));
        assert!(s.contains(&sid(1), now));
        assert!(!s.contains(&sid(2), now));
        assert!(!s.contains(&sid(1), now + Duration::from_secs(61)));
        s.insert(&sid(1), now + Duration::from_secs(10));
        assert!(
            s.contains(&sid(1), now + Duration::from_secs(30)),
            "an earlier deadline does not shorten a later one"
        );
        s.insert(&sid(2), now);
        s.purge(now);
        assert_eq!(s.len(), 1, "a deadline that passed is purged");
    }

    #[test]
    fn a_full_set_drops_the_expired_then_forgets_the_soonest_to_expire() {
        let mut s = SpentSessions::new(64);
        let now = Instant::now();
        // Half expired, half live with deadlines 1..=32 minutes away.
        for i in 0..32 {
            s.insert(&sid(i), now);
        }
        for i in 32..64 {
            s.insert(&sid(i), now + Duration::from_secs(60 * (i as u64 - 31)));
        }
        assert_eq!(s.len(), 64);
        std::thread::sleep(Duration::from_millis(2));
        s.insert(&sid(64), now + Duration::from_secs(3600));
        assert_eq!((s.len(), s.forgotten()), (33, 0), "the expired made room");
        for i in 65..96 {
            s.insert(&sid(i), now + Duration::from_secs(3600));
        }
        assert_eq!(s.len(), 64);
        s.insert(&sid(96), now + Duration::from_secs(3600));
        // Full of live ids: the eighth closest to expiry (8 of 64) goes.
        assert_eq!((s.len(), s.forgotten()), (57, 8));
        let later = now + Duration::from_secs(1);
        for i in 32..40 {
            assert!(!s.contains(&sid(i), later), "s-{i} expired soonest");
        }
        for i in 40..97 {
            assert!(s.contains(&sid(i), later), "s-{i} is kept");
        }
    }

    #[test]
    fn expired_ids_go_without_a_sweeper_as_the_set_grows() {
        let mut s = SpentSessions::new(1_000_000);
        let now = Instant::now();
        for i in 0..1024 {
            s.insert(&sid(i), now);
        }
        std::thread::sleep(Duration::from_millis(2));
        s.insert(&sid(5000), now + Duration::from_secs(60));
        assert_eq!((s.len(), s.forgotten()), (1, 0));
    }

    #[test]
    fn a_set_of_one_still_takes_the_newest() {
        let mut s = SpentSessions::new(0);
        let far = Instant::now() + Duration::from_secs(60);
        s.insert(&sid(1), far);
        s.insert(&sid(2), far);
        assert_eq!((s.len(), s.forgotten()), (1, 1));
        assert!(s.contains(&sid(2), Instant::now()));
    }

    /// What the module docs claim a slot costs.
    #[test]
    fn a_slot_is_24_bytes() {
        assert_eq!(std::mem::size_of::<(Key, u64)>(), 24);
    }
}
