//! `sluice-fetch` end to end: connector → gateway → fetch CLI → file, in
//! every output format, compared row for row by pyarrow with the source;
//! a failed stream leaves no file behind.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn fetch(addr: std::net::SocketAddr, sid: &str, dataset: &str, out: &Path) -> std::process::Output {
    fetch_mode(addr, sid, dataset, out, "stream")
}

fn fetch_mode(
    addr: std::net::SocketAddr,
    sid: &str,
    dataset: &str,
    out: &Path,
    mode: &str,
) -> std::process::Output {
    Command::new(sibling_bin("sluice-fetch"))
        .args(["--gateway", &format!("ws://{addr}"), "--token", &token(sid)])
        .args(["--dataset", dataset, "--mode", mode, "-o"])
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn fetch_streams_into_arrow_parquet_and_csv_and_leaves_nothing_on_failure() {
    let dir = data();
    let (_gw, addr) = gateway(free_port());
    let arg = |n: &str, f: &str| format!("{n}={}", dir.join(f).display());
    let _c = quick_connector(
        addr,
        2,
        &[
            "--dataset",
            &arg("sales", "sales.parquet"),
            "--dataset",
            &arg("sales_csv", "sales.csv"),
            "--dataset",
            &arg("sales_ndjson", "sales.ndjson"),
            "--dataset",
            &arg("parts", "parts/*.parquet"),
            "--dataset",
            &arg("bad", "broken.csv"),
        ],
    );
    wait_workers(addr, 2);
    let out_dir = dir.join(format!("fetched-{}", free_port()));
    std::fs::create_dir_all(&out_dir).unwrap();
    for (ext, mode) in [
        ("arrow", "stream"),
        ("parquet", "stream"),
        ("csv", "stream"),
        ("parquet", "buffered"),
    ] {
        let out = out_dir.join(format!("sales-{mode}.{ext}"));
        let r = fetch_mode(addr, &format!("s-fetch-{ext}-{mode}"), "sales", &out, mode);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "{ext}: {err}");
        assert!(err.contains("50000 rows"), "summary line: {err}");
        assert_same_rows(&out, &dir.join("sales.parquet"), ext);
    }
    // Every source type, both patterns, compared with the source itself.
    for (ds, src) in [
        ("sales_csv", "sales.csv"),
        ("sales_ndjson", "sales.ndjson"),
        ("parts", "parts/*.parquet"),
    ] {
        for mode in ["stream", "buffered"] {
            let out = out_dir.join(format!("{ds}-{mode}.parquet"));
            let r = fetch_mode(addr, &format!("s-fetch-{ds}-{mode}"), ds, &out, mode);
            assert!(
                r.status.success(),
                "{ds} {mode}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            assert_same_rows(&out, &dir.join(src), &format!("{ds} {mode}"));
        }
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
    // The column by its name, and the guessed type called a guess.
    assert!(
        err.contains(r#"for "temp" (column 2) at line 1502"#)
            && err.contains("was guessed from the first 1000 rows"),
        "{err}"
    );
    assert!(
        !out.exists() && !out_dir.join("bad.parquet.part").exists(),
        "no partial file is left"
    );
    // Buffered past the gateway's limit: refused whole, nothing written.
    let (_gw2, addr2) = small_gateway();
    let _c2 = quick_connector(addr2, 1, &["--dataset", &arg("sales", "sales.parquet")]);
    wait_workers(addr2, 1);
    let out = out_dir.join("too-big.parquet");
    let r = fetch_mode(addr2, "s-fetch-too-big", "sales", &out, "buffered");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("too_large"), "{err}");
    assert!(!out.exists());
    // Offload from a connector with no object store configured: a clear no.
    let out = out_dir.join("offload.parquet");
    let r = fetch_mode(addr, "s-fetch-no-offload", "sales", &out, "offload");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("offload is not configured"),
        "{err}"
    );
    assert!(!out.exists());
    // A bad output name is refused before anything is downloaded.
    let r = fetch(addr, "s-fetch-xlsx", "sales", &out_dir.join("sales.xlsx"));
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains(".arrow, .parquet or .csv"));
}

/// A gateway whose buffered limit (100 kB) is below the test dataset's size.
fn small_gateway() -> (Proc, std::net::SocketAddr) {
    gateway_with(
        free_port(),
        &[("SLUICE_LIMITS_MAX_BUFFERED_BYTES", "100000")],
    )
}
