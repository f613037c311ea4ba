//! Test harness: the real `sluice` binary on an ephemeral port, and clients
//! built on tokio-tungstenite (a WebSocket implementation the gateway does
//! not share) playing the connector, the relay edge and the browser.
#![allow(dead_code)]

pub mod control;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice::auth::token::{sign_hs256, Claims, Mode};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
pub const EDGE: &str = "edge-a";
pub const EDGE_KEY: &str = "edge-a-key-0123456789abcdef";

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running gateway process, killed on drop.
pub struct Gateway {
    pub addr: SocketAddr,
    /// The TLS listener, when the gateway was started with one.
    pub tls_addr: Option<SocketAddr>,
    /// The Flight listener, when the gateway was started with one.
    pub flight_addr: Option<SocketAddr>,
    /// The gRPC connector listener, likewise.
    pub grpc_addr: Option<SocketAddr>,
    /// The admin listener, when the gateway was given an admin token.
    pub admin_addr: Option<SocketAddr>,
    pub child: Child,
    pub shards: usize,
    /// The I/O driver the gateway says it runs: "io_uring" or "epoll".
    pub driver: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Starts the gateway with the quick-start variables plus `extra`.
    pub fn start(shards: usize, extra: &[(&str, &str)]) -> Gateway {
        Self::spawn(shards, extra, Stdio::inherit())
    }

    /// [`Gateway::start`] with its log (stderr) piped: `child.stderr`.
    #[allow(dead_code)]
    pub fn start_logged(shards: usize, extra: &[(&str, &str)]) -> Gateway {
        Self::spawn(shards, extra, Stdio::piped())
    }

    /// The log of a gateway from [`Gateway::start_logged`]: its lines,
    /// collected until the gateway exits (drop it, then join).
    pub fn log_lines(&mut self) -> std::thread::JoinHandle<Vec<String>> {
        let log = self.child.stderr.take().expect("started with start_logged");
        std::thread::spawn(move || {
            BufReader::new(log)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        })
    }

    fn spawn(shards: usize, extra: &[(&str, &str)], stderr: Stdio) -> Gateway {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SLUICE_LISTEN", "127.0.0.1:0")
            .env("SLUICE_WORKERS", shards.to_string())
            .env("SLUICE_TOKEN_SECRET", SECRET)
            .env(
                "SLUICE_EDGE_KEYS",
                format!("{EDGE}={EDGE_KEY},edge-b=edge-b-key-0123456789abcdef"),
            )
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(stderr);
        let has = |var: &str| extra.iter().any(|(k, _)| *k == var);
        // The admin listener opens with an admin token: on a port of its
        // own, an ephemeral one here.
        let admin = has("SLUICE_ADMIN_TOKEN");
        if admin && !has("SLUICE_ADMIN_LISTEN") {
            cmd.env("SLUICE_ADMIN_LISTEN", "127.0.0.1:0");
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start sluice binary");
        let stdout = child.stdout.take().unwrap();
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read listen line");
        // "sluice listening on 127.0.0.1:PORT (N shards, driver)"
        let addr = line
            .split_whitespace()
            .nth(3)
            .unwrap_or_else(|| panic!("gateway did not start: {line:?}"))
            .parse()
            .unwrap();
        let driver = line
            .trim_end()
            .trim_end_matches(')')
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        // "sluice tls listening on ADDR", then "sluice flight listening
        // on ADDR", follow for the listeners asked for.
        let mut next_addr = |var: &str, prefix: &str| {
            if !has(var) {
                return None;
            }
            let mut l = String::new();
            stdout.read_line(&mut l).ok()?;
            let a = l.strip_prefix(prefix).map(|a| {
                a.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("bad listen line {l:?}"))
            });
            assert!(a.is_some(), "expected {prefix:?}, got {l:?}");
            a
        };
        let tls_addr = next_addr("SLUICE_TLS_LISTEN", "sluice tls listening on ");
        let flight_addr = next_addr("SLUICE_FLIGHT_LISTEN", "sluice flight listening on ");
        let grpc_addr = next_addr("SLUICE_GRPC_LISTEN", "sluice grpc listening on ");
        let admin_addr = next_addr("SLUICE_ADMIN_TOKEN", "sluice admin listening on ");
        Gateway {
            addr,
            tls_addr,
            flight_addr,
            grpc_addr,
            admin_addr,
            child,
            shards,
            driver,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to 5 s) for a metric to reach `want`; returns its last value.
    /// Sessions update their gauges as their tasks end, just after the
    /// peer has seen the close.
    pub async fn metric_settles(&self, series: &str, want: i64) -> i64 {
        let mut v = self.metric(series).await;
        for _ in 0..250 {
            if v == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            v = self.metric(series).await;
        }
        v
    }

    /// Plain HTTP GET (one request per connection); returns status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        raw_http(
            self.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
        .await
    }

    /// Plain HTTP GET on the admin listener, with `token` as the bearer.
    pub async fn admin_get(&self, path: &str, token: &str) -> (u16, String) {
        let addr = self.admin_addr.expect("started with SLUICE_ADMIN_TOKEN");
        raw_http(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"),
        )
        .await
    }

    /// Value of an unlabelled metric, or of a labelled series by its full name.
    pub async fn metric(&self, series: &str) -> i64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("metric {series} not found"))
            .trim()
            .parse()
            .unwrap()
    }
}

/// Sends raw bytes, reads the whole answer until the server closes.
pub async fn raw_http(addr: SocketAddr, request: &str) -> (u16, String) {
    let (status, text) = raw_exchange(addr, request).await;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// [`raw_http`] with the whole answer, head included (for header checks).
pub async fn raw_exchange(addr: SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

pub fn claims(sid: &str) -> Claims {
    Claims {
        sid: sid.into(),
        sub: "alice".into(),
        tenant: "acme".into(),
        edge: EDGE.into(),
        mode: Mode::Query,
        datasets: None,
        quota: None,
        exp: sluice::auth::token::now_s() + 300,
        jti: Some(format!("jti-{sid}")),
        client: None,
    }
}

pub fn token(c: &Claims) -> String {
    sign_hs256(c, SECRET.as_bytes())
}

/// A session id that lands on `shard` of `n`.
pub fn sid_on_shard(prefix: &str, shard: usize, n: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|s| sluice::ids::SessionId::parse(s).unwrap().shard(n) == shard)
        .unwrap()
}

pub async fn connect(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut()
            .insert(name, HeaderValue::from_str(v).unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

/// HTTP status of a refused upgrade.
pub async fn refused_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    match connect(url, headers).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, got an upgrade"),
    }
}

pub async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string())).await.unwrap();
}

/// Next text or binary message (control frames are skipped).
pub async fn next_msg(ws: &mut Ws) -> Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("timed out waiting for a message")
            .expect("stream ended")
            .expect("websocket error");
        match m {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

pub async fn next_json(ws: &mut Ws) -> Value {
    match next_msg(ws).await {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected JSON text, got {other:?}"),
    }
}

/// Reads until the close frame; returns its code and reason.
pub async fn close_of(ws: &mut Ws) -> (u16, String) {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("timed out waiting for close");
        match m {
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return (u16::from(code), reason.into_owned())
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
            None => panic!("connection ended without a close frame"),
        }
    }
}

/// Expects `{"type":"error","code":kind}` then a close with `code`.
pub async fn expect_error_close(ws: &mut Ws, kind: &str, code: u16) -> String {
    let v = next_json(ws).await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], kind, "{v}");
    let (c, _) = close_of(ws).await;
    assert_eq!(c, code, "close code after {v}");
    v["message"].as_str().unwrap_or("").to_owned()
}

pub async fn close_with(ws: &mut Ws, code: u16, reason: &str) {
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    })))
    .await
    .unwrap();
}

/// A browser session with its token in the Authorization header.
pub async fn browser(gw: &Gateway, c: &Claims) -> Ws {
    let bearer = format!("Bearer {}", token(c));
    connect(
        &gw.url(&format!("/stream/{}", c.sid)),
        &[("Authorization", &bearer)],
    )
    .await
    .expect("browser connect")
}

/// A seed-001 connector worker: registered, serving `datasets`.
pub async fn connector(gw: &Gateway, edge: &str, key: &str, datasets: &[&str]) -> Ws {
    connector_as(gw, "acme", edge, key, datasets).await
}

/// [`connector`] for another tenant.
pub async fn connector_as(
    gw: &Gateway,
    tenant: &str,
    edge: &str,
    key: &str,
    datasets: &[&str],
) -> Ws {
    let mut ws = connect(&gw.url("/ws/connect"), &[("Edge-Key", key)])
        .await
        .expect("connector connect");
    send_json(
        &mut ws,
        json!({"action": "register", "tenant_id": tenant, "edge_id": edge, "version": "test", "datasets": datasets}),
    )
    .await;
    let ok = next_json(&mut ws).await;
    assert_eq!(ok["status"], "ok", "{ok}");
    ws
}

/// Waits for the gateway's next request with this `action` on a connector.
pub async fn await_action(conn: &mut Ws, action: &str) -> Value {
    loop {
        if let Message::Text(t) = next_msg(conn).await {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["action"] == action {
                return v;
            }
        }
    }
}

/// Waits for `do_get`, answers `stream_start`, returns the request id.
pub async fn start_stream(conn: &mut Ws) -> Value {
    let rid = await_action(conn, "do_get").await["request_id"].clone();
    send_json(
        conn,
        json!({"request_id": rid, "type": "stream_start", "schema": ""}),
    )
    .await;
    rid
}

/// Serves requests: for each `do_get`, `stream_start`, the frames, and
/// `stream_end`. Returns when the gateway closes the connection.
pub async fn serve_frames(mut ws: Ws, frames: Vec<Vec<u8>>) {
    while let Some(Ok(m)) = ws.next().await {
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        let rid = v["request_id"].clone();
        match v["action"].as_str() {
            Some("get_flight_info") => send_json(
                &mut ws,
                json!({"request_id": rid, "type": "flight_info", "data": {"frames": frames.len()}}),
            )
            .await,
            Some("do_get") => {
                send_json(
                    &mut ws,
                    json!({"request_id": rid, "type": "stream_start", "schema": "c2NoZW1h"}),
                )
                .await;
                let mut total = 0;
                for f in &frames {
                    total += f.len();
                    if ws.send(Message::Binary(f.clone())).await.is_err() {
                        return;
                    }
                }
                send_json(
                    &mut ws,
                    json!({"request_id": rid, "type": "stream_end", "total_bytes": total}),
                )
                .await;
            }
            _ => {}
        }
    }
}

/// [`serving_connectors`], once the gateway counts all `n` idle.
pub async fn idle_serving_connectors(
    gw: &Gateway,
    n: usize,
    frames: Vec<Vec<u8>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let workers = serving_connectors(gw, n, frames).await;
    let idle = gw
        .metric_settles("sluice_connector_workers_idle", n as i64)
        .await;
    assert_eq!(idle, n as i64, "every connector worker is idle");
    workers
}

/// A gateway's settings for the stalled-reader tests: a client that reads
/// nothing for 1.5 s is a slow consumer, and a session holds 1 MiB.
pub const STALLED_READER_SETTINGS: [(&str, &str); 2] = [
    ("SLUICE_TIMEOUTS_READER_STALL_MS", "1500"),
    ("SLUICE_LIMITS_SESSION_BUFFER_BYTES", "1048576"),
];

/// The claims of session `sid` of mallory, the client who stops reading.
pub fn mallory(sid: &str) -> Claims {
    let mut c = claims(sid);
    c.sub = "mallory".into();
    c
}

/// `n` connector workers of [`EDGE`] serving dataset `d` with `frames`.
pub async fn serving_connectors(
    gw: &Gateway,
    n: usize,
    frames: Vec<Vec<u8>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let conns =
        futures_util::future::join_all((0..n).map(|_| connector(gw, EDGE, EDGE_KEY, &["d"]))).await;
    conns
        .into_iter()
        .map(|c| tokio::spawn(serve_frames(c, frames.clone())))
        .collect()
}

/// Queries `d` and counts its binary messages until the session is closed
/// for its quota (`quota_exceeded`).
pub async fn frames_until_quota(b: &mut Ws) -> usize {
    send_json(b, json!({"action": "query", "dataset": "d"})).await;
    let mut n = 0;
    loop {
        match next_msg(b).await {
            Message::Binary(_) => n += 1,
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "error" {
                    assert_eq!(v["code"], "quota_exceeded", "{v}");
                    return n;
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Distinct, recognisable frames: frame i is `len` bytes of a pattern.
pub fn frames(n: usize, len: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| (0..len).map(|j| ((i * 31 + j * 7) % 251) as u8).collect())
        .collect()
}

/// Queries `dataset` and collects binary messages until `stream_end`.
pub async fn query_all(ws: &mut Ws, dataset: &str) -> (Vec<Vec<u8>>, Value) {
    send_json(ws, json!({"action": "query", "dataset": dataset})).await;
    let mut got = Vec::new();
    loop {
        match next_msg(ws).await {
            Message::Binary(b) => got.push(b),
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("stream_end") => return (got, v),
                    Some("flight_info") | Some("stream_start") => {}
                    _ => panic!("unexpected message {v}"),
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Open file descriptors and resident memory (KiB) of a process.
pub fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

/// Waits until `f` holds, or panics with `what` after 10 s.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut f: F) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

/// A relay pair that must keep working whatever the others do.
pub struct Healthy {
    edge: Ws,
    browser: Ws,
    n: u32,
}

impl Healthy {
    pub async fn new(gw: &Gateway) -> Healthy {
        let mut edge = connect(&gw.url(&format!("/edge/{EDGE}")), &[("Edge-Key", EDGE_KEY)])
            .await
            .unwrap();
        let mut c = claims("healthy");
        c.mode = sluice::auth::token::Mode::Relay;
        let browser = browser(gw, &c).await;
        assert_eq!(next_json(&mut edge).await["type"], "paired");
        Healthy {
            edge,
            browser,
            n: 0,
        }
    }

    pub async fn check(&mut self) {
        self.n += 1;
        let m = Message::Binary(self.n.to_be_bytes().to_vec());
        self.edge.send(m.clone()).await.unwrap();
        assert_eq!(next_msg(&mut self.browser).await, m);
        self.browser.send(m.clone()).await.unwrap();
        assert_eq!(next_msg(&mut self.edge).await, m);
    }
}

/// A real `redis-server` on an ephemeral port, killed on drop. Fails the
/// test with a clear message when Redis is not installed.
pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Redis {
    pub fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it (apt-get install redis-server); .ci/run does")
            });
        let r = Redis { port, child };
        for _ in 0..200 {
            if let Ok(mut c) = r.client().get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return r;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not answer on port {port}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    /// Runs one command on a fresh connection.
    pub fn cmd<T: redis::FromRedisValue>(&self, c: &mut redis::Cmd) -> T {
        c.query(&mut self.client().get_connection().unwrap())
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP forwarder whose link can be cut (open connections reset, new ones
/// refused) and restored, to play a network partition between two servers.
pub struct Cuttable {
    pub addr: SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Cuttable {
    pub fn to(target: SocketAddr) -> Cuttable {
        use std::sync::atomic::Ordering::SeqCst;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Default::default();
        let (u, c) = (up.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in l.incoming().flatten() {
                if !u.load(SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let mut list = c.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Cuttable { addr, up, conns }
    }

    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// pyarrow reads `out` (.arrow, .parquet or .csv) back equal to the source
/// CSV (`connector/tests/python/compare_files.py`).
pub fn assert_same_rows(out: &std::path::Path, csv: &std::path::Path) {
    let cmp = Command::new("python3")
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("crates/connector/tests/python/compare_files.py"),
        )
        .arg(out)
        .arg(csv)
        .output()
        .expect("python3");
    assert!(
        cmp.status.success(),
        "{} differs from {}: {}",
        out.display(),
        csv.display(),
        String::from_utf8_lossy(&cmp.stdout)
    );
}

/// Runs the real `sluice certs --out DIR` (a development CA, a server
/// certificate, and a client certificate per tenant), with `extra`
/// arguments; panics with its stderr when it fails.
pub fn sluice_certs(dir: &std::path::Path, tenants: &[&str], extra: &[&str]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("certs").arg("--out").arg(dir);
    for t in tenants {
        cmd.args(["--tenant", t]);
    }
    let out = cmd.args(extra).output().unwrap();
    assert!(
        out.status.success(),
        "sluice certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
