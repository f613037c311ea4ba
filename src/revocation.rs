//! Hot revocation: one thread per gateway subscribes to the Redis channel
//! the control plane publishes on, and hands each revoked session to the
//! shard that owns it, which closes it with 4410 at once. Revoked ids are
//! also remembered (until the token would have expired anyway) so that a
//! revoked token cannot open a new session.
//!
//! Nothing is lost while the link is down: the control plane also stores
//! each revocation under `key_prefix{sid}` with a TTL, and every (re)connect
//! subscribes first and then reads those keys, so a revocation is either
//! in the keys, on the channel, or both. `/readyz` answers 503 while the
//! subscription is down, so a load balancer stops sending new sessions to
//! a gateway that could not honour a revocation.
//!
//! Redis is off the hot path: this thread only ever touches a mutex-guarded
//! set (read once per authentication) and the shards' mailboxes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::config::Revocation as Settings;
use crate::ids::SessionId;
use crate::shard::{ShardMsg, Shared};

/// Revoked sessions this gateway knows of, and the state of its link.
pub struct Revocations {
    enabled: bool,
    revoked: Mutex<HashMap<SessionId, Instant>>,
    linked: AtomicBool,
    /// Revocations received (channel or resync), for metrics.
    pub received: AtomicU64,
    /// Times the Redis link was (re)established.
    pub links: AtomicU64,
}

impl Revocations {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            revoked: Mutex::new(HashMap::new()),
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

    /// Revoked through Redis or the admin endpoint, and not yet expired.
    pub fn is_revoked(&self, sid: &SessionId) -> bool {
        let map = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        map.get(sid).is_some_and(|until| *until > Instant::now())
    }

    fn insert(&self, sid: SessionId, ttl: Duration) {
        let mut map = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() >= 1024 && map.len().is_power_of_two() {
            // Bounded without a sweeper when nothing else purges (no Redis).
            map.retain(|_, until| *until > now);
        }
        let until = now + ttl;
        let e = map.entry(sid).or_insert(until);
        *e = (*e).max(until);
    }

    fn purge(&self) {
        let now = Instant::now();
        let mut map = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, until| *until > now);
    }

    pub fn len(&self) -> usize {
        self.revoked.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Starts the subscriber thread when `revocation.redis_url` is set.
pub fn start(shared: Arc<Shared>) -> std::io::Result<()> {
    if !shared.revocations.enabled() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("sluice-revocation".into())
        .spawn(move || run(&shared))?;
    Ok(())
}

fn run(shared: &Shared) {
    let s = &shared.cfg.revocation;
    let mut backoff = Duration::from_millis(50);
    loop {
        match link(shared, s) {
            Ok(()) => return,
            Err(e) => {
                if shared.revocations.linked.swap(false, Ordering::Relaxed) {
                    tracing::error!(error = %e, "revocation link to Redis lost; /readyz reports 503 until it returns");
                } else {
                    tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "cannot reach Redis for revocations");
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(s.max_backoff_ms));
            }
        }
        if shared.is_draining() {
            return;
        }
    }
}

/// One life of the link: subscribe, resynchronise, then apply messages
/// until the link fails (the error) or the gateway drains (`Ok`).
fn link(shared: &Shared, s: &Settings) -> redis::RedisResult<()> {
    let client = redis::Client::open(s.redis_url.as_str())?;
    let timeout = Duration::from_millis(s.health_check_ms.max(100));
    let mut sub = client.get_connection_with_timeout(timeout)?;
    let mut cmd = client.get_connection_with_timeout(timeout)?;
    cmd.set_read_timeout(Some(timeout))?;
    let mut ps = sub.as_pubsub();
    ps.subscribe(&s.channel)?;
    // Subscribed first, then the stored ones: a revocation published in
    // between is seen twice, which is harmless; none is missed.
    let n = resync(shared, s, &mut cmd)?;
    shared.revocations.linked.store(true, Ordering::Relaxed);
    shared.revocations.links.fetch_add(1, Ordering::Relaxed);
    tracing::info!(channel = %s.channel, stored = n, "revocation link up");
    ps.set_read_timeout(Some(timeout))?;
    loop {
        if shared.is_draining() {
            return Ok(());
        }
        match ps.get_message() {
            Ok(msg) => match msg.get_payload::<String>() {
                Ok(p) => apply_message(shared, s, &p),
                Err(_) => tracing::warn!("revocation message is not text; ignored"),
            },
            Err(e) if e.is_timeout() => {
                // Quiet channel: prove the subscription is still alive.
                let _: redis::Value = ps.ping()?;
                shared.revocations.purge();
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads every stored revocation; returns how many there were.
fn resync(shared: &Shared, s: &Settings, cmd: &mut redis::Connection) -> redis::RedisResult<usize> {
    let pattern = format!("{}*", s.key_prefix);
    let keys: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(&pattern)
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter::<String>(cmd)?
        .collect::<Result<_, _>>()?;
    let mut n = 0;
    for key in keys {
        let Some(sid) = key.strip_prefix(&s.key_prefix).and_then(SessionId::parse) else {
            continue;
        };
        let ttl_ms: i64 = redis::cmd("PTTL").arg(&key).query(cmd)?;
        let ttl = match ttl_ms {
            -2 => continue, // expired between SCAN and PTTL
            -1 => Duration::from_secs(s.default_ttl_s),
            ms => Duration::from_millis(ms.max(0) as u64),
        };
        apply(shared, sid, ttl);
        n += 1;
    }
    Ok(n)
}

#[derive(Deserialize)]
struct Message {
    sid: String,
    #[serde(default)]
    exp: Option<u64>,
}

/// `{"sid": "…", "exp": 1700000000}` or a bare session id.
fn parse(payload: &str, default_ttl: Duration) -> Option<(SessionId, Duration)> {
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

fn apply_message(shared: &Shared, s: &Settings, payload: &str) {
    match parse(payload, Duration::from_secs(s.default_ttl_s)) {
        Some((sid, ttl)) => apply(shared, sid, ttl),
        None => tracing::warn!(
            len = payload.len(),
            "revocation message names no valid session id; ignored"
        ),
    }
}

/// Remembers the revocation, then tells the owning shard. In that order:
/// a session authenticating concurrently either sees the entry or is
/// already registered when the shard's message arrives. Also the admin
/// endpoint's path, for a control plane without Redis.
pub fn apply(shared: &Shared, sid: SessionId, ttl: Duration) {
    shared.revocations.insert(sid.clone(), ttl);
    shared.revocations.received.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%sid, "session revoked");
    let shard = sid.shard(shared.shard_count());
    let _ = shared.mailboxes[shard].send(ShardMsg::Revoke(sid));
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
        let r = Revocations::new(true);
        let sid = SessionId::parse("s-1").unwrap();
        r.insert(sid.clone(), Duration::from_secs(60));
        assert!(r.is_revoked(&sid));
        r.insert(SessionId::parse("s-2").unwrap(), Duration::ZERO);
        r.purge();
        assert_eq!(r.len(), 1);
        // Without Redis, the admin endpoint still revokes; the link is
        // not a readiness condition.
        let off = Revocations::new(false);
        off.insert(sid.clone(), Duration::from_secs(60));
        assert!(off.is_revoked(&sid));
        assert!(off.healthy());
        assert!(!r.healthy(), "enabled but not linked yet");
    }
}
