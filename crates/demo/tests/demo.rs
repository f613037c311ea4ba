//! README's first command: `sluice-demo` brings up the control plane, a
//! gateway with the dashboard and a connector with sample data; the
//! printed `sluice-fetch` example downloads a dataset equal (pyarrow) to
//! the bundled sample; the printed dashboard link is served; Ctrl-C stops
//! everything and exits 0.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

#[test]
fn the_demo_comes_up_serves_and_stops_cleanly() {
    let (gw, ctl) = (free_addr(), free_addr());
    let data = std::env::temp_dir().join(format!("sluice-demo-test-{}", std::process::id()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .parent()
        .unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_sluice-demo"))
        .args(["--gateway", &gw, "--control", &ctl])
        .arg("--data")
        .arg(&data)
        .arg("--web")
        .arg(root.join("web/dist"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(demo.stdout.take().unwrap());
    let mut printed = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // The welcome text ends with the demo's flags.
    while !printed.contains("(sluice-demo --help)") {
        assert!(Instant::now() < deadline, "demo did not come up: {printed}");
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("demo exited: {printed}");
        }
        printed.push_str(&line);
    }
    let link = printed
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("http://{gw}/#token=")))
        .unwrap_or_else(|| panic!("no ready-session link in {printed}"));
    let token = link.split("#token=").nth(1).unwrap();
    assert_eq!(token.split('.').count(), 3, "a JWT in the link");
    let user = printed
        .split("--user-token ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("user token in the fetch example");

    // The page the link opens is the dashboard.
    let mut s = std::net::TcpStream::connect(&gw).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    assert!(
        page.starts_with("HTTP/1.1 200") || page.contains("npm run build"),
        "{page}"
    );

    // The printed fetch example works and the file equals the sample.
    let fetch = env!("CARGO_BIN_EXE_sluice-demo").replace("sluice-demo", "sluice-fetch");
    assert!(
        Path::new(&fetch).exists(),
        "{fetch} missing: run `cargo test --workspace`"
    );
    assert!(
        printed.contains(&format!("{fetch} --control http://{ctl}")),
        "the hint names the built binary, not a rebuild: {printed}"
    );
    assert!(printed.contains("sluice-demo --gateway ADDR"), "{printed}");
    let file = data.join("fetched.parquet");
    let st = Command::new(&fetch)
        .args([
            "--control",
            &format!("http://{ctl}"),
            "--tenant",
            "demo",
            "--client",
            "dashboard",
        ])
        .args(["--user-token", user, "--dataset", "sales_parquet", "-o"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(st.success());
    let cmp = Command::new("python3")
        .arg(root.join("crates/connector/tests/python/compare_files.py"))
        .arg(&file)
        .arg(data.join("samples/sales.parquet"))
        .output()
        .expect("python3");
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );

    // The printed revocation works: the ready session becomes revoked.
    let revoke = printed
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("curl -X POST"))
        .expect("revoke example");
    let bearer = revoke.split('\'').nth(1).expect("quoted header");
    let sid = revoke.rsplit('/').next().unwrap();
    let mut s = std::net::TcpStream::connect(&ctl).unwrap();
    write!(s, "POST /control/revoke/{sid} HTTP/1.1\r\nHost: x\r\n{bearer}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Ctrl-C: everything stops, exit 0.
    let t = Instant::now();
    sigint(demo.id());
    let status = loop {
        if let Some(s) = demo.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "demo still running 30 s after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("stopped."), "{rest}");
    let _ = std::fs::remove_dir_all(&data);
}

/// Ctrl-C, sent with `kill -INT` (no unsafe libc call needed).
fn sigint(pid: u32) {
    let st = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}
