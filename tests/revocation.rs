//! README section "Revocation": a session revoked through Redis is closed
//! at once with 4410 (ahead of data still queued for it), cannot come back,
//! and a revocation published while the gateway's Redis link is down takes
//! effect when the link returns. Against a real `redis-server`.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn ready(gw: &Gateway) -> u16 {
    gw.get("/readyz").await.0
}

async fn wait_ready(gw: &Gateway, want: u16) {
    for _ in 0..500 {
        if ready(gw).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("/readyz never answered {want}");
}

#[tokio::test]
async fn a_revoked_session_is_closed_at_once_and_cannot_reconnect() {
    let redis = Redis::start();
    // 8 MiB may queue for a session in the gateway, in front of small
    // socket buffers: without the revocation jumping the queue, the victim
    // would read at least 8 MiB before its close.
    let gw = Gateway::start(
        2,
        &[
            ("SLUICE_REVOCATION_REDIS_URL", &redis.url()),
            ("SLUICE_LIMITS_SESSION_BUFFER_BYTES", "8388608"),
            ("SLUICE_LIMITS_SOCKET_BUFFER_BYTES", "65536"),
        ],
    );
    wait_ready(&gw, 200).await;
    assert_eq!(gw.metric("sluice_revocation_link_up").await, 1);

    let mut conn = connector(&gw, EDGE, EDGE_KEY, &["d"]).await;
    let mut victim = browser(&gw, &claims("rev-victim")).await;
    let mut bystander = browser(&gw, &claims("rev-bystander")).await;
    send_json(&mut victim, json!({"action": "query", "dataset": "d"})).await;
    start_stream(&mut conn).await;
    // The victim does not read: megabytes queue up for it in the gateway
    // and the connector is paused by TCP flow control.
    let writer = tokio::spawn(async move {
        for _ in 0..256 {
            if conn
                .send(Message::Binary(vec![7u8; 64 * 1024]))
                .await
                .is_err()
            {
                break;
            }
        }
        conn
    });
    tokio::time::sleep(Duration::from_millis(800)).await;

    let far = sluice::auth::token::now_s() + 300;
    let published: i64 = redis.cmd(
        redis::cmd("PUBLISH")
            .arg("sluice:revocations")
            .arg(json!({"sid": "rev-victim", "exp": far}).to_string()),
    );
    assert_eq!(published, 1, "the gateway is subscribed");

    // The close overtakes the queued data: at most what already sat in
    // socket buffers arrives first.
    let mut data = 0usize;
    let code = loop {
        match next_msg(&mut victim).await {
            Message::Binary(b) => data += b.len(),
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "error" {
                    assert_eq!(v["code"], "revoked", "{v}");
                    break close_of(&mut victim).await.0;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 4410);
    assert!(
        data < 4 << 20,
        "the close did not overtake the queued data ({data} B read first)"
    );

    // Everyone else is untouched.
    send_json(&mut bystander, json!({"action": "list"})).await;
    let v = next_json(&mut bystander).await;
    assert_ne!(v["type"], "error", "{v}");

    // The revoked token cannot open a new session, on any shard it lands on.
    let mut again = browser(&gw, &claims("rev-victim")).await;
    expect_error_close(&mut again, "revoked", 4410).await;
    assert!(gw.metric("sluice_revoked_closes_total").await >= 2);
    assert_eq!(gw.metric("sluice_revocations_received_total").await, 1);
    // The shard's time to act on it is counted once, in a histogram whose
    // +Inf bucket holds every revocation.
    assert_eq!(gw.metric("sluice_revocation_seconds_count").await, 1);
    assert_eq!(
        gw.metric("sluice_revocation_seconds_bucket{le=\"+Inf\"}")
            .await,
        1
    );
    drop(writer);
}

#[tokio::test]
async fn a_revocation_published_while_the_link_is_down_applies_when_it_returns() {
    let redis = Redis::start();
    let link = Cuttable::to(format!("127.0.0.1:{}", redis.port).parse().unwrap());
    let gw = Gateway::start(
        1,
        &[
            (
                "SLUICE_REVOCATION_REDIS_URL",
                &format!("redis://{}/", link.addr),
            ),
            ("SLUICE_REVOCATION_HEALTH_CHECK_MS", "200"),
            ("SLUICE_REVOCATION_MAX_BACKOFF_MS", "200"),
        ],
    );
    wait_ready(&gw, 200).await;
    let _conn = connector(&gw, EDGE, EDGE_KEY, &["d"]).await;
    let mut live = browser(&gw, &claims("rev-partitioned")).await;

    link.cut();
    // Readiness tells the truth: no new sessions while revocations could be missed.
    wait_ready(&gw, 503).await;
    assert_eq!(gw.metric("sluice_revocation_link_up").await, 0);

    // The control plane revokes meanwhile: stored with a TTL, and published
    // to nobody (the gateway is cut off).
    let _: () = redis.cmd(
        redis::cmd("SET")
            .arg("sluice:revoked:rev-partitioned")
            .arg("1")
            .arg("EX")
            .arg(300),
    );
    let heard: i64 = redis.cmd(
        redis::cmd("PUBLISH")
            .arg("sluice:revocations")
            .arg("rev-partitioned"),
    );
    assert_eq!(heard, 0, "nobody was subscribed during the cut");

    // The session is still open (nothing could tell the gateway)...
    send_json(&mut live, json!({"action": "list"})).await;
    assert_ne!(next_json(&mut live).await["type"], "error");

    // ...until the link returns: resync, then 4410.
    link.restore();
    expect_error_close(&mut live, "revoked", 4410).await;
    wait_ready(&gw, 200).await;
    assert_eq!(gw.metric("sluice_revocation_link_up").await, 1);
    let mut again = browser(&gw, &claims("rev-partitioned")).await;
    expect_error_close(&mut again, "revoked", 4410).await;
}

#[tokio::test]
async fn without_redis_configured_nothing_changes_and_a_bad_url_is_refused() {
    let gw = Gateway::start(1, &[]);
    assert_eq!(ready(&gw).await, 200);
    let (_, metrics) = gw.get("/metrics").await;
    assert!(!metrics.contains("sluice_revocation_link_up"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .env("SLUICE_REVOCATION_REDIS_URL", "http://nope")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revocation.redis_url"));
    // A URL with a password is never printed.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .env(
            "SLUICE_REVOCATION_REDIS_URL",
            "redis://:hunter2@127.0.0.1:6379/",
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("redis_url") && !shown.contains("hunter2"),
        "{shown}"
    );
    // The admin token is never printed; the registry and JWKS settings
    // are checked.
    let check = |env: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("check-config")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let out = check(&[("SLUICE_ADMIN_TOKEN", "admin-secret-0123456789")]);
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("[admin]") && !shown.contains("admin-secret-0123456789"),
        "{shown}"
    );
    for (var, val, key) in [
        ("SLUICE_ADMIN_TOKEN", "short", "admin.token"),
        ("SLUICE_AUTH_JWKS_URL", "ftp://x/jwks", "auth.jwks_url"),
        (
            "SLUICE_REGISTRY_PUBLIC_URL",
            "http://gw",
            "registry.public_url",
        ),
        ("SLUICE_REGISTRY_TTL_MS", "100", "registry"),
    ] {
        let out = check(&[(var, val)]);
        assert!(!out.status.success(), "{var}={val} accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(key),
            "{var}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Issue 13, defect 3, with Redis: when a session ends, the gateway frees
/// its stream slot and refunds its unused grant in the control plane's
/// keys, and spends its token for every gateway (revocation key and
/// channel).
#[tokio::test]
async fn a_session_end_is_written_to_the_control_planes_redis_keys() {
    let redis = Redis::start();
    let gw = Gateway::start(2, &[("SLUICE_REVOCATION_REDIS_URL", &redis.url())]);
    wait_ready(&gw, 200).await;
    let mut c = claims("ends-in-redis");
    c.client = Some("dash".into());
    c.quota = Some(1000);
    let streams = "sluice:streams:acme:dash";
    let grants = "sluice:grants:acme:dash";
    let _: i64 = redis.cmd(redis::cmd("ZADD").arg(streams).arg(c.exp).arg(&c.sid));
    let _: i64 = redis.cmd(
        redis::cmd("ZADD")
            .arg(grants)
            .arg(1)
            .arg(format!("{}:1000", c.sid)),
    );
    let mut conn = connector(&gw, EDGE, EDGE_KEY, &["d"]).await;
    let mut b = browser(&gw, &c).await;
    send_json(&mut b, json!({"action": "query", "dataset": "d"})).await;
    let rid = start_stream(&mut conn).await;
    conn.send(Message::Binary(vec![9; 300])).await.unwrap();
    send_json(
        &mut conn,
        json!({"request_id": rid, "type": "stream_end", "total_bytes": 300}),
    )
    .await;
    let (frames, _) = {
        let mut got = Vec::new();
        loop {
            match next_msg(&mut b).await {
                Message::Binary(x) => got.push(x),
                Message::Text(t) if t.contains("stream_end") => break (got, t),
                _ => {}
            }
        }
    };
    assert_eq!(frames.len(), 1);
    close_with(&mut b, 1000, "done").await;
    drop(b);
    let mut spent = false;
    for _ in 0..250 {
        let exists: i64 = redis.cmd(redis::cmd("EXISTS").arg(format!("sluice:revoked:{}", c.sid)));
        if exists == 1 {
            spent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(spent, "the ended session's token was not spent");
    let held: i64 = redis.cmd(redis::cmd("ZCARD").arg(streams));
    assert_eq!(held, 0, "the slot is free");
    let members: Vec<String> = redis.cmd(redis::cmd("ZRANGE").arg(grants).arg(0).arg(-1));
    assert_eq!(
        members,
        vec![format!("{}:300", c.sid)],
        "700 unused bytes went back"
    );
    let mut again = browser(&gw, &c).await;
    let (code, _) = close_of(&mut again).await;
    assert_eq!(code, 4410);
}

/// Issue 13, defect 2, across gateways: with Redis, a session's quota and
/// its connection limit hold whichever gateway its connections reach. A
/// browser that reads 800 of its 1,000 bytes through one gateway and
/// reconnects through another finds 200 left; while it is connected to
/// one, the other refuses a second connection (4429).
#[tokio::test]
async fn the_quota_and_the_connection_limit_hold_across_gateways() {
    let redis = Redis::start();
    let env = [("SLUICE_REVOCATION_REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (one, two) = (Gateway::start(1, &env), Gateway::start(1, &env));
    wait_ready(&one, 200).await;
    wait_ready(&two, 200).await;
    let mut serving = serving_connectors(&one, 1, frames(4, 400)).await;
    serving.extend(serving_connectors(&two, 1, frames(4, 400)).await);
    let mut c = claims("across");
    c.quota = Some(1000);
    let mut b = browser(&one, &c).await;
    send_json(&mut b, json!({"action": "list"})).await;
    assert_eq!(next_json(&mut b).await["type"], "datasets");
    // Connected to one: two refuses a second connection.
    let mut twin = browser(&two, &c).await;
    expect_error_close(&mut twin, "too_many_connections", 4429).await;
    // 800 of the 1,000 bytes through one (the third frame closes it).
    assert_eq!(frames_until_quota(&mut b).await, 2);
    drop(b);
    // Reconnect through the other gateway: 200 bytes left, no frame fits.
    let mut again = None;
    for _ in 0..100 {
        let mut b = browser(&two, &c).await;
        send_json(&mut b, json!({"action": "list"})).await;
        match next_msg(&mut b).await {
            Message::Text(t) if t.contains("too_many_connections") => {
                // one has not seen the disconnect yet
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => {
                again = Some(b);
                break;
            }
        }
    }
    let mut b = again.expect("reconnect through the second gateway");
    assert_eq!(frames_until_quota(&mut b).await, 0);
    for s in serving {
        s.abort();
    }
}

/// Issue 34: while Redis is down the gateway says so once, counts the
/// failures (`sluice_dependency_*`) instead of logging one line per
/// session, and says once when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_logged_once_counted_and_logged_once_when_it_returns() {
    let redis = Redis::start();
    let link = Cuttable::to(format!("127.0.0.1:{}", redis.port).parse().unwrap());
    let url = format!("redis://{}/", link.addr);
    let mut gw = Gateway::start_logged(
        1,
        &[
            ("SLUICE_REVOCATION_REDIS_URL", url.as_str()),
            ("SLUICE_REVOCATION_MAX_BACKOFF_MS", "200"),
            ("SLUICE_LOG", "info"),
        ],
    );
    let lines = gw.log_lines();
    let up = "sluice_dependency_up{dependency=\"redis\"}";
    assert_eq!(gw.metric_settles(up, 1).await, 1);
    link.cut();
    for i in 0..60 {
        let mut b = browser(&gw, &claims(&format!("outage-{i}"))).await;
        close_with(&mut b, 1000, "done").await;
    }
    assert_eq!(gw.metric_settles(up, 0).await, 0);
    let failures = gw
        .metric("sluice_dependency_failures_total{dependency=\"redis\"}")
        .await;
    assert!(failures >= 1, "{failures} failures counted");
    link.restore();
    for _ in 0..250 {
        if gw.metric(up).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(gw.metric(up).await, 1, "Redis is back");
    drop(gw);
    let log = lines.join().unwrap();
    let about_redis: Vec<_> = log
        .iter()
        .filter(|l| {
            (l.contains("WARN") || l.contains("ERROR")) && l.to_lowercase().contains("redis")
        })
        .collect();
    assert!(
        about_redis.len() <= 4,
        "{} warnings about Redis for one outage: {about_redis:#?}",
        about_redis.len()
    );
    assert!(log.iter().any(|l| l.contains("redis is back")), "{log:#?}");
}
