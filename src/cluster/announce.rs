//! The multi-gateway edge registry, this gateway's side: one thread writes
//! every edge connected here to Redis as `key_prefix{edge}` →
//! `{"url", "tenant", "datasets", "workers"}` with a TTL, rewrites them
//! every `heartbeat_ms` and at once when the registry signals a change,
//! and deletes the entries of edges that left (only if they still name
//! this gateway: the edge may have reconnected elsewhere meanwhile). A
//! gateway that dies stops refreshing, and its entries expire within
//! `ttl_ms`. Runs only with `revocation.redis_url` set; off the data path.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::shard::health;
use crate::shard::Shared;

/// Deletes `KEYS[1]` only while it still names this gateway's URL.
const DELETE_IF_OURS: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and string.find(v, ARGV[1], 1, true) then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

pub fn start(shared: Arc<Shared>) -> std::io::Result<()> {
    if shared.cfg.revocation.redis_url.is_empty() {
        return Ok(());
    }
    let (tx, rx) = flume::bounded(1);
    shared.registry.on_change(tx);
    std::thread::Builder::new()
        .name("sluice-announce".into())
        .spawn(move || run(&shared, &rx))?;
    Ok(())
}

fn run(shared: &Shared, changed: &flume::Receiver<()>) {
    let mut announced: BTreeMap<String, String> = BTreeMap::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        match life(shared, changed, &mut announced) {
            Ok(()) => return,
            Err(e) => {
                health::REDIS.failed(&format!("edge registry: {e}"));
                std::thread::sleep(backoff);
                backoff =
                    (backoff * 2).min(Duration::from_millis(shared.cfg.revocation.max_backoff_ms));
            }
        }
    }
}

fn life(
    shared: &Shared,
    changed: &flume::Receiver<()>,
    announced: &mut BTreeMap<String, String>,
) -> redis::RedisResult<()> {
    let reg = &shared.cfg.registry;
    let client = redis::Client::open(shared.cfg.revocation.redis_url.expose())?;
    let timeout = Duration::from_millis(shared.cfg.revocation.health_check_ms.max(100));
    let mut conn = client.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    health::REDIS.ok();
    let delete = redis::Script::new(DELETE_IF_OURS);
    let ours = format!(
        "\"url\":{}",
        serde_json::Value::from(shared.public_url.as_str())
    );
    loop {
        let draining = shared.is_draining();
        let now: BTreeMap<String, String> = if draining {
            BTreeMap::new()
        } else {
            shared
                .registry
                .online()
                .into_iter()
                .filter(|e| !e.tenant.is_empty())
                .map(|e| {
                    let mut v = serde_json::json!({
                        "url": shared.public_url,
                        "tenant": e.tenant,
                        "datasets": e.datasets,
                        "workers": e.workers,
                    });
                    if let Some((_, url)) = &shared.flight {
                        v["flight_url"] = url.as_str().into();
                    }
                    (e.edge, v.to_string())
                })
                .collect()
        };
        let mut pipe = redis::pipe();
        for (edge, v) in &now {
            pipe.pset_ex(format!("{}{edge}", reg.key_prefix), v, reg.ttl_ms)
                .ignore();
        }
        if !now.is_empty() {
            pipe.query::<()>(&mut conn)?;
        }
        for edge in announced.keys().filter(|e| !now.contains_key(*e)) {
            delete
                .key(format!("{}{edge}", reg.key_prefix))
                .arg(&ours)
                .invoke::<i64>(&mut conn)?;
        }
        *announced = now;
        if draining {
            return Ok(());
        }
        match changed.recv_timeout(Duration::from_millis(reg.heartbeat_ms)) {
            Ok(()) | Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}
