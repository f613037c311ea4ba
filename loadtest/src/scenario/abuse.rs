//! `abuse`: the attacks of issue 34, each run for a while against a
//! gateway the loader starts (WebSocket, gRPC tunnel, Flight and admin
//! listeners all open) while a healthy relay pair sends 100 frames a
//! second through it. For each attack, and for a quiet round with none,
//! it reports the gateway's peak memory above its memory at rest, the
//! healthy pair's latency (p50, p99) and lost frames, and what the attack
//! got (how its calls were answered).
//!
//! The attacks carry no credentials (but `zero-window`, whose sessions are
//! authorised and stop reading, and `admin-tokens`, whose tokens are
//! wrong): nothing they send may hold the gateway's memory, and the
//! healthy pair must keep its latency.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde::Serialize;
use sluice::auth::token::Mode;
use sluice::wire::frame::Opcode;

use crate::cli::AbuseArgs;
use crate::report::histogram;
use crate::targets::{self, GatewaySpec, Proc};
use crate::wire::{self, Encoding};

const ALL: [&str; 6] = [
    "grpc-serve",
    "grpc-connect",
    "flight-doget",
    "ws-pings",
    "admin-tokens",
    "zero-window",
];

/// One round: an attack (or none) with the healthy pair beside it.
#[derive(Serialize, Debug)]
struct Row {
    attack: String,
    /// Gateway RSS at rest before the round, MiB.
    rest_mib: f64,
    /// Peak RSS above rest during the round, MiB.
    peak_above_rest_mib: f64,
    healthy_p50_us: f64,
    healthy_p99_us: f64,
    /// Healthy frames sent that never arrived within 5 s.
    healthy_lost: u64,
    /// How the attack's calls were answered: outcome → count.
    answers: BTreeMap<String, u64>,
}

pub fn main(a: &AbuseArgs, mut gw: GatewaySpec) -> Result<()> {
    if a.common.gateway.is_some() {
        bail!("abuse starts its own gateway with every listener open: drop --gateway");
    }
    let attacks: Vec<String> = if a.attacks.is_empty() {
        ALL.iter().map(|s| s.to_string()).collect()
    } else {
        a.attacks.clone()
    };
    if let Some(bad) = attacks.iter().find(|x| !ALL.contains(&x.as_str())) {
        bail!("unknown attack {bad:?}: one of {}", ALL.join(", "));
    }
    let admin = free_addr()?;
    let admin_token = format!("abuse-admin-token-{:016}", std::process::id());
    gw.env.extend([
        ("SLUICE_GRPC_LISTEN".into(), "127.0.0.1:0".into()),
        ("SLUICE_FLIGHT_LISTEN".into(), "127.0.0.1:0".into()),
        ("SLUICE_ADMIN_TOKEN".into(), admin_token.clone()),
        ("SLUICE_ADMIN_LISTEN".into(), admin.to_string()),
        ("SLUICE_TIMEOUTS_READER_STALL_MS".into(), "2000".into()),
    ]);
    let _gateway = targets::start_gateway(&mut gw)?;
    let proc = Proc(gw.pid.context("the gateway's pid")?);
    let setup = Setup {
        gw: &gw,
        admin,
        admin_token,
        duration: Duration::from_secs(a.duration.max(1)),
        scale: a.scale.max(1),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = vec![setup.round(&rt, proc, "none")?];
    for attack in &attacks {
        rows.push(setup.round(&rt, proc, attack)?);
    }
    print_table(&rows);
    let dir = a
        .common
        .out
        .clone()
        .unwrap_or_else(|| "target/loadtest/abuse".into());
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("report.json");
    let report = serde_json::json!({
        "scenario": "abuse",
        "params": {"duration_s": setup.duration.as_secs(), "scale": setup.scale},
        "rows": rows,
    });
    std::fs::write(&file, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", file.display());
    Ok(())
}

fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

struct Setup<'a> {
    gw: &'a GatewaySpec,
    admin: SocketAddr,
    admin_token: String,
    duration: Duration,
    scale: usize,
}

impl Setup<'_> {
    /// Runs `attack` for the round's duration beside the healthy pair.
    fn round(&self, rt: &tokio::runtime::Runtime, proc: Proc, attack: &str) -> Result<Row> {
        std::thread::sleep(Duration::from_secs(1));
        let rest = proc.rss_kib();
        let stop = Arc::new(AtomicBool::new(false));
        let healthy = {
            let (gw_addr, stop) = (self.gw.addr.context("gateway address")?, stop.clone());
            let edge = (self.gw.edge.clone(), self.gw.edge_key.clone());
            let token = self
                .gw
                .token(&format!("abuse-healthy-{attack}"), Mode::Relay);
            std::thread::spawn(move || healthy_pair(gw_addr, &edge, &token, &stop))
        };
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut peak = 0;
                while !stop.load(Relaxed) {
                    peak = peak.max(proc.rss_kib());
                    std::thread::sleep(Duration::from_millis(50));
                }
                peak
            })
        };
        let answers = rt.block_on(self.attack(attack))?;
        stop.store(true, Relaxed);
        let peak = sampler.join().expect("sampler");
        let (p50, p99, lost) = healthy.join().expect("healthy pair")?;
        let row = Row {
            attack: attack.to_owned(),
            rest_mib: rest as f64 / 1024.0,
            peak_above_rest_mib: peak.saturating_sub(rest) as f64 / 1024.0,
            healthy_p50_us: p50,
            healthy_p99_us: p99,
            healthy_lost: lost,
            answers,
        };
        println!("{row:?}");
        Ok(row)
    }

    async fn attack(&self, attack: &str) -> Result<BTreeMap<String, u64>> {
        let until = Instant::now() + self.duration;
        let n = self.scale;
        let gw = self.gw;
        Ok(match attack {
            "none" => {
                tokio::time::sleep(self.duration).await;
                BTreeMap::new()
            }
            "grpc-serve" => {
                let at = gw.grpc_addr.context("gRPC address")?;
                h2_flood(at, SERVE, 4 * n, 40, 15 << 20, (4 << 20) - 1, until).await
            }
            "grpc-connect" => {
                let at = gw.grpc_addr.context("gRPC address")?;
                h2_flood(at, CONNECT, 4 * n, 40, 0, 0, until).await
            }
            "flight-doget" => {
                let at = gw.flight_addr.context("Flight address")?;
                h2_flood(at, DO_GET, 20 * n, 100, 64 * 1024, 64 * 1024 - 1, until).await
            }
            "ws-pings" => ws_pings(gw.addr.context("gateway address")?, 200 * n, until).await,
            "admin-tokens" => admin_tokens(self.admin, &self.admin_token, until).await,
            "zero-window" => zero_window(gw, 4 * n, until).await?,
            other => bail!("unknown attack {other}"),
        })
    }
}

/// The healthy pair: a relay edge sends a stamped frame every 10 ms, the
/// browser reads it; returns p50 and p99 of the edge → browser latency
/// (µs) and the frames lost.
fn healthy_pair(
    at: SocketAddr,
    (edge, key): &(String, String),
    token: &str,
    stop: &AtomicBool,
) -> Result<(f64, f64, u64)> {
    let mut e = wire::connect(at, &format!("/edge/{edge}"), &[("Edge-Key", key.clone())])?;
    let sid = token_sid(token);
    let mut b = wire::connect(
        at,
        &format!("/stream/{sid}"),
        &[("Authorization", format!("Bearer {token}"))],
    )?;
    e.wait_for("type", "paired", Duration::from_secs(10))?;
    let mut h = histogram();
    let mut lost = 0;
    let epoch = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        seq += 1;
        let sent = epoch.elapsed().as_nanos() as u64;
        e.stream
            .write_all(&Encoding::Masked.frame(Opcode::Binary, &wire::stamped(64, sent, seq)))?;
        match b.next_frame(Duration::from_secs(5)) {
            Ok((Opcode::Binary, p)) if wire::stamp_of(&p).is_some() => {
                let (at_ns, _) = wire::stamp_of(&p).expect("stamped");
                let us = (epoch.elapsed().as_nanos() as u64).saturating_sub(at_ns) / 1000;
                let _ = h.record(us.max(1));
            }
            Ok(_) => {}
            Err(_) => lost += 1,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((
        h.value_at_quantile(0.5) as f64,
        h.value_at_quantile(0.99) as f64,
        lost,
    ))
}

/// The session id a loader token names (its `sid`): the loader signs them.
fn token_sid(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap_or_default();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
    v["sid"].as_str().unwrap_or_default().to_owned()
}

const SERVE: &str = "/sluice.tunnel.v1.ConnectorTunnel/Serve";
const CONNECT: &str = "/sluice.tunnel.v1.ConnectorTunnel/Connect";
const DO_GET: &str = "/arrow.flight.protocol.FlightService/DoGet";

/// `conns` HTTP/2 connections, each opening `streams` calls on `path` with
/// no credentials, each announcing a message of `announced` bytes and
/// sending `sent` of them; again and again until `until`.
async fn h2_flood(
    at: SocketAddr,
    path: &'static str,
    conns: usize,
    streams: usize,
    announced: u32,
    sent: usize,
    until: Instant,
) -> BTreeMap<String, u64> {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut answers: BTreeMap<String, u64> = BTreeMap::new();
            while Instant::now() < until {
                for a in h2_round(at, path, streams, announced, sent).await {
                    *answers.entry(a).or_default() += 1;
                }
            }
            answers
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap_or_default() {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

/// One connection's worth of calls; each answer as `grpc-status N`, or
/// what became of the call.
async fn h2_round(
    at: SocketAddr,
    path: &'static str,
    streams: usize,
    announced: u32,
    sent: usize,
) -> Vec<String> {
    let Ok(tcp) = tokio::net::TcpStream::connect(at).await else {
        tokio::time::sleep(Duration::from_millis(50)).await;
        return vec!["connect refused".into()];
    };
    let Ok((client, conn)) = h2::client::handshake(tcp).await else {
        return vec!["connection closed".into()];
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut calls = Vec::new();
    for _ in 0..streams {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            let req = http::Request::builder()
                .method("POST")
                .uri(format!("http://{at}{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request");
            let Ok(mut ready) = client.ready().await else {
                return "connection closed".to_owned();
            };
            let Ok((resp, mut body)) = ready.send_request(req, false) else {
                return "refused at open".to_owned();
            };
            if announced > 0 {
                let mut prefix = vec![0u8];
                prefix.extend_from_slice(&announced.to_be_bytes());
                let _ = body.send_data(Bytes::from(prefix), false);
                let _ = body.send_data(Bytes::from(vec![7u8; sent]), false);
            }
            match tokio::time::timeout(Duration::from_secs(10), resp).await {
                Ok(Ok(r)) => match r.headers().get("grpc-status") {
                    Some(s) => format!("grpc-status {}", s.to_str().unwrap_or("?")),
                    None => format!("http {}", r.status().as_u16()),
                },
                Ok(Err(_)) => "stream reset".to_owned(),
                Err(_) => "no answer in 10 s".to_owned(),
            }
        }));
    }
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.unwrap_or_else(|_| "task failed".into()));
    }
    out
}

/// `sockets` sockets (receive buffer 4 KiB) upgraded on `/stream` without
/// a token, each flooding pings and reading nothing; a closed one dials
/// again, until `until`.
async fn ws_pings(at: SocketAddr, sockets: usize, until: Instant) -> BTreeMap<String, u64> {
    let ping = Encoding::Masked.frame(Opcode::Ping, b"ping");
    let burst: Arc<Vec<u8>> = Arc::new(
        ping.iter()
            .copied()
            .cycle()
            .take(ping.len() * 100)
            .collect(),
    );
    let mut tasks = Vec::new();
    for i in 0..sockets {
        let burst = burst.clone();
        tasks.push(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut closed = 0u64;
            while Instant::now() < until {
                let Ok(sock) = tokio::net::TcpSocket::new_v4() else {
                    break;
                };
                let _ = sock.set_recv_buffer_size(4096);
                let Ok(mut s) = sock.connect(at).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let head = wire::upgrade_request(at, &format!("/stream/abuse-ping-{i}"), &[]);
                if s.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                while Instant::now() < until {
                    let left = until.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, s.write_all(&burst)).await {
                        Ok(Ok(())) => tokio::time::sleep(Duration::from_millis(20)).await,
                        Ok(Err(_)) => {
                            closed += 1;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            closed
        }));
    }
    let mut closed = 0;
    for t in tasks {
        closed += t.await.unwrap_or(0);
    }
    BTreeMap::from([("sockets closed by the gateway".to_owned(), closed)])
}

/// Wrong admin tokens from this address as fast as they are answered,
/// and the right one every 100th: how each was answered.
async fn admin_tokens(at: SocketAddr, right: &str, until: Instant) -> BTreeMap<String, u64> {
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        let (token, what) = if i.is_multiple_of(100) {
            (right.to_owned(), "right token")
        } else {
            (format!("wrong-admin-token-{i:012}"), "wrong token")
        };
        let status = admin_get(at, &token).await.unwrap_or(0);
        *answers.entry(format!("{what}: {status}")).or_default() += 1;
    }
    answers
}

async fn admin_get(at: SocketAddr, token: &str) -> Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(at).await?;
    let req =
        format!("GET /admin/edges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let head = String::from_utf8_lossy(&out);
    Ok(head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// Authorised sessions of one subject that query a dataset and never read,
/// against an edge of four workers each serving 24 MiB a query: how the
/// stalled sessions ended, and how another subject's queries went.
async fn zero_window(
    gw: &GatewaySpec,
    sessions: usize,
    until: Instant,
) -> Result<BTreeMap<String, u64>> {
    let at = gw.addr.context("gateway address")?;
    let workers: Vec<_> = (0..4).map(|_| connector(at, gw)).collect::<Result<_>>()?;
    let serving: Vec<_> = workers
        .into_iter()
        .map(|w| std::thread::spawn(move || serve_forever(w)))
        .collect();
    let mut stalled = Vec::new();
    for i in 0..sessions {
        let token = targets::session_token(
            &gw.secret,
            &gw.tenant,
            &gw.edge,
            &format!("abuse-zw-{i}"),
            "mallory",
            Mode::Query,
        );
        stalled.push(query_session(at, &format!("abuse-zw-{i}"), &token)?);
    }
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let sid = format!("abuse-alice-{n}");
        let token =
            targets::session_token(&gw.secret, &gw.tenant, &gw.edge, &sid, "alice", Mode::Query);
        let outcome = tokio::task::spawn_blocking(move || fetch(at, &sid, &token))
            .await
            .unwrap_or_else(|_| "task failed".into());
        *answers
            .entry(format!("alice's query: {outcome}"))
            .or_default() += 1;
    }
    for mut b in stalled {
        let code = tokio::task::spawn_blocking(move || close_code(&mut b))
            .await
            .unwrap_or_default();
        *answers
            .entry(format!("stalled session closed {code}"))
            .or_default() += 1;
    }
    drop(serving);
    Ok(answers)
}

fn connector(at: SocketAddr, gw: &GatewaySpec) -> Result<wire::Conn> {
    let mut c = wire::connect(
        at,
        "/ws/connect",
        &[
            ("Edge-Key", gw.edge_key.clone()),
            (
                "Sec-WebSocket-Protocol",
                sluice::wire::http::FAST_PATH_PROTOCOL.to_string(),
            ),
        ],
    )?;
    c.send_json(
        Encoding::Plain,
        &wire::register(&gw.tenant, &gw.edge, &["abuse"]),
    )?;
    let v = c.next_json(Duration::from_secs(10))?;
    if v["status"] != "ok" {
        bail!("register refused: {v}");
    }
    Ok(c)
}

/// Answers every `do_get` with 96 frames of 256 KiB, until the gateway
/// closes the connection.
fn serve_forever(mut c: wire::Conn) {
    let frame = Encoding::Plain.frame(Opcode::Binary, &vec![7u8; 256 * 1024]);
    while let Ok(rid) = c.wait_do_get(Duration::from_secs(3600)) {
        let start = serde_json::json!({"request_id": rid, "type": "stream_start", "schema": ""});
        if c.send_json(Encoding::Plain, &start).is_err() {
            return;
        }
        for _ in 0..96 {
            if c.stream.write_all(&frame).is_err() {
                return;
            }
        }
        if c.stream
            .write_all(&wire::stream_end(Encoding::Plain, &rid))
            .is_err()
        {
            return;
        }
    }
}

/// A session `sid` that has asked for the `abuse` dataset.
fn query_session(at: SocketAddr, sid: &str, token: &str) -> Result<wire::Conn> {
    let mut b = wire::connect(
        at,
        &format!("/stream/{sid}"),
        &[("Authorization", format!("Bearer {token}"))],
    )?;
    b.send_json(
        Encoding::Masked,
        &serde_json::json!({"action": "query", "dataset": "abuse"}),
    )?;
    Ok(b)
}

/// One whole query of the `abuse` dataset: "ok", or why not.
fn fetch(at: SocketAddr, sid: &str, token: &str) -> String {
    let run = || -> Result<String> {
        let mut b = query_session(at, sid, token)?;
        let mut frames = 0;
        loop {
            match b.next_frame(Duration::from_secs(30))? {
                (Opcode::Binary, _) => frames += 1,
                (Opcode::Text, t) => {
                    let v: serde_json::Value = serde_json::from_slice(&t)?;
                    match v["type"].as_str() {
                        Some("stream_end") if frames == 96 => return Ok("ok".into()),
                        Some("stream_end") => return Ok(format!("short ({frames} frames)")),
                        Some("error") => return Ok(format!("error {}", v["code"])),
                        _ => {}
                    }
                }
                (Opcode::Close, _) => return Ok("closed".into()),
                _ => {}
            }
        }
    };
    run().unwrap_or_else(|e| format!("failed: {e}"))
}

/// Reads (what the stalled session never read) until its close frame, or
/// the end of a stream that only started once it was over its share.
fn close_code(b: &mut wire::Conn) -> String {
    loop {
        match b.next_frame(Duration::from_secs(15)) {
            Ok((Opcode::Close, p)) => {
                return p
                    .get(..2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]).to_string())
                    .unwrap_or_else(|| "1005".into())
            }
            Ok((Opcode::Text, t)) if t.windows(10).any(|w| w == b"stream_end") => {
                return "(none: its stream, started later, ended whole once read)".into()
            }
            Ok(_) => continue,
            Err(_) => return "(none within 15 s)".into(),
        }
    }
}

fn print_table(rows: &[Row]) {
    println!("\n| attack | RSS at rest MiB | peak above rest MiB | healthy p50 µs | healthy p99 µs | healthy lost | answers |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        let answers: Vec<String> = r.answers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.0} | {} | {} |",
            r.attack,
            r.rest_mib,
            r.peak_above_rest_mib,
            r.healthy_p50_us,
            r.healthy_p99_us,
            r.healthy_lost,
            answers.join("; ")
        );
    }
}
