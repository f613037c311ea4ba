//! README section "Connectors over gRPC": the Rust connector with
//! `--transport grpc` (seed 002's tunnel, mutual TLS with certificates from
//! the real `sluice certs`) against the real gateway. The Python browser
//! cannot tell the transport: every file format arrives row for row, live
//! feeds and tailed files stream, a gateway restart is survived and SIGTERM
//! drains. (PostgreSQL over gRPC is in tests/postgres.rs.)

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// `sluice certs` for tenant acme, in a fresh folder.
fn certs() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sluice-grpc-certs-{}-{}",
        std::process::id(),
        free_port()
    ));
    let out = Command::new(sibling_bin("sluice"))
        .args(["certs", "--tenant", "acme", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The gateway with its gRPC listener on `grpc_port` (mutual TLS).
fn gateway_grpc(port: u16, grpc_port: u16, pki: &Path) -> (Proc, SocketAddr) {
    let f = |n: &str| pki.join(n).display().to_string();
    let listen = format!("127.0.0.1:{grpc_port}");
    gateway_with(
        port,
        &[
            ("SLUICE_GRPC_LISTEN", &listen),
            ("SLUICE_GRPC_WORKERS_PER_CONNECTOR", "2"),
            ("SLUICE_TLS_CERT_FILE", &f("server.crt")),
            ("SLUICE_TLS_KEY_FILE", &f("server.key")),
            ("SLUICE_TLS_CLIENT_CA_FILE", &f("ca.crt")),
        ],
    )
}

fn grpc_connector(grpc_port: u16, pki: &Path, rest: &[&str]) -> Proc {
    let gw = format!("https://localhost:{grpc_port}");
    let f = |n: &str| pki.join(n).display().to_string();
    let (ca, cert, key) = (
        f("ca.crt"),
        f("clients/acme/client.crt"),
        f("clients/acme/client.key"),
    );
    let mut args = vec![
        "--transport",
        "grpc",
        "--gateway",
        &gw,
        "--ca-cert",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
        "--tenant",
        "acme",
        "--edge",
        "edge-a",
    ];
    args.extend_from_slice(rest);
    connector(&args)
}

#[test]
fn every_source_kind_arrives_through_the_grpc_tunnel() {
    let dir = data();
    let pki = certs();
    let grpc_port = free_port();
    let (_gw, addr) = gateway_grpc(free_port(), grpc_port, &pki);
    let feed = dir.join(format!("grpc-feed-{}.csv", free_port()));
    std::fs::write(&feed, "id,temp\n1,20.5\n2,21.0\n").unwrap();
    let arg = |n: &str, f: &str| format!("{n}={}", dir.join(f).display());
    let _c = grpc_connector(
        grpc_port,
        &pki,
        &[
            "--dataset",
            &arg("sales_csv", "sales.csv"),
            "--dataset",
            &arg("sales_ndjson", "sales.ndjson"),
            "--dataset",
            &arg("sales_parquet", "sales.parquet"),
            "--dataset",
            &arg("parts", "parts/*.parquet"),
            "--dataset",
            "machines=metrics",
            "--dataset",
            &arg("bad_csv", "broken.csv"),
        ],
    );
    let _tail = grpc_connector(
        grpc_port,
        &pki,
        &["--tail", "--dataset", &format!("feed={}", feed.display())],
    );
    wait_workers(addr, 4);
    every_format_arrives(addr, &dir, "grpc");
    // A live feed over gRPC: one Serve call for as long as it is watched.
    let v = subscribe(addr, "s-grpc-live", "machines", 24, None);
    assert!(v["rows"].as_u64().unwrap() >= 24, "{v}");
    // Appended lines of a tailed file.
    let v = subscribe(addr, "s-grpc-tail", "feed", 5, Some(&feed));
    assert_eq!(v["rows"], 5, "{v}");
    // Errors as over WebSocket: the connector's message reaches the browser.
    let (ok, v) = browse(addr, "s-grpc-live-query", "machines", None);
    assert!(ok, "{v}");
    assert!(
        v["last"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("live feed"),
        "{v}"
    );
    // Bad data mid-stream: the error names the dataset, the file and the
    // row, after the rows before it (the Serve call's `error`).
    let (ok, v) = browse(addr, "s-grpc-bad", "bad_csv", None);
    assert!(ok, "{v}");
    let msg = v["last"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("bad_csv") && msg.contains("broken.csv") && msg.contains("1502"),
        "{msg}"
    );
    assert!(metric(addr, "sluice_grpc_chunks_total") > 0);
}

#[test]
fn the_grpc_connector_survives_a_gateway_restart_and_drains_on_sigterm() {
    let dir = data();
    let pki = certs();
    let grpc_port = free_port();
    let (gw, addr) = gateway_grpc(free_port(), grpc_port, &pki);
    let src = dir.join("sales.parquet");
    let c = grpc_connector(
        grpc_port,
        &pki,
        &["--dataset", &format!("sales={}", src.display())],
    );
    wait_workers(addr, 2);
    let (ok, v) = browse(addr, "s-grpc-r1", "sales", Some(&src));
    assert!(ok, "{v}");
    drop(gw);
    // The same gRPC port again (the HTTP port may be new): the tunnel
    // comes back on its own (backoff, jitter).
    let (_gw2, addr2) = gateway_grpc(free_port(), grpc_port, &pki);
    wait_workers(addr2, 2);
    let (ok, v) = browse(addr2, "s-grpc-r2", "sales", Some(&src));
    assert!(ok, "{v}");
    // SIGTERM: the connector ends its tunnel and exits 0; the edge leaves.
    let mut c = c;
    let pid = c.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let until = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = c.0.try_wait().unwrap() {
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
