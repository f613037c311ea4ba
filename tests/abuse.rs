//! Issue 34: nothing without credentials may hold the gateway's memory.
//! Each attack a reviewer ran from outside, run here against the real
//! gateway while a healthy relay pair keeps being served. Memory is read
//! from `/proc` with a generous margin (100 MB above rest); nothing here
//! asserts a time.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What an attack may add to the gateway's resident memory.
const MARGIN_KIB: u64 = 100 * 1024;

/// The gateway's resident memory now, KiB.
fn rss(gw: &Gateway) -> u64 {
    fds_and_rss(gw.pid()).1
}

/// Runs `attack` while sampling the gateway's memory and checking, every
/// 200 ms, that the healthy pair is still served both ways; returns what
/// the attack returned and the peak resident memory (KiB).
async fn under_attack<F, T>(gw: &Gateway, healthy: &mut Healthy, attack: F) -> (T, u64)
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let pid = gw.pid();
    let attack = tokio::spawn(attack);
    let mut peak = fds_and_rss(pid).1;
    while !attack.is_finished() {
        healthy.check().await;
        peak = peak.max(fds_and_rss(pid).1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    healthy.check().await;
    (attack.await.unwrap(), peak)
}

/// An HTTP/2 connection with no credentials at all.
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Opens a gRPC call on `path` and sends the start of a message that
/// announces `announced` bytes, `sent` of them; returns the call's
/// `grpc-status` (answered in the headers: a trailers-only refusal).
async fn half_a_message(
    client: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
    announced: u32,
    sent: usize,
) -> Option<String> {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut ready = client.clone().ready().await.ok()?;
    let (resp, mut body) = ready.send_request(req, false).ok()?;
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&announced.to_be_bytes());
    let _ = body.send_data(Bytes::from(prefix), false);
    let _ = body.send_data(Bytes::from(vec![7u8; sent]), false);
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .ok()?
        .ok()?;
    let status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    drop(body);
    status
}

/// Attacks 1 and 2: `Serve` calls that announce 15 MiB and send all but a
/// byte, and `Connect` calls that never register, none with a client
/// certificate or an `edge-key`. Each is refused `UNAUTHENTICATED` (16) at
/// its headers; nothing it sends is buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_without_credentials_are_refused_before_their_body_is_read() {
    let gw = Gateway::start(2, &[("SLUICE_GRPC_LISTEN", "127.0.0.1:0")]);
    let at = gw.grpc_addr.unwrap();
    let mut healthy = Healthy::new(&gw).await;
    let rest = rss(&gw);
    let (statuses, peak) = under_attack(&gw, &mut healthy, async move {
        let mut calls = Vec::new();
        for _ in 0..4 {
            let client = h2_client(at).await;
            for i in 0..40 {
                let mut c = client.clone();
                let path = if i % 2 == 0 {
                    "/sluice.tunnel.v1.ConnectorTunnel/Serve"
                } else {
                    "/sluice.tunnel.v1.ConnectorTunnel/Connect"
                };
                calls.push(tokio::spawn(async move {
                    half_a_message(&mut c, at, path, 15 << 20, (4 << 20) - 1).await
                }));
            }
        }
        let mut statuses = Vec::new();
        for c in calls {
            statuses.push(c.await.unwrap());
        }
        statuses
    })
    .await;
    // UNAUTHENTICATED (16), or RESOURCE_EXHAUSTED (8) once the address has
    // used its tries (`auth.edge_failures_per_minute`).
    assert!(
        statuses
            .iter()
            .all(|s| matches!(s.as_deref(), Some("16") | Some("8"))),
        "every call refused at its headers: {statuses:?}"
    );
    assert_eq!(statuses[0].as_deref(), Some("16"));
    assert!(
        peak < rest + MARGIN_KIB,
        "RSS {rest} KiB at rest, {peak} KiB under attack"
    );
    assert!(gw.metric("sluice_grpc_refused_total").await >= 160);
}

/// Attack 3: `DoGet` calls with an unfinished 64 KiB ticket and no bearer
/// token, a hundred per connection; each is refused at its headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_calls_without_a_token_are_refused_before_their_ticket_is_read() {
    let gw = Gateway::start(2, &[("SLUICE_FLIGHT_LISTEN", "127.0.0.1:0")]);
    let at = gw.flight_addr.unwrap();
    let mut healthy = Healthy::new(&gw).await;
    let rest = rss(&gw);
    let (statuses, peak) = under_attack(&gw, &mut healthy, async move {
        let mut calls = Vec::new();
        for _ in 0..20 {
            let client = h2_client(at).await;
            for _ in 0..100 {
                let mut c = client.clone();
                calls.push(tokio::spawn(async move {
                    let path = "/arrow.flight.protocol.FlightService/DoGet";
                    half_a_message(&mut c, at, path, 64 * 1024, 64 * 1024 - 1).await
                }));
            }
        }
        let mut statuses = Vec::new();
        for c in calls {
            statuses.push(c.await.unwrap());
        }
        statuses
    })
    .await;
    let refused = statuses
        .iter()
        .filter(|s| s.as_deref() == Some("16"))
        .count();
    assert_eq!(refused, statuses.len(), "{statuses:?}");
    assert!(
        peak < rest + MARGIN_KIB,
        "RSS {rest} KiB at rest, {peak} KiB under attack"
    );
}

/// An HTTP/2 connection that never makes an authenticated call is closed
/// `timeouts.auth_ms` after its handshake, and at `max_unauthenticated`
/// a newcomer evicts the oldest; both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_unauthenticated_http2_connections_are_closed_and_evicted() {
    let gw = Gateway::start(
        1,
        &[
            ("SLUICE_FLIGHT_LISTEN", "127.0.0.1:0"),
            ("SLUICE_FLIGHT_MAX_UNAUTHENTICATED", "4"),
            ("SLUICE_TIMEOUTS_AUTH_MS", "1500"),
        ],
    );
    let at = gw.flight_addr.unwrap();
    let mut ends = Vec::new();
    for _ in 0..6 {
        let tcp = TcpStream::connect(at).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        ends.push(tokio::spawn(async move {
            let _keep = client;
            let _ = conn.await;
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for e in ends {
        tokio::time::timeout(Duration::from_secs(30), e)
            .await
            .expect("every idle connection is closed")
            .unwrap();
    }
    assert_eq!(
        gw.metric_settles("sluice_flight_unauthenticated_closed_total", 6)
            .await,
        6
    );
    assert_eq!(
        gw.metric("sluice_flight_unauthenticated_connections").await,
        0
    );
}

/// A masked ping frame, as a client sends it.
fn ping() -> [u8; 10] {
    [
        0x89,
        0x84,
        1,
        2,
        3,
        4,
        b'p' ^ 1,
        b'i' ^ 2,
        b'n' ^ 3,
        b'g' ^ 4,
    ]
}

/// Attack 4: sockets upgraded on `/stream` without a token, that flood
/// pings and never read their pongs (receive buffer 4 KiB). The pongs owed
/// are dropped, not queued, and past 32 control frames the socket is
/// refused (4400); one that pings slowly is closed by the auth deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_sockets_that_flood_pings_and_never_read_are_closed() {
    let gw = Gateway::start(2, &[("SLUICE_TIMEOUTS_AUTH_MS", "2000")]);
    let mut healthy = Healthy::new(&gw).await;
    let rest = rss(&gw);
    let addr = gw.addr;
    let (closed, peak) = under_attack(&gw, &mut healthy, async move {
        let mut floods = Vec::new();
        for i in 0..200 {
            floods.push(tokio::spawn(async move {
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.set_recv_buffer_size(4096).unwrap();
                let mut s = sock.connect(addr).await.unwrap();
                let head = format!(
                    "GET /stream/flood-{i} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                );
                s.write_all(head.as_bytes()).await.unwrap();
                let burst: Vec<u8> = std::iter::repeat_n(ping(), 100).flatten().collect();
                // Flood until the gateway closes the socket (bounded: 60 s).
                for _ in 0..6000 {
                    match tokio::time::timeout(Duration::from_secs(10), s.write_all(&burst)).await {
                        Ok(Ok(())) => tokio::time::sleep(Duration::from_millis(20)).await,
                        Ok(Err(_)) => return true,
                        Err(_) => return false,
                    }
                }
                false
            }));
        }
        let mut closed = 0;
        for f in floods {
            closed += usize::from(f.await.unwrap());
        }
        closed
    })
    .await;
    assert_eq!(closed, 200, "every flooding socket was closed");
    assert!(
        peak < rest + MARGIN_KIB,
        "RSS {rest} KiB at rest, {peak} KiB under attack"
    );
}

/// At `limits.max_unauthenticated` a newcomer on `/stream` evicts the
/// oldest session still authenticating (4408), as request heads are.
#[tokio::test]
async fn the_oldest_unauthenticated_session_makes_room_for_a_newcomer() {
    let gw = Gateway::start(1, &[("SLUICE_LIMITS_MAX_UNAUTHENTICATED", "2")]);
    let mut first = connect(&gw.url("/stream/wait-1"), &[]).await.unwrap();
    let _second = connect(&gw.url("/stream/wait-2"), &[]).await.unwrap();
    let _third = connect(&gw.url("/stream/wait-3"), &[]).await.unwrap();
    let (code, reason) = close_of(&mut first).await;
    assert_eq!(code, 4408, "{reason}");
    assert!(reason.contains("while others were waiting"), "{reason}");
    assert_eq!(gw.metric("sluice_unauthenticated_evicted_total").await, 1);
}

/// A client that pings a few times and never sends its token, nor reads:
/// under the control-frame bound, it is closed by the auth deadline
/// whether or not it reads (4408 is queued; the write stall ends it).
#[tokio::test]
async fn a_slow_pinger_that_never_reads_is_closed_by_the_auth_deadline() {
    let gw = Gateway::start(1, &[("SLUICE_TIMEOUTS_AUTH_MS", "1000")]);
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(gw.addr).await.unwrap();
    s.write_all(b"GET /stream/slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut closed = false;
    for _ in 0..600 {
        if s.write_all(&ping()).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(closed, "the socket outlived its auth deadline");
}

/// The zero-window starvation: sessions of one subject open queries and
/// never read. Each holds a connector worker only until
/// `timeouts.reader_stall_ms` passes without the client taking anything
/// (then 4409 `slow_consumer`), and one subject never holds more than
/// `limits.worker_share` of an edge's workers meanwhile, so another
/// client's fetches keep succeeding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_cannot_starve_an_edge_of_workers() {
    let gw = Gateway::start(1, &STALLED_READER_SETTINGS);
    // 24 MiB a stream: more than the socket buffers and the outbox hold.
    let data = frames(96, 256 * 1024);
    let _workers = idle_serving_connectors(&gw, 4, data.clone()).await;
    // Four sessions of mallory query and never read again.
    let mut stalled = Vec::new();
    for i in 0..4 {
        let mut ws = browser(&gw, &mallory(&format!("mallory-{i}"))).await;
        send_json(
            &mut ws,
            serde_json::json!({"action": "query", "dataset": "d"}),
        )
        .await;
        stalled.push(ws);
    }
    // Alice's fetches, one after another, each whole.
    for i in 0..5 {
        let mut ws = browser(&gw, &claims(&format!("alice-{i}"))).await;
        let (got, end) = query_all(&mut ws, "d").await;
        assert_eq!(got.len(), data.len(), "{end}");
        assert!(got == data, "alice's fetch {i} arrived whole");
    }
    // Mallory's stalled sessions were ended with 4409 and the workers are
    // back at the edge.
    let mut slow = 0;
    for mut ws in stalled {
        let (code, reason) = close_of(&mut ws).await;
        if code == 4409 {
            assert!(reason.contains("reader_stall_ms"), "{reason}");
            slow += 1;
        } else {
            // The fourth waited past its share: edge_busy (4503).
            assert_eq!(code, 4503, "{reason}");
        }
    }
    assert!(slow >= 3, "{slow} sessions ended as slow consumers");
    assert_eq!(
        gw.metric_settles("sluice_connector_workers_idle", 4).await,
        4
    );
}
