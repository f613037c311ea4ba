//! Revoked sessions this gateway knows of: remembered until the token
//! would have expired anyway, so a revoked token cannot open a new session,
//! and read once per authentication. Filled by the Redis link
//! (`cluster::revocation_link`) and the admin endpoint.

use sluice_protocol::sync::lock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::auth::spent::SpentSessions;
use crate::ids::SessionId;

/// Revoked sessions this gateway knows of, and the state of its link.
pub struct Revocations {
    enabled: bool,
    revoked: Mutex<SpentSessions>,
    linked: AtomicBool,
    /// Revocations received (channel or resync), for metrics.
    pub received: AtomicU64,
    /// Times the Redis link was (re)established.
    pub links: AtomicU64,
}

impl Revocations {
    /// `cap`: most revoked ids remembered (`limits.max_spent_sessions`).
    pub fn new(enabled: bool, cap: usize) -> Self {
        Self {
            enabled,
            revoked: Mutex::new(SpentSessions::new(cap)),
            linked: AtomicBool::new(false),
            received: AtomicU64::new(0),
            links: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// True when revocations can be honoured: off, or subscribed.
    pub fn healthy(&self) -> bool {
        !self.enabled || self.linked.load(Ordering::Relaxed)
    }

    fn revoked(&self) -> std::sync::MutexGuard<'_, SpentSessions> {
        lock(&self.revoked)
    }

    /// Revoked through Redis or the admin endpoint, and not yet expired.
    pub fn is_revoked(&self, sid: &SessionId) -> bool {
        self.revoked().contains(sid, Instant::now())
    }

    pub fn insert(&self, sid: SessionId, ttl: Duration) {
        self.revoked().insert(&sid, Instant::now() + ttl);
    }

    pub fn purge(&self) {
        self.revoked().purge(Instant::now());
    }

    /// Marks the link up or down; returns whether it was up.
    pub fn set_linked(&self, up: bool) -> bool {
        self.linked.swap(up, Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.revoked().len()
    }

    /// Revoked ids forgotten before expiry because the set was full.
    pub fn forgotten(&self) -> u64 {
        self.revoked().forgotten()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Deserialize)]
struct Message {
    sid: String,
    #[serde(default)]
    exp: Option<u64>,
}

/// `{"sid": "…", "exp": 1700000000}` or a bare session id.
pub fn parse(payload: &str, default_ttl: Duration) -> Option<(SessionId, Duration)> {
    let payload = payload.trim();
    let (sid, exp) = if payload.starts_with('{') {
        let m: Message = serde_json::from_str(payload).ok()?;
        (m.sid, m.exp)
    } else {
        (payload.to_owned(), None)
    };
    let sid = SessionId::parse(&sid)?;
    let ttl = exp.map_or(default_ttl, ttl_until);
    Some((sid, ttl))
}

/// How long to remember a revocation of a token expiring at `exp` (unix
/// s). An already-expired token still has its live session closed; it is
/// remembered briefly in case a reconnect races the message.
pub fn ttl_until(exp: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Duration::from_secs(exp.saturating_sub(now).max(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_a_session_as_json_or_bare() {
        let day = Duration::from_secs(86_400);
        let (sid, ttl) = parse("s-abc", day).unwrap();
        assert_eq!(sid.as_str(), "s-abc");
        assert_eq!(ttl, day);
        let far = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let (sid, ttl) = parse(&format!(r#"{{"sid":"s-x","exp":{far}}}"#), day).unwrap();
        assert_eq!(sid.as_str(), "s-x");
        assert!(ttl <= Duration::from_secs(600) && ttl >= Duration::from_secs(590));
        let (_, ttl) = parse(r#"{"sid":"s-old","exp":1}"#, day).unwrap();
        assert_eq!(ttl, Duration::from_secs(60));
        assert!(parse("", day).is_none());
        assert!(parse("{not json", day).is_none());
        assert!(parse("bad id with spaces", day).is_none());
    }

    #[test]
    fn entries_expire_and_work_without_redis() {
        let r = Revocations::new(true, 1000);
        let sid = SessionId::parse("s-1").unwrap();
        r.insert(sid.clone(), Duration::from_secs(60));
        assert!(r.is_revoked(&sid));
        r.insert(SessionId::parse("s-2").unwrap(), Duration::ZERO);
        r.purge();
        assert_eq!(r.len(), 1);
        // Without Redis, the admin endpoint still revokes; the link is
        // not a readiness condition.
        let off = Revocations::new(false, 1000);
        off.insert(sid.clone(), Duration::from_secs(60));
        assert!(off.is_revoked(&sid));
        assert!(off.healthy());
        assert!(!r.healthy(), "enabled but not linked yet");
    }
}
