//! README section "Connectors over gRPC": seed 002's tunnel, spoken by a
//! connector written in Python with grpcio from `tunnel.proto` alone
//! (tests/python/grpc_connector.py), with client certificates made by the
//! real `sluice certs`. A browser on `/stream` cannot tell which transport
//! its connector used; every refusal and fault has its documented answer.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use tokio_tungstenite::tungstenite::Message;

struct Pki(tempfile::TempDir);

impl Pki {
    fn new(tenants: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        sluice_certs(dir.path(), tenants, &[]);
        Pki(dir)
    }

    fn s(&self, rel: &str) -> String {
        self.0.path().join(rel).display().to_string()
    }

    fn client(&self, tenant: &str) -> (PathBuf, PathBuf) {
        let d = self.0.path().join("clients").join(tenant);
        (d.join("client.crt"), d.join("client.key"))
    }

    fn gateway(&self, extra: &[(&str, &str)]) -> Gateway {
        let (cert, key, ca) = (self.s("server.crt"), self.s("server.key"), self.s("ca.crt"));
        let mut env = vec![
            ("SLUICE_GRPC_LISTEN", "127.0.0.1:0"),
            ("SLUICE_TLS_CERT_FILE", cert.as_str()),
            ("SLUICE_TLS_KEY_FILE", key.as_str()),
            ("SLUICE_TLS_CLIENT_CA_FILE", ca.as_str()),
        ];
        env.extend_from_slice(extra);
        Gateway::start(2, &env)
    }
}

/// The Python connector, its stdout lines arriving on a channel.
struct PyConnector {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for PyConnector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PyConnector {
    fn start(
        gw: &Gateway,
        ca: &str,
        client: &(PathBuf, PathBuf),
        tenant: &str,
        mode: &str,
    ) -> Self {
        // Slow: more than every buffer on the way holds, so the browser
        // leaves while the stream is still being served.
        let rows = if mode == "slow" { "400000" } else { "50000" };
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/grpc_connector.py"
        );
        let at = gw.grpc_addr.expect("grpc listener");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--gateway", &format!("localhost:{}", at.port())])
            .args(["--ca", ca])
            .arg("--cert")
            .arg(&client.0)
            .arg("--key")
            .arg(&client.1)
            .args(["--tenant", tenant, "--mode", mode, "--rows", rows])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        PyConnector { child, lines }
    }

    /// Waits for a line starting with each of `prefixes`, in any order.
    fn said_all(&self, prefixes: &[&str]) -> Vec<String> {
        let mut got: Vec<Option<String>> = vec![None; prefixes.len()];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut seen = vec![];
        while got.iter().any(Option::is_none) {
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
                break;
            };
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(i) = prefixes.iter().position(|p| l.starts_with(p)) {
                        got[i].get_or_insert(l.clone());
                    }
                    seen.push(l);
                }
                Err(_) => break,
            }
        }
        got.into_iter()
            .enumerate()
            .map(|(i, g)| {
                g.unwrap_or_else(|| {
                    panic!(
                        "the Python connector never said {:?}; it said {seen:?}",
                        prefixes[i]
                    )
                })
            })
            .collect()
    }

    /// Waits for a line starting with `prefix`; returns it.
    fn said(&self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut seen = vec![];
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!("the Python connector never said {prefix:?}; it said {seen:?}");
    }
}

fn python_ok() {
    let probe = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, pyarrow"])
        .output()
        .expect("python3 is required for this test");
    assert!(
        probe.status.success(),
        "this test needs grpcio, grpcio-tools and pyarrow: pip install -r tests/python/requirements.txt: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
}

fn acme_claims(sid: &str) -> sluice::Claims {
    let mut c = claims(sid);
    c.edge = "acme".into();
    c
}

/// Decodes the binary messages of a query as one Arrow IPC stream.
fn rows_and_sum(frames: &[Vec<u8>]) -> (usize, i64) {
    let bytes: Vec<u8> = frames.concat();
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let (mut rows, mut sum) = (0, 0);
    for b in reader {
        let b = b.unwrap();
        rows += b.num_rows();
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap();
        sum += ids.values().iter().sum::<i64>();
    }
    (rows, sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpcio_connector_serves_a_pyarrow_table_that_a_browser_reads_whole() {
    python_ok();
    let pki = Pki::new(&["acme"]);
    let gw = pki.gateway(&[]);
    let ca = pki.s("ca.crt");
    let py = PyConnector::start(&gw, &ca, &pki.client("acme"), "acme", "serve");
    py.said("registered");
    assert_eq!(gw.metric_settles("sluice_grpc_connectors", 1).await, 1);
    // Four worker slots, like four WebSocket workers.
    assert_eq!(
        gw.metric_settles("sluice_connector_workers_idle", 4).await,
        4
    );

    for round in 0..3 {
        let mut b = browser(&gw, &acme_claims(&format!("grpc-py-{round}"))).await;
        send_json(&mut b, serde_json::json!({"action": "list"})).await;
        let v = next_json(&mut b).await;
        assert_eq!(v["datasets"], serde_json::json!(["pyarrow_table"]), "{v}");
        let (frames, end) = query_all(&mut b, "pyarrow_table").await;
        let (rows, sum) = rows_and_sum(&frames);
        assert_eq!(rows, 50_000);
        assert_eq!(sum, (0..50_000i64).sum::<i64>());
        let payload: usize = frames.iter().map(Vec::len).sum();
        assert_eq!(end["total_bytes"], payload as u64, "{end}");
        close_with(&mut b, 1000, "").await;
        py.said("serve done");
    }
    // Unknown dataset: the gateway says so before the connector is asked.
    let mut b = browser(&gw, &acme_claims("grpc-py-unknown")).await;
    send_json(
        &mut b,
        serde_json::json!({"action": "query", "dataset": "nope"}),
    )
    .await;
    expect_error_close(&mut b, "unknown_dataset", 4404).await;
    assert!(gw.metric("sluice_grpc_chunks_total").await >= 3 * 27);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_vanishing_mid_stream_is_an_error_and_4503_never_a_faked_end() {
    python_ok();
    let pki = Pki::new(&["acme"]);
    let gw = pki.gateway(&[]);
    let py = PyConnector::start(&gw, &pki.s("ca.crt"), &pki.client("acme"), "acme", "vanish");
    py.said("registered");
    assert_eq!(
        gw.metric_settles("sluice_connector_workers_idle", 4).await,
        4
    );
    let mut b = browser(&gw, &acme_claims("grpc-vanish")).await;
    send_json(
        &mut b,
        serde_json::json!({"action": "query", "dataset": "pyarrow_table"}),
    )
    .await;
    let mut binaries = 0;
    loop {
        match next_msg(&mut b).await {
            Message::Binary(_) => binaries += 1,
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("flight_info") | Some("stream_start") => continue,
                    Some("error") => {
                        assert_eq!(v["code"], "edge_disconnected", "{v}");
                        break;
                    }
                    _ => panic!("a vanished connector must not end the stream: {v}"),
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        binaries <= 3,
        "{binaries} messages before the connector vanished"
    );
    assert_eq!(close_of(&mut b).await.0, 4503);
    // Its workers leave the shards with it.
    assert_eq!(gw.metric_settles("sluice_grpc_connectors", 0).await, 0);
    assert_eq!(gw.metric_settles("sluice_edges_online", 0).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_leaving_mid_stream_cancels_the_serve_call() {
    python_ok();
    let pki = Pki::new(&["acme"]);
    let gw = pki.gateway(&[]);
    let py = PyConnector::start(&gw, &pki.s("ca.crt"), &pki.client("acme"), "acme", "slow");
    py.said("registered");
    assert_eq!(
        gw.metric_settles("sluice_connector_workers_idle", 4).await,
        4
    );
    let mut b = browser(&gw, &acme_claims("grpc-leave")).await;
    send_json(
        &mut b,
        serde_json::json!({"action": "query", "dataset": "pyarrow_table"}),
    )
    .await;
    let mut binaries = 0;
    while binaries < 2 {
        if let Message::Binary(_) = next_msg(&mut b).await {
            binaries += 1;
        }
    }
    drop(b);
    // The Serve call ends at once; the cancel on Connect may come after.
    let lines = py.said_all(&["serve cancelled", "cancel "]);
    assert!(lines[0].len() > "serve cancelled".len(), "{lines:?}");
    // The worker is reusable: all four idle again.
    assert_eq!(
        gw.metric_settles("sluice_connector_workers_idle", 4).await,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_expired_certificate_other_tenant_and_malformed_messages_are_refused() {
    python_ok();
    let pki = Pki::new(&["acme", "other"]);
    let gw = pki.gateway(&[]);
    let ca = pki.s("ca.crt");

    // A certificate from another CA: the handshake fails.
    let stranger = Pki::new(&["acme"]);
    let py = PyConnector::start(&gw, &ca, &stranger.client("acme"), "acme", "serve");
    py.said("status UNAVAILABLE");

    // Expired: same CA, CN acme, validity over a day ago.
    let old = tempfile::tempdir().unwrap();
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(pki.0.path().join(f), old.path().join(f)).unwrap();
    }
    let now = time::OffsetDateTime::now_utc();
    sluice::tls::certs::issue_client(
        old.path(),
        "acme",
        sluice::tls::certs::Validity {
            not_before: now - time::Duration::days(30),
            not_after: now - time::Duration::days(1),
        },
    )
    .unwrap();
    let expired = (
        old.path().join("clients/acme/client.crt"),
        old.path().join("clients/acme/client.key"),
    );
    let py = PyConnector::start(&gw, &ca, &expired, "acme", "serve");
    py.said("status UNAVAILABLE");
    assert!(gw.metric("sluice_tls_handshake_failures_total").await >= 2);

    // The certificate says tenant `other`; the connector claims acme.
    let py = PyConnector::start(&gw, &ca, &pki.client("other"), "acme", "serve");
    let line = py.said("status PERMISSION_DENIED");
    assert!(line.contains("register refused"), "{line}");

    // Connect must begin with register.
    let py = PyConnector::start(&gw, &ca, &pki.client("acme"), "acme", "no-register");
    py.said("status INVALID_ARGUMENT");

    // A Serve call that does not begin with start.
    let py = PyConnector::start(&gw, &ca, &pki.client("acme"), "acme", "malformed");
    py.said("registered");
    assert_eq!(
        gw.metric_settles("sluice_connector_workers_idle", 4).await,
        4
    );
    let mut b = browser(&gw, &acme_claims("grpc-malformed")).await;
    send_json(
        &mut b,
        serde_json::json!({"action": "query", "dataset": "pyarrow_table"}),
    )
    .await;
    let line = py.said("status INVALID_ARGUMENT");
    assert!(line.contains("start"), "{line}");
    assert!(gw.metric("sluice_grpc_refused_total").await >= 3);
    // Plaintext gRPC (no certificate): an edge key is required, and a wrong
    // one is refused like on the WebSocket listener.
    let plain = Gateway::start(1, &[("SLUICE_GRPC_LISTEN", "127.0.0.1:0")]);
    let at = plain.grpc_addr.expect("grpc listener").to_string();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/grpc_connector.py"
    );
    let run = |key: &str, edge: &str| {
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args([
                "--gateway",
                &at,
                "--plaintext",
                "--tenant",
                "acme",
                "--edge",
                edge,
            ])
            .args(["--edge-key", key, "--mode", "serve"]);
        cmd
    };
    let out = run("wrong-key-0123456789abcdefgh", EDGE).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("status UNAUTHENTICATED") && said.contains("invalid Edge-Key"),
        "{said}"
    );
    let mut ok = run(EDGE_KEY, EDGE).stdout(Stdio::piped()).spawn().unwrap();
    assert_eq!(
        plain
            .metric_settles("sluice_connector_workers_idle", 4)
            .await,
        4
    );
    let _ = ok.kill();
    let _ = ok.wait();
    // Nothing of it reached anyone else: the gateway still serves.
    let (s, _) = gw.get("/healthz").await;
    assert_eq!(s, 200);
}
