//! Gateway forwarding benchmark: the same stream sent directly (no proxy)
//! and through the gateway, measured in one run, reported as ratios.
//!
//!     cargo bench --bench forward                    # defaults below
//!     cargo bench --bench forward -- --frames 20000 --size 65536 --runs 3
//!
//! Layout as in ARCHITECTURE.md: the gateway (one shard) pinned to CPU 0,
//! source and sink (plain blocking threads speaking raw RFC 6455 frames) on
//! CPU 1, loopback. Bulk: one stream of `--size` frames as fast as possible,
//! median of `--runs`. Latency: 1 KiB frames at 2,000/s, open loop (latency
//! from each frame's scheduled send time, so a stall is not hidden), p50 and
//! p99 from an HDR histogram; the gateway's added latency is the difference
//! from the direct path measured in the same run.

mod support;
use support::pin;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use sluice::frame::{apply_mask, encode_client_frame, parse_header, MaskRule, Opcode};
use sluice::token::{sign_hs256, Claims, Mode};

const SECRET: &str = "bench-secret";
const KEY: &str = "bench-edge-key";

struct Args {
    frames: usize,
    size: usize,
    runs: usize,
    latency_secs: u64,
    only: String,
    idle: usize,
}

fn args() -> Args {
    let mut a = Args {
        frames: 20_000,
        size: 64 * 1024,
        runs: 3,
        latency_secs: 5,
        only: String::new(),
        idle: 10_000,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let next = || v.get(i + 1).and_then(|s| s.parse().ok());
        match v[i].as_str() {
            "--frames" => a.frames = next().expect("--frames N"),
            "--size" => a.size = next().expect("--size BYTES"),
            "--runs" => a.runs = next().expect("--runs N"),
            "--latency-secs" => a.latency_secs = next().expect("--latency-secs N") as u64,
            "--only" => a.only = v.get(i + 1).cloned().expect("--only bulk|latency|idle"),
            "--idle" => a.idle = next().expect("--idle N"),
            _ => {}
        }
        i += 1;
    }
    a
}

struct Gateway {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(pinned: bool) -> Gateway {
    let bin = env!("CARGO_BIN_EXE_sluice");
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", bin]);
        c
    } else {
        Command::new(bin)
    };
    let mut child = cmd
        .env("SLUICE_LISTEN", "127.0.0.1:0")
        .env("SLUICE_WORKERS", "1")
        .env("SLUICE_TOKEN_SECRET", SECRET)
        .env("SLUICE_EDGE_KEYS", format!("bench={KEY}"))
        .env("SLUICE_LOG", "warn")
        .env("SLUICE_LIMITS_MAX_SESSIONS", "100000")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start gateway");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .nth(3)
        .expect("listen line")
        .parse()
        .unwrap();
    Gateway { child, addr }
}

/// User + system CPU seconds a process has used (from /proc).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn claims(sid: &str, mode: Mode) -> Claims {
    Claims {
        sid: sid.into(),
        sub: "bench".into(),
        tenant: "bench".into(),
        edge: "bench".into(),
        mode,
        datasets: None,
        quota: None,
        exp: sluice::token::now_s() + 3600,
        jti: None,
    }
}

/// Raw client handshake; returns the socket and any bytes after the head.
fn ws_connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "handshake refused");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            assert!(
                buf.starts_with(b"HTTP/1.1 101"),
                "{}",
                String::from_utf8_lossy(&buf)
            );
            return (s, buf[at + 4..].to_vec());
        }
    }
}

/// Reads frames from a socket; `rule` says whether they are masked.
struct FrameSink {
    s: TcpStream,
    buf: Vec<u8>,
    start: usize,
    rule: MaskRule,
}

impl FrameSink {
    fn new(s: TcpStream, pending: Vec<u8>, rule: MaskRule) -> Self {
        let mut buf = pending;
        buf.reserve(1 << 20);
        FrameSink {
            s,
            buf,
            start: 0,
            rule,
        }
    }

    /// Next frame: opcode and payload (unmasked).
    fn next(&mut self) -> (Opcode, Vec<u8>) {
        let (op, range, mask) = self.next_raw();
        let mut p = self.buf[range].to_vec();
        if let Some(k) = mask {
            apply_mask(&mut p, k, 0);
        }
        (op, p)
    }

    /// Next frame without copying its payload: opcode, payload range, mask.
    fn next_raw(&mut self) -> (Opcode, std::ops::Range<usize>, Option<[u8; 4]>) {
        loop {
            if let Some(h) =
                parse_header(&self.buf[self.start..], self.rule, u64::MAX >> 1).unwrap()
            {
                let total = h.frame_len() as usize;
                if self.buf.len() - self.start >= total {
                    let at = self.start + h.header_len;
                    self.start += total;
                    return (h.opcode, at..self.start, h.mask);
                }
            }
            if self.start > 0 && self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            } else if self.start > (1 << 20) {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let len = self.buf.len();
            self.buf.resize(len + 256 * 1024, 0);
            let n = self.s.read(&mut self.buf[len..]).unwrap();
            assert!(n > 0, "peer closed");
            self.buf.truncate(len + n);
        }
    }

    fn next_json(&mut self) -> serde_json::Value {
        loop {
            let (op, p) = self.next();
            if op == Opcode::Text {
                return serde_json::from_slice(&p).unwrap();
            }
        }
    }

    /// Counts `n` binary frames; returns payload bytes.
    fn drain_binary(&mut self, n: usize) -> usize {
        let (mut seen, mut bytes) = (0, 0);
        while seen < n {
            let (op, r, _) = self.next_raw();
            if op == Opcode::Binary {
                seen += 1;
                bytes += r.len();
            }
        }
        bytes
    }
}

fn send_json(s: &mut TcpStream, v: serde_json::Value) {
    s.write_all(&encode_client_frame(
        Opcode::Text,
        true,
        v.to_string().as_bytes(),
        [9, 8, 7, 6],
    ))
    .unwrap();
}

/// A connected source (client-role socket) and sink for one path.
struct Pair {
    source: TcpStream,
    sink: FrameSink,
    /// For query mode: the `stream_end` frame that ends the stream.
    finish: Option<Vec<u8>>,
}

fn direct_pair() -> Pair {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let source = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    source.set_nodelay(true).unwrap();
    let (sink, _) = l.accept().unwrap();
    sink.set_nodelay(true).unwrap();
    Pair {
        source,
        sink: FrameSink::new(sink, Vec::new(), MaskRule::Required),
        finish: None,
    }
}

fn relay_pair(gw: &Gateway, n: usize) -> Pair {
    let (edge, pending) = ws_connect(gw.addr, "/edge/bench", &[("Edge-Key", KEY)]);
    let sid = format!("relay-{n}");
    let t = sign_hs256(&claims(&sid, Mode::Relay), SECRET.as_bytes());
    let (browser, bpending) = ws_connect(
        gw.addr,
        &format!("/stream/{sid}"),
        &[("Authorization", &format!("Bearer {t}"))],
    );
    let mut edge_sink = FrameSink::new(edge.try_clone().unwrap(), pending, MaskRule::Forbidden);
    assert_eq!(edge_sink.next_json()["type"], "paired");
    Pair {
        source: edge,
        sink: FrameSink::new(browser, bpending, MaskRule::Forbidden),
        finish: None,
    }
}

fn query_pair(gw: &Gateway, n: usize, fast: bool) -> Pair {
    let mut headers = vec![("Edge-Key", KEY)];
    if fast {
        headers.push(("Sec-WebSocket-Protocol", sluice::http::FAST_PATH_PROTOCOL));
    }
    let (mut conn, pending) = ws_connect(gw.addr, "/ws/connect", &headers);
    let text = |v: serde_json::Value| {
        if fast {
            sluice::frame::encode_server_frame(Opcode::Text, v.to_string().as_bytes())
        } else {
            encode_client_frame(Opcode::Text, true, v.to_string().as_bytes(), [1, 2, 3, 4])
        }
    };
    conn.write_all(&text(
        json!({"action": "register", "tenant_id": "bench", "edge_id": "bench", "datasets": ["d"]}),
    ))
    .unwrap();
    let mut csink = FrameSink::new(conn.try_clone().unwrap(), pending, MaskRule::Forbidden);
    assert_eq!(csink.next_json()["status"], "ok");
    let sid = format!("query-{n}-{fast}");
    let t = sign_hs256(&claims(&sid, Mode::Query), SECRET.as_bytes());
    let (mut browser, bpending) = ws_connect(
        gw.addr,
        &format!("/stream/{sid}"),
        &[("Authorization", &format!("Bearer {t}"))],
    );
    send_json(&mut browser, json!({"action": "query", "dataset": "d"}));
    let rid = loop {
        let v = csink.next_json();
        if v["action"] == "do_get" {
            break v["request_id"].clone();
        }
    };
    conn.write_all(&text(
        json!({"request_id": rid, "type": "stream_start", "schema": ""}),
    ))
    .unwrap();
    let mut bsink = FrameSink::new(browser, bpending, MaskRule::Forbidden);
    loop {
        if bsink.next_json()["type"] == "stream_start" {
            break;
        }
    }
    Pair {
        source: conn,
        sink: bsink,
        finish: Some(text(
            json!({"request_id": rid, "type": "stream_end", "total_bytes": 0}),
        )),
    }
}

/// Sends `n` copies of `frame`; returns MB/s from first write to last byte read.
fn bulk(mut p: Pair, frame: Vec<u8>, n: usize) -> f64 {
    let t0 = Instant::now();
    let mut source = p.source.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        pin(1);
        for _ in 0..n {
            source.write_all(&frame).unwrap();
        }
    });
    let bytes = p.sink.drain_binary(n);
    let secs = t0.elapsed().as_secs_f64();
    writer.join().unwrap();
    if let Some(end) = p.finish.take() {
        let _ = p.source.write_all(&end);
    }
    bytes as f64 / secs / 1e6
}

/// Open-loop 1 KiB frames at `rate`/s for `secs`; latency from schedule.
fn latency(p: Pair, masked_source: bool, rate: u64, secs: u64) -> Histogram<u64> {
    let Pair {
        source, mut sink, ..
    } = p;
    let epoch = Instant::now() + Duration::from_millis(50);
    let n = rate * secs;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        pin(1);
        let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
        let mut seen = 0;
        while seen < n {
            let (op, p) = sink.next();
            if op != Opcode::Binary {
                continue;
            }
            let sched = u64::from_le_bytes(p[..8].try_into().unwrap());
            let now = epoch.elapsed().as_nanos() as u64;
            h.record(now.saturating_sub(sched).max(1)).unwrap();
            seen += 1;
        }
        tx.send(h).unwrap();
    });
    let mut source = source;
    let period = Duration::from_nanos(1_000_000_000 / rate);
    for i in 0..n {
        let due = epoch + period * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let sched = (due - epoch).as_nanos() as u64;
        let mut payload = vec![0u8; 1024];
        payload[..8].copy_from_slice(&sched.to_le_bytes());
        let frame = if masked_source {
            encode_client_frame(Opcode::Binary, true, &payload, [0x12, 0x34, 0x56, 0x78])
        } else {
            sluice::frame::encode_server_frame(Opcode::Binary, &payload)
        };
        source.write_all(&frame).unwrap();
    }
    let h = rx.recv().unwrap();
    reader.join().unwrap();
    h
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let a = args();
    if std::env::args().any(|x| x == "--bench") && std::env::args().any(|x| x == "--test") {
        return; // `cargo test --benches` only checks that this builds
    }
    let pinned = Command::new("taskset").arg("-V").output().is_ok()
        && std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            > 1;
    let gw = start_gateway(pinned);
    pin(1);
    println!(
        "forward bench: {} frames of {} B, {} runs, gateway 1 shard {} (CPU 0), source+sink CPU 1",
        a.frames,
        a.size,
        a.runs,
        if pinned { "pinned" } else { "unpinned" }
    );
    if a.only.is_empty() || a.only == "bulk" {
        bulk_table(&a, &gw);
    }
    if a.only.is_empty() || a.only == "latency" {
        latency_table(&a, &gw);
    }
    if a.only.is_empty() || a.only == "idle" {
        drop(gw);
        idle_table(&a, &start_gateway(pinned));
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Gateway memory per idle, authenticated browser session.
fn idle_table(a: &Args, gw: &Gateway) {
    let pid = gw.child.id();
    // Warm up allocator arenas and shard tables with a few sessions.
    let warm: Vec<_> = (0..100)
        .map(|i| idle_session(gw, &format!("warm-{i}")))
        .collect();
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);
    let held: Vec<_> = (0..a.idle)
        .map(|i| idle_session(gw, &format!("idle-{i}")))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    println!(
        "\nidle sessions: {} authenticated sessions held open, gateway RSS {} -> {} KiB: {:.2} KiB per idle session",
        held.len(),
        before,
        after,
        (after.saturating_sub(before)) as f64 / held.len() as f64
    );
}

fn idle_session(gw: &Gateway, sid: &str) -> TcpStream {
    let t = sign_hs256(&claims(sid, Mode::Query), SECRET.as_bytes());
    ws_connect(
        gw.addr,
        &format!("/stream/{sid}"),
        &[("Authorization", &format!("Bearer {t}"))],
    )
    .0
}

fn bulk_table(a: &Args, gw: &Gateway) {
    let masked = encode_client_frame(Opcode::Binary, true, &vec![0xAB; a.size], [1, 2, 3, 4]);
    let unmasked = sluice::frame::encode_server_frame(Opcode::Binary, &vec![0xAB; a.size]);
    let mut r: [Vec<f64>; 4] = Default::default();
    let mut cpu = [0.0f64; 4];
    let pid = gw.child.id();
    for run in 0..a.runs {
        r[0].push(bulk(direct_pair(), masked.clone(), a.frames));
        let c0 = cpu_secs(pid);
        r[1].push(bulk(relay_pair(gw, run), masked.clone(), a.frames));
        let c1 = cpu_secs(pid);
        r[2].push(bulk(query_pair(gw, run, false), masked.clone(), a.frames));
        let c2 = cpu_secs(pid);
        r[3].push(bulk(query_pair(gw, run, true), unmasked.clone(), a.frames));
        let c3 = cpu_secs(pid);
        cpu[1] += c1 - c0;
        cpu[2] += c2 - c1;
        cpu[3] += c3 - c2;
    }
    let gib = (a.frames * a.size) as f64 / (1u64 << 30) as f64;
    let direct = median(r[0].clone());
    println!(
        "\nbulk ({} KiB frames), median of {} runs:",
        a.size / 1024,
        a.runs
    );
    println!(
        "  {:<34} {:>10} {:>8} {:>16}",
        "path", "MB/s", "ratio", "gw CPU s/GiB"
    );
    for (i, (name, v)) in [
        ("direct (no proxy)", &r[0]),
        ("gateway relay (masked edge)", &r[1]),
        ("gateway query (seed-001 masked)", &r[2]),
        ("gateway query (fast path)", &r[3]),
    ]
    .into_iter()
    .enumerate()
    {
        let m = median(v.clone());
        let c = if i == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", cpu[i] / a.runs as f64 / gib)
        };
        println!("  {name:<34} {m:>10.0} {:>8.3} {c:>16}", m / direct);
    }
}

fn latency_table(a: &Args, gw: &Gateway) {
    println!(
        "\nlatency, 1 KiB frames at 2,000/s for {} s (open loop):",
        a.latency_secs
    );
    println!(
        "  {:<34} {:>9} {:>9} {:>9}",
        "path", "p50 µs", "p99 µs", "p99.9 µs"
    );
    let hd = latency(direct_pair(), true, 2000, a.latency_secs);
    let hr = latency(relay_pair(gw, 1000), true, 2000, a.latency_secs);
    let hq = latency(query_pair(gw, 1000, true), false, 2000, a.latency_secs);
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    for (name, h) in [
        ("direct (no proxy)", &hd),
        ("gateway relay", &hr),
        ("gateway query (fast path)", &hq),
    ] {
        println!(
            "  {name:<34} {:>9.1} {:>9.1} {:>9.1}",
            us(h, 0.5),
            us(h, 0.99),
            us(h, 0.999)
        );
    }
    println!(
        "  added p99 over direct: relay {:+.1} µs, query {:+.1} µs",
        us(&hr, 0.99) - us(&hd, 0.99),
        us(&hq, 0.99) - us(&hd, 0.99)
    );
}
