//! README sections "Backpressure" and "No leaks": a browser that stops
//! reading slows its connector instead of growing the gateway; ten thousand
//! sessions opened and closed leave no descriptor or memory behind.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use sluice::auth::token::Mode;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_browser_that_stops_reading_pauses_its_connector() {
    // A pause shorter than `timeouts.reader_stall_ms` (a minute here).
    let gw = Gateway::start(
        1,
        &[
            ("SLUICE_LIMITS_SESSION_BUFFER_BYTES", "1048576"),
            ("SLUICE_TIMEOUTS_READER_STALL_MS", "60000"),
        ],
    );
    let mut conn = connector(&gw, EDGE, EDGE_KEY, &["big"]).await;
    let mut b = browser(&gw, &claims("stalled")).await;
    send_json(&mut b, json!({"action": "query", "dataset": "big"})).await;
    let rid = start_stream(&mut conn).await;
    let (_, rss_before) = fds_and_rss(gw.pid());
    let frames_total = 400; // 100 MiB
    let sent = Arc::new(AtomicUsize::new(0));
    let feeder = tokio::spawn({
        let sent = sent.clone();
        async move {
            let frame = vec![3u8; 256 * 1024];
            for _ in 0..frames_total {
                conn.send(Message::Binary(frame.clone())).await.unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
            send_json(
                &mut conn,
                json!({"request_id": rid, "type": "stream_end", "total_bytes": 0}),
            )
            .await;
            conn
        }
    });
    // Wait until the connector is blocked (no progress for a while).
    let last = until_stalled(&sent).await;
    let (_, rss_blocked) = fds_and_rss(gw.pid());
    assert!(
        last < frames_total / 2,
        "connector should be paused by TCP flow control, sent {last} frames"
    );
    let growth_kib = rss_blocked.saturating_sub(rss_before);
    assert!(
        growth_kib < 24 * 1024,
        "gateway memory grew by {growth_kib} KiB while the browser stalled"
    );
    // The browser reads again: everything arrives, in order, whole.
    let mut got = 0;
    loop {
        match next_msg(&mut b).await {
            Message::Binary(f) => {
                assert_eq!(f.len(), 256 * 1024);
                got += 1;
            }
            Message::Text(t) if t.contains("stream_end") => break,
            Message::Text(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, frames_total);
    drop(feeder.await.unwrap());
}

#[tokio::test]
async fn ten_thousand_sessions_leave_nothing_behind() {
    // One relay edge id per concurrent client, so each pairs with its own.
    let keys: Vec<String> = (0..CLIENTS)
        .map(|w| format!("churn-edge-{w}=churn-key-{w:08}-0123456789"))
        .collect();
    // Ended sessions' ids are remembered until their tokens expire (an
    // hour here); a small limit keeps that out of the RSS measured, and
    // shows the limit holding.
    let gw = Gateway::start(
        2,
        &[
            ("SLUICE_EDGE_KEYS", &keys.join(",")),
            ("SLUICE_LIMITS_MAX_SPENT_SESSIONS", "2000"),
        ],
    );
    let addr = gw.addr;
    // Relay edges for the relay share of the churn.
    let run = |from: usize, to: usize| {
        let gw_url = gw.url("");
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            let next = Arc::new(AtomicUsize::new(from));
            for w in 0..CLIENTS {
                let next = next.clone();
                let base = gw_url.clone();
                tasks.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= to {
                            break;
                        }
                        one_session(&base, addr, i, w).await;
                    }
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
        }
    };
    run(0, 1000).await; // warm-up: allocator pools, shard tables
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fds0, rss0) = fds_and_rss(gw.pid());
    run(1000, 11_000).await;
    let pid = gw.pid();
    eventually("sessions closed", || fds_and_rss(pid).0 <= fds0).await;
    let (fds1, rss1) = fds_and_rss(pid);
    assert_eq!(gw.metric_settles("sluice_sessions_active", 0).await, 0);
    assert_eq!(
        gw.metric_settles("sluice_relay_connections_active", 0)
            .await,
        0
    );
    assert!(fds1 <= fds0, "descriptors: {fds0} before, {fds1} after");
    // Every session ended (session_end_ms after its close) and its id was
    // remembered, or forgotten at the limit: none kept past it.
    assert_eq!(gw.metric_settles("sluice_session_ids_live", 0).await, 0);
    let remembered = gw.metric("sluice_session_ids_ended").await;
    let forgotten = gw
        .metric("sluice_spent_sessions_forgotten_total{set=\"ended\"}")
        .await;
    assert!(remembered <= 2000, "{remembered} ended ids remembered");
    assert_eq!(remembered + forgotten, 11_000 / 4 * 3);
    let growth = rss1.saturating_sub(rss0);
    println!("RSS {rss0} -> {rss1} KiB over 10,000 sessions");
    assert!(
        growth < 4 * 1024,
        "RSS grew by {growth} KiB over 10,000 sessions ({rss0} -> {rss1} KiB)"
    );
    // Every case but the one cut inside the request head became a session.
    assert_eq!(gw.metric("sluice_sessions_total").await, 11_000 / 4 * 3);
}

const CLIENTS: usize = 32;

/// One of four ways to end a session, by `i % 4`; `w` is the client.
async fn one_session(base: &str, addr: std::net::SocketAddr, i: usize, w: usize) {
    let sid = format!("churn-{i}");
    match i % 4 {
        // Clean: authenticate, ask, close with a close frame.
        0 => {
            let t = token(&claims(&sid));
            let mut b = connect(
                &format!("{base}/stream/{sid}"),
                &[("Authorization", &format!("Bearer {t}"))],
            )
            .await
            .unwrap();
            send_json(&mut b, json!({"action": "list"})).await;
            let _ = next_msg(&mut b).await;
            let _ = b.close(None).await;
        }
        // Abrupt: TCP dropped right after the upgrade.
        1 => {
            let t = token(&claims(&sid));
            let b = connect(
                &format!("{base}/stream/{sid}"),
                &[("Authorization", &format!("Bearer {t}"))],
            )
            .await
            .unwrap();
            drop(b);
        }
        // Abrupt: TCP dropped in the middle of the request head.
        2 => {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(b"GET /stream/x HTTP/1.1\r\nHost:").await;
            drop(s);
        }
        // Relay pair, closed by the browser.
        _ => {
            let key = format!("churn-key-{w:08}-0123456789");
            let mut edge = connect(
                &format!("{base}/edge/churn-edge-{w}"),
                &[("Edge-Key", &key)],
            )
            .await
            .unwrap();
            let mut c = claims(&sid);
            c.mode = Mode::Relay;
            c.edge = format!("churn-edge-{w}");
            let t = token(&c);
            let mut b = connect(
                &format!("{base}/stream/{sid}"),
                &[("Authorization", &format!("Bearer {t}"))],
            )
            .await
            .unwrap();
            let _ = next_msg(&mut edge).await; // paired
            b.send(Message::Binary(vec![1; 64])).await.unwrap();
            let _ = next_msg(&mut edge).await;
            let _ = b.close(None).await;
            while let Some(Ok(_)) = edge.next().await {}
        }
    }
}

/// A client that floods pings (or actions) and never reads the answers is
/// no longer read once its answers fill its buffer: gateway memory stays
/// bounded and other sessions are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_cannot_grow_the_gateway() {
    let gw = Gateway::start(1, &[("SLUICE_LIMITS_SESSION_BUFFER_BYTES", "1048576")]);
    let mut healthy = Healthy::new(&gw).await;
    let b = browser(&gw, &claims("flooder")).await;
    let (mut sink, _stream) = b.split();
    let (_, rss_before) = fds_and_rss(gw.pid());
    let sent = Arc::new(AtomicUsize::new(0));
    let flood = tokio::spawn({
        let sent = sent.clone();
        async move {
            let ping = Message::Ping(vec![7; 125]);
            let list = Message::Text(json!({"action": "list"}).to_string());
            for i in 0..400_000usize {
                let m = if i % 2 == 0 {
                    ping.clone()
                } else {
                    list.clone()
                };
                if sink.send(m).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    // Wait until the flood is held back by TCP flow control.
    let last = until_stalled(&sent).await;
    assert!(
        last < 400_000,
        "the gateway should stop reading a client that does not read"
    );
    let (_, rss_after) = fds_and_rss(gw.pid());
    let growth = rss_after.saturating_sub(rss_before);
    assert!(
        growth < 16 * 1024,
        "gateway grew by {growth} KiB under a ping/action flood"
    );
    healthy.check().await;
    flood.abort();
}

/// Waits until a sender's counter stops moving (TCP flow control holds it);
/// returns where it stopped.
async fn until_stalled(sent: &AtomicUsize) -> usize {
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sent.load(Ordering::SeqCst);
        if now == last {
            return now;
        }
        last = now;
    }
}
