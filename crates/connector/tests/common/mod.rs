//! Shared by the connector's integration tests: the gateway and connector
//! binaries as processes, tokens, and the Python browser / viewer scripts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::auth::token::{sign_hs256, Claims, Mode};

pub const SECRET: &str = "connector-test-secret-0123456789abcdef";
pub const KEY: &str = "connector-test-key-0123456789abcdef";

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The gateway binary built next to this test (by `cargo test --workspace`).
pub fn gateway(port: u16) -> (Proc, SocketAddr) {
    gateway_with(port, &[])
}

/// The gateway with extra `SLUICE_*` settings.
pub fn gateway_with(port: u16, extra: &[(&str, &str)]) -> (Proc, SocketAddr) {
    let bin = sibling_bin("sluice");
    let mut child = Command::new(bin)
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLUICE_WORKERS", "2")
        .env("SLUICE_TOKEN_SECRET", SECRET)
        .env("SLUICE_EDGE_KEYS", format!("edge-a={KEY}"))
        .env("SLUICE_LOG", "warn")
        .envs(extra.iter().copied())
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

/// A binary built next to this test (`cargo test --workspace` builds them).
pub fn sibling_bin(name: &str) -> PathBuf {
    let b = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join(name);
    assert!(
        b.exists(),
        "{} missing: run `cargo test --workspace`",
        b.display()
    );
    b
}

/// The connector on the quick-start flags (edge-a of tenant acme, the
/// gateway at `addr`, `workers` connections) plus `rest` (datasets, …).
pub fn quick_connector(addr: SocketAddr, workers: usize, rest: &[&str]) -> Proc {
    let gw = format!("ws://{addr}");
    let w = workers.to_string();
    let mut args = vec![
        "--gateway",
        &gw,
        "--tenant",
        "acme",
        "--edge",
        "edge-a",
        "--workers",
        &w,
    ];
    args.extend_from_slice(rest);
    connector(&args)
}

pub fn connector(args: &[&str]) -> Proc {
    connector_env(args, &[])
}

/// The connector with extra environment (database URL, store credentials).
pub fn connector_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_sluice-connector"))
            .args(args)
            .env("SLUICE_EDGE_KEY", KEY)
            .env("SLUICE_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// pyarrow compares a file sluice-fetch wrote with the source it came from.
pub fn assert_same_rows(out: &Path, source: &Path, what: &str) {
    let cmp = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/compare_files.py"))
        .arg(out)
        .arg(source)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&cmp.stdout)
    );
}

pub fn metric(addr: SocketAddr, name: &str) -> i64 {
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
pub fn wait_workers(addr: SocketAddr, workers: i64) {
    let until = Instant::now() + Duration::from_secs(20);
    while metric(addr, "sluice_connector_workers_idle") < workers {
        assert!(Instant::now() < until, "connector workers never registered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn data() -> PathBuf {
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

pub fn token(sid: &str) -> String {
    sign_hs256(
        &Claims {
            sid: sid.into(),
            sub: "tester".into(),
            tenant: "acme".into(),
            edge: "edge-a".into(),
            mode: Mode::Query,
            datasets: None,
            quota: None,
            exp: sluice::auth::token::now_s() + 600,
            jti: None,
            client: None,
        },
        SECRET.as_bytes(),
    )
}

/// Runs the Python browser; returns its JSON summary (and whether it passed).
pub fn browse(
    addr: SocketAddr,
    sid: &str,
    dataset: &str,
    source: Option<&Path>,
) -> (bool, serde_json::Value) {
    browse_with(addr, sid, dataset, source, &[])
}

/// The Python browser with extra flags (`--as-text`).
pub fn browse_with(
    addr: SocketAddr,
    sid: &str,
    dataset: &str,
    source: Option<&Path>,
    extra: &[&str],
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
        ])
        .args(extra);
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

pub fn config_file(dir: &Path, addr: SocketAddr, fast: bool) -> PathBuf {
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

pub fn subscribe(
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

/// Every file format of `data()` read whole through the gateway at
/// `addr`: 50,000 rows each, streamed in several messages. `how` names the
/// path in failures and tags the session ids.
pub fn every_format_arrives(addr: SocketAddr, dir: &Path, how: &str) {
    for (ds, src) in [
        ("sales_csv", dir.join("sales.csv")),
        ("sales_ndjson", dir.join("sales.ndjson")),
        ("sales_parquet", dir.join("sales.parquet")),
        ("parts", dir.join("parts/*.parquet")),
    ] {
        let (ok, v) = browse(addr, &format!("s-{how}-{ds}"), ds, Some(&src));
        assert!(ok, "{ds} ({how}): {v}");
        assert_eq!(v["rows"], 50000, "{v}");
        assert!(
            v["messages"].as_u64().unwrap() > 1,
            "streamed in several messages: {v}"
        );
    }
}
