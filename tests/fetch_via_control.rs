//! README section "Fetch a dataset": `sluice-fetch --control …` asks the
//! control plane for access with the user's JWT, downloads through the
//! gateway it names from the real connector, releases its stream slot, and
//! writes a file pyarrow reads back equal to the source. A denial is a
//! clear error and leaves no file.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::assert_same_rows;
use common::control::*;

fn fetch(ctl: &Control, client: &str, dataset: &str, out: &Path) -> (bool, String) {
    let o = Command::new(sibling_bin("sluice-fetch"))
        .args(["--control", &format!("http://{}", ctl.addr)])
        .args(["--tenant", "acme", "--client", client, "--dataset", dataset])
        .arg("-o")
        .arg(out)
        .env("SLUICE_USER_TOKEN", alice())
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test]
async fn sluice_fetch_asks_the_control_plane_then_downloads_through_the_named_gateway() {
    let dir = provision();
    let (ctl, gw) = single_node(&dir, 2);
    let work = dir.0.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let csv = work.join("d.csv");
    let mut text = String::from("id,name,score\n");
    for i in 0..5000 {
        text.push_str(&format!("{i},row-{i},{}.5\n", i % 97));
    }
    std::fs::write(&csv, text).unwrap();
    let _connector = Killed(
        Command::new(sibling_bin("sluice-connector"))
            .args(["--gateway", &format!("ws://{}", gw.addr)])
            .args(["--tenant", "acme", "--edge", "edge-a"])
            .arg("--dataset")
            .arg(format!("d={}", csv.display()))
            .env("SLUICE_EDGE_KEY", EDGE_A_KEY)
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    ctl.access_when_online("bulk", "d").await;

    // Plan `pro` allows `dash` 2 streams: three fetches in a row work only
    // because each releases its slot when done.
    for (i, ext) in ["parquet", "arrow", "csv"].iter().enumerate() {
        let out = work.join(format!("out{i}.{ext}"));
        let (ok, err) = fetch(&ctl, "dash", "d", &out);
        assert!(ok, "fetch {ext}: {err}");
        assert_same_rows(&out, &csv);
    }
    let releases = ctl
        .audit_lines()
        .iter()
        .filter(|l| l["event"] == "release")
        .count();
    assert_eq!(releases, 3);

    // Denied: not granted, with the control plane's reason; no file left.
    let out = work.join("denied.parquet");
    let (ok, err) = fetch(&ctl, "dash", "secret", &out);
    assert!(!ok);
    assert!(
        err.contains("403") && err.contains("dataset_not_granted"),
        "{err}"
    );
    assert!(!out.exists());
}

/// README section "Arrow Flight": the grant names the gateway's Flight
/// endpoint too, and `sluice-fetch --flight` reads through it with the
/// granted token.
#[tokio::test]
async fn the_grant_names_the_flight_endpoint_and_sluice_fetch_reads_through_it() {
    let dir = provision();
    let (ctl, gw) = single_node_with(&dir, 2, &[("SLUICE_FLIGHT_LISTEN", "127.0.0.1:0")]);
    let flight_at = gw.flight_addr.expect("flight listener");
    let work = dir.0.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let csv = work.join("d.csv");
    let mut text = String::from("id,name,score\n");
    for i in 0..20_000 {
        text.push_str(&format!("{i},row-{i},{}.5\n", i % 89));
    }
    std::fs::write(&csv, text).unwrap();
    let _connector = Killed(
        Command::new(sibling_bin("sluice-connector"))
            .args(["--gateway", &format!("ws://{}", gw.addr)])
            .args(["--tenant", "acme", "--edge", "edge-a"])
            .arg("--dataset")
            .arg(format!("d={}", csv.display()))
            .env("SLUICE_EDGE_KEY", EDGE_A_KEY)
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let grant = ctl.access_when_online("bulk", "d").await;
    assert_eq!(
        grant["flight_url"],
        format!("grpc://{flight_at}"),
        "{grant}"
    );

    let out = work.join("via-flight.parquet");
    let o = Command::new(sibling_bin("sluice-fetch"))
        .args(["--control", &format!("http://{}", ctl.addr)])
        .args([
            "--tenant",
            "acme",
            "--client",
            "dash",
            "--dataset",
            "d",
            "--flight",
        ])
        .arg("-o")
        .arg(&out)
        .env("SLUICE_USER_TOKEN", alice())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("20000 rows"), "{err}");
    assert_same_rows(&out, &csv);
    assert!(gw.metric("sluice_flight_calls_total").await >= 1);
}
