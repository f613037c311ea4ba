//! README scenario "relay": an edge dials `/edge/{id}` and waits; a browser
//! whose token says `"mode":"relay"` takes it; frames flow both ways
//! unchanged and close codes pass through.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use sluice::auth::token::Mode;
use tokio_tungstenite::tungstenite::Message;

async fn edge_conn(gw: &Gateway) -> Ws {
    connect(&gw.url(&format!("/edge/{EDGE}")), &[("Edge-Key", EDGE_KEY)])
        .await
        .expect("edge connect")
}

fn relay_claims(sid: &str) -> sluice::auth::token::Claims {
    let mut c = claims(sid);
    c.mode = Mode::Relay;
    c
}

async fn pair(gw: &Gateway, sid: &str) -> (Ws, Ws) {
    let mut edge = edge_conn(gw).await;
    let b = browser(gw, &relay_claims(sid)).await;
    let paired = next_json(&mut edge).await;
    assert_eq!(
        paired,
        json!({"type": "paired", "session_id": sid, "sub": "alice"})
    );
    (edge, b)
}

#[tokio::test]
async fn frames_flow_both_ways_unchanged() {
    let gw = Gateway::start(2, &[]);
    for shard in 0..2 {
        let sid = sid_on_shard("relay", shard, 2);
        let (mut edge, mut b) = pair(&gw, &sid).await;
        for (i, size) in [0usize, 1, 125, 126, 65_536, 300_000]
            .into_iter()
            .enumerate()
        {
            let down: Vec<u8> = (0..size).map(|j| (i + j) as u8).collect();
            edge.send(Message::Binary(down.clone())).await.unwrap();
            assert_eq!(next_msg(&mut b).await, Message::Binary(down));
            let up: Vec<u8> = (0..size).map(|j| (i * 3 + j) as u8).collect();
            b.send(Message::Binary(up.clone())).await.unwrap();
            assert_eq!(next_msg(&mut edge).await, Message::Binary(up));
        }
        b.send(Message::Text("hola ñandú €".into())).await.unwrap();
        assert_eq!(
            next_msg(&mut edge).await,
            Message::Text("hola ñandú €".into())
        );
        edge.send(Message::Text("{\"x\":1}".into())).await.unwrap();
        assert_eq!(next_msg(&mut b).await, Message::Text("{\"x\":1}".into()));
    }
}

#[tokio::test]
async fn close_codes_pass_through_both_ways() {
    let gw = Gateway::start(2, &[]);
    // Browser closes: the edge sees the browser's code and reason.
    let (mut edge, mut b) = pair(&gw, "closer-b").await;
    close_with(&mut b, 4000, "user left").await;
    assert_eq!(close_of(&mut edge).await, (4000, "user left".to_string()));
    assert_eq!(close_of(&mut b).await.0, 4000);
    // Edge closes: the browser sees the edge's code.
    let (mut edge, mut b) = pair(&gw, "closer-e").await;
    close_with(&mut edge, 4321, "edge done").await;
    assert_eq!(close_of(&mut b).await, (4321, "edge done".to_string()));
    assert_eq!(close_of(&mut edge).await.0, 4321);
    // Edge vanishes without a close: the browser gets an error and 4503.
    let (edge, mut b) = pair(&gw, "closer-x").await;
    drop(edge);
    expect_error_close(&mut b, "edge_disconnected", 4503).await;
}

#[tokio::test]
async fn each_edge_connection_serves_one_session_and_none_left_means_4503() {
    let gw = Gateway::start(1, &[("SLUICE_TIMEOUTS_PAIR_WAIT_MS", "300")]);
    let (_edge, _b) = pair(&gw, "first").await;
    let mut b2 = browser(&gw, &relay_claims("second")).await;
    expect_error_close(&mut b2, "edge_offline", 4503).await;
    // A waiting session pairs with an edge that arrives within pair_wait.
    let gw = Gateway::start(1, &[("SLUICE_TIMEOUTS_PAIR_WAIT_MS", "5000")]);
    let mut e1 = edge_conn(&gw).await;
    let _b1 = browser(&gw, &relay_claims("one")).await;
    assert_eq!(next_json(&mut e1).await["type"], "paired");
    let waiting = tokio::spawn({
        let url = gw.url("/stream/two");
        let t = token(&relay_claims("two"));
        async move {
            let mut b = connect(&url, &[("Authorization", &format!("Bearer {t}"))])
                .await
                .unwrap();
            b.send(Message::Text("after pairing".into())).await.unwrap();
            b
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut e2 = edge_conn(&gw).await;
    assert_eq!(next_json(&mut e2).await["session_id"], "two");
    assert_eq!(
        next_msg(&mut e2).await,
        Message::Text("after pairing".into())
    );
    drop(waiting.await.unwrap());
}

#[tokio::test]
async fn relay_quota_and_bad_edge_keys() {
    let gw = Gateway::start(1, &[]);
    let mut edge = edge_conn(&gw).await;
    let mut c = relay_claims("metered");
    c.quota = Some(250);
    let mut b = browser(&gw, &c).await;
    assert_eq!(next_json(&mut edge).await["type"], "paired");
    edge.send(Message::Binary(vec![0; 200])).await.unwrap();
    assert_eq!(next_msg(&mut b).await, Message::Binary(vec![0; 200]));
    edge.send(Message::Binary(vec![0; 51])).await.unwrap();
    expect_error_close(&mut b, "quota_exceeded", 4429).await;
    assert_eq!(close_of(&mut edge).await.0, 4429);

    let url = gw.url(&format!("/edge/{EDGE}"));
    assert_eq!(refused_status(&url, &[]).await, 401);
    assert_eq!(refused_status(&url, &[("Edge-Key", "wrong")]).await, 401);
    // A valid key for another edge is no key for this one.
    assert_eq!(
        refused_status(&url, &[("Edge-Key", "edge-b-key-0123456789abcdef")]).await,
        401
    );
    assert_eq!(gw.metric("sluice_edge_auth_failures_total").await, 3);
}

/// A burst from the edge (frames written together, so the gateway finds
/// the next one already read and sends them on together) reaches the
/// browser whole and in order, before the edge's close; under a quota, the
/// frames admitted before the refused one still arrive ahead of the 4429.
#[tokio::test]
async fn a_burst_from_the_edge_arrives_whole_and_in_order() {
    let gw = Gateway::start(1, &[]);
    let (mut edge, mut b) = pair(&gw, "burst").await;
    let sent: Vec<Message> = (0..50usize)
        .map(|i| match i % 7 {
            3 => Message::Text(format!("{{\"n\":{i}}}")),
            _ => Message::Binary((0..(i * 97) % 3000).map(|j| (i + j) as u8).collect()),
        })
        .collect();
    for m in &sent {
        edge.feed(m.clone()).await.unwrap();
    }
    close_with(&mut edge, 4321, "burst done").await;
    for (i, m) in sent.into_iter().enumerate() {
        assert_eq!(next_msg(&mut b).await, m, "message {i}");
    }
    assert_eq!(close_of(&mut b).await, (4321, "burst done".to_string()));

    let mut edge = edge_conn(&gw).await;
    let mut c = relay_claims("burst-metered");
    c.quota = Some(1000);
    let mut b = browser(&gw, &c).await;
    assert_eq!(next_json(&mut edge).await["type"], "paired");
    for i in 0..10u8 {
        edge.feed(Message::Binary(vec![i; 100])).await.unwrap();
    }
    edge.send(Message::Binary(vec![10])).await.unwrap();
    for i in 0..10u8 {
        assert_eq!(
            next_msg(&mut b).await,
            Message::Binary(vec![i; 100]),
            "frame {i}"
        );
    }
    expect_error_close(&mut b, "quota_exceeded", 4429).await;
}

/// Seed 000: whichever side comes first waits. A browser that arrives
/// before its relay edge (none connected yet) is paired when the edge
/// dials in within `pair_wait_ms`; with no edge at all it gets 4503 once
/// the wait is over.
#[tokio::test]
async fn a_browser_that_arrives_before_its_edge_waits_for_it() {
    let gw = Gateway::start(1, &[("SLUICE_TIMEOUTS_PAIR_WAIT_MS", "5000")]);
    let early = tokio::spawn({
        let url = gw.url("/stream/early");
        let t = token(&relay_claims("early"));
        async move {
            let mut b = connect(&url, &[("Authorization", &format!("Bearer {t}"))])
                .await
                .unwrap();
            b.send(Message::Text("before the edge".into()))
                .await
                .unwrap();
            b
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut e = edge_conn(&gw).await;
    assert_eq!(next_json(&mut e).await["session_id"], "early");
    assert_eq!(
        next_msg(&mut e).await,
        Message::Text("before the edge".into())
    );
    let mut b = early.await.unwrap();
    e.send(Message::Binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next_msg(&mut b).await, Message::Binary(vec![1, 2, 3]));

    let gw = Gateway::start(1, &[("SLUICE_TIMEOUTS_PAIR_WAIT_MS", "300")]);
    let mut lonely = browser(&gw, &relay_claims("lonely")).await;
    expect_error_close(&mut lonely, "edge_offline", 4503).await;
}
