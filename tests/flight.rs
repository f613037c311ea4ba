//! README section "Arrow Flight": a notebook reads a dataset behind a
//! firewall with `pyarrow.flight`. The real gateway with `[flight] listen`,
//! the real connector serving a 1,000,000-row Parquet file, and pyarrow's
//! Flight client (tests/python/flight_client.py) checking the table and
//! every documented status, over plain gRPC and over TLS.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;

const ADMIN_TOKEN: &str = "admin-token-for-flight-tests";

fn python_ok() {
    let probe = Command::new("python3")
        .args(["-c", "import pyarrow.flight, pandas"])
        .output()
        .expect("python3 is required for this test (install Python 3)");
    assert!(
        probe.status.success(),
        "this test needs pyarrow (with Flight) and pandas: \
         pip install -r tests/python/requirements.txt (.ci/run does): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
}

fn script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/flight_client.py")
}

/// Writes the 1,000,000-row source with pyarrow.
fn make_source(dir: &Path) {
    let out = Command::new("python3")
        .arg(script())
        .arg("make")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Connector(Child);

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(gw: &Gateway, source: &Path) -> Connector {
    let child = Command::new(common::control::sibling_bin("sluice-connector"))
        .args(["--gateway", &format!("ws://{}", gw.addr)])
        .args(["--tenant", "acme", "--edge", EDGE, "--workers", "4"])
        .arg("--dataset")
        .arg(format!("big={}", source.display()))
        .env("SLUICE_EDGE_KEY", EDGE_KEY)
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Connector(child)
}

fn check(gw: &Gateway, flight_url: &str, source: &Path, extra: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(script())
        .arg("check")
        .args(["--flight", flight_url])
        .args(["--admin", &format!("http://{}", gw.admin_addr.unwrap())])
        .args(["--admin-token", ADMIN_TOKEN])
        .args(["--secret", SECRET, "--edge", EDGE])
        .arg("--source")
        .arg(source)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pyarrow.flight checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_flight_reads_a_million_rows_and_gets_every_documented_status() {
    python_ok();
    let dir = tempfile::tempdir().unwrap();
    make_source(dir.path());
    let source = dir.path().join("big.parquet");
    let gw = Gateway::start(
        2,
        &[
            ("SLUICE_FLIGHT_LISTEN", "127.0.0.1:0"),
            ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );
    let _connector = serve(&gw, &source);
    assert_eq!(
        gw.metric_settles("sluice_connector_workers_idle", 4).await,
        4
    );
    let at = gw.flight_addr.expect("flight listener");
    let stdout = check(&gw, &format!("grpc://{at}"), &source, &[]);
    assert!(stdout.contains("12 passed, 0 failed"), "{stdout}");
    // Counted like every session: the Flight calls and the bytes forwarded.
    assert!(gw.metric("sluice_flight_calls_total").await >= 12);
    assert!(gw.metric("sluice_flight_refused_total").await >= 8);
    assert!(gw.metric("sluice_revoked_closes_total").await >= 1);
    // Every worker came back after the cancelled and revoked streams.
    assert_eq!(
        gw.metric_settles("sluice_connector_workers_idle", 4).await,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_speaks_tls_with_the_gateway_s_certificate() {
    python_ok();
    let dir = tempfile::tempdir().unwrap();
    make_source(dir.path());
    let source = dir.path().join("big.parquet");
    let pki = dir.path().join("pki");
    sluice_certs(&pki, &[], &[]);
    let file = |n: &str| pki.join(n).display().to_string();
    let (cert, key) = (file("server.crt"), file("server.key"));
    let gw = Gateway::start(
        1,
        &[
            ("SLUICE_FLIGHT_LISTEN", "127.0.0.1:0"),
            ("SLUICE_TLS_CERT_FILE", &cert),
            ("SLUICE_TLS_KEY_FILE", &key),
            ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );
    let _connector = serve(&gw, &source);
    assert_eq!(
        gw.metric_settles("sluice_connector_workers_idle", 4).await,
        4
    );
    let at = gw.flight_addr.expect("flight listener");
    // `localhost`: the name `sluice certs` puts in the server certificate.
    let url = format!("grpc+tls://localhost:{}", at.port());
    let ca = file("ca.crt");
    let stdout = check(
        &gw,
        &url,
        &source,
        &["--tls-ca", &ca, "--only", "whole dataset"],
    );
    assert!(stdout.contains("1 passed, 0 failed"), "{stdout}");
    // A plaintext client gets no answer from the TLS listener.
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, pyarrow.flight as f\n\
             c = f.FlightClient(sys.argv[1])\n\
             try:\n    list(c.list_flights(options=f.FlightCallOptions(timeout=5)))\nexcept Exception as e:\n    print('refused', type(e).__name__)\n",
            &format!("grpc://{at}"),
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("refused"), "{said}");
}
