//! `sluice-fetch` end to end: connector → gateway → fetch CLI → file, in
//! every output format, compared row for row by pyarrow with the source;
//! a failed stream leaves no file behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn fetch_bin() -> PathBuf {
    let b = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("sluice-fetch");
    assert!(
        b.exists(),
        "{} missing: run `cargo test --workspace`",
        b.display()
    );
    b
}

fn fetch(addr: std::net::SocketAddr, sid: &str, dataset: &str, out: &Path) -> std::process::Output {
    Command::new(fetch_bin())
        .args([
            "--gateway",
            &format!("ws://{addr}"),
            "--token",
            &token(sid),
            "--dataset",
            dataset,
            "-o",
        ])
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn fetch_streams_into_arrow_parquet_and_csv_and_leaves_nothing_on_failure() {
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
        "2",
        "--dataset",
        &arg("sales", "sales.parquet"),
        "--dataset",
        &arg("bad", "broken.csv"),
    ]);
    wait_workers(addr, 2);
    let out_dir = dir.join(format!("fetched-{}", free_port()));
    std::fs::create_dir_all(&out_dir).unwrap();
    for ext in ["arrow", "parquet", "csv"] {
        let out = out_dir.join(format!("sales.{ext}"));
        let r = fetch(addr, &format!("s-fetch-{ext}"), "sales", &out);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "{ext}: {err}");
        assert!(err.contains("50000 rows"), "summary line: {err}");
        let cmp = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/compare_files.py"))
            .arg(&out)
            .arg(dir.join("sales.parquet"))
            .output()
            .unwrap();
        assert!(
            cmp.status.success(),
            "{ext}: {}",
            String::from_utf8_lossy(&cmp.stdout)
        );
    }
    // A stream that fails half way: an error naming the row, no file.
    let out = out_dir.join("bad.parquet");
    let r = fetch(addr, "s-fetch-bad", "bad", &out);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{err}");
    assert!(
        err.contains("broken.csv") && err.contains("line 1502"),
        "{err}"
    );
    assert!(
        !out.exists() && !out_dir.join("bad.parquet.part").exists(),
        "no partial file is left"
    );
    // A bad output name is refused before anything is downloaded.
    let r = fetch(addr, "s-fetch-xlsx", "sales", &out_dir.join("sales.xlsx"));
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains(".arrow, .parquet or .csv"));
}
