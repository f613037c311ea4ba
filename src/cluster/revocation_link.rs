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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::revocations::parse;
use crate::config::Revocation as Settings;
use crate::ids::SessionId;
use crate::shard::health;
use crate::shard::{ShardMsg, Shared};

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
                if shared.revocations.set_linked(false) {
                    tracing::error!(error = %e, "revocation link to Redis lost; /readyz reports 503 until it returns");
                }
                health::REDIS.failed(&format!("revocation link: {e}"));
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
    let client = redis::Client::open(s.redis_url.expose())?;
    let timeout = Duration::from_millis(s.health_check_ms.max(100));
    let mut sub = client.get_connection_with_timeout(timeout)?;
    let mut cmd = client.get_connection_with_timeout(timeout)?;
    cmd.set_read_timeout(Some(timeout))?;
    let mut ps = sub.as_pubsub();
    ps.subscribe(&s.channel)?;
    // Subscribed first, then the stored ones: a revocation published in
    // between is seen twice, which is harmless; none is missed.
    let n = resync(shared, s, &mut cmd)?;
    shared.revocations.set_linked(true);
    health::REDIS.ok();
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
    // One round trip per page of keys, not per key: every ended session is
    // stored here for its token's life, so a busy deployment holds tens of
    // thousands, and a PTTL each kept a restarted gateway unready for
    // seconds (70,000 keys: over 5 s on loopback).
    for page in keys.chunks(RESYNC_PAGE) {
        let mut pipe = redis::pipe();
        for key in page {
            pipe.cmd("PTTL").arg(key);
        }
        let ttls: Vec<i64> = pipe.query(cmd)?;
        for (key, ttl_ms) in page.iter().zip(ttls) {
            let Some(sid) = key.strip_prefix(&s.key_prefix).and_then(SessionId::parse) else {
                continue;
            };
            let ttl = match ttl_ms {
                -2 => continue, // expired between SCAN and PTTL
                -1 => Duration::from_secs(s.default_ttl_s),
                ms => Duration::from_millis(ms.max(0) as u64),
            };
            apply_stored(shared, sid, ttl);
            n += 1;
        }
    }
    Ok(n)
}

/// Keys whose PTTLs one pipelined round trip asks for.
const RESYNC_PAGE: usize = 1000;

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
    tracing::info!(%sid, "session revoked");
    apply_stored(shared, sid, ttl);
}

/// [`apply`] without its log line: a resync applies every stored
/// revocation and ended session (tens of thousands) and logs their count.
fn apply_stored(shared: &Shared, sid: SessionId, ttl: Duration) {
    let at = std::time::Instant::now();
    shared.revocations.insert(sid.clone(), ttl);
    shared.revocations.received.fetch_add(1, Ordering::Relaxed);
    let shard = sid.shard(shared.shard_count());
    let _ = shared.mailboxes[shard].send(ShardMsg::Revoke { sid, at });
}
