//! The load generator against the real gateway, nginx and haproxy, at toy
//! sizes: every scenario completes with no errors, delivers every frame it
//! sent, and writes its JSON report, HDR files and plot. (The figures
//! themselves are for benchmarks, never asserted here.)

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const ALL_TARGETS: &str = "direct,gateway,gateway-query,gateway-relay,nginx,haproxy,haproxy-tcp";

fn loader(scenario: &str, args: &[&str]) -> Value {
    loader_on(ALL_TARGETS, scenario, args)
}

fn loader_on(targets: &str, scenario: &str, args: &[&str]) -> Value {
    loader_with(targets, scenario, args, &[])
}

/// `loader_on` with environment variables for the loader and what it
/// starts.
fn loader_with(targets: &str, scenario: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-loadtest"));
    let gateway = bin.with_file_name("sluice");
    assert!(
        gateway.exists(),
        "{} is missing: run the suite with `cargo test --workspace` so the gateway binary is built",
        gateway.display()
    );
    // One directory per call: tests run in parallel threads of one
    // process, and two of them may drive the same scenario.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = std::env::temp_dir().join(format!(
        "sluice-lt-test-{scenario}-{}-{call}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(&bin)
        .arg(scenario)
        .args(["--targets", targets])
        .args(["--no-pin", "--out"])
        .arg(&out)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run sluice-loadtest");
    let text =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "sluice-loadtest {scenario} failed:\n{text}"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let paths = if scenario == "revoke" {
        REVOKE_ROWS.len()
    } else {
        targets.split(',').count()
    };
    assert_eq!(
        report["outcomes"].as_array().unwrap().len(),
        paths,
        "{text}"
    );
    for o in report["outcomes"].as_array().unwrap() {
        assert_eq!(o["errors"], 0, "{}: {o}", o["target"]);
    }
    if report["outcomes"][0].get("latency").is_some() && targets == ALL_TARGETS {
        let plotted: &[&str] = if scenario == "revoke" {
            &["gateway"]
        } else {
            &["direct", "gateway", "nginx", "haproxy"]
        };
        for t in plotted {
            let hgrm = std::fs::read_to_string(out.join(format!("{t}.hgrm"))).unwrap();
            assert!(
                hgrm.contains("Percentile") && hgrm.contains("#[Max"),
                "{hgrm}"
            );
        }
        let svg = std::fs::read_to_string(out.join("latency.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("gateway"),
            "not a plot: {}",
            &svg[..200.min(svg.len())]
        );
    }
    let _ = std::fs::remove_dir_all(Path::new(&out));
    report
}

/// Runs a scenario that starts its own gateway (`tls`, `flight`,
/// `abuse`) with `args`; returns its report and everything it printed,
/// having failed the test if it failed.
fn own_gateway(scenario: &str, args: &[&str]) -> (Value, String) {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-loadtest"));
    let out =
        std::env::temp_dir().join(format!("sluice-lt-test-{scenario}-{}", std::process::id()));
    let run = Command::new(&bin)
        .arg(scenario)
        .args(args)
        .args(["--no-pin", "--out"])
        .arg(&out)
        .output()
        .expect("run sluice-loadtest");
    let text =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "sluice-loadtest {scenario} failed:\n{text}"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    (report, text)
}

/// The report's rows, by target name, in order.
fn targets(report: &Value) -> Vec<&str> {
    report["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["target"].as_str().unwrap())
        .collect()
}

/// The storm's row, then the loader's split of its time.
const REVOKE_ROWS: [&str; 4] = ["gateway", "publish-lag", "redis-floor", "gateway-share"];

fn each(report: &Value, f: impl Fn(&Value)) {
    report["outcomes"].as_array().unwrap().iter().for_each(f);
}

#[test]
fn bulk_carries_every_byte_on_every_path() {
    let r = loader(
        "bulk",
        &["--frames", "300", "--frame-size", "65536", "--runs", "1"],
    );
    each(&r, |o| {
        assert_eq!(o["messages"], 300, "{o}");
        assert!(o["mb_per_s"].as_f64().unwrap() > 0.0, "{o}");
        assert!(o["ratio_to_direct"].as_f64().is_some(), "{o}");
        assert_eq!(o["cost"]["payload_bytes"], 300 * 65536, "{o}");
    });
    each(&r, |o| {
        if o["target"] != "direct" {
            assert!(
                o["proxy_cpu_s"].as_f64().is_some(),
                "proxy CPU is reported: {o}"
            );
        }
    });
}

#[test]
fn latency_and_fan_in_record_every_stamped_frame() {
    let r = loader("latency", &["--rate", "500", "--duration", "1"]);
    each(&r, |o| assert_eq!(o["latency"]["count"], 500, "{o}"));
    let r = loader(
        "fan-in",
        &["--sessions", "20", "--rate", "20", "--duration", "1"],
    );
    each(&r, |o| {
        assert_eq!(o["messages"], 400, "{o}");
        // The cost table's denominator: what the sinks received.
        assert_eq!(o["cost"]["payload_bytes"], 400 * 4096, "{o}");
        if perf_counts() {
            let c = &o["cost"];
            assert!(c["loader_syscalls"].as_u64().unwrap() > 400, "{o}");
            if o["target"] != "direct" {
                // Every frame crosses the proxy: it must have been woken.
                assert!(c["proxy_context_switches"].as_u64().unwrap() > 0, "{o}");
                assert!(c["proxy_syscalls"].as_u64().unwrap() > 0, "{o}");
            }
        }
    });
}

/// `--slices`: the targets take turns on streams that stay open, and each
/// target still gets every frame of its duration (50 per stream here, cut
/// 16 + 17 + 17), counted once in its messages, histogram and bytes.
#[test]
fn interleaved_targets_still_deliver_every_frame() {
    let r = loader_on(
        "direct,gateway,gateway-relay,haproxy",
        "fan-in",
        &[
            "--sessions",
            "10",
            "--rate",
            "25",
            "--duration",
            "2",
            "--slices",
            "3",
        ],
    );
    assert_eq!(r["params"]["slices"], 3, "{r}");
    each(&r, |o| {
        assert_eq!(o["messages"], 500, "{o}");
        assert_eq!(o["latency"]["count"], 500, "{o}");
        assert_eq!(o["cost"]["payload_bytes"], 500 * 4096, "{o}");
    });
}

/// The floor relays (`sluice-floor-relay` on epoll, the `tcp-floor`
/// target, and `sluice-uring-floor` on io_uring, `tcp-floor-uring`) carry
/// the same traffic as the proxies, whole, and their CPU is read like
/// theirs. A 64 KiB frame spans several of the io_uring floor's provided
/// buffers when the kernel splits it, so bulk checks that they are sent on
/// in order.
#[test]
fn the_floor_relays_carry_every_frame() {
    for floor in ["tcp-floor", "tcp-floor-uring"] {
        let r = loader_on(
            &format!("direct,{floor}"),
            "bulk",
            &["--frames", "300", "--frame-size", "65536", "--runs", "1"],
        );
        each(&r, |o| {
            assert_eq!(o["messages"], 300, "{o}");
            assert_eq!(o["cost"]["payload_bytes"], 300 * 65536, "{o}");
        });
        let f = &r["outcomes"][1];
        assert_eq!(f["target"], floor);
        assert!(f["proxy_cpu_s"].as_f64().is_some(), "{f}");
        let r = loader_on(
            floor,
            "fan-in",
            &["--sessions", "20", "--rate", "20", "--duration", "1"],
        );
        each(&r, |o| assert_eq!(o["messages"], 400, "{o}"));
    }
}

/// With two provided buffers for forty sockets, the io_uring floor's
/// receives keep running out of buffers: each one that ends for want of a
/// buffer is armed again when a send gives one back, so every frame still
/// arrives, whole and in order, only later.
#[test]
fn the_io_uring_floor_waits_for_buffers_and_loses_nothing() {
    let scarce = [("URING_FLOOR_BUFS", "2"), ("URING_FLOOR_BUF_SIZE", "4096")];
    let r = loader_with(
        "tcp-floor-uring",
        "bulk",
        &["--frames", "200", "--frame-size", "65536", "--runs", "1"],
        &scarce,
    );
    each(&r, |o| {
        assert_eq!(o["messages"], 200, "{o}");
        assert_eq!(o["cost"]["payload_bytes"], 200 * 65536, "{o}");
    });
    let r = loader_with(
        "tcp-floor-uring",
        "fan-in",
        &["--sessions", "20", "--rate", "20", "--duration", "1"],
        &scarce,
    );
    each(&r, |o| assert_eq!(o["messages"], 400, "{o}"));
}

/// Whether perf can count syscall tracepoints here (the loader reports
/// the counts only then, and says so in its table).
fn perf_counts() -> bool {
    let ok = std::process::Command::new("perf")
        .args(["stat", "-e", "raw_syscalls:sys_enter", "--", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("perf cannot count syscalls here: the counts are not checked");
    }
    ok
}

#[test]
fn fan_out_reaches_every_viewer() {
    let r = loader(
        "fan-out",
        &[
            "--viewers",
            "30",
            "--rate",
            "50",
            "--frame-size",
            "2048",
            "--duration",
            "1",
        ],
    );
    each(&r, |o| assert_eq!(o["messages"], 30 * 50, "{o}"));
}

#[test]
fn churn_and_idle_sessions_all_answer() {
    let r = loader("churn", &["--rate", "100", "--duration", "1"]);
    each(&r, |o| assert_eq!(o["messages"], 100, "{o}"));
    let r = loader("idle", &["--sessions", "200", "--hold", "0"]);
    each(&r, |o| {
        assert_eq!(o["messages"], 200, "{o}");
        if o["target"] != "direct" {
            assert!(o["kib_per_session"].as_f64().is_some(), "{o}");
        }
    });
}

#[test]
fn revoke_closes_every_session_with_4410() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is needed for the revoke scenario (apt-get install redis-server; .ci/run does)");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let url = format!("redis://127.0.0.1:{port}/");
    let r = loader(
        "revoke",
        &["--redis", &url, "--sessions", "100", "--rate", "200"],
    );
    let _ = redis.kill();
    let _ = redis.wait();
    assert_eq!(targets(&r), REVOKE_ROWS);
    // Every revocation was published, seen by the loader's own subscriber
    // and closed with 4410: each split has all hundred.
    each(&r, |o| {
        assert_eq!(o["messages"], 100, "{o}");
        assert_eq!(o["latency"]["count"], 100, "{o}");
    });
}

/// `flight --pyarrow`: DoGet through the gateway beside the WebSocket fast
/// path, and Arrow's own Flight server serving the same batches; every
/// batch arrives on each, and each has its CPU per GiB.
#[test]
fn flight_times_doget_beside_the_fast_path_and_arrows_own_server() {
    let (report, text) = own_gateway(
        "flight",
        &[
            "--frames",
            "40",
            "--frame-size",
            "65536",
            "--runs",
            "1",
            "--pyarrow",
        ],
    );
    assert_eq!(
        targets(&report),
        ["gateway", "gateway-flight", "pyarrow-flight-direct"],
        "{text}"
    );
    each(&report, |o| {
        assert_eq!(o["errors"], 0, "{o}");
        assert_eq!(o["messages"], 40, "{o}");
        assert!(o["mb_per_s"].as_f64().unwrap() > 0.0, "{o}");
        assert!(o["proxy_cpu_s"].as_f64().is_some(), "{o}");
    });
}

#[test]
fn tls_measures_every_leg_against_plaintext() {
    let (report, text) = own_gateway(
        "tls",
        &[
            "--frames",
            "200",
            "--rate",
            "500",
            "--duration",
            "1",
            "--sessions",
            "10",
        ],
    );
    let rows = report["rows"].as_array().unwrap();
    let legs: Vec<&str> = rows.iter().map(|r| r["legs"].as_str().unwrap()).collect();
    assert_eq!(
        legs,
        [
            "plaintext",
            "tls browser leg",
            "mtls connector leg",
            "tls both legs"
        ]
    );
    for r in rows {
        // Every stamped frame arrived (the run fails on a short count) and
        // every figure was measured.
        assert_eq!(r["latency_frames"], 500, "{r}");
        assert!(r["bulk_mb_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["open_p50_us"].as_u64().unwrap() > 0, "{r}");
        // The crypto floor was measured with the negotiated suite: the
        // plaintext row's own CPU, more for each encrypted leg.
        assert!(r["floor_cpu_s_per_gib"].as_f64().unwrap() > 0.0, "{r}");
    }
    let floor = |i: usize| rows[i]["floor_cpu_s_per_gib"].as_f64().unwrap();
    assert!(floor(3) > floor(1) && floor(1) > floor(0), "{rows:?}");
    assert!(text.contains("crypto floor: TLS13_"), "{text}");
    assert!(text.contains("| tls both legs |"), "{text}");
}

/// `abuse` runs the attacks of issue 34 beside a healthy pair and reports
/// each: the wrong admin tokens are refused (401, then 429) while the
/// right one, from the same address, is always answered 200; the ping
/// flood's sockets are closed by the gateway; the healthy pair loses
/// nothing.
#[test]
fn abuse_reports_each_attack_beside_a_healthy_pair() {
    let (report, _) = own_gateway(
        "abuse",
        &["--attacks", "admin-tokens,ws-pings", "--duration", "2"],
    );
    let rows = report["rows"].as_array().unwrap();
    let attacks: Vec<&str> = rows.iter().map(|r| r["attack"].as_str().unwrap()).collect();
    assert_eq!(attacks, ["none", "admin-tokens", "ws-pings"]);
    for r in rows {
        assert_eq!(r["healthy_lost"], 0, "{r}");
        assert!(r["peak_above_rest_mib"].as_f64().unwrap() < 100.0, "{r}");
    }
    let admin = &rows[1]["answers"];
    assert!(admin["right token: 200"].as_u64().unwrap() >= 1, "{admin}");
    assert!(admin["wrong token: 429"].as_u64().unwrap() >= 1, "{admin}");
    let right_refused = admin
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k.starts_with("right token") && k != "right token: 200");
    assert!(!right_refused, "the right token was refused: {admin}");
    assert!(
        rows[2]["answers"]["sockets closed by the gateway"]
            .as_u64()
            .unwrap()
            >= 1
    );
}
