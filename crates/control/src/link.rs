//! The control plane's own subscription to the revocation channel. It keeps
//! a local set of revoked sessions (so `validate` answers 410 without a
//! round trip) and makes `/readyz` tell the truth: a node whose
//! subscription is dead reports 503 until it has resubscribed and re-read
//! the stored revocations, exactly like the gateway.

use sluice_protocol::sync::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;

use crate::keys::now_s;
use crate::store::Keys;

#[derive(Default)]
pub struct Link {
    up: AtomicBool,
    revoked: Mutex<HashMap<String, u64>>,
}

#[derive(Deserialize)]
struct Message {
    sid: String,
    #[serde(default)]
    exp: Option<u64>,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn knows_revoked(&self, sid: &str) -> bool {
        let m = lock(&self.revoked);
        m.get(sid).is_some_and(|exp| *exp + 60 > now_s())
    }

    fn insert(&self, sid: String, exp: u64) {
        let mut m = lock(&self.revoked);
        let now = now_s();
        m.retain(|_, e| *e + 60 > now);
        m.insert(sid, exp);
    }

    /// Runs forever: subscribe, resynchronise, apply; on any failure mark
    /// the link down and try again with backoff.
    pub async fn run(self: Arc<Self>, url: String, keys: Keys) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.life(&url, &keys).await {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(e) => {
                    if self.up.swap(false, Ordering::Relaxed) {
                        tracing::error!(error = %e, "revocation subscription lost; /readyz reports 503 until it returns");
                    } else {
                        crate::store::REDIS.failed(&format!("revocation subscription: {e}"));
                    }
                }
            }
            self.up.store(false, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn life(&self, url: &str, keys: &Keys) -> redis::RedisResult<()> {
        let client = redis::Client::open(url)?;
        let connect = async {
            let ps = client.get_async_pubsub().await?;
            let cmd = client.get_multiplexed_async_connection().await?;
            Ok::<_, redis::RedisError>((ps, cmd))
        };
        let (mut ps, mut cmd) = tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
        ps.subscribe(&keys.channel).await?;
        // Subscribed first, then the stored keys: nothing falls in between.
        let pattern = format!("{}*", keys.revoked_prefix);
        let mut cursor: u64 = 0;
        let mut n = 0;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut cmd)
                .await?;
            for k in found {
                if let Some(sid) = k.strip_prefix(&keys.revoked_prefix) {
                    let ttl: i64 = redis::cmd("TTL").arg(&k).query_async(&mut cmd).await?;
                    self.insert(sid.to_owned(), now_s() + ttl.max(0) as u64);
                    n += 1;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        self.up.store(true, Ordering::Relaxed);
        tracing::info!(stored = n, channel = %keys.channel, "revocation subscription up");
        let (mut sink, mut stream) = ps.split();
        loop {
            match tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
                Ok(Some(msg)) => {
                    let Ok(p) = msg.get_payload::<String>() else {
                        continue;
                    };
                    let parsed = if p.trim_start().starts_with('{') {
                        serde_json::from_str::<Message>(&p)
                            .ok()
                            .map(|m| (m.sid, m.exp))
                    } else {
                        Some((p.trim().to_owned(), None))
                    };
                    if let Some((sid, exp)) = parsed {
                        self.insert(sid, exp.unwrap_or(now_s() + 86_400));
                    }
                }
                Ok(None) => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "subscription closed",
                    )))
                }
                Err(_) => {
                    // Quiet channel: prove the subscription is alive.
                    tokio::time::timeout(Duration::from_secs(2), sink.ping::<redis::Value>())
                        .await
                        .map_err(|_| {
                            redis::RedisError::from((redis::ErrorKind::Io, "ping timed out"))
                        })??;
                }
            }
        }
    }
}
