//! A PostgreSQL query as a dataset, against a real PostgreSQL server
//! started by this test (initdb + postgres in a temporary directory): the
//! rows arrive row for row as pyarrow sees them; an unreachable server and
//! a failing query end the stream with errors naming the dataset.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A throwaway PostgreSQL cluster; stopped and removed on drop.
struct Pg {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|r| r.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries not found: apt-get install postgresql (.ci/run does)"
            )
        })
}

/// Runs a PostgreSQL binary as the `postgres` user when we are root
/// (initdb refuses to run as root).
fn as_pg(bin: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ])
        .arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

impl Pg {
    fn start() -> Pg {
        let dir =
            std::env::temp_dir().join(format!("sluice-pg-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
        let data = dir.join("data");
        let st = as_pg(&pg_bin("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "initdb failed");
        let port = free_port();
        let child = as_pg(&pg_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ])
            .arg("-k")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pg = Pg { port, dir, child };
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if postgres::Client::connect(&pg.url(), postgres::NoTls).is_ok() {
                return pg;
            }
            assert!(
                Instant::now() < until,
                "PostgreSQL did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

#[test]
fn a_query_streams_row_for_row_and_failures_name_the_dataset() {
    let pg = Pg::start();
    let mut db = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    db.batch_execute(
        "CREATE TABLE sales (id bigint, site text, amount numeric(12,2), qty int, ok boolean, day date, at timestamp);
         INSERT INTO sales SELECT i, 'plant-' || (i % 7), (i * 1.25)::numeric(12,2), i % 100, i % 3 <> 0,
                DATE '2026-01-01' + (i % 300), TIMESTAMP '2026-01-01 00:00:00' + i * INTERVAL '1 second'
           FROM generate_series(1, 30000) AS i;
         INSERT INTO sales VALUES (NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-pg-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let grpc_port = free_port();
    let grpc_listen = format!("127.0.0.1:{grpc_port}");
    let (_gw, addr) = gateway_with(free_port(), &[("SLUICE_GRPC_LISTEN", &grpc_listen)]);
    let cfg = dir.join("pg.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"gateway = "ws://{addr}"
tenant = "acme"
edge = "edge-a"
workers = 1
batch_rows = 4096

[[datasets]]
name = "sales_db"
source = "postgres"
query = "SELECT id, site, amount, qty, ok, day, at FROM sales ORDER BY id NULLS LAST"
connection_env = "TEST_PG_URL"

[[datasets]]
name = "bad_query"
source = "postgres"
query = "SELECT no_such_column FROM sales"
connection_env = "TEST_PG_URL"

[[datasets]]
name = "db_down"
source = "postgres"
query = "SELECT 1"
connection = "postgres://postgres:secret-pw@127.0.0.1:1/postgres"
"#
        ),
    )
    .unwrap();
    let url = pg.url();
    let c = connector_env(
        &["--config", cfg.to_str().unwrap()],
        &[("TEST_PG_URL", &url)],
    );
    wait_workers(addr, 1);
    // What pyarrow reads from the same query, via a CSV export of it.
    let csv = dir.join("sales_db.csv");
    let mut out = Vec::new();
    db.copy_out("COPY (SELECT id, site, amount, qty, ok, day, at FROM sales ORDER BY id NULLS LAST) TO STDOUT WITH CSV HEADER")
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    std::fs::write(&csv, out).unwrap();
    let (ok, v) = browse_with(addr, "s-pg", "sales_db", Some(&csv), &["--as-text"]);
    assert!(ok, "{v}");
    assert_eq!(v["rows"], 30001, "{v}");

    // The same query through sluice-fetch, both patterns.
    let fetch = sibling_bin("sluice-fetch");
    for mode in ["stream", "buffered"] {
        let out = dir.join(format!("sales_db-{mode}.csv"));
        let r = Command::new(&fetch)
            .args([
                "--gateway",
                &format!("ws://{addr}"),
                "--token",
                &token(&format!("s-pg-fetch-{mode}")),
            ])
            .args(["--dataset", "sales_db", "--mode", mode, "-o"])
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            r.status.success() && err.contains("30001 rows"),
            "{mode}: {err}"
        );
    }
    for (ds, needle) in [("bad_query", "no_such_column"), ("db_down", "127.0.0.1:1")] {
        let (ok, v) = browse(addr, &format!("s-{ds}"), ds, None);
        assert!(ok, "{ds}: {v}");
        let msg = v["last"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(ds) && msg.contains(needle), "{ds}: {msg}");
        assert!(
            !msg.contains("secret-pw"),
            "the password never leaves the connector: {msg}"
        );
    }
    // The same query from a connector on the gRPC tunnel (plaintext, edge
    // key in the call metadata): the browser cannot tell.
    drop(c);
    let grpc_gw = format!("http://{grpc_listen}");
    let _g = connector_env(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--transport",
            "grpc",
            "--gateway",
            &grpc_gw,
        ],
        &[("TEST_PG_URL", &url)],
    );
    wait_workers(addr, 4);
    let (ok, v) = browse_with(addr, "s-pg-grpc", "sales_db", Some(&csv), &["--as-text"]);
    assert!(ok, "over gRPC: {v}");
    assert_eq!(v["rows"], 30001, "{v}");
    let (ok, v) = browse(addr, "s-bad_query-grpc", "bad_query", None);
    assert!(ok, "{v}");
    assert!(
        v["last"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no_such_column"),
        "{v}"
    );
}
