//! `chaos`: mixed traffic while faults are injected on a schedule, and
//! every stream judged. The loader starts its own gateway (on a fixed port,
//! so it can restart it) and `redis-server`, and plays the connector
//! workers, the relay edges and the browsers itself, so it knows every
//! byte each stream must carry.
//!
//! Traffic: queries of three sizes (some read slowly, some abandoned
//! mid-stream by their browser, some reconnecting with the same token),
//! live-feed viewers, and relay sessions echoed by the edge.
//!
//! Faults, in turn every `fault_every`: the connector killed (every socket
//! cut without a close) and restarted, the connector stalled for 3 s,
//! Redis restarted, a running session revoked, the control plane
//! restarted, and the gateway stopped with SIGTERM and restarted.
//!
//! The control plane (`sluice-control`, next to the gateway binary, its
//! data directory written by its own admin commands) is in the path of the
//! "granted" queries: they ask it for access, and the gateway verifies
//! their EdDSA tokens with keys it fetches from the control plane's JWKS.
//! While it is down, grants are refused (counted, not a stream).
//!
//! Each stream ends as one of: **whole** (every frame byte for byte, in
//! order, then `stream_end` with the right total — or, for a viewer or a
//! relay, every frame it saw checked until it left); **ended with a
//! documented error** (an error message and close code the protocol
//! documents for what happened); **abandoned** by its own browser (a
//! fault, not a verdict); or a failure: **corrupted** (a wrong byte, a
//! frame out of order, a wrong total), **truncated without error** (the
//! connection ended with neither `stream_end` nor a documented error), or
//! **hung** (no progress for 45 s). The run fails unless the failures are
//! zero.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sluice::auth::token::Mode;
use sluice::wire::frame::Opcode;
use sluice_protocol::connector::{GatewayRequest, Reply};

use crate::targets::{has, session_token, stop, GatewaySpec, Proc};
use crate::wire::{self, Conn, Encoding};

pub struct Params {
    pub duration: Duration,
    pub fault_every: Duration,
    /// Concurrent query browsers (a third of them read slowly).
    pub queries: usize,
    pub viewers: usize,
    pub relays: usize,
}

/// The datasets the simulated connector serves: name, frames, frame size.
const DATASETS: [(&str, u64, usize); 3] = [
    ("small", 20, 1024),
    ("mid", 100, 32 * 1024),
    ("big", 48, 256 * 1024),
];
const LIVE: &str = "live";
const WORKERS: usize = 8;
const RELAY_EDGES: usize = 3;
/// No frame for this long: the stream is hung.
const HUNG: Duration = Duration::from_secs(45);

/// Frame `i` of dataset `d`: its index, then a pattern of both.
fn content(d: usize, i: u64, size: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..size)
        .map(|j| ((i as usize * 31 + j * 7 + d * 13) % 251) as u8)
        .collect();
    p[..8].copy_from_slice(&i.to_le_bytes());
    p
}

/// Live frame `seq`: 512 bytes derived from its sequence number.
fn live_frame(seq: u64) -> Vec<u8> {
    content(7, seq, 512)
}

/// Close codes (and error codes) the protocol documents for what the
/// faults do: the connector gone (4503), the gateway draining (1001), a
/// revocation (4410), a slow viewer (4409).
const DOCUMENTED: [u16; 4] = [4503, 1001, 4410, 4409];

#[derive(Default, Debug, Clone, serde::Serialize)]
pub struct Tally {
    pub sessions: u64,
    pub refused_at_connect: u64,
    /// Access requests the control plane could not answer (restarting).
    pub grants_refused: u64,
    pub whole: u64,
    pub ended_with_error: u64,
    pub abandoned: u64,
    pub corrupted: u64,
    pub truncated: u64,
    pub hung: u64,
    pub faults: std::collections::BTreeMap<String, u64>,
    pub errors_seen: std::collections::BTreeMap<String, u64>,
    pub failures: Vec<String>,
}

enum Verdict {
    Whole,
    Error(String),
    Abandoned,
    Corrupted(String),
    Truncated(String),
    Hung(String),
}

struct World {
    addr: SocketAddr,
    spec_secret: String,
    edge: String,
    tenant: String,
    edge_key: String,
    redis_url: String,
    control: SocketAddr,
    stop: AtomicBool,
    stalled: AtomicBool,
    /// Connector sockets, cut by the "connector killed" fault.
    connector_socks: Mutex<Vec<TcpStream>>,
    connector_down: AtomicBool,
    /// Sessions streaming now (for the revocation fault).
    live_sids: Mutex<Vec<String>>,
    tally: Mutex<Tally>,
    next: AtomicU64,
    started: Instant,
}

impl World {
    fn token(&self, sid: &str, mode: Mode) -> String {
        session_token(
            &self.spec_secret,
            &self.tenant,
            &self.edge,
            sid,
            "chaos",
            mode,
        )
    }

    /// Seconds since the run started (for the failure lines).
    fn since(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn record(&self, what: &str, v: Verdict) {
        let mut t = self.tally.lock().unwrap();
        t.sessions += 1;
        match v {
            Verdict::Whole => t.whole += 1,
            Verdict::Error(code) => {
                t.ended_with_error += 1;
                *t.errors_seen.entry(code).or_default() += 1;
            }
            Verdict::Abandoned => t.abandoned += 1,
            Verdict::Corrupted(m) => {
                t.corrupted += 1;
                t.failures.push(format!("{what}: corrupted: {m}"));
            }
            Verdict::Truncated(m) => {
                t.truncated += 1;
                t.failures
                    .push(format!("{what}: truncated without error: {m}"));
            }
            Verdict::Hung(m) => {
                t.hung += 1;
                t.failures.push(format!("{what}: hung: {m}"));
            }
        }
    }

    fn fault(&self, kind: &str) {
        let at = self.since();
        *self
            .tally
            .lock()
            .unwrap()
            .faults
            .entry(kind.into())
            .or_default() += 1;
        println!("chaos: {at:.1} s: fault: {kind}");
    }

    /// Opens `/stream/{sid}` with `token`. A refusal (the gateway is
    /// restarting) is counted, and the actor waits before asking again.
    fn open(&self, sid: &str, token: &str) -> Option<Conn> {
        let c = self.connect(sid, token);
        if c.is_err() {
            self.tally.lock().unwrap().refused_at_connect += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        c.ok()
    }

    fn browser(&self, sid: &str, mode: Mode) -> Option<Conn> {
        self.open(sid, &self.token(sid, mode))
    }

    /// One try, neither counted nor paced (a reconnect mid-session).
    fn browser_once(&self, sid: &str, mode: Mode) -> Result<Conn> {
        self.connect(sid, &self.token(sid, mode))
    }

    fn connect(&self, sid: &str, token: &str) -> Result<Conn> {
        wire::connect(
            self.addr,
            &format!("/stream/{sid}"),
            &[("Authorization", format!("Bearer {token}"))],
        )
    }

    /// Runs one session, listed for the revocation fault meanwhile, and
    /// records the verdicts `run` returns (what, verdict). True when the
    /// first ended with a documented error (the edge down, the gateway
    /// restarting): a client waits a little before asking again.
    fn judged(&self, sid: &str, run: impl FnOnce() -> Vec<(String, Verdict)>) -> bool {
        self.live_sids.lock().unwrap().push(sid.to_owned());
        let verdicts = run();
        let failed = matches!(verdicts.first(), Some((_, Verdict::Error(_))));
        for (what, v) in verdicts {
            self.record(&what, v);
        }
        self.live_sids.lock().unwrap().retain(|s| s != sid);
        failed
    }
}

/// After a documented error, the pause a client makes before asking again.
fn pause_if(failed: bool) {
    if failed {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What one read brought: a frame, nothing yet, or the end of the socket.
enum Read {
    Frame(Opcode, Vec<u8>),
    Idle,
    Gone(String),
}

fn read(c: &mut Conn, within: Duration) -> Read {
    match c.next_frame(within) {
        Ok((op, p)) => Read::Frame(op, p),
        Err(e) => {
            let timed_out = e.to_string().contains("no message from the peer within")
                || e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>().is_some_and(|io| {
                        matches!(
                            io.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        )
                    })
                });
            if timed_out {
                Read::Idle
            } else {
                Read::Gone(format!("{e:#}"))
            }
        }
    }
}

fn close_code(p: &[u8]) -> u16 {
    p.get(..2)
        .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]))
}

/// After a documented error message: the close frame must follow with a
/// documented code.
fn expect_close(c: &mut Conn, code: &str) -> Verdict {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match read(c, Duration::from_secs(1)) {
            Read::Frame(Opcode::Close, p) if DOCUMENTED.contains(&close_code(&p)) => {
                return Verdict::Error(format!("{code}/{}", close_code(&p)))
            }
            Read::Frame(Opcode::Close, p) => {
                return Verdict::Truncated(format!("{code} then close {}", close_code(&p)))
            }
            Read::Frame(..) | Read::Idle => {}
            // The error named the cause; the socket went with it.
            Read::Gone(_) => return Verdict::Error(format!("{code}/eof")),
        }
    }
    Verdict::Hung(format!("no close after {code}"))
}

/// Judges a text message inside a stream: `Some` when it ends the stream.
/// `closes`: a documented error is followed by a close (a query's); a live
/// feed's end leaves the session open to subscribe again.
fn judge_text(c: &mut Conn, p: &[u8], closes: bool) -> Option<Result<Value, Verdict>> {
    let v: Value = match serde_json::from_slice(p) {
        Ok(v) => v,
        Err(e) => return Some(Err(Verdict::Corrupted(format!("bad JSON: {e}")))),
    };
    match v["type"].as_str() {
        Some("stream_end") => Some(Ok(v)),
        Some("error") => {
            let code = v["code"].as_str().unwrap_or("?").to_owned();
            let documented = [
                "edge_offline",
                "edge_busy",
                "edge_disconnected",
                "shutting_down",
                "revoked",
                "slow_consumer",
                "session_ended",
            ];
            if documented.contains(&code.as_str()) && !closes {
                Some(Err(Verdict::Error(code)))
            } else if documented.contains(&code.as_str()) {
                Some(Err(expect_close(c, &code)))
            } else {
                Some(Err(Verdict::Corrupted(format!("undocumented error {v}"))))
            }
        }
        _ => None,
    }
}

/// A close frame without an error message first: documented only for an
/// unfinished message (4503) and shutdown (1001).
fn judge_close(p: &[u8]) -> Verdict {
    let code = close_code(p);
    if DOCUMENTED.contains(&code) {
        Verdict::Error(format!("close/{code}"))
    } else {
        Verdict::Truncated(format!("closed with {code} mid-stream"))
    }
}

fn query(w: &World, c: &mut Conn, d: usize, slow: bool, abandon: bool) -> Verdict {
    let (name, frames, size) = DATASETS[d];
    if let Err(e) = c.send_json(
        Encoding::Masked,
        &json!({"action": "query", "dataset": name}),
    ) {
        return Verdict::Error(format!("send/{e}"));
    }
    let mut i = 0u64;
    let mut last = Instant::now();
    loop {
        if w.stopping() && !slow {
            return Verdict::Abandoned;
        }
        match read(c, Duration::from_secs(1)) {
            Read::Frame(Opcode::Binary, p) => {
                last = Instant::now();
                if p != content(d, i, size) {
                    return Verdict::Corrupted(format!("{name} frame {i} differs"));
                }
                i += 1;
                if abandon && i == frames / 2 {
                    return Verdict::Abandoned;
                }
                if slow {
                    std::thread::sleep(Duration::from_millis(3));
                }
            }
            Read::Frame(Opcode::Text, p) => match judge_text(c, &p, true) {
                Some(Ok(end)) => {
                    let want = frames * size as u64;
                    return if i != frames {
                        Verdict::Corrupted(format!(
                            "{name}: stream_end after {i} of {frames} frames"
                        ))
                    } else if end["total_bytes"] != want {
                        Verdict::Corrupted(format!(
                            "{name}: total {} != {want}",
                            end["total_bytes"]
                        ))
                    } else {
                        Verdict::Whole
                    };
                }
                Some(Err(v)) => return v,
                None => last = Instant::now(),
            },
            Read::Frame(Opcode::Close, p) => return judge_close(&p),
            Read::Frame(..) => {}
            Read::Idle if last.elapsed() > HUNG => {
                return Verdict::Hung(format!("{name}: nothing for 45 s after {i} frames"))
            }
            Read::Idle => {}
            Read::Gone(e) => return Verdict::Truncated(format!("{name} after {i} frames: {e}")),
        }
    }
}

fn query_actor(w: Arc<World>, id: usize) {
    let slow = id % 3 == 2;
    let mut rng = Rng(id as u64 * 7919 + 1);
    while !w.stopping() {
        let n = w.next.fetch_add(1, Ordering::Relaxed);
        let sid = format!("chaos-q{id}-{n}");
        let Some(mut c) = w.browser(&sid, Mode::Query) else {
            continue;
        };
        let d = if slow { 2 } else { (rng.next() % 3) as usize };
        let abandon = !slow && rng.next().is_multiple_of(10);
        let failed = w.judged(&sid, || {
            let t0 = w.since();
            let v = query(&w, &mut c, d, slow, abandon);
            let what = format!("query {sid} ({}) from {t0:.1} s", DATASETS[d].0);
            let reconnect = matches!(v, Verdict::Whole) && rng.next().is_multiple_of(5);
            let mut verdicts = vec![(what, v)];
            drop(c);
            // Reconnect with the same token: the session goes on.
            if reconnect && !w.stopping() {
                if let Ok(mut c) = w.browser_once(&sid, Mode::Query) {
                    verdicts.push((
                        format!("reconnected query {sid}"),
                        query(&w, &mut c, 0, false, false),
                    ));
                }
            }
            verdicts
        });
        pause_if(failed);
    }
}

/// A user's token for the control plane (HS256 with the tenant's user
/// secret): `sub`, `tenant`, `exp`; the other claims are ignored there.
fn user_token(w: &World) -> String {
    session_token(
        USERS_SECRET,
        &w.tenant,
        &w.edge,
        "user",
        "chaos-user",
        Mode::Query,
    )
}

/// One HTTP/1.1 exchange; status and JSON body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, Value)> {
    use std::io::{Read as _, Write as _};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let json = out
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    Ok((status, json))
}

/// Queries through a grant of the control plane: access, then the stream
/// with the EdDSA session token it signed.
fn granted_actor(w: Arc<World>, id: usize) {
    let mut rng = Rng(id as u64 * 104_729 + 3);
    while !w.stopping() {
        let d = (rng.next() % 2) as usize;
        let body = json!({"client_id": "chaos", "dataset_id": DATASETS[d].0}).to_string();
        let bearer = format!("Bearer {}", user_token(&w));
        let grant = http(
            w.control,
            "POST",
            "/control/access",
            &[("X-Tenant-Slug", &w.tenant), ("Authorization", &bearer)],
            &body,
        );
        let grant = match grant {
            Ok((200, g)) => g,
            _ => {
                w.tally.lock().unwrap().grants_refused += 1;
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let sid = grant["session_id"].as_str().unwrap_or("").to_owned();
        let token = grant["session_token"].as_str().unwrap_or("");
        let Some(mut c) = w.open(&sid, token) else {
            continue;
        };
        let failed = w.judged(&sid, || {
            let t0 = w.since();
            let v = query(&w, &mut c, d, false, false);
            vec![(format!("granted query {sid} from {t0:.1} s"), v)]
        });
        pause_if(failed);
    }
}

/// The tenant's user secret (HS256) the loader signs user tokens with.
const USERS_SECRET: &str = "chaos-users-secret-0123456789abcdef";
const ADMIN_TOKEN: &str = "chaos-control-admin-token-0123456789";

/// Writes the control plane's data directory with its own admin commands:
/// the loader's tenant, its edge and key, the datasets, an open plan, a
/// client, and a signing key.
fn provision_control(
    bin: &std::path::Path,
    dir: &std::path::Path,
    master: &str,
    spec: &GatewaySpec,
) -> Result<()> {
    let (t, e) = (spec.tenant.as_str(), spec.edge.as_str());
    let mut steps: Vec<Vec<&str>> = vec![
        vec!["tenant", "add", t, "--user-hs256-secret-env", "CHAOS_USERS"],
        vec![
            "edge",
            "add",
            "--tenant",
            t,
            e,
            "--key-env",
            "CHAOS_EDGE_KEY",
        ],
        vec!["plan", "add", "--tenant", t, "open"],
    ];
    for (name, _, _) in DATASETS {
        steps.push(vec!["dataset", "add", "--tenant", t, name, "--edge", e]);
    }
    steps.push(vec![
        "client",
        "add",
        "--tenant",
        t,
        "chaos",
        "--plan",
        "open",
        "--dataset",
        "*",
    ]);
    steps.push(vec!["keys", "rotate", "--tenant", t]);
    for args in steps {
        let out = Command::new(bin)
            .arg("--data-dir")
            .arg(dir)
            .args(&args)
            .env("SLUICE_MASTER_KEY", master)
            .env("CHAOS_USERS", USERS_SECRET)
            .env("CHAOS_EDGE_KEY", &spec.edge_key)
            .output()
            .with_context(|| format!("run {}", bin.display()))?;
        if !out.status.success() {
            bail!(
                "sluice-control {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

fn start_control(
    bin: &std::path::Path,
    dir: &std::path::Path,
    master: &str,
    addr: SocketAddr,
    redis_url: &str,
) -> Result<Kid> {
    let child = Command::new(bin)
        .arg("--data-dir")
        .arg(dir)
        .args(["serve", "--listen", &addr.to_string(), "--redis", redis_url])
        .env("SLUICE_MASTER_KEY", master)
        .env("SLUICE_CONTROL_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start sluice-control")?;
    let kid = Kid(Some(child));
    if answers(addr, "/healthz") {
        return Ok(kid);
    }
    bail!("sluice-control did not answer on {addr}")
}

/// Whether `GET path` on `addr` answers 200 within 10 s (a process just
/// started).
fn answers(addr: SocketAddr, path: &str) -> bool {
    for _ in 0..400 {
        if let Ok((200, _)) = http(addr, "GET", path, &[], "") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

fn viewer_actor(w: Arc<World>, id: usize) {
    while !w.stopping() {
        let n = w.next.fetch_add(1, Ordering::Relaxed);
        let sid = format!("chaos-v{id}-{n}");
        let Some(mut c) = w.browser(&sid, Mode::Query) else {
            continue;
        };
        let failed = w.judged(&sid, || {
            let t0 = w.since();
            vec![(format!("viewer {sid} from {t0:.1} s"), watch(&w, &mut c))]
        });
        pause_if(failed);
    }
}

/// Watches the live feed for up to 15 s: every frame must carry the next
/// sequence number and its exact bytes.
fn watch(w: &World, c: &mut Conn) -> Verdict {
    if c.send_json(
        Encoding::Masked,
        &json!({"action": "subscribe", "dataset": LIVE}),
    )
    .is_err()
    {
        return Verdict::Error("send".into());
    }
    let until = Instant::now() + Duration::from_secs(15);
    let mut prev: Option<u64> = None;
    let mut last = Instant::now();
    loop {
        if Instant::now() > until || w.stopping() {
            return Verdict::Whole;
        }
        match read(c, Duration::from_secs(1)) {
            Read::Frame(Opcode::Binary, p) => {
                last = Instant::now();
                let seq = u64::from_le_bytes(p[..8].try_into().unwrap_or([0; 8]));
                if p != live_frame(seq) {
                    return Verdict::Corrupted(format!("live frame {seq} differs"));
                }
                if let Some(q) = prev {
                    // Frame 0 is the feed's header (a late joiner gets it
                    // first, then the feed where it is); a new feed (after
                    // a connector restart) starts again at 0. Otherwise no
                    // gap and no repeat.
                    if seq != q + 1 && seq != 0 && q != 0 {
                        return Verdict::Corrupted(format!("live frame {seq} after {q}"));
                    }
                }
                prev = Some(seq);
            }
            Read::Frame(Opcode::Text, p) => match judge_text(c, &p, false) {
                Some(Ok(_)) => return Verdict::Whole,
                Some(Err(v)) => return v,
                None => last = Instant::now(),
            },
            Read::Frame(Opcode::Close, p) => return judge_close(&p),
            Read::Frame(..) => {}
            Read::Idle if last.elapsed() > HUNG => return Verdict::Hung("live feed silent".into()),
            Read::Idle => {}
            Read::Gone(e) => return Verdict::Truncated(format!("viewer: {e}")),
        }
    }
}

fn relay_actor(w: Arc<World>, id: usize) {
    while !w.stopping() {
        let n = w.next.fetch_add(1, Ordering::Relaxed);
        let sid = format!("chaos-r{id}-{n}");
        let Some(mut c) = w.browser(&sid, Mode::Relay) else {
            continue;
        };
        w.judged(&sid, || {
            let t0 = w.since();
            vec![(format!("relay {sid} from {t0:.1} s"), relay(&w, &mut c))]
        });
    }
}

/// 50 frames of 4 KiB to the edge, each echoed back exactly.
fn relay(w: &World, c: &mut Conn) -> Verdict {
    for i in 0..50u64 {
        let frame = content(5, i, 4096);
        if c.stream
            .write_all_frame(&Encoding::Masked.frame(Opcode::Binary, &frame))
            .is_err()
        {
            return Verdict::Truncated(format!("relay write {i} failed without a close"));
        }
        let mut last = Instant::now();
        loop {
            // The loader is tearing its relay edges down: not a verdict.
            if w.stopping() {
                return Verdict::Abandoned;
            }
            match read(c, Duration::from_secs(1)) {
                Read::Frame(Opcode::Binary, p) if p == frame => break,
                Read::Frame(Opcode::Binary, _) => {
                    return Verdict::Corrupted(format!("relay echo {i} differs"))
                }
                Read::Frame(Opcode::Text, p) => match judge_text(c, &p, true) {
                    Some(Err(v)) => return v,
                    _ => last = Instant::now(),
                },
                Read::Frame(Opcode::Close, p) => return judge_close(&p),
                Read::Frame(..) => {}
                Read::Idle if last.elapsed() > HUNG => {
                    return Verdict::Hung(format!("relay echo {i}"))
                }
                Read::Idle => {}
                Read::Gone(e) => return Verdict::Truncated(format!("relay at {i}: {e}")),
            }
        }
    }
    let _ = c
        .stream
        .write_all_frame(&Encoding::Masked.frame(Opcode::Close, &1000u16.to_be_bytes()));
    Verdict::Whole
}

trait WriteFrame {
    fn write_all_frame(&mut self, f: &[u8]) -> std::io::Result<()>;
}

impl WriteFrame for TcpStream {
    fn write_all_frame(&mut self, f: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(self, f)
    }
}

/// One simulated connector worker: registers, serves requests, and dials
/// again whenever its connection ends (the "restart").
fn worker(w: Arc<World>) {
    while !w.stopping() {
        if w.connector_down.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let names: Vec<&str> = DATASETS.iter().map(|d| d.0).chain([LIVE]).collect();
        let conn = wire::connect(w.addr, "/ws/connect", &[("Edge-Key", w.edge_key.clone())])
            .and_then(|mut c| {
                c.send_json(
                    Encoding::Masked,
                    &wire::register(&w.tenant, &w.edge, &names),
                )?;
                let v = c.next_json(Duration::from_secs(5))?;
                if v["status"] != "ok" {
                    bail!("register refused: {v}");
                }
                Ok(c)
            });
        let Ok(mut c) = conn else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        if let Ok(s) = c.stream.try_clone() {
            w.connector_socks.lock().unwrap().push(s);
        }
        let _ = serve(&w, &mut c);
    }
}

fn serve(w: &World, c: &mut Conn) -> Result<()> {
    while !w.stopping() {
        let p = match read(c, Duration::from_secs(1)) {
            Read::Frame(Opcode::Text, p) => p,
            Read::Frame(Opcode::Close, _) => bail!("closed"),
            Read::Gone(e) => bail!(e),
            _ => continue,
        };
        let Ok(req) = serde_json::from_slice::<GatewayRequest>(&p) else {
            continue;
        };
        match req {
            GatewayRequest::GetFlightInfo { request_id, .. } => c.send_json(
                Encoding::Masked,
                &Reply::flight_info(&request_id, json!({})),
            )?,
            GatewayRequest::DoGet {
                request_id,
                ticket,
                live,
                ..
            } => {
                c.send_json(Encoding::Masked, &Reply::stream_start(&request_id, ""))?;
                if live {
                    stream_live(w, c, &request_id)?;
                } else {
                    let d = DATASETS.iter().position(|x| x.0 == ticket).unwrap_or(0);
                    let (_, frames, size) = DATASETS[d];
                    for i in 0..frames {
                        while w.stalled.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        let f = Encoding::Masked.frame(Opcode::Binary, &content(d, i, size));
                        c.stream.write_all_frame(&f)?;
                    }
                    let total = frames * size as u64;
                    c.send_json(
                        Encoding::Masked,
                        &Reply::stream_end(&request_id, total, None),
                    )?;
                }
            }
            GatewayRequest::Cancel { .. } => {}
        }
    }
    Ok(())
}

/// A live feed at 50 frames/s until the gateway cancels it.
fn stream_live(w: &World, c: &mut Conn, rid: &str) -> Result<()> {
    let mut seq = 0u64;
    loop {
        if w.stopping() {
            return Ok(());
        }
        if !w.stalled.load(Ordering::Relaxed) {
            c.stream
                .write_all_frame(&Encoding::Masked.frame(Opcode::Binary, &live_frame(seq)))?;
            seq += 1;
        }
        match read(c, Duration::from_millis(20)) {
            Read::Frame(Opcode::Text, p) => {
                if let Ok(GatewayRequest::Cancel { .. }) = serde_json::from_slice(&p) {
                    c.send_json(Encoding::Masked, &Reply::stream_end(rid, 0, None))?;
                    return Ok(());
                }
            }
            Read::Frame(Opcode::Close, _) => bail!("closed"),
            Read::Gone(e) => bail!(e),
            _ => {}
        }
    }
}

/// One relay edge: waits to be paired, echoes every data frame, dials again.
fn relay_edge(w: Arc<World>) {
    while !w.stopping() {
        if w.connector_down.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let path = format!("/edge/{}", w.edge);
        let Ok(mut c) = wire::connect(w.addr, &path, &[("Edge-Key", w.edge_key.clone())]) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        if let Ok(s) = c.stream.try_clone() {
            w.connector_socks.lock().unwrap().push(s);
        }
        while !w.stopping() {
            match read(&mut c, Duration::from_secs(1)) {
                Read::Frame(Opcode::Binary, p) => {
                    let f = Encoding::Masked.frame(Opcode::Binary, &p);
                    if c.stream.write_all_frame(&f).is_err() {
                        break;
                    }
                }
                Read::Frame(Opcode::Close, _) | Read::Gone(_) => break,
                _ => {}
            }
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A child process killed on drop.
struct Kid(Option<Child>);

impl Kid {
    fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }
    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_redis(port: u16) -> Result<Kid> {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start redis-server")?;
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(Kid(Some(child)));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("redis-server did not listen on {port}")
}

fn start_gateway(
    spec: &GatewaySpec,
    addr: SocketAddr,
    redis_url: &str,
    control: SocketAddr,
) -> Result<Kid> {
    let mut cmd = Command::new(&spec.bin);
    cmd.env("SLUICE_LISTEN", addr.to_string())
        .env("SLUICE_WORKERS", spec.workers.to_string())
        .env("SLUICE_TOKEN_SECRET", &spec.secret)
        .env(
            "SLUICE_EDGE_KEYS",
            format!("{}={}", spec.edge, spec.edge_key),
        )
        .env("SLUICE_LOG", "warn")
        .env("SLUICE_REVOCATION_REDIS_URL", redis_url)
        .env(
            "SLUICE_AUTH_JWKS_URL",
            format!("http://{control}/.well-known/jwks.json"),
        )
        .env("SLUICE_TIMEOUTS_DRAIN_GRACE_MS", "1000")
        .env("SLUICE_TIMEOUTS_SHUTDOWN_MS", "2000")
        .env("SLUICE_TIMEOUTS_PAIR_WAIT_MS", "5000")
        // A live viewer joins a feed whose buffered header it must take.
        .env("SLUICE_LIMITS_MAX_SESSIONS", "100000");
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}", spec.bin.display()))?;
    let kid = Kid(Some(child));
    if answers(addr, "/readyz") {
        return Ok(kid);
    }
    bail!("gateway did not become ready on {addr}")
}

fn sigterm_and_wait(kid: &mut Kid) {
    if let Some(mut c) = kid.0.take() {
        stop(&mut c, Duration::from_secs(10));
    }
}

fn fds_rss(pid: Option<u32>) -> (usize, u64) {
    let Some(pid) = pid else { return (0, 0) };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (fds, Proc(pid).rss_kib())
}

pub fn run(spec: &GatewaySpec, p: &Params) -> Result<Value> {
    if spec.addr.is_some() {
        bail!("chaos starts, stops and restarts its own gateway: drop --gateway");
    }
    if !has("redis-server") {
        bail!("chaos restarts Redis as one of its faults: install redis-server");
    }
    let redis_port = free_port()?;
    let redis_url = format!("redis://127.0.0.1:{redis_port}/");
    let mut redis = start_redis(redis_port)?;
    let control_bin = spec.bin.with_file_name("sluice-control");
    if !control_bin.exists() {
        bail!(
            "chaos restarts the control plane as one of its faults: {} not found (cargo build --workspace)",
            control_bin.display()
        );
    }
    let data = crate::targets::TempDir::new("chaos-control")?;
    let master = {
        use base64::Engine;
        let seed = sluice::auth::token::now_s().to_le_bytes();
        let key: Vec<u8> = (0..32u8)
            .map(|i| seed[usize::from(i) % 8] ^ i.wrapping_mul(37))
            .collect();
        base64::engine::general_purpose::STANDARD.encode(key)
    };
    provision_control(&control_bin, &data.0, &master, spec)?;
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut control_plane = start_control(&control_bin, &data.0, &master, control, &redis_url)?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut gateway = start_gateway(spec, addr, &redis_url, control)?;
    let w = Arc::new(World {
        addr,
        spec_secret: spec.secret.clone(),
        edge: spec.edge.clone(),
        tenant: spec.tenant.clone(),
        edge_key: spec.edge_key.clone(),
        redis_url: redis_url.clone(),
        control,
        stop: AtomicBool::new(false),
        stalled: AtomicBool::new(false),
        connector_socks: Mutex::new(Vec::new()),
        connector_down: AtomicBool::new(false),
        live_sids: Mutex::new(Vec::new()),
        tally: Mutex::new(Tally::default()),
        next: AtomicU64::new(0),
        started: Instant::now(),
    });
    let mut threads = Vec::new();
    for _ in 0..WORKERS {
        let w = w.clone();
        threads.push(std::thread::spawn(move || worker(w)));
    }
    for _ in 0..RELAY_EDGES {
        let w = w.clone();
        threads.push(std::thread::spawn(move || relay_edge(w)));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (fds_start, rss_start) = fds_rss(gateway.pid());
    for i in 0..p.queries {
        let w = w.clone();
        threads.push(std::thread::spawn(move || query_actor(w, i)));
    }
    for i in 0..p.viewers {
        let w = w.clone();
        threads.push(std::thread::spawn(move || viewer_actor(w, i)));
    }
    for i in 0..2 {
        let w = w.clone();
        threads.push(std::thread::spawn(move || granted_actor(w, i)));
    }
    for i in 0..p.relays {
        let w = w.clone();
        threads.push(std::thread::spawn(move || relay_actor(w, i)));
    }
    let started = Instant::now();
    let end = started + p.duration;
    let mut k = 0usize;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut restarts = 0;
    while Instant::now() + p.fault_every < end {
        std::thread::sleep(p.fault_every);
        match k % 6 {
            0 => {
                w.fault("connector killed and restarted");
                w.connector_down.store(true, Ordering::Relaxed);
                for s in w.connector_socks.lock().unwrap().drain(..) {
                    let _ = s.shutdown(Shutdown::Both);
                }
                std::thread::sleep(Duration::from_secs(1));
                w.connector_down.store(false, Ordering::Relaxed);
            }
            1 => {
                w.fault("connector stalled 3 s");
                w.stalled.store(true, Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs(3));
                w.stalled.store(false, Ordering::Relaxed);
            }
            2 => {
                w.fault("Redis restarted");
                redis.stop();
                std::thread::sleep(Duration::from_secs(1));
                redis = start_redis(redis_port)?;
            }
            3 => {
                let sids = w.live_sids.lock().unwrap().clone();
                if !sids.is_empty() {
                    let sid = &sids[(rng.next() % sids.len() as u64) as usize];
                    w.fault("session revoked");
                    if let Err(e) = revoke(&w.redis_url, sid) {
                        println!("chaos: revocation failed: {e:#}");
                    }
                }
            }
            4 => {
                w.fault("control plane restarted");
                control_plane.stop();
                std::thread::sleep(Duration::from_secs(1));
                control_plane = start_control(&control_bin, &data.0, &master, control, &redis_url)?;
            }
            _ => {
                w.fault("gateway SIGTERM and restart");
                sigterm_and_wait(&mut gateway);
                w.connector_socks.lock().unwrap().clear();
                gateway = start_gateway(spec, addr, &redis_url, control)?;
                restarts += 1;
            }
        }
        k += 1;
    }
    let left = end.saturating_duration_since(Instant::now());
    std::thread::sleep(left);
    // Settle: let running streams finish, then measure before stopping.
    std::thread::sleep(Duration::from_secs(2));
    let (fds_end, rss_end) = fds_rss(gateway.pid());
    w.stop.store(true, Ordering::Relaxed);
    for s in w.connector_socks.lock().unwrap().drain(..) {
        let _ = s.shutdown(Shutdown::Both);
    }
    for t in threads {
        let _ = t.join();
    }
    let t = w.tally.lock().unwrap().clone();
    let report = json!({
        "scenario": "chaos",
        "duration_s": p.duration.as_secs(),
        "fault_every_s": p.fault_every.as_secs(),
        "actors": {"queries": p.queries, "viewers": p.viewers, "relays": p.relays,
                   "connector_workers": WORKERS, "relay_edges": RELAY_EDGES},
        "tally": t,
        "gateway_restarts": restarts,
        "gateway": {"fds_start": fds_start, "fds_end": fds_end,
                    "rss_kib_start": rss_start, "rss_kib_end": rss_end,
                    "note": "after a restart, the end figures are the last process's"},
    });
    println!(
        "chaos: {} s, a fault every {} s",
        p.duration.as_secs(),
        p.fault_every.as_secs()
    );
    println!("  faults injected:        {:?}", t.faults);
    println!("  sessions run:           {}", t.sessions);
    println!(
        "  refused at connect:     {} (gateway restarting)",
        t.refused_at_connect
    );
    println!(
        "  grants refused:         {} (control plane restarting)",
        t.grants_refused
    );
    println!("  streams verified whole: {}", t.whole);
    println!(
        "  ended with documented error: {} {:?}",
        t.ended_with_error, t.errors_seen
    );
    println!("  abandoned by the browser (fault): {}", t.abandoned);
    println!("  corrupted:              {}", t.corrupted);
    println!("  truncated without error: {}", t.truncated);
    println!("  hung:                   {}", t.hung);
    println!(
        "  gateway fds {fds_start} -> {fds_end}, RSS {rss_start} -> {rss_end} KiB (last restart: {restarts} restarts)"
    );
    for f in t.failures.iter().take(20) {
        println!("  FAILURE {f}");
    }
    if t.corrupted + t.truncated + t.hung > 0 {
        bail!(
            "chaos: {} corrupted, {} truncated without error, {} hung (report above)",
            t.corrupted,
            t.truncated,
            t.hung
        );
    }
    Ok(report)
}

fn revoke(url: &str, sid: &str) -> Result<()> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
    let exp = sluice::auth::token::now_s() + 3600;
    redis::cmd("SET")
        .arg(format!("sluice:revoked:{sid}"))
        .arg("1")
        .arg("EX")
        .arg(3600)
        .query::<()>(&mut con)?;
    redis::cmd("PUBLISH")
        .arg("sluice:revocations")
        .arg(json!({"sid": sid, "exp": exp}).to_string())
        .query::<i64>(&mut con)?;
    Ok(())
}
