//! README sections "Liveness" and "Graceful drain": keepalive pings, idle
//! timeouts on both sides, and SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn pings_keep_live_peers_and_idle_peers_are_closed() {
    let gw = Gateway::start(
        1,
        &[
            ("SLUICE_TIMEOUTS_PING_INTERVAL_MS", "200"),
            ("SLUICE_TIMEOUTS_IDLE_TIMEOUT_MS", "1000"),
        ],
    );
    // A browser that reads (tungstenite answers pings) stays open.
    let mut b = browser(&gw, &claims("alive")).await;
    let mut pings = 0;
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(100), b.next()).await {
            match m {
                Message::Ping(_) => pings += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(pings >= 2, "gateway pings a quiet peer ({pings} pings)");
    send_json(&mut b, json!({"action": "list"})).await;
    assert_eq!(next_json(&mut b).await["type"], "error"); // edge offline, but the session was alive
                                                          // A browser that never answers is closed with 1001.
    let t = token(&claims("mute"));
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "GET /stream/mute HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {t}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await;
    let close_at = all
        .windows(2)
        .rposition(|w| w[0] == 0x88)
        .expect("a close frame");
    let code = u16::from_be_bytes([all[close_at + 2], all[close_at + 3]]);
    assert_eq!(code, 1001);

    // A connector that answers pings stays registered; a mute one is dropped.
    let mut conn = connector(&gw, EDGE, EDGE_KEY, &["d"]).await;
    let keep = tokio::spawn(async move { while let Some(Ok(_)) = conn.next().await {} });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gw.metric("sluice_edges_online").await, 1);
    keep.abort();
    let _mute = connector(&gw, "edge-b", "edge-b-key-0123456789abcdef", &["d"]).await; // never reads again
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(gw.metric("sluice_edges_online").await, 0);
}

#[tokio::test]
async fn sigterm_drains_then_closes_with_1001_and_exits() {
    let mut gw = Gateway::start(
        2,
        &[
            ("SLUICE_TIMEOUTS_DRAIN_GRACE_MS", "1500"),
            ("SLUICE_TIMEOUTS_SHUTDOWN_MS", "2000"),
        ],
    );
    let mut conn = connector(&gw, EDGE, EDGE_KEY, &["ventas"]).await;
    let mut b = browser(&gw, &claims(&sid_on_shard("running", 1, 2))).await;
    send_json(&mut b, json!({"action": "query", "dataset": "ventas"})).await;
    start_stream(&mut conn).await;
    assert_eq!(gw.get("/readyz").await.0, 200);

    let started = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut readyz = 0;
    for _ in 0..50 {
        readyz = gw.get("/readyz").await.0;
        if readyz == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(readyz, 503, "/readyz turns 503 at once");
    assert_eq!(gw.get("/healthz").await.0, 200);
    let t = token(&claims("newcomer"));
    assert_eq!(
        refused_status(
            &gw.url("/stream/newcomer"),
            &[("Authorization", &format!("Bearer {t}"))]
        )
        .await,
        503
    );
    assert_eq!(
        refused_status(&gw.url("/ws/connect"), &[("Edge-Key", EDGE_KEY)]).await,
        503
    );
    // The running stream still flows during the grace period...
    conn.send(Message::Binary(vec![5; 100])).await.unwrap();
    assert_eq!(next_json(&mut b).await["type"], "stream_start");
    assert_eq!(next_msg(&mut b).await, Message::Binary(vec![5; 100]));
    // ...then the session is closed with 1001, and the process exits.
    let (code, _) = close_of(&mut b).await;
    assert_eq!(code, 1001);
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "grace period honoured"
    );
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        if let Some(st) = gw.child.try_wait().unwrap() {
            assert!(st.success(), "exit status {st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not exit within its bound"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn idle_gateway_exits_at_once_on_sigterm() {
    let mut gw = Gateway::start(1, &[("SLUICE_TIMEOUTS_DRAIN_GRACE_MS", "30000")]);
    let started = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .unwrap();
    while gw.child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no session to wait for: exit promptly"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A second gateway on a port a running one serves refuses to start and
/// names the port (with `SO_REUSEPORT` alone the kernel would split new
/// connections between them), and the first keeps serving.
#[tokio::test]
async fn a_second_gateway_on_a_taken_port_refuses_to_start() {
    let gw = Gateway::start(2, &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .env_clear()
        .env("SLUICE_LISTEN", gw.addr.to_string())
        .env("SLUICE_TOKEN_SECRET", SECRET)
        .output()
        .expect("run sluice");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second gateway started: {err}");
    assert!(
        err.contains(&format!("port {} is already in use", gw.addr.port())),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "it must not claim to listen"
    );
    assert_eq!(gw.get("/healthz").await.0, 200);
}
