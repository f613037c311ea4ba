//! The offload pattern against an S3-compatible store started by the test
//! (moto's server, from `tests/python/requirements.txt`): the connector
//! exports the dataset, the gateway passes the presigned URL, `sluice-fetch`
//! downloads it from the store, and pyarrow finds it equal to the source.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto() -> (Moto, u16) {
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let m = Moto(child);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (m, port);
        }
        assert!(
            Instant::now() < until,
            "moto's S3 server did not start: pip install -r tests/python/requirements.txt"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `PUT /bucket` (path style), as any S3 client would.
fn create_bucket(port: u16, bucket: &str) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "create bucket: {out}");
}

#[test]
fn offload_exports_to_object_storage_and_fetch_downloads_from_it() {
    let dir = data();
    let (_moto, port) = moto();
    create_bucket(port, "exports");
    let (_gw, addr) = gateway(free_port());
    let cfg = dir.join(format!("offload-{port}.toml"));
    std::fs::write(
        &cfg,
        format!(
            r#"gateway = "ws://{addr}"
tenant = "acme"
edge = "edge-a"
workers = 1

[offload]
endpoint = "http://127.0.0.1:{port}"
bucket = "exports"
prefix = "test/"

[[datasets]]
name = "sales"
source = "{}"

[[datasets]]
name = "bad"
source = "{}"
"#,
            dir.join("sales.parquet").display(),
            dir.join("broken.csv").display()
        ),
    )
    .unwrap();
    let _c = connector_env(
        &["--config", cfg.to_str().unwrap()],
        &[
            ("AWS_ACCESS_KEY_ID", "test-key"),
            ("AWS_SECRET_ACCESS_KEY", "test-secret"),
        ],
    );
    wait_workers(addr, 1);
    let fetch = |sid: &str, ds: &str, out: &Path| {
        Command::new(sibling_bin("sluice-fetch"))
            .args(["--gateway", &format!("ws://{addr}"), "--token", &token(sid)])
            .args(["--dataset", ds, "--mode", "offload", "-o"])
            .arg(out)
            .output()
            .unwrap()
    };
    let out = dir.join(format!("offloaded-{port}.parquet"));
    let r = fetch("s-offload", "sales", &out);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("50000 rows"), "{err}");
    assert_same_rows(&out, &dir.join("sales.parquet"), "offload");
    // A dataset that fails while exporting: the error, and no file.
    let out = dir.join(format!("offloaded-bad-{port}.parquet"));
    let r = fetch("s-offload-bad", "bad", &out);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("line 1502"), "{err}");
    assert!(!out.exists());
}
