//! What traffic goes through: the gateway (three paths), nothing (a direct
//! socket to the origin), or nginx / haproxy as WebSocket proxies in front
//! of the same origin. Each target yields connected (source, sink) pairs.

use sluice_protocol::browser::{BrowserAction, QueryMode};
use sluice_protocol::connector::Reply;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use sha1::{Digest, Sha1};
use sluice::auth::token::{sign_hs256, Claims, Mode};
use sluice::wire::frame::Opcode;

use crate::wire::{self, Conn, Encoding, Source};

const SETUP: Duration = Duration::from_secs(10);

/// One way through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Direct,
    /// Query mode with the project's connector fast path (unmasked frames).
    Gateway,
    /// Query mode, plain seed-001 connector (masked frames, unmasked in place).
    GatewayQuery,
    /// Relay mode (seed 000), masked edge frames.
    GatewayRelay,
    Nginx,
    Haproxy,
    /// haproxy in `mode tcp` with kernel splicing: it parses nothing of
    /// WebSocket, so it is the ceiling any proxy can reach on this host.
    HaproxyTcp,
    /// `sluice-floor-relay`: one epoll loop that reads each socket once per
    /// event and writes it on at once, nothing else. Its CPU per frame is
    /// the kernel's floor for a proxy that forwards frames as they arrive.
    TcpFloor,
    /// `sluice-uring-floor`: the same floor on one io_uring ring with
    /// multishot receives and provided buffers: one system call per
    /// wake-up instead of three per frame.
    TcpFloorUring,
}

impl Target {
    pub fn parse(s: &str) -> Result<Target> {
        Ok(match s {
            "direct" => Target::Direct,
            "gateway" | "gateway-fast" => Target::Gateway,
            "gateway-query" => Target::GatewayQuery,
            "gateway-relay" => Target::GatewayRelay,
            "nginx" => Target::Nginx,
            "haproxy" => Target::Haproxy,
            "haproxy-tcp" => Target::HaproxyTcp,
            "tcp-floor" => Target::TcpFloor,
            "tcp-floor-uring" => Target::TcpFloorUring,
            _ => bail!("unknown target {s:?} (direct, gateway, gateway-query, gateway-relay, nginx, haproxy, haproxy-tcp, tcp-floor, tcp-floor-uring)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Gateway => "gateway",
            Target::GatewayQuery => "gateway-query",
            Target::GatewayRelay => "gateway-relay",
            Target::Nginx => "nginx",
            Target::Haproxy => "haproxy",
            Target::HaproxyTcp => "haproxy-tcp",
            Target::TcpFloor => "tcp-floor",
            Target::TcpFloorUring => "tcp-floor-uring",
        }
    }

    pub fn is_gateway(self) -> bool {
        matches!(
            self,
            Target::Gateway | Target::GatewayQuery | Target::GatewayRelay
        )
    }
}

/// CPU seconds and memory of a process, from /proc.
#[derive(Clone, Copy, Debug)]
pub struct Proc(pub u32);

impl Proc {
    pub fn cpu_secs(self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0)).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // /proc reports times in USER_HZ ticks, which Linux fixes at 100.
        (ticks(11) + ticks(12)) / 100.0
    }

    fn status_kib(self, key: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn rss_kib(self) -> u64 {
        self.status_kib("VmRSS:")
    }

    pub fn peak_rss_kib(self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// Resets the peak (`VmHWM`) to the current RSS, so the next
    /// [`Proc::peak_rss_kib`] is the peak since now: one gateway serves
    /// several targets in turn, and a peak since its start would charge a
    /// later target with an earlier one's. False if the kernel refused.
    pub fn reset_peak_rss(self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.0), "5").is_ok()
    }
}

/// Where the gateway is and the secrets to talk to it.
pub struct GatewaySpec {
    pub addr: Option<SocketAddr>,
    /// The TLS listener, when the gateway was started with one.
    pub tls_addr: Option<SocketAddr>,
    /// The Flight listener, likewise.
    pub flight_addr: Option<SocketAddr>,
    /// The gRPC connector listener, likewise.
    pub grpc_addr: Option<SocketAddr>,
    /// The admin listener (its `/metrics`), when the loader asked for one.
    pub admin_addr: Option<SocketAddr>,
    pub pid: Option<u32>,
    pub bin: PathBuf,
    pub workers: usize,
    pub secret: String,
    pub edge: String,
    pub tenant: String,
    pub edge_key: String,
    pub cpus: Option<String>,
    pub env: Vec<(String, String)>,
}

/// A process the loader started; stopped on drop.
pub struct Spawned {
    child: Child,
    _dir: Option<TempDir>,
}

/// How long a target may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Drop for Spawned {
    /// SIGTERM first, as an operator stops a service, so that a target
    /// exits through its own shutdown path: an instrumented gateway
    /// (`loadtest/pgo-build.sh`) writes its profile only then.
    fn drop(&mut self) {
        stop(&mut self.child, STOP_GRACE);
    }
}

/// Stops a child: SIGTERM through `kill(1)` (no libc call, no `unsafe`),
/// then SIGKILL if it has not exited within `grace`, so a target that
/// hangs never hangs the loader. Reaps it either way.
pub fn stop(child: &mut Child, grace: Duration) {
    if let Ok(None) = child.try_wait() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let until = std::time::Instant::now() + grace;
        while std::time::Instant::now() < until {
            if !matches!(child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        let p = std::env::temp_dir().join(format!("sluice-loadtest-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pinned(cpus: &Option<String>, bin: &str) -> Command {
    match cpus {
        Some(list) if has("taskset") => {
            let mut c = Command::new("taskset");
            c.args(["-c", list, bin]);
            c
        }
        _ => Command::new(bin),
    }
}

/// Whether a program is on PATH (or an absolute path that exists).
pub fn has(prog: &str) -> bool {
    if prog.contains('/') {
        return std::path::Path::new(prog).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(prog).is_file())
}

fn find(prog: &str) -> String {
    for d in ["/usr/sbin", "/sbin"] {
        let p = std::path::Path::new(d).join(prog);
        if p.is_file() {
            return p.display().to_string();
        }
    }
    prog.to_string()
}

/// Connections a proxy can hold within the open-files limit it inherits
/// (each proxied connection takes two descriptors).
fn fd_budget() -> u64 {
    let hard = rlimit::Resource::NOFILE
        .get()
        .map(|(_, h)| h)
        .unwrap_or(1024);
    (hard.min(400_000).saturating_sub(64) / 2).max(64)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(addr: SocketAddr, what: &str, child: &mut Child) -> Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited at start ({st})");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("{what} did not listen on {addr} within 5 s")
}

/// Starts the gateway binary, or returns `None` when attaching to one.
pub fn start_gateway(spec: &mut GatewaySpec) -> Result<Option<Spawned>> {
    if spec.addr.is_some() {
        return Ok(None);
    }
    let bin = spec.bin.display().to_string();
    if !spec.bin.exists() {
        bail!("gateway binary {bin} not found: build it with `cargo build --release` or pass --gateway-bin / --gateway ADDR");
    }
    let mut cmd = pinned(&spec.cpus, &bin);
    cmd.env("SLUICE_LISTEN", "127.0.0.1:0")
        .env("SLUICE_WORKERS", spec.workers.to_string())
        .env("SLUICE_TOKEN_SECRET", &spec.secret)
        .env(
            "SLUICE_EDGE_KEYS",
            format!("{}={}", spec.edge, spec.edge_key),
        )
        .env("SLUICE_LOG", "warn")
        .env("SLUICE_LIMITS_MAX_SESSIONS", "200000")
        .env("SLUICE_LIMITS_MAX_EDGE_CONNECTIONS", "100000");
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {bin}"))?;
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    stdout.read_line(&mut line)?;
    // "sluice tls listening on ADDR", then "sluice flight listening on
    // ADDR", follow the listen line for the listeners asked for.
    let mut listener = |var: &str, prefix: &str| -> Result<Option<SocketAddr>> {
        if !spec.env.iter().any(|(k, _)| k == var) {
            return Ok(None);
        }
        let mut l = String::new();
        stdout.read_line(&mut l)?;
        let at = l
            .trim()
            .strip_prefix(prefix)
            .ok_or_else(|| anyhow!("gateway did not print {prefix:?} (got {l:?})"))?;
        Ok(Some(at.parse()?))
    };
    spec.tls_addr = listener("SLUICE_TLS_LISTEN", "sluice tls listening on ")?;
    spec.flight_addr = listener("SLUICE_FLIGHT_LISTEN", "sluice flight listening on ")?;
    spec.grpc_addr = listener("SLUICE_GRPC_LISTEN", "sluice grpc listening on ")?;
    spec.admin_addr = listener("SLUICE_ADMIN_LISTEN", "sluice admin listening on ")?;
    let addr: SocketAddr = line
        .split_whitespace()
        .nth(3)
        .ok_or_else(|| anyhow!("gateway did not print its listen line (got {line:?})"))?
        .parse()?;
    spec.addr = Some(addr);
    spec.pid = Some(child.id());
    let spawned = Spawned { child, _dir: None };
    wait_ready(addr)?;
    Ok(Some(spawned))
}

/// Waits for `/readyz` to answer 200 (with Redis configured, the gateway
/// is ready once its revocation link is up).
fn wait_ready(addr: SocketAddr) -> Result<()> {
    let mut last = String::new();
    for _ in 0..250 {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: loadtest\r\n\r\n");
            let mut out = String::new();
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
            last = out
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("gateway at {addr} never became ready: {last}")
}

/// Starts a proxy pinned to `cpus` and waits until it listens on `port`.
fn spawn_proxy(
    name: &str,
    args: &[String],
    cpus: &Option<String>,
    port: u16,
    dir: TempDir,
) -> Result<(Spawned, SocketAddr, Proc)> {
    // Its complaints go to a file, quoted if it fails to start.
    let log = dir.0.join("stderr.log");
    let mut child = pinned(cpus, &find(name))
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("start {name}"))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_listening(addr, name, &mut child).map_err(|e| {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        anyhow!("{e}: {}", said.trim())
    })?;
    let pid = Proc(child.id());
    Ok((
        Spawned {
            child,
            _dir: Some(dir),
        },
        addr,
        pid,
    ))
}

/// nginx 1 worker as a WebSocket reverse proxy to `origin`.
pub fn start_nginx(
    origin: SocketAddr,
    cpus: &Option<String>,
) -> Result<(Spawned, SocketAddr, Proc)> {
    let dir = TempDir::new("nginx")?;
    let port = free_port()?;
    let d = dir.0.display();
    // A proxied session is two connections (and descriptors) in nginx.
    let conns = fd_budget() * 2;
    let nofile = conns + 32;
    let conf = format!(
        "worker_processes 1;\nmaster_process off;\ndaemon off;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
         worker_rlimit_nofile {nofile};\nevents {{ worker_connections {conns}; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         upstream origin {{ server {origin}; }}\n\
         server {{\n    listen 127.0.0.1:{port} reuseport;\n    location / {{\n      proxy_pass http://origin;\n\
         proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection \"upgrade\";\n\
         proxy_buffering off;\n      proxy_read_timeout 3600s;\n      proxy_send_timeout 3600s;\n    }}\n  }}\n}}\n"
    );
    let path = dir.0.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let args = [
        "-c".to_string(),
        path.display().to_string(),
        "-p".to_string(),
        d.to_string(),
        "-e".to_string(),
        format!("{d}/error.log"),
    ];
    spawn_proxy("nginx", &args, cpus, port, dir)
}

/// haproxy, one thread, to `origin`: HTTP mode (WebSocket upgrade →
/// tunnel), or with `tcp` plain TCP forwarding with kernel splicing (the
/// ceiling: no protocol work at all).
pub fn start_haproxy(
    origin: SocketAddr,
    cpus: &Option<String>,
    tcp: bool,
) -> Result<(Spawned, SocketAddr, Proc)> {
    let dir = TempDir::new(if tcp { "haproxy-tcp" } else { "haproxy" })?;
    let port = free_port()?;
    // Splicing takes a pipe (two descriptors) per active connection.
    let conns = if tcp { fd_budget() / 2 } else { fd_budget() };
    let mode = if tcp {
        "mode tcp\n  option splice-auto"
    } else {
        "mode http"
    };
    let conf = format!(
        "global\n  nbthread 1\n  maxconn {conns}\n\ndefaults\n  {mode}\n  timeout connect 5s\n  timeout client 1h\n\
         timeout server 1h\n  timeout tunnel 1h\n\nfrontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\n\
         backend be\n  server origin {origin}\n"
    );
    let path = dir.0.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    let args = [
        "-db".to_string(),
        "-f".to_string(),
        path.display().to_string(),
    ];
    spawn_proxy("haproxy", &args, cpus, port, dir)
}

/// A floor relay (`sluice-floor-relay` for tcp-floor, `sluice-uring-floor`
/// for tcp-floor-uring, built beside this binary) to `origin`.
pub fn start_floor(
    target: Target,
    origin: SocketAddr,
    cpus: &Option<String>,
) -> Result<(Spawned, SocketAddr, Proc)> {
    let name = match target {
        Target::TcpFloorUring => "sluice-uring-floor",
        _ => "sluice-floor-relay",
    };
    let bin = std::env::current_exe()?.with_file_name(name);
    if !bin.is_file() {
        bail!(
            "target {} needs {} (cargo build --release -p sluice-loadtest)",
            target.name(),
            bin.display()
        );
    }
    let dir = TempDir::new(target.name())?;
    let port = free_port()?;
    let args = [port.to_string(), origin.to_string()];
    spawn_proxy(&bin.display().to_string(), &args, cpus, port, dir)
}

/// The far end for the direct and proxied paths: a WebSocket server that
/// hands each `/hold/{n}` connection to the scenario (it becomes the source)
/// and greets each `/greet/{n}` connection with one text message.
pub struct Origin {
    pub addr: SocketAddr,
    held: Arc<Mutex<HashMap<String, mpsc::Sender<TcpStream>>>>,
}

impl Origin {
    pub fn start() -> Result<Origin> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let held: Arc<Mutex<HashMap<String, mpsc::Sender<TcpStream>>>> = Default::default();
        let h = held.clone();
        std::thread::Builder::new()
            .name("origin".into())
            .spawn(move || {
                for s in l.incoming().flatten() {
                    let h = h.clone();
                    std::thread::spawn(move || {
                        let _ = origin_conn(s, &h);
                    });
                }
            })?;
        Ok(Origin { addr, held })
    }

    /// Registers interest in `/hold/{key}` before the client connects.
    fn expect(&self, key: &str) -> mpsc::Receiver<TcpStream> {
        let (tx, rx) = mpsc::channel();
        self.held.lock().unwrap().insert(key.to_string(), tx);
        rx
    }
}

fn origin_conn(
    mut s: TcpStream,
    held: &Mutex<HashMap<String, mpsc::Sender<TcpStream>>>,
) -> Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(SETUP))?;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&buf[..head_end])?;
    let path = req.path.unwrap_or("/").to_string();
    let key = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
        .map(|h| h.value.to_vec())
        .ok_or_else(|| anyhow!("no key"))?;
    let mut sha = Sha1::new();
    sha.update(&key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    s.write_all(
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
            .as_bytes(),
    )?;
    s.set_read_timeout(None)?;
    if let Some(key) = path.strip_prefix("/hold/") {
        if let Some(tx) = held.lock().unwrap().remove(key) {
            let _ = tx.send(s);
        }
        return Ok(());
    }
    // Greeting: one text message, then wait for the client to leave.
    s.write_all(&Encoding::Plain.frame(Opcode::Text, b"{\"type\":\"hello\"}"))?;
    let mut conn = Conn::accepted(s, buf[head_end..].to_vec());
    loop {
        match conn.next_frame(Duration::from_secs(3600)) {
            Ok((Opcode::Close, _)) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

/// Everything needed to open sessions on a target.
pub struct Route<'a> {
    pub target: Target,
    pub addr: SocketAddr,
    pub origin: &'a Origin,
    pub gw: &'a GatewaySpec,
}

/// The socket and pending bytes of a sink, to be moved into the runtime.
pub type SinkParts = (TcpStream, Vec<u8>);

/// An HS256 session token for `sid` of `sub`, valid for an hour: what
/// every scenario's browsers present.
pub fn session_token(
    secret: &str,
    tenant: &str,
    edge: &str,
    sid: &str,
    sub: &str,
    mode: Mode,
) -> String {
    let c = Claims {
        sid: sid.into(),
        sub: sub.into(),
        tenant: tenant.into(),
        edge: edge.into(),
        mode,
        datasets: None,
        quota: None,
        exp: sluice::auth::token::now_s() + 3600,
        jti: None,
        client: None,
    };
    sign_hs256(&c, secret.as_bytes())
}

impl GatewaySpec {
    /// A session token this gateway accepts, for the loader's edge.
    pub fn token(&self, sid: &str, mode: Mode) -> String {
        session_token(
            &self.secret,
            &self.tenant,
            &self.edge,
            sid,
            "loadtest",
            mode,
        )
    }
}

impl Route<'_> {
    pub fn token(&self, sid: &str, mode: Mode) -> String {
        self.gw.token(sid, mode)
    }

    /// A browser session on the gateway, authenticated by header.
    pub fn browser(&self, sid: &str, mode: Mode) -> Result<Conn> {
        let t = self.token(sid, mode);
        wire::connect(
            self.addr,
            &format!("/stream/{sid}"),
            &[("Authorization", format!("Bearer {t}"))],
        )
    }

    /// A registered connector worker serving `datasets`.
    pub fn connector(&self, fast: bool, datasets: &[&str]) -> Result<(Conn, Encoding)> {
        let mut h = vec![("Edge-Key", self.gw.edge_key.clone())];
        if fast {
            h.push((
                "Sec-WebSocket-Protocol",
                sluice::wire::http::FAST_PATH_PROTOCOL.to_string(),
            ));
        }
        let mut c = wire::connect(self.addr, "/ws/connect", &h)?;
        let enc = if fast {
            Encoding::Plain
        } else {
            Encoding::Masked
        };
        c.send_json(
            enc,
            &wire::register(&self.gw.tenant, &self.gw.edge, datasets),
        )?;
        let v = c.next_json(SETUP)?;
        if v["status"] != "ok" {
            bail!("register refused: {v}");
        }
        Ok((c, enc))
    }

    /// Keeps the edge online for scenarios whose sessions ask it questions
    /// (`list`): one registered fast-path worker, held by the caller.
    pub fn edge_online(&self) -> Result<Option<Conn>> {
        if !self.target.is_gateway() {
            return Ok(None);
        }
        let (c, _) = self
            .connector(true, &["bulk"])
            .context("registering the edge")?;
        Ok(Some(c))
    }

    /// One stream, ready for data: the source writes, the sink reads.
    pub fn open_stream(&self, n: usize) -> Result<(Source, SinkParts)> {
        match self.target {
            Target::Direct
            | Target::Nginx
            | Target::Haproxy
            | Target::HaproxyTcp
            | Target::TcpFloor
            | Target::TcpFloorUring => {
                let key = format!("{}-{n}", self.target.name());
                let rx = self.origin.expect(&key);
                let sink = wire::connect(self.addr, &format!("/hold/{key}"), &[])?;
                let up = rx
                    .recv_timeout(SETUP)
                    .context("origin never saw the connection")?;
                Ok((
                    Source {
                        stream: up,
                        enc: Encoding::Plain,
                        finish: None,
                    },
                    sink.into_parts(),
                ))
            }
            Target::GatewayRelay => {
                let mut edge = wire::connect(
                    self.addr,
                    &format!("/edge/{}", self.gw.edge),
                    &[("Edge-Key", self.gw.edge_key.clone())],
                )?;
                let browser =
                    self.browser(&format!("lt-relay-{n}-{}", std::process::id()), Mode::Relay)?;
                edge.wait_for("type", "paired", SETUP)?;
                Ok((
                    Source {
                        stream: edge.into_parts().0,
                        enc: Encoding::Masked,
                        finish: None,
                    },
                    browser.into_parts(),
                ))
            }
            Target::Gateway | Target::GatewayQuery => {
                let fast = self.target == Target::Gateway;
                let (mut worker, enc) = self.connector(fast, &["bulk"])?;
                let mut browser = self.browser(
                    &format!("lt-q-{n}-{fast}-{}", std::process::id()),
                    Mode::Query,
                )?;
                let query = BrowserAction::Query {
                    dataset: "bulk".into(),
                    mode: QueryMode::Stream,
                };
                browser.send_json(Encoding::Masked, &query)?;
                let rid = worker.wait_do_get(SETUP)?;
                worker.send_json(enc, &Reply::stream_start(&rid, ""))?;
                browser.wait_stream_start(SETUP)?;
                let end = wire::stream_end(enc, &rid);
                Ok((
                    Source {
                        stream: worker.into_parts().0,
                        enc,
                        finish: Some(end),
                    },
                    browser.into_parts(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Proc, Spawned};
    use std::process::Command;

    fn spawned(script: &str) -> Spawned {
        let child = Command::new("sh").args(["-c", script]).spawn().unwrap();
        Spawned { child, _dir: None }
    }

    #[test]
    fn a_stopped_target_gets_sigterm_and_exits_through_its_handler() {
        let dir = std::env::temp_dir().join(format!("loadtest-stop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mark = dir.join("terminated");
        let ready = dir.join("ready");
        let s = spawned(&format!(
            "trap 'touch {m}; exit 0' TERM; touch {r}; while :; do sleep 0.05; done",
            m = mark.display(),
            r = ready.display()
        ));
        while !ready.exists() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(s);
        let ran = mark.exists();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(ran, "the TERM handler ran before the target was reaped");
    }

    #[test]
    fn a_target_that_ignores_sigterm_is_killed_after_the_grace() {
        let mut s = spawned("trap '' TERM; while :; do sleep 0.05; done");
        let pid = s.child.id();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(matches!(s.child.try_wait(), Ok(None)));
        drop(s);
        // Reaped: the pid no longer names a live child of ours.
        let alive = std::path::Path::new(&format!("/proc/{pid}/status")).exists();
        assert!(!alive, "pid {pid} is gone after drop");
    }

    #[test]
    fn a_reset_peak_is_the_peak_since_the_reset() {
        let me = Proc(std::process::id());
        // 64 MiB, every page written, then returned to the kernel (an
        // allocation this large is its own mapping, unmapped on free).
        let mut big = vec![0u8; 64 << 20];
        for page in big.chunks_mut(4096) {
            page[0] = 1;
        }
        std::hint::black_box(&big);
        drop(big);
        let before = me.peak_rss_kib();
        assert!(before >= 64 << 10, "peak {before} KiB holds the 64 MiB");
        assert!(
            me.reset_peak_rss(),
            "clear_refs takes a reset of our own process"
        );
        let after = me.peak_rss_kib();
        assert!(
            after + (32 << 10) < before,
            "peak after the reset {after} KiB, before {before} KiB"
        );
    }
}
