//! Session ends, reported so that the control plane frees the session's
//! stream slot within a second of the disconnect (a plan's `max_streams`
//! would otherwise stay taken until the token expires) and gives the
//! unused part of its quota grant back to the plan's hourly budget.
//!
//! With Redis (`revocation.redis_url`) the gateway writes the end where the
//! control plane keeps its slots and grants, and marks the token spent for
//! every gateway (the revocation key and channel: a spent token must not
//! open new streams anywhere). Without Redis it calls the control plane's
//! `POST /control/ended/{sid}` (`control.url`), authenticated with this
//! gateway's admin token. One thread, fed by a bounded queue; never on the
//! data path.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::slots;

use crate::registry::Ended;
use crate::shard::health;
use crate::shard::Shared;

/// The queue the shards report into, sized by
/// `limits.max_pending_session_reports`; `None` when there is nobody to
/// report to.
pub fn queue(
    shared_cfg: &crate::config::Config,
) -> Option<(flume::Sender<Ended>, flume::Receiver<Ended>)> {
    let on = !shared_cfg.revocation.redis_url.is_empty() || !shared_cfg.control.url.is_empty();
    on.then(|| flume::bounded(shared_cfg.limits.max_pending_session_reports.max(1)))
}

pub fn start(shared: Arc<Shared>, rx: flume::Receiver<Ended>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("sluice-session-end".into())
        .spawn(move || run(&shared, &rx))?;
    Ok(())
}

fn run(shared: &Shared, rx: &flume::Receiver<Ended>) {
    let cfg = &shared.cfg;
    let timeout = Duration::from_millis(cfg.control.report_timeout_ms.max(100));
    let mut redis: Option<redis::Connection> = None;
    let http = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build();
    while let Ok(end) = rx.recv() {
        let result = if cfg.revocation.redis_url.is_empty() {
            match &http {
                Ok(c) => to_control_plane(shared, c, &end),
                Err(e) => Err(format!("no HTTP client: {e}")),
            }
        } else {
            to_redis(shared, &mut redis, timeout, &end)
        };
        // One line when the destination goes down and one when it
        // returns, not one per session (`shard::health`).
        let dependency = if cfg.revocation.redis_url.is_empty() {
            &health::CONTROL_PLANE
        } else {
            &health::REDIS
        };
        match result {
            Ok(()) => {
                dependency.ok();
                shared.end_reports.sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(sid = %end.sid, bytes = end.bytes, "session end reported");
            }
            Err(e) => {
                shared.end_reports.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(sid = %end.sid, error = %e, "cannot report a session end; its slot frees when its token expires");
                dependency.failed(&format!("session end not reported: {e}"));
            }
        }
    }
}

fn to_control_plane(
    shared: &Shared,
    http: &reqwest::blocking::Client,
    end: &Ended,
) -> Result<(), String> {
    let url = format!(
        "{}/control/ended/{}",
        shared.cfg.control.url.trim_end_matches('/'),
        end.sid
    );
    let res = http
        .post(&url)
        .bearer_auth(shared.cfg.admin.token.expose())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::json!({"bytes": end.bytes}).to_string())
        .send()
        .map_err(|e| e.to_string())?;
    match res.status().as_u16() {
        // 404: the control plane no longer knows the session (restarted,
        // or the token expired): nothing is held for it.
        200..=299 | 404 => Ok(()),
        s => Err(format!("control plane answered {s}")),
    }
}

fn to_redis(
    shared: &Shared,
    conn: &mut Option<redis::Connection>,
    timeout: Duration,
    end: &Ended,
) -> Result<(), String> {
    let cfg = &shared.cfg;
    if conn.is_none() {
        let client =
            redis::Client::open(cfg.revocation.redis_url.expose()).map_err(|e| e.to_string())?;
        let c = client
            .get_connection_with_timeout(timeout)
            .map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        c.set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        *conn = Some(c);
    }
    let c = conn.as_mut().expect("connected above");
    let prefix = &cfg.control.key_prefix;
    let client = end.client.as_deref().unwrap_or("");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let ttl = end.exp.saturating_sub(now).max(60);
    let msg = serde_json::json!({"sid": end.sid.as_str(), "exp": end.exp}).to_string();
    // The slot and the grant first (the control plane's own script), then
    // the token is spent for every gateway: stored, then published, as the
    // control plane does for a revocation.
    // Ended only when no gateway holds a connection of the session (it may
    // have reconnected through another one meanwhile): then that gateway
    // reports the end when its own last connection goes.
    static GUARDED: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(&format!(
            "if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then return 0 end\n{}",
            slots::END_SESSION
        ))
    });
    let res = GUARDED
        .key(slots::streams_key(prefix, &end.tenant, client))
        .key(slots::grants_key(prefix, &end.tenant, client))
        .key(format!("{prefix}conns:{}", end.sid))
        .arg(end.sid.as_str())
        .arg(end.bytes)
        .invoke::<i64>(c)
        .and_then(|ended| {
            if ended == 0 {
                return Ok(());
            }
            redis::pipe()
                .set_ex(
                    format!("{}{}", cfg.revocation.key_prefix, end.sid),
                    "1",
                    ttl,
                )
                .ignore()
                .publish(&cfg.revocation.channel, msg)
                .ignore()
                .query::<()>(c)
        });
    res.map_err(|e| {
        *conn = None;
        e.to_string()
    })
}
