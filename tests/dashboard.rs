//! README section "Dashboard": the real dashboard (web/dist, served by the
//! gateway) in headless Chromium, driven by `web/tests/dashboard.mjs`
//! through playwright-core: sign in through the control plane, a query's
//! rows and chart appear batch by batch before the stream ends, the chart
//! has drawn (pixels counted), the live view keeps updating, and a session
//! an admin revokes shows the revocation message. Against the real control
//! plane, gateway and connector.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::control::*;

fn chromium() -> PathBuf {
    let candidates = [
        std::env::var("CHROMIUM").unwrap_or_default(),
        "/usr/bin/chromium".into(),
        "/usr/bin/chromium-browser".into(),
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("headless Chromium not found: apt-get install chromium (.ci/run does), or set CHROMIUM=/path/to/chrome")
        })
}

#[tokio::test]
async fn the_dashboard_streams_charts_follows_a_live_feed_and_reports_revocation() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    assert!(
        web.join("dist/index.html").is_file() && web.join("node_modules/playwright-core").is_dir(),
        "the dashboard is not built: (cd web && npm ci && npm run build) — the README's test command does it"
    );
    let browser = chromium();
    let dir = provision();
    admin(
        &dir.0,
        &[
            "dataset", "add", "--tenant", "acme", "live", "--edge", "edge-a",
        ],
    );
    admin(
        &dir.0,
        &[
            "plan",
            "add",
            "--tenant",
            "acme",
            "web",
            "--max-streams",
            "10",
            "--session-quota",
            "1GB",
        ],
    );
    admin(
        &dir.0,
        &[
            "client",
            "add",
            "--tenant",
            "acme",
            "viewer",
            "--plan",
            "web",
            "--dataset",
            "*",
        ],
    );
    let dist = web.join("dist");
    let (ctl, gw) = single_node_with(&dir, 2, &[("SLUICE_WEB_DIR", dist.to_str().unwrap())]);

    let work = dir.0.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let csv = work.join("sensors.csv");
    let rows = 200_000;
    // A year of readings (one every 157 s), an id column and a constant
    // one: what the chart must not plot by default.
    let mut text = String::from("at,order_id,temperature,pressure,version,line\n");
    let start = 1_735_689_600i64; // 2025-01-01T00:00:00Z
    for i in 0..rows {
        let t = 20.0 + (i as f64 / 500.0).sin() * 5.0;
        let at = chrono_free_iso(start + i as i64 * 157);
        text.push_str(&format!(
            "{at},{i},{t:.3},{:.2},3,L{}\n",
            1000.0 + (i % 100) as f64 / 10.0,
            i % 4
        ));
    }
    std::fs::write(&csv, text).unwrap();
    let connector = sibling_bin("sluice-connector");
    let _conn = Killed(
        Command::new(connector)
            .args(["--gateway", &format!("ws://{}", gw.addr)])
            .args(["--tenant", "acme", "--edge", "edge-a", "--workers", "2"])
            .arg("--dataset")
            .arg(format!("d={}", csv.display()))
            .args(["--dataset", "live=metrics"])
            .env("SLUICE_EDGE_KEY", EDGE_A_KEY)
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("sluice-connector"),
    );
    ctl.access_when_online("viewer", "d").await;

    let out = Command::new("node")
        .arg(web.join("tests/dashboard.mjs"))
        .current_dir(&web)
        .env("DASHBOARD", format!("http://{}", gw.addr))
        .env("CONTROL", format!("http://{}", ctl.addr))
        .env("TENANT", "acme")
        .env("CLIENT", "viewer")
        .env("DATASET", "d")
        .env("ROWS", rows.to_string())
        .env("LIVE", "live")
        .env("USER_TOKEN", alice())
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("CHROMIUM", &browser)
        .env("OUT", &work)
        .output()
        .expect("node (install Node.js)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    for shot in ["query.png", "static-live.png", "live.png", "revoked.png"] {
        let len = std::fs::metadata(work.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 10_000, "{shot}: {len} bytes");
        // SLUICE_SHOTS=DIR keeps the screenshots for a person to look at.
        if let Ok(keep) = std::env::var("SLUICE_SHOTS") {
            std::fs::create_dir_all(&keep).unwrap();
            std::fs::copy(work.join(shot), Path::new(&keep).join(shot)).unwrap();
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS` for a Unix time (UTC), without a date crate.
fn chrono_free_iso(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}
