//! What the control plane remembers about sessions it signed: the record
//! `validate` answers with, the stream slots a plan's `max_streams` counts,
//! the bytes granted against an hourly quota, and revocations.
//!
//! Two implementations with one behaviour: [`Store::Redis`] shares it all
//! between control-plane nodes (and with the gateways, which read the
//! revocation keys); [`Store::Memory`] is the single-node default, where the
//! gateway is told of revocations through its admin endpoint instead.
//!
//! A stream slot is held until the gateway reports the session ended
//! (`/control/ended/{sid}`, or through Redis), it is released
//! (`/control/release/{sid}`), it is revoked, or — when no report arrives
//! — its token expires.
//!
//! The hourly quota counts bytes *granted*, which bounds what a client can
//! read in an hour without the data plane ever calling the control plane.
//! A plan without a per-session quota grants each session a fair share of
//! what is left of the hour (what is left divided by the plan's free
//! stream slots), and an ended session gives back what it did not use, so
//! one session never takes the whole hour from the plan's other streams.

use sluice_protocol::sync::lock;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use sluice_protocol::slots;

use crate::error::ApiError;

/// What `validate` knows about a session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    pub sid: String,
    pub tenant: String,
    pub client_id: String,
    pub sub: String,
    pub edge_id: String,
    pub dataset: String,
    pub exp: u64,
    /// Bytes the session may receive (0 = no limit).
    #[serde(default)]
    pub quota: u64,
}

/// Limits a reservation is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_streams: u32,
    pub session_quota: u64,
    pub hourly_quota: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    TooManyStreams,
    HourlyQuotaExhausted,
}

/// Redis key names (shared with the gateway's `[revocation]` defaults).
#[derive(Debug, Clone)]
pub struct Keys {
    pub prefix: String,
    pub revoked_prefix: String,
    pub channel: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self {
            prefix: "sluice:".into(),
            revoked_prefix: "sluice:revoked:".into(),
            channel: "sluice:revocations".into(),
        }
    }
}

impl Keys {
    fn session(&self, sid: &str) -> String {
        format!("{}session:{sid}", self.prefix)
    }
    fn streams(&self, tenant: &str, client: &str) -> String {
        slots::streams_key(&self.prefix, tenant, client)
    }
    fn grants(&self, tenant: &str, client: &str) -> String {
        slots::grants_key(&self.prefix, tenant, client)
    }
    pub fn revoked(&self, sid: &str) -> String {
        format!("{}{sid}", self.revoked_prefix)
    }
}

pub enum Store {
    Memory(Mutex<Memory>),
    Redis(RedisStore),
}

#[derive(Default)]
pub struct Memory {
    sessions: HashMap<String, SessionRecord>,
    /// (tenant, client) → (sid, exp) of the slots held.
    slots: HashMap<(String, String), Vec<(String, u64)>>,
    /// (tenant, client) → its grants of the last hour, oldest first.
    grants: HashMap<(String, String), VecDeque<Grant>>,
    revoked: HashMap<String, u64>,
    /// The next purge of expired sessions runs at this many: twice what
    /// the last one left (at least 1,024).
    purge_at: usize,
}

/// One session's hourly grant: (granted at, sid, bytes).
type Grant = (u64, String, u64);

pub struct RedisStore {
    pub keys: Keys,
    conn: ConnectionManager,
}

/// Check-and-reserve as one atomic step, so two control-plane nodes cannot
/// both hand out a plan's last stream slot.
const RESERVE: &str = r#"
local now = tonumber(ARGV[1])
local exp = tonumber(ARGV[2])
local max_streams = tonumber(ARGV[4])
local session_quota = tonumber(ARGV[5])
local hourly = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if max_streams > 0 and redis.call('ZCARD', KEYS[1]) >= max_streams then
  return -1
end
local granted = session_quota
local active = redis.call('ZCARD', KEYS[1])
if hourly > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 3600)
  local used = 0
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    used = used + tonumber(string.match(m, ':(%d+)$'))
  end
  local left = hourly - used
  if left <= 0 then
    return -2
  end
  if granted == 0 then
    local free = 1
    if max_streams > 0 then
      free = math.max(1, max_streams - active)
    end
    granted = math.max(1, math.floor(left / free))
  end
  if granted > left then
    granted = left
  end
  redis.call('ZADD', KEYS[2], now, ARGV[3] .. ':' .. granted)
  redis.call('EXPIRE', KEYS[2], 3700)
end
redis.call('ZADD', KEYS[1], exp, ARGV[3])
redis.call('EXPIREAT', KEYS[1], exp + 60)
local rec = cjson.decode(ARGV[7])
rec['quota'] = granted
redis.call('SET', KEYS[3], cjson.encode(rec), 'EXAT', exp + 60)
return granted
"#;

/// Redis, as this control plane's store sees it: one line when it goes,
/// one when it returns, counted in between (`sluice_protocol::outage`).
pub static REDIS: sluice_protocol::outage::Outage = sluice_protocol::outage::Outage::new("redis");

fn redis_down(e: redis::RedisError) -> ApiError {
    REDIS.failed(&e);
    ApiError::new(
        503,
        "store_unavailable",
        "session store (Redis) is unreachable",
    )
}

impl Store {
    pub fn memory() -> Self {
        Store::Memory(Mutex::new(Memory::default()))
    }

    pub async fn redis(url: &str, keys: Keys) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg)?;
        Ok(Store::Redis(RedisStore { keys, conn }))
    }

    /// Takes a stream slot and a quota grant for `rec`, and stores it.
    /// Returns the session's byte quota (0 = none).
    pub async fn reserve(
        &self,
        rec: &SessionRecord,
        limits: Limits,
        now: u64,
    ) -> Result<Result<u64, Refused>, ApiError> {
        match self {
            Store::Memory(m) => {
                let mut m = lock(m);
                Ok(m.reserve(rec, limits, now))
            }
            Store::Redis(r) => {
                let mut c = r.conn.clone();
                let json = serde_json::to_string(rec).expect("record serialises");
                // Hashed once: the script's SHA-1 is what EVALSHA sends.
                static SCRIPT: std::sync::LazyLock<redis::Script> =
                    std::sync::LazyLock::new(|| redis::Script::new(RESERVE));
                let n: i64 = SCRIPT
                    .key(r.keys.streams(&rec.tenant, &rec.client_id))
                    .key(r.keys.grants(&rec.tenant, &rec.client_id))
                    .key(r.keys.session(&rec.sid))
                    .arg(now)
                    .arg(rec.exp)
                    .arg(&rec.sid)
                    .arg(limits.max_streams)
                    .arg(limits.session_quota)
                    .arg(limits.hourly_quota)
                    .arg(json)
                    .invoke_async(&mut c)
                    .await
                    .map_err(redis_down)?;
                REDIS.ok();
                Ok(match n {
                    -1 => Err(Refused::TooManyStreams),
                    -2 => Err(Refused::HourlyQuotaExhausted),
                    q => Ok(q.max(0) as u64),
                })
            }
        }
    }

    /// The session and whether it was revoked.
    pub async fn lookup(
        &self,
        sid: &str,
        now: u64,
    ) -> Result<Option<(SessionRecord, bool)>, ApiError> {
        match self {
            Store::Memory(m) => {
                let m = lock(m);
                Ok(m.sessions
                    .get(sid)
                    .filter(|r| r.exp + 60 > now)
                    .map(|r| (r.clone(), m.revoked.contains_key(sid))))
            }
            Store::Redis(r) => {
                let mut c = r.conn.clone();
                let (rec, revoked): (Option<String>, bool) = redis::pipe()
                    .get(r.keys.session(sid))
                    .exists(r.keys.revoked(sid))
                    .query_async(&mut c)
                    .await
                    .map_err(redis_down)?;
                REDIS.ok();
                Ok(rec
                    .and_then(|j| serde_json::from_str::<SessionRecord>(&j).ok())
                    .map(|rec| (rec, revoked)))
            }
        }
    }

    /// Marks `rec` revoked until its token expires and frees its slot. With
    /// Redis this is also the publish every gateway is subscribed to.
    pub async fn revoke(&self, rec: &SessionRecord, now: u64) -> Result<(), ApiError> {
        match self {
            Store::Memory(m) => {
                let mut m = lock(m);
                m.revoked.insert(rec.sid.clone(), rec.exp);
                m.release(rec);
                Ok(())
            }
            Store::Redis(r) => {
                let mut c = r.conn.clone();
                let ttl = rec.exp.saturating_sub(now).max(60);
                let msg = serde_json::json!({"sid": rec.sid, "exp": rec.exp}).to_string();
                // Stored first, then published: a gateway that resubscribes
                // in between reads the key; one that is subscribed gets the
                // message. Either way the session closes.
                let _: () = redis::pipe()
                    .atomic()
                    .set_ex(r.keys.revoked(&rec.sid), "1", ttl)
                    .ignore()
                    .zrem(r.keys.streams(&rec.tenant, &rec.client_id), &rec.sid)
                    .ignore()
                    .publish(&r.keys.channel, msg)
                    .ignore()
                    .query_async(&mut c)
                    .await
                    .map_err(redis_down)?;
                REDIS.ok();
                Ok(())
            }
        }
    }

    /// The gateway reports that `rec`'s session ended having received
    /// `bytes`: its slot frees, and the unused part of its grant returns
    /// to the plan's hourly budget.
    pub async fn end(&self, rec: &SessionRecord, bytes: u64) -> Result<(), ApiError> {
        match self {
            Store::Memory(m) => {
                lock(m).end(rec, bytes);
                Ok(())
            }
            Store::Redis(r) => {
                let mut c = r.conn.clone();
                static SCRIPT: std::sync::LazyLock<redis::Script> =
                    std::sync::LazyLock::new(|| redis::Script::new(slots::END_SESSION));
                let _: i64 = SCRIPT
                    .key(r.keys.streams(&rec.tenant, &rec.client_id))
                    .key(r.keys.grants(&rec.tenant, &rec.client_id))
                    .arg(&rec.sid)
                    .arg(bytes)
                    .invoke_async(&mut c)
                    .await
                    .map_err(redis_down)?;
                REDIS.ok();
                Ok(())
            }
        }
    }

    /// Frees the stream slot of a session its user is done with.
    pub async fn release(&self, rec: &SessionRecord) -> Result<(), ApiError> {
        match self {
            Store::Memory(m) => {
                lock(m).release(rec);
                Ok(())
            }
            Store::Redis(r) => {
                let mut c = r.conn.clone();
                let _: () = redis::pipe()
                    .zrem(r.keys.streams(&rec.tenant, &rec.client_id), &rec.sid)
                    .ignore()
                    .query_async(&mut c)
                    .await
                    .map_err(redis_down)?;
                REDIS.ok();
                Ok(())
            }
        }
    }

    pub async fn ping(&self) -> bool {
        match self {
            Store::Memory(_) => true,
            Store::Redis(r) => {
                let mut c = r.conn.clone();
                redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            }
        }
    }
}

impl Memory {
    fn reserve(&mut self, rec: &SessionRecord, limits: Limits, now: u64) -> Result<u64, Refused> {
        let key = (rec.tenant.clone(), rec.client_id.clone());
        // Expired entries go when the map has doubled since the last purge,
        // so memory stays bounded by the sessions alive in one token
        // lifetime, at O(1) amortised cost (also when the count hovers at
        // one size).
        if self.sessions.len() >= self.purge_at.max(1024) {
            self.sessions.retain(|_, r| r.exp + 60 > now);
            self.revoked.retain(|_, exp| *exp + 60 > now);
            self.purge_at = self.sessions.len() * 2;
        }
        let slots = self.slots.entry(key.clone()).or_default();
        let full = |s: &Vec<(String, u64)>| {
            limits.max_streams > 0 && s.len() >= limits.max_streams as usize
        };
        if full(slots) || (slots.len() >= 1024 && slots.len().is_power_of_two()) {
            slots.retain(|(_, exp)| *exp > now);
        }
        if full(slots) {
            return Err(Refused::TooManyStreams);
        }
        let mut granted = limits.session_quota;
        let active = slots.len() as u64;
        if limits.hourly_quota > 0 {
            let g = self.grants.entry(key.clone()).or_default();
            while g.front().is_some_and(|(t, _, _)| *t + 3600 <= now) {
                g.pop_front();
            }
            let used: u64 = g.iter().map(|(_, _, b)| b).sum();
            let left = limits.hourly_quota.saturating_sub(used);
            if left == 0 {
                return Err(Refused::HourlyQuotaExhausted);
            }
            if granted == 0 {
                let free = match limits.max_streams {
                    0 => 1,
                    max => (u64::from(max)).saturating_sub(active).max(1),
                };
                granted = (left / free).max(1);
            }
            granted = granted.min(left);
            g.push_back((now, rec.sid.clone(), granted));
        }
        self.slots
            .entry(key)
            .or_default()
            .push((rec.sid.clone(), rec.exp));
        let mut rec = rec.clone();
        rec.quota = granted;
        self.sessions.insert(rec.sid.clone(), rec);
        Ok(granted)
    }

    fn end(&mut self, rec: &SessionRecord, bytes: u64) {
        self.release(rec);
        let key = (rec.tenant.clone(), rec.client_id.clone());
        if let Some(g) = self.grants.get_mut(&key) {
            for (_, sid, granted) in g.iter_mut() {
                if *sid == rec.sid {
                    *granted = (*granted).min(bytes);
                }
            }
        }
    }

    fn release(&mut self, rec: &SessionRecord) {
        if let Some(s) = self
            .slots
            .get_mut(&(rec.tenant.clone(), rec.client_id.clone()))
        {
            s.retain(|(sid, _)| sid != &rec.sid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sid: &str, exp: u64) -> SessionRecord {
        SessionRecord {
            sid: sid.into(),
            tenant: "acme".into(),
            client_id: "c".into(),
            sub: "alice".into(),
            edge_id: "e".into(),
            dataset: "d".into(),
            exp,
            quota: 0,
        }
    }

    #[tokio::test]
    async fn memory_store_counts_slots_and_hourly_grants() {
        let s = Store::memory();
        let lim = Limits {
            max_streams: 2,
            session_quota: 100,
            hourly_quota: 250,
        };
        let now = 1_000_000;
        assert_eq!(
            s.reserve(&rec("a", now + 900), lim, now).await.unwrap(),
            Ok(100)
        );
        assert_eq!(
            s.reserve(&rec("b", now + 900), lim, now).await.unwrap(),
            Ok(100)
        );
        assert_eq!(
            s.reserve(&rec("c", now + 900), lim, now).await.unwrap(),
            Err(Refused::TooManyStreams)
        );
        s.release(&rec("a", now + 900)).await.unwrap();
        // 50 bytes of the hour left: the grant shrinks to what is left.
        assert_eq!(
            s.reserve(&rec("c", now + 900), lim, now).await.unwrap(),
            Ok(50)
        );
        s.release(&rec("c", now + 900)).await.unwrap();
        assert_eq!(
            s.reserve(&rec("d", now + 900), lim, now).await.unwrap(),
            Err(Refused::HourlyQuotaExhausted)
        );
        let (r, revoked) = s.lookup("b", now).await.unwrap().unwrap();
        assert_eq!((r.quota, revoked), (100, false));
        s.revoke(&r, now).await.unwrap();
        assert!(s.lookup("b", now).await.unwrap().unwrap().1);
        assert!(s.lookup("zz", now).await.unwrap().is_none());
        // An hour later the grants have aged out; expired slots free up.
        let later = now + 3600;
        assert_eq!(
            s.reserve(&rec("e", later + 900), lim, later).await.unwrap(),
            Ok(100)
        );
    }

    #[test]
    fn expired_sessions_go_once_the_map_has_doubled_not_at_every_insert() {
        let mut m = Memory::default();
        let lim = Limits {
            max_streams: 0,
            session_quota: 0,
            hourly_quota: 0,
        };
        let now = 1_000_000;
        for i in 0..1023 {
            m.reserve(&rec(&format!("live{i}"), now + 900), lim, now)
                .unwrap();
        }
        // At 1,024 a purge drops the expired one.
        for i in 0..2 {
            m.reserve(&rec(&format!("old{i}"), now - 120), lim, now)
                .unwrap();
        }
        assert_eq!(m.sessions.len(), 1024);
        // Hovering at 1,024 does not purge again (before, every insert at
        // 1,024 made a full pass): the next waits for 2,046.
        for i in 2..12 {
            m.reserve(&rec(&format!("old{i}"), now - 120), lim, now)
                .unwrap();
        }
        assert_eq!(m.sessions.len(), 1034);
    }
}
