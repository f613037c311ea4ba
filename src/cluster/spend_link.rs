//! A session's quota and connection count across gateways, through Redis
//! (`revocation.redis_url`). Only a session's first and last connection on
//! a gateway talk to Redis, never the data path:
//!
//! - **join**: counts the connection in `{prefix}conns:{sid}` (past
//!   `limits.max_connections_per_session` the connection is refused,
//!   whichever gateway holds the others) and, for the session's first
//!   connection here, reserves *all* that is left of its quota in
//!   `{prefix}used:{sid}`; this gateway then admits frames against that
//!   reservation alone, exactly, at frame boundaries;
//! - **leave**: uncounts the connection and, with the last one here,
//!   gives back what was reserved and not used, so a reconnect through
//!   another gateway finds it.
//!
//! Two gateways serving one session at once (possible only when the
//! connection limit allows it) therefore split its quota first come, first
//! served — never more than the quota in all. Should Redis be unreachable,
//! a gateway falls back to its own count (a warning, counted), so an
//! outage costs cross-gateway exactness, not service.

use std::time::Duration;

use crate::config::Config;
use crate::ids::SessionId;
use crate::registry::{RemoteJoin, SpendLink, SpendRequest, SPEND_QUEUE};
use crate::shard::health;

const JOIN: &str = r#"
local c = redis.call('INCR', KEYS[1])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
if tonumber(ARGV[1]) > 0 and c > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return -1
end
local limit = tonumber(ARGV[2])
if limit == 0 or ARGV[4] == '0' then
  return -2
end
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local left = limit - used
if left < 0 then
  left = 0
end
redis.call('INCRBY', KEYS[2], left)
redis.call('EXPIREAT', KEYS[2], ARGV[3])
return left
"#;

const LEAVE: &str = r#"
local c = redis.call('DECR', KEYS[1])
if c <= 0 then
  redis.call('DEL', KEYS[1])
end
local unused = tonumber(ARGV[1])
if unused > 0 then
  redis.call('DECRBY', KEYS[2], unused)
end
return 1
"#;

/// Starts the link thread when Redis is configured.
pub fn start(cfg: &Config) -> std::io::Result<Option<SpendLink>> {
    if cfg.revocation.redis_url.is_empty() {
        return Ok(None);
    }
    let (tx, rx) = flume::bounded(SPEND_QUEUE);
    let url = cfg.revocation.redis_url.clone();
    let prefix = cfg.control.key_prefix.clone();
    let timeout = Duration::from_millis(cfg.control.report_timeout_ms.max(100));
    std::thread::Builder::new()
        .name("sluice-spend".into())
        .spawn(move || run(&url, &prefix, timeout, &rx))?;
    Ok(Some(SpendLink::new(tx, timeout)))
}

fn run(url: &str, prefix: &str, timeout: Duration, rx: &flume::Receiver<SpendRequest>) {
    let mut conn: Option<redis::Connection> = None;
    let (join, leave) = (redis::Script::new(JOIN), redis::Script::new(LEAVE));
    while let Ok(req) = rx.recv() {
        if conn.is_none() {
            conn = connect(url, timeout)
                .map_err(|e| {
                    health::REDIS.failed(&format!("session spend (counting locally): {e}"))
                })
                .ok();
        }
        let keys = |sid: &SessionId| {
            (
                format!("{prefix}conns:{sid}"),
                format!("{prefix}used:{sid}"),
            )
        };
        let res = match (&req, conn.as_mut()) {
            (_, None) => Err("Redis unreachable".to_owned()),
            (
                SpendRequest::Join {
                    sid,
                    exp,
                    max_conns,
                    limit,
                    first,
                    ..
                },
                Some(c),
            ) => {
                let (k1, k2) = keys(sid);
                join.key(k1)
                    .key(k2)
                    .arg(*max_conns)
                    .arg(*limit)
                    .arg(exp + 60)
                    .arg(if *first { "1" } else { "0" })
                    .invoke::<i64>(c)
                    .map(|n| match n {
                        -1 => RemoteJoin::TooMany,
                        -2 => RemoteJoin::Counted,
                        n => RemoteJoin::Reserved(n.max(0) as u64),
                    })
                    .map_err(|e| e.to_string())
            }
            (SpendRequest::Leave { sid, unused, exp }, Some(c)) => {
                let (k1, k2) = keys(sid);
                let _ = exp;
                leave
                    .key(k1)
                    .key(k2)
                    .arg(*unused)
                    .invoke::<i64>(c)
                    .map(|_| RemoteJoin::Counted)
                    .map_err(|e| e.to_string())
            }
        };
        match &res {
            Err(e) if conn.is_some() => {
                health::REDIS.failed(&format!("session spend: {e}"));
                conn = None;
            }
            Err(_) => {}
            Ok(_) => health::REDIS.ok(),
        }
        if let SpendRequest::Join { reply, .. } = req {
            let _ = reply.send(res);
        }
    }
}

fn connect(url: &str, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let c = redis::Client::open(url)?.get_connection_with_timeout(timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.set_write_timeout(Some(timeout))?;
    Ok(c)
}
