//! The connector against the real gateway, with files written by pyarrow
//! and a Python browser (`websockets` + `pyarrow`) comparing what arrives
//! with pyarrow reading the same files: every format, the fast path and the
//! plain protocol, compression, bad data, a gateway restart, SIGTERM.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn every_format_arrives_row_for_row_on_the_fast_path_and_the_plain_protocol() {
    let dir = data();
    let (_gw, addr) = gateway(free_port());
    for fast in [true, false] {
        let cfg = config_file(&dir, addr, fast);
        let c = connector(&["--config", cfg.to_str().unwrap()]);
        wait_workers(addr, 2);
        every_format_arrives(addr, &dir, &format!("fast-path-{fast}"));
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
    let _c = quick_connector(
        addr,
        1,
        &[
            "--dataset",
            &arg("bad_csv", "broken.csv"),
            "--dataset",
            &arg("bad_ndjson", "broken.ndjson"),
            "--dataset",
            &arg("fake_parquet", "fake.parquet"),
        ],
    );
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

#[test]
fn live_feeds_stream_generated_metrics_and_appended_lines() {
    let dir = data();
    let feed = dir.join(format!("feed-{}.csv", free_port()));
    std::fs::write(&feed, "id,temp\n1,20.5\n2,21.0\n").unwrap();
    let (_gw, addr) = gateway(free_port());
    let _c = quick_connector(
        addr,
        3,
        &[
            "--tail",
            "--dataset",
            "machines=metrics",
            "--dataset",
            &format!("feed={}", feed.display()),
        ],
    );
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

#[test]
fn a_connector_killed_mid_stream_fails_the_stream_and_a_restarted_one_serves_again() {
    use std::io::{BufRead, BufReader, Write};
    let dir = data();
    let big = dir.join("big.csv");
    if !big.exists() {
        let st = Command::new("python3")
            .args(["-c", "import sys, pyarrow as pa, pyarrow.csv as c; n=600000; c.write_csv(pa.table({'id': range(n), 'v': [i * 0.5 for i in range(n)], 's': [f'row-{i}' for i in range(n)]}), sys.argv[1])"])
            .arg(&big)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let (_gw, addr) = gateway(free_port());
    let dataset = format!("big={}", big.display());
    let mut c = quick_connector(addr, 1, &["--dataset", &dataset]);
    wait_workers(addr, 1);
    let sid = "s-kill-connector";
    let mut reader = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/slow_reader.py"))
        .args([&format!("ws://{addr}/stream/{sid}"), &token(sid), "big"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(reader.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started");
    // The browser is not reading: the connector is paused mid-stream. Kill it.
    let _ = c.0.kill();
    let _ = c.0.wait();
    reader.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["last"]["type"], "error", "never a short stream_end: {v}");
    assert_eq!(v["close"], 4503, "{v}");
    let _ = reader.wait();
    // A new connector process serves the dataset whole.
    let _c2 = quick_connector(addr, 1, &["--dataset", &dataset]);
    wait_workers(addr, 1);
    let (ok, v) = browse(addr, "s-after-restart", "big", Some(&big));
    assert!(ok, "{v}");
    assert_eq!(v["rows"], 600000, "{v}");
}

fn listed(addr: std::net::SocketAddr, sid: &str) -> Vec<String> {
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/list_datasets.py"))
        .args([&format!("ws://{addr}/stream/{sid}"), &token(sid)])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("list_datasets.py: {}", String::from_utf8_lossy(&out.stderr)));
    v["datasets"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .filter_map(|d| d.as_str().map(String::from))
        .collect()
}

#[test]
fn datasets_appear_and_vanish_with_their_files() {
    let dir = data();
    let drop_dir = dir.join(format!("incoming-{}", free_port()));
    std::fs::create_dir_all(&drop_dir).unwrap();
    let (_gw, addr) = gateway(free_port());
    let cfg = drop_dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "gateway = \"ws://{addr}\"\ntenant = \"acme\"\nedge = \"edge-a\"\nworkers = 1\nrescan_ms = 100\n\n\
             [[datasets]]\nname = \"always\"\nsource = \"{}\"\n\n[[datasets]]\nname = \"incoming\"\nsource = \"{}/*.csv\"\n",
            dir.join("sales.csv").display(),
            drop_dir.display()
        ),
    )
    .unwrap();
    let _c = connector(&["--config", cfg.to_str().unwrap()]);
    wait_workers(addr, 1);
    assert_eq!(
        listed(addr, "s-list-1"),
        vec!["always"],
        "no file yet: not advertised"
    );
    std::fs::copy(dir.join("sales.csv"), drop_dir.join("day-1.csv")).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while !listed(addr, &format!("s-list-a{n}")).contains(&"incoming".to_string()) {
        assert!(Instant::now() < until, "the new file was never advertised");
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, v) = browse(addr, "s-list-q", "incoming", Some(&drop_dir.join("*.csv")));
    assert!(ok, "{v}");
    std::fs::remove_file(drop_dir.join("day-1.csv")).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while listed(addr, &format!("s-list-b{n}")).contains(&"incoming".to_string()) {
        assert!(
            Instant::now() < until,
            "the dataset stayed advertised after its files vanished"
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_misspelled_file_stops_the_connector_and_names_the_file_beside_it() {
    let dir = data();
    let cfg = dir.join(format!("typo-{}.toml", free_port()));
    std::fs::write(
        &cfg,
        format!(
            "gateway = \"ws://127.0.0.1:9\"\ntenant = \"acme\"\nedge = \"edge-a\"\n\n\
             [[datasets]]\nname = \"sales\"\nsource = \"{}\"\n",
            dir.join("sles.csv").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-connector"))
        .args(["--config", cfg.to_str().unwrap()])
        .env("SLUICE_EDGE_KEY", "edge-a-key-0123456789abcdef")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("dataset sales:")
            && err.contains("sles.csv: no such file")
            && err.contains(&format!(
                "did you mean {}?",
                dir.join("sales.csv").display()
            )),
        "{err}"
    );
}
