//! `tls`: what TLS costs on each leg. One gateway with both listeners
//! carries the same traffic four ways in one run — plaintext, TLS on the
//! browser leg, mutual TLS on the connector leg, TLS on both — so each
//! figure is a ratio to plaintext on this machine:
//!
//! - bulk: one stream of large frames as fast as it goes (MB/s, and the
//!   gateway's CPU-seconds per GiB, which is where the crypto shows);
//! - latency: small stamped frames at a fixed rate (p50 / p99 from the
//!   send schedule, so stalls are not hidden);
//! - opens: browser sessions opened one after another (TCP + TLS
//!   handshake + upgrade + token check), and the gateway's CPU per open;
//! - idle: the gateway's resident memory per open, idle session.
//!
//! The certificates are made here with `sluice::tls::certs` (ECDSA P-256, as
//! `sluice certs` makes them); the connector authenticates with its client
//! certificate and its edge key on the TLS legs.

use sluice_protocol::browser::{BrowserAction, QueryMode, ServerEvent};
use sluice_protocol::connector::{GatewayRequest, Reply};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use hdrhistogram::Histogram;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use sluice::auth::token::Mode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{pin_current, precise_timers, Ctx, Schedule};
use crate::sink::{upgrade, Prefixed};
use crate::targets::{GatewaySpec, Proc};
use crate::wire::{stamp_of, stamped};

pub struct Params {
    pub frames: u64,
    pub size: usize,
    pub rate: u64,
    pub latency_size: usize,
    pub duration: Duration,
    pub opens: usize,
    /// Idle sessions held at once for the memory figure.
    pub idle: usize,
}

/// Which legs run over TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Legs {
    Plain,
    Browser,
    Connector,
    Both,
}

impl Legs {
    pub const ALL: [Legs; 4] = [Legs::Plain, Legs::Browser, Legs::Connector, Legs::Both];

    pub fn name(self) -> &'static str {
        match self {
            Legs::Plain => "plaintext",
            Legs::Browser => "tls browser leg",
            Legs::Connector => "mtls connector leg",
            Legs::Both => "tls both legs",
        }
    }

    fn browser_tls(self) -> bool {
        matches!(self, Legs::Browser | Legs::Both)
    }

    fn connector_tls(self) -> bool {
        matches!(self, Legs::Connector | Legs::Both)
    }
}

/// The files a gateway started by the loader serves, and the clients' side.
pub struct Pki {
    pub dir: crate::targets::TempDir,
    tenant: String,
}

impl Pki {
    pub fn make(tenant: &str) -> Result<Pki> {
        let dir = crate::targets::TempDir::new("tls")?;
        sluice::tls::certs::run(&sluice::tls::certs::Request {
            out: dir.0.clone(),
            tenants: vec![tenant.to_owned()],
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            days: 2,
            force: false,
        })?;
        Ok(Pki {
            dir,
            tenant: tenant.to_owned(),
        })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.0.join(rel)
    }

    /// Environment turning on the gateway's TLS listener with these files.
    pub fn gateway_env(&self) -> Vec<(String, String)> {
        let p = |r: &str| self.path(r).display().to_string();
        vec![
            ("SLUICE_TLS_LISTEN".into(), "127.0.0.1:0".into()),
            ("SLUICE_TLS_CERT_FILE".into(), p("server.crt")),
            ("SLUICE_TLS_KEY_FILE".into(), p("server.key")),
            ("SLUICE_TLS_CLIENT_CA_FILE".into(), p("ca.crt")),
        ]
    }

    fn client_config(&self, with_cert: bool) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.crt"))? {
            roots.add(c?)?;
        }
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        Ok(Arc::new(if with_cert {
            let at = format!("clients/{}", self.tenant);
            let chain = CertificateDer::pem_file_iter(self.path(&format!("{at}/client.crt")))?
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(self.path(&format!("{at}/client.key")))?;
            b.with_client_auth_cert(chain, key)?
        } else {
            b.with_no_client_auth()
        }))
    }
}

/// One configuration's figures.
#[derive(Debug, Default, serde::Serialize)]
pub struct Row {
    pub legs: &'static str,
    pub bulk_mb_per_s: f64,
    pub bulk_gateway_cpu_s_per_gib: f64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_frames: u64,
    pub open_p50_us: u64,
    pub open_p99_us: u64,
    pub gateway_cpu_ms_per_open: f64,
    pub idle_kib_per_session: f64,
    /// The plaintext row's CPU per GiB plus this leg's AEAD passes with
    /// the negotiated suite ([`super::crypto_floor`]).
    pub floor_cpu_s_per_gib: Option<f64>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Ws = WebSocket<Prefixed<Box<dyn Io>>>;

/// How to reach the gateway on each listener.
pub struct Dialer<'a> {
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    pub gw: &'a GatewaySpec,
    browser: Arc<rustls::ClientConfig>,
    connector: Arc<rustls::ClientConfig>,
}

impl<'a> Dialer<'a> {
    pub fn new(gw: &'a GatewaySpec, pki: &Pki) -> Result<Dialer<'a>> {
        Ok(Dialer {
            plain: gw.addr.context("gateway address")?,
            tls: gw.tls_addr.context("the gateway printed no TLS address")?,
            gw,
            browser: pki.client_config(false)?,
            connector: pki.client_config(true)?,
        })
    }

    /// The cipher suite the gateway's TLS listener picks for a browser.
    pub async fn negotiated(&self) -> Result<rustls::SupportedCipherSuite> {
        let tcp = TcpStream::connect(self.tls).await?;
        let name = ServerName::try_from("localhost").expect("a DNS name");
        let s = tokio_rustls::TlsConnector::from(self.browser.clone())
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        s.get_ref()
            .1
            .negotiated_cipher_suite()
            .context("no cipher suite negotiated")
    }

    async fn open(
        &self,
        tls: Option<&Arc<rustls::ClientConfig>>,
        path: &str,
        headers: &[(&str, String)],
        role: Role,
    ) -> Result<Ws> {
        let addr = if tls.is_some() { self.tls } else { self.plain };
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some(cfg) => {
                let name = ServerName::try_from("localhost").expect("a DNS name");
                Box::new(
                    tokio_rustls::TlsConnector::from(cfg.clone())
                        .connect(name, tcp)
                        .await
                        .context("TLS handshake")?,
                )
            }
        };
        let mut ws = WebSocket::after_handshake(upgrade(io, addr, path, headers).await?, role);
        ws.set_auto_pong(true);
        ws.set_max_message_size(64 << 20);
        ws.set_writev(true);
        Ok(ws)
    }

    fn token(&self, sid: &str) -> String {
        self.gw.token(sid, Mode::Query)
    }

    async fn browser(&self, legs: Legs, sid: &str) -> Result<Ws> {
        let tls = legs.browser_tls().then_some(&self.browser);
        let auth = format!("Bearer {}", self.token(sid));
        self.open(
            tls,
            &format!("/stream/{sid}"),
            &[("Authorization", auth)],
            Role::Client,
        )
        .await
    }

    /// A fast-path worker (server-format frames, as the real connector).
    async fn connector(&self, legs: Legs) -> Result<Ws> {
        let tls = legs.connector_tls().then_some(&self.connector);
        let headers = [
            ("Edge-Key", self.gw.edge_key.clone()),
            (
                "Sec-WebSocket-Protocol",
                sluice::wire::http::FAST_PATH_PROTOCOL.to_string(),
            ),
        ];
        let mut ws = self
            .open(tls, "/ws/connect", &headers, Role::Server)
            .await?;
        let register = crate::wire::register(&self.gw.tenant, &self.gw.edge, &["bulk"]);
        send_json(&mut ws, &register).await?;
        let v = next_json(&mut ws).await?;
        if v["status"] != "ok" {
            bail!("register refused: {v}");
        }
        Ok(ws)
    }

    /// A browser and `worker` (the edge's only worker, so the gateway
    /// picks it) with a stream started between them.
    async fn stream(&self, legs: Legs, mut worker: Ws, sid: &str) -> Result<(Ws, Ws, String)> {
        let mut browser = self.browser(legs, sid).await?;
        let query = BrowserAction::Query {
            dataset: "bulk".into(),
            mode: QueryMode::Stream,
        };
        send_json(&mut browser, &query).await?;
        let rid = loop {
            let v = next_json(&mut worker).await?;
            if let Ok(GatewayRequest::DoGet { request_id, .. }) = serde_json::from_value(v) {
                break request_id;
            }
        };
        send_json(&mut worker, &Reply::stream_start(&rid, "")).await?;
        loop {
            let v = next_json(&mut browser).await?;
            if let Ok(ServerEvent::StreamStart { .. }) = serde_json::from_value(v) {
                break;
            }
        }
        Ok((worker, browser, rid))
    }
}

async fn send_json<T: serde::Serialize + ?Sized>(ws: &mut Ws, msg: &T) -> Result<()> {
    let text = serde_json::to_vec(msg)?;
    ws.write_frame(Frame::text(Payload::Owned(text))).await?;
    ws.flush().await?;
    Ok(())
}

/// One binary frame, flushed: TLS keeps what the socket did not take until
/// flushed (a no-op on plain TCP), as the real connector does.
async fn send_binary(ws: &mut Ws, payload: Payload<'_>) -> Result<()> {
    ws.write_frame(Frame::binary(payload)).await?;
    ws.flush().await?;
    Ok(())
}

async fn end_stream(ws: &mut Ws, rid: &str) -> Result<()> {
    send_json(ws, &Reply::stream_end(rid, 0, None)).await
}

async fn next_json(ws: &mut Ws) -> Result<Value> {
    loop {
        let f = tokio::time::timeout(Duration::from_secs(10), ws.read_frame())
            .await
            .context("no answer within 10 s")??;
        match f.opcode {
            OpCode::Text => return Ok(serde_json::from_slice(&f.payload)?),
            OpCode::Close => bail!(
                "closed by the gateway: {}",
                String::from_utf8_lossy(f.payload.get(2..).unwrap_or(&[]))
            ),
            _ => {}
        }
    }
}

/// Reads binary frames until `n` arrived; calls `each` with each payload.
async fn drain(ws: &mut Ws, n: u64, mut each: impl FnMut(&[u8])) -> Result<u64> {
    let (mut got, mut bytes) = (0, 0u64);
    while got < n {
        let f = tokio::time::timeout(Duration::from_secs(30), ws.read_frame())
            .await
            .context("stream stalled for 30 s")??;
        match f.opcode {
            OpCode::Binary => {
                got += 1;
                bytes += f.payload.len() as u64;
                each(&f.payload);
            }
            OpCode::Close => bail!("closed after {got} of {n} frames"),
            _ => {}
        }
    }
    Ok(bytes)
}

/// Runs the source side on a thread of its own (pinned like the other
/// scenarios' sources), with a runtime of its own.
fn source<F>(cpu: Option<usize>, worker: Ws, f: F) -> std::thread::JoinHandle<Result<Ws>>
where
    F: FnOnce(Ws) -> Pin<Box<dyn std::future::Future<Output = Result<Ws>>>> + Send + 'static,
{
    std::thread::spawn(move || {
        pin_current(cpu);
        precise_timers();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(f(worker))
    })
}

fn cpu(proc: Option<Proc>) -> f64 {
    proc.map(|p| p.cpu_secs()).unwrap_or(0.0)
}

pub fn run(ctx: &Ctx, d: &Dialer, proc: Option<Proc>, p: &Params) -> Result<Vec<Row>> {
    let src_cpu = ctx
        .layout
        .source_cpu(crate::targets::Target::Gateway, false);
    // Idle memory first, on a fresh gateway, holding every setting's
    // sessions until all are measured: memory freed by one phase and
    // reused by the next would otherwise hide what a session costs.
    let mut idle_kib = [0.0; 4];
    if let Some(proc) = proc {
        let mut held = Vec::new();
        for (i, legs) in Legs::ALL.into_iter().enumerate() {
            let before = proc.rss_kib();
            ctx.rt.block_on(async {
                for k in 0..p.idle {
                    let sid = format!("lt-tls-idle-{i}-{k}-{}", std::process::id());
                    held.push(d.browser(legs, &sid).await?);
                }
                // Let the gateway finish setting them up.
                tokio::time::sleep(Duration::from_millis(300)).await;
                anyhow::Ok(())
            })?;
            idle_kib[i] = proc.rss_kib().saturating_sub(before) as f64 / p.idle.max(1) as f64;
        }
        ctx.rt.block_on(async {
            for mut ws in held {
                let _ = ws.write_frame(Frame::close(1000, b"done")).await;
                let _ = ws.flush().await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        });
    }
    let mut rows = Vec::new();
    for (i, legs) in Legs::ALL.into_iter().enumerate() {
        let mut row = Row {
            legs: legs.name(),
            idle_kib_per_session: idle_kib[i],
            ..Row::default()
        };
        // bulk
        let worker = ctx.rt.block_on(d.connector(legs))?;
        let sid = format!("lt-tls-bulk-{i}-{}", std::process::id());
        let (worker, mut browser, rid) = ctx.rt.block_on(d.stream(legs, worker, &sid))?;
        let (n, size) = (p.frames, p.size);
        let c0 = cpu(proc);
        let t0 = Instant::now();
        let w = source(src_cpu, worker, move |mut ws| {
            Box::pin(async move {
                let payload = vec![0xab; size];
                for _ in 0..n {
                    send_binary(&mut ws, Payload::Borrowed(&payload)).await?;
                }
                end_stream(&mut ws, &rid).await?;
                Ok(ws)
            })
        });
        let bytes = ctx.rt.block_on(drain(&mut browser, n, |_| {}))?;
        let secs = t0.elapsed().as_secs_f64();
        let spent = cpu(proc) - c0;
        let worker = w.join().expect("bulk source thread")?;
        if bytes != n * size as u64 {
            bail!(
                "{}: received {bytes} bytes, sent {}",
                legs.name(),
                n * size as u64
            );
        }
        row.bulk_mb_per_s = bytes as f64 / secs / 1e6;
        row.bulk_gateway_cpu_s_per_gib = spent / (bytes as f64 / (1u64 << 30) as f64);
        drop(browser);

        // latency
        let sid = format!("lt-tls-lat-{i}-{}", std::process::id());
        let (worker, mut browser, rid) = ctx.rt.block_on(d.stream(legs, worker, &sid))?;
        let total = p.rate * p.duration.as_secs().max(1);
        let period = Duration::from_nanos(1_000_000_000 / p.rate.max(1));
        let (lsize, epoch) = (p.latency_size, ctx.epoch);
        let w = source(src_cpu, worker, move |mut ws| {
            Box::pin(async move {
                let schedule = Schedule::new(period, epoch);
                for k in 0..total {
                    let sched = schedule.wait(k);
                    send_binary(&mut ws, Payload::Owned(stamped(lsize, sched, k))).await?;
                }
                end_stream(&mut ws, &rid).await?;
                Ok(ws)
            })
        });
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        ctx.rt.block_on(drain(&mut browser, total, |payload| {
            if let Some((sched, _)) = stamp_of(payload) {
                let now = epoch.elapsed().as_nanos() as u64;
                let _ = h.record((now.saturating_sub(sched) / 1000).max(1));
            }
        }))?;
        let worker = w.join().expect("latency source thread")?;
        row.latency_p50_us = h.value_at_quantile(0.5);
        row.latency_p99_us = h.value_at_quantile(0.99);
        row.latency_frames = h.len();
        drop(browser);

        // opens
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let c0 = cpu(proc);
        ctx.rt.block_on(async {
            for k in 0..p.opens {
                let t = Instant::now();
                let sid = format!("lt-tls-open-{i}-{k}-{}", std::process::id());
                let mut ws = d.browser(legs, &sid).await?;
                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                let _ = ws.write_frame(Frame::close(1000, b"done")).await;
                let _ = ws.flush().await;
            }
            anyhow::Ok(())
        })?;
        row.open_p50_us = h.value_at_quantile(0.5);
        row.open_p99_us = h.value_at_quantile(0.99);
        row.gateway_cpu_ms_per_open = (cpu(proc) - c0) * 1000.0 / p.opens.max(1) as f64;

        rows.push(row);
        // The next setting's worker must be the edge's only one.
        ctx.rt.block_on(async move {
            let mut worker = worker;
            let _ = worker.write_frame(Frame::close(1000, b"done")).await;
            let _ = worker.flush().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Ok(f) = worker.read_frame().await {
                    if f.opcode == OpCode::Close {
                        break;
                    }
                }
            })
            .await;
        });
    }
    add_floors(ctx, d, &mut rows);
    Ok(rows)
}

/// Each row's crypto floor: the plaintext row's CPU per GiB plus one
/// seal (browser leg) and/or one open (connector leg) per byte, timed on
/// the gateway's CPU with the suite it negotiated. A floor that cannot
/// be measured is said, not guessed.
fn add_floors(ctx: &Ctx, d: &Dialer, rows: &mut [Row]) {
    let bytes = 256 << 20;
    let floor = ctx
        .rt
        .block_on(d.negotiated())
        .and_then(|suite| super::crypto_floor::measure(suite, ctx.layout.proxy_cpu, bytes));
    let f = match floor {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tls: no crypto floor: {e:#}");
            return;
        }
    };
    println!(
        "crypto floor: {} — seal {:.3}, open {:.3} CPU-s per GiB on the gateway's CPU",
        f.suite, f.seal_s_per_gib, f.open_s_per_gib
    );
    let plain = rows.first().map(|r| r.bulk_gateway_cpu_s_per_gib);
    for (r, legs) in rows.iter_mut().zip(Legs::ALL) {
        let seal = if legs.browser_tls() {
            f.seal_s_per_gib
        } else {
            0.0
        };
        let open = if legs.connector_tls() {
            f.open_s_per_gib
        } else {
            0.0
        };
        r.floor_cpu_s_per_gib = plain.map(|p| p + seal + open);
    }
}

/// The table printed at the end, ratios to the plaintext row.
pub fn table(rows: &[Row]) -> String {
    let base = rows.first();
    let ratio = |v: f64, b: Option<f64>| match b {
        Some(b) if b > 0.0 => format!(" ({:.2})", v / b),
        _ => String::new(),
    };
    let mut out = String::from(
        "| legs | bulk MB/s | gateway CPU-s per GiB | crypto floor CPU-s per GiB (× floor) | latency p50 / p99 µs | session open p50 / p99 µs | gateway CPU ms per open | idle KiB per session |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.0}{} | {:.2}{} | {} | {} / {} | {} / {} | {:.3}{} | {:.1} |\n",
            r.legs,
            r.bulk_mb_per_s,
            ratio(r.bulk_mb_per_s, base.map(|b| b.bulk_mb_per_s)),
            r.bulk_gateway_cpu_s_per_gib,
            ratio(
                r.bulk_gateway_cpu_s_per_gib,
                base.map(|b| b.bulk_gateway_cpu_s_per_gib)
            ),
            r.floor_cpu_s_per_gib.map_or("-".into(), |f| format!(
                "{f:.2}{}",
                ratio(r.bulk_gateway_cpu_s_per_gib, Some(f))
            )),
            r.latency_p50_us,
            r.latency_p99_us,
            r.open_p50_us,
            r.open_p99_us,
            r.gateway_cpu_ms_per_open,
            ratio(
                r.gateway_cpu_ms_per_open,
                base.map(|b| b.gateway_cpu_ms_per_open)
            ),
            r.idle_kib_per_session,
        ));
    }
    out
}
