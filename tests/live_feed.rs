//! README scenario "live feed": sessions on several shards subscribe to one
//! connector live stream; a viewer that falls behind is dropped with 4409
//! while the others keep up; the feed stops when the last viewer leaves.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Waits for the gateway's live `do_get` on a connector; returns its request id.
async fn await_do_get(conn: &mut Ws) -> Value {
    let v = await_action(conn, "do_get").await;
    assert_eq!(v["live"], true);
    v["request_id"].clone()
}

async fn subscribe(gw: &Gateway, sid: &str) -> Ws {
    let mut b = browser(gw, &claims(sid)).await;
    send_json(&mut b, json!({"action": "subscribe", "dataset": "metrics"})).await;
    assert_eq!(next_json(&mut b).await["type"], "subscribed");
    b
}

#[tokio::test]
async fn one_feed_many_viewers_late_joiner_gets_the_header() {
    let gw = Gateway::start(2, &[]);
    let mut conn = connector(&gw, EDGE, EDGE_KEY, &["metrics"]).await;
    let mut a = subscribe(&gw, &sid_on_shard("va", 0, 2)).await;
    let rid = await_do_get(&mut conn).await;
    let mut b = subscribe(&gw, &sid_on_shard("vb", 1, 2)).await;
    let mut c = subscribe(&gw, &sid_on_shard("vc", 1, 2)).await;
    send_json(
        &mut conn,
        json!({"request_id": rid, "type": "stream_start", "schema": "s"}),
    )
    .await;
    let schema = b"SCHEMA-MESSAGE".to_vec();
    conn.send(Message::Binary(schema.clone())).await.unwrap();
    for i in 0..20u8 {
        conn.send(Message::Binary(vec![i; 1000 + i as usize]))
            .await
            .unwrap();
    }
    for v in [&mut a, &mut b, &mut c] {
        assert_eq!(next_json(v).await["type"], "stream_start");
        assert_eq!(next_msg(v).await, Message::Binary(schema.clone()));
        for i in 0..20u8 {
            assert_eq!(
                next_msg(v).await,
                Message::Binary(vec![i; 1000 + i as usize])
            );
        }
    }
    // A late joiner: the header first, then live frames from the next one on.
    let mut late = subscribe(&gw, &sid_on_shard("vlate", 0, 2)).await;
    assert_eq!(next_json(&mut late).await["type"], "stream_start");
    assert_eq!(next_msg(&mut late).await, Message::Binary(schema.clone()));
    conn.send(Message::Binary(vec![99; 10])).await.unwrap();
    for v in [&mut a, &mut b, &mut c, &mut late] {
        assert_eq!(next_msg(v).await, Message::Binary(vec![99; 10]));
    }
    // The feed ends: every viewer gets stream_end.
    send_json(
        &mut conn,
        json!({"request_id": rid, "type": "stream_end", "total_bytes": 0}),
    )
    .await;
    for v in [&mut a, &mut b, &mut c, &mut late] {
        assert_eq!(next_json(v).await["type"], "stream_end");
    }
}

// Multi-threaded so that the fast viewer reads while the feeder writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_viewer_is_dropped_and_the_others_keep_up() {
    let gw = Gateway::start(
        2,
        &[
            ("SLUICE_LIMITS_VIEWER_QUEUE_BYTES", "4194304"),
            ("SLUICE_TIMEOUTS_WRITE_STALL_MS", "60000"),
        ],
    );
    let mut conn = connector(&gw, EDGE, EDGE_KEY, &["metrics"]).await;
    let mut fast = subscribe(&gw, &sid_on_shard("fast", 0, 2)).await;
    let rid = await_do_get(&mut conn).await;
    let mut slow = subscribe(&gw, &sid_on_shard("slow", 1, 2)).await;
    send_json(
        &mut conn,
        json!({"request_id": rid, "type": "stream_start", "schema": "s"}),
    )
    .await;
    let frame = vec![7u8; 256 * 1024];
    // A live feed has a rate: 256 KiB every 10 ms (~25 MB/s) for 30 MiB, far
    // more than the slow viewer's socket buffers and 4 MiB queue hold.
    let n = 120;
    let feeder = tokio::spawn(async move {
        for _ in 0..n {
            conn.send(Message::Binary(frame.clone())).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        conn
    });
    assert_eq!(next_json(&mut fast).await["type"], "stream_start");
    for i in 0..n {
        match next_msg(&mut fast).await {
            Message::Binary(b) => assert_eq!(b.len(), 256 * 1024, "frame {i}"),
            other => panic!("fast viewer got {other:?} at frame {i}"),
        }
    }
    let _conn = feeder.await.unwrap();
    // Only now does the slow viewer read: some frames, then 4409.
    assert_eq!(next_json(&mut slow).await["type"], "stream_start");
    let mut got = 0;
    let code = loop {
        match next_msg(&mut slow).await {
            Message::Binary(_) => got += 1,
            Message::Text(t) => assert!(t.contains("slow_consumer"), "{t}"),
            Message::Close(Some(f)) => break u16::from(f.code),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, 4409);
    assert!(got < n, "the slow viewer cannot have received everything");
    assert_eq!(gw.metric("sluice_slow_viewer_closes_total").await, 1);
}

#[tokio::test]
async fn feed_is_cancelled_when_the_last_viewer_leaves() {
    let gw = Gateway::start(2, &[]);
    let mut conn = connector(&gw, EDGE, EDGE_KEY, &["metrics"]).await;
    let a = subscribe(&gw, &sid_on_shard("x", 0, 2)).await;
    let rid = await_do_get(&mut conn).await;
    let b = subscribe(&gw, &sid_on_shard("y", 1, 2)).await;
    send_json(
        &mut conn,
        json!({"request_id": rid, "type": "stream_start", "schema": "s"}),
    )
    .await;
    drop(a);
    drop(b);
    let cancel = await_action(&mut conn, "cancel").await;
    assert_eq!(cancel["request_id"], rid);
    send_json(
        &mut conn,
        json!({"request_id": rid, "type": "stream_end", "total_bytes": 0}),
    )
    .await;
    // The worker is free again: a query is served by it.
    let serving = tokio::spawn(serve_frames(conn, frames(1, 5)));
    let mut q = browser(&gw, &claims("after")).await;
    assert_eq!(query_all(&mut q, "metrics").await.0, frames(1, 5));
    serving.abort();
}
