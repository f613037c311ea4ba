//! The connector against the real gateway, with files written by pyarrow
//! and a Python browser (`websockets` + `pyarrow`) comparing what arrives
//! with pyarrow reading the same files: every format, the fast path and the
//! plain protocol, compression, bad data, a gateway restart, SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::token::{sign_hs256, Claims, Mode};

const SECRET: &str = "connector-test-secret";
const KEY: &str = "connector-test-key";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The gateway binary built next to this test (by `cargo test --workspace`).
fn gateway(port: u16) -> (Proc, SocketAddr) {
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("sluice");
    assert!(
        bin.exists(),
        "{} missing: run `cargo test --workspace`",
        bin.display()
    );
    let mut child = Command::new(bin)
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLUICE_WORKERS", "2")
        .env("SLUICE_TOKEN_SECRET", SECRET)
        .env("SLUICE_EDGE_KEYS", format!("edge-a={KEY}"))
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .nth(3)
        .expect("listen line")
        .parse()
        .unwrap();
    (Proc(child), addr)
}

fn connector(args: &[&str]) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_sluice-connector"))
            .args(args)
            .env("SLUICE_EDGE_KEY", KEY)
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn metric(addr: SocketAddr, name: &str) -> i64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return -1;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

/// Waits until `workers` connector workers are registered and idle.
fn wait_workers(addr: SocketAddr, workers: i64) {
    let until = Instant::now() + Duration::from_secs(20);
    while metric(addr, "sluice_connector_workers_idle") < workers {
        assert!(Instant::now() < until, "connector workers never registered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn data() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-connector-test-{}", std::process::id()));
    if !d.join("sales.csv").exists() {
        let st = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/make_data.py"))
            .arg(&d)
            .arg("50000")
            .status()
            .expect("python3 with pyarrow (pip install -r tests/python/requirements.txt)");
        assert!(st.success(), "make_data.py failed");
    }
    d
}

fn token(sid: &str) -> String {
    sign_hs256(
        &Claims {
            sid: sid.into(),
            sub: "tester".into(),
            tenant: "acme".into(),
            edge: "edge-a".into(),
            mode: Mode::Query,
            datasets: None,
            quota: None,
            exp: sluice::token::now_s() + 600,
            jti: None,
        },
        SECRET.as_bytes(),
    )
}

/// Runs the Python browser; returns its JSON summary (and whether it passed).
fn browse(
    addr: SocketAddr,
    sid: &str,
    dataset: &str,
    source: Option<&Path>,
) -> (bool, serde_json::Value) {
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/fetch_compare.py"))
        .args([
            "--url",
            &format!("ws://{addr}/stream/{sid}"),
            "--token",
            &token(sid),
            "--dataset",
            dataset,
        ]);
    match source {
        Some(s) => cmd.arg("--source").arg(s),
        None => cmd.arg("--expect-error"),
    };
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or_else(|_| {
        panic!(
            "fetch_compare.py printed {text:?}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

fn config_file(dir: &Path, addr: SocketAddr, fast: bool) -> PathBuf {
    let d = dir.display();
    let text = format!(
        r#"gateway = "ws://{addr}"
tenant = "acme"
edge = "edge-a"
workers = 2
chunk_bytes = 65536
batch_rows = 8192
reconnect_delay_ms = 100
max_reconnect_delay_ms = 400
fast_path = {fast}

[[datasets]]
name = "sales_csv"
source = "{d}/sales.csv"

[[datasets]]
name = "sales_ndjson"
source = "{d}/sales.ndjson"
compression = "zstd"

[[datasets]]
name = "sales_parquet"
source = "{d}/sales.parquet"
compression = "lz4"

[[datasets]]
name = "parts"
source = "{d}/parts/*.parquet"
"#
    );
    let p = dir.join(format!("connector-{fast}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_format_arrives_row_for_row_on_the_fast_path_and_the_plain_protocol() {
    let dir = data();
    let (_gw, addr) = gateway(free_port());
    for fast in [true, false] {
        let cfg = config_file(&dir, addr, fast);
        let c = connector(&["--config", cfg.to_str().unwrap()]);
        wait_workers(addr, 2);
        for (ds, src) in [
            ("sales_csv", dir.join("sales.csv")),
            ("sales_ndjson", dir.join("sales.ndjson")),
            ("sales_parquet", dir.join("sales.parquet")),
            ("parts", dir.join("parts/*.parquet")),
        ] {
            let (ok, v) = browse(addr, &format!("s-{ds}-{fast}"), ds, Some(&src));
            assert!(ok, "{ds} (fast path {fast}): {v}");
            assert_eq!(v["rows"], 50000, "{v}");
            assert!(
                v["messages"].as_u64().unwrap() > 1,
                "streamed in several messages: {v}"
            );
        }
        drop(c);
        let until = Instant::now() + Duration::from_secs(10);
        while metric(addr, "sluice_edges_online") != 0 {
            assert!(
                Instant::now() < until,
                "edge still online after the connector stopped"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn bad_data_ends_the_stream_with_an_error_naming_dataset_file_and_row() {
    let dir = data();
    let (_gw, addr) = gateway(free_port());
    let arg = |n: &str, f: &str| format!("{n}={}", dir.join(f).display());
    let _c = connector(&[
        "--gateway",
        &format!("ws://{addr}"),
        "--tenant",
        "acme",
        "--edge",
        "edge-a",
        "--workers",
        "1",
        "--dataset",
        &arg("bad_csv", "broken.csv"),
        "--dataset",
        &arg("bad_ndjson", "broken.ndjson"),
        "--dataset",
        &arg("fake_parquet", "fake.parquet"),
    ]);
    wait_workers(addr, 1);
    for (ds, file, row) in [
        ("bad_csv", "broken.csv", Some("1502")),
        ("bad_ndjson", "broken.ndjson", Some("line 1501")),
        ("fake_parquet", "fake.parquet", None),
    ] {
        let (ok, v) = browse(addr, &format!("s-{ds}"), ds, None);
        assert!(ok, "{ds} must end in an error: {v}");
        let msg = v["last"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(ds) && msg.contains(file), "{ds}: {msg}");
        if let Some(r) = row {
            assert!(msg.contains(r), "{ds}: the row is named: {msg}");
        }
    }
}

#[test]
fn the_connector_survives_a_gateway_restart_and_stops_cleanly_on_sigterm() {
    let dir = data();
    let port = free_port();
    let (gw, addr) = gateway(port);
    let cfg = config_file(&dir, addr, true);
    let c = connector(&["--config", cfg.to_str().unwrap()]);
    wait_workers(addr, 2);
    // Kill the gateway while a stream runs: the browser sees the stream
    // fail, never a clean short one.
    let browser = std::thread::spawn(move || {
        browse(
            addr,
            "s-restart-1",
            "sales_csv",
            Some(&dir.join("sales.csv")),
        )
    });
    std::thread::sleep(Duration::from_millis(150));
    drop(gw);
    let out = browser.join();
    if let Ok((ok, v)) = out {
        // Either the stream finished before the kill (fast machine) or it
        // did not end with stream_end; a short stream_end would fail here.
        assert!(
            ok || v.get("problem").is_some() || v.get("last").is_none(),
            "{v}"
        );
    }
    // Same port again: the workers come back on their own.
    let (_gw2, addr2) = gateway(port);
    wait_workers(addr2, 2);
    let (ok, v) = browse(
        addr2,
        "s-restart-2",
        "sales_parquet",
        Some(&data().join("sales.parquet")),
    );
    assert!(ok, "{v}");
    // SIGTERM: the connector closes its links and exits 0.
    let mut c = c;
    let child = &mut c.0;
    let pid = child.id() as i32;
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let until = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < until,
            "connector did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    let until = Instant::now() + Duration::from_secs(10);
    while metric(addr2, "sluice_edges_online") != 0 {
        assert!(Instant::now() < until, "edge still online after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn subscribe(
    addr: SocketAddr,
    sid: &str,
    dataset: &str,
    want_rows: u32,
    append: Option<&Path>,
) -> serde_json::Value {
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/subscribe_check.py"))
        .args([
            "--url",
            &format!("ws://{addr}/stream/{sid}"),
            "--token",
            &token(sid),
        ])
        .args(["--dataset", dataset, "--want-rows", &want_rows.to_string()]);
    if let Some(f) = append {
        cmd.arg("--append")
            .arg(f)
            .args(["--lines", &want_rows.to_string()]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or_else(|_| {
        panic!(
            "subscribe_check.py printed {text:?}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn live_feeds_stream_generated_metrics_and_appended_lines() {
    let dir = data();
    let feed = dir.join(format!("feed-{}.csv", free_port()));
    std::fs::write(&feed, "id,temp\n1,20.5\n2,21.0\n").unwrap();
    let (_gw, addr) = gateway(free_port());
    let _c = connector(&[
        "--gateway",
        &format!("ws://{addr}"),
        "--tenant",
        "acme",
        "--edge",
        "edge-a",
        "--workers",
        "3",
        "--tail",
        "--dataset",
        "machines=metrics",
        "--dataset",
        &format!("feed={}", feed.display()),
    ]);
    wait_workers(addr, 3);
    // Generated metrics: 8 machines per batch, batch after batch.
    let v = subscribe(addr, "s-live-metrics", "machines", 24, None);
    assert!(v["rows"].as_u64().unwrap() >= 24, "{v}");
    assert_eq!(
        v["columns"],
        serde_json::json!(["ts", "machine", "temp_c", "rpm", "vibration_mm_s"]),
        "{v}"
    );
    assert!(
        v["messages"].as_u64().unwrap() >= 4,
        "schema message, then one per batch: {v}"
    );
    // The tailed file: only what is appended after subscribing arrives.
    let v = subscribe(addr, "s-live-tail", "feed", 5, Some(&feed));
    assert_eq!(v["rows"], 5, "{v}");
    assert_eq!(
        v["ids"],
        serde_json::json!([1000000, 1000001, 1000002, 1000003, 1000004]),
        "{v}"
    );
    // A live-only feed asked for as a query says so.
    let (ok, v) = browse(addr, "s-live-query", "machines", None);
    assert!(ok, "{v}");
    assert!(
        v["last"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("live feed"),
        "{v}"
    );
}
