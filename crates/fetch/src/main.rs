//! `sluice-fetch`: downloads one dataset through the Sluice gateway into a
//! file, decoding the Arrow IPC stream batch by batch as it arrives
//! (constant memory), with a progress bar on a terminal and a one-line
//! summary otherwise.
//!
//!     sluice-fetch --gateway ws://127.0.0.1:8081 --session SID --token TOKEN \
//!         --dataset sales -o sales.parquet
//!
//! or through the gateway's Arrow Flight endpoint (same token, same rules):
//!
//!     sluice-fetch --flight grpc://127.0.0.1:8815 --token TOKEN --dataset sales -o sales.csv
//!
//! or, asking the control plane for access with the user's own JWT:
//!
//!     sluice-fetch --control http://127.0.0.1:7070 --tenant acme --client dash \
//!         --user-token "$USER_JWT" --dataset sales -o sales.parquet
#![forbid(unsafe_code)]

mod flight;
mod output;
mod ws;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use output::Output;
use serde_json::{json, Value};
use sluice_protocol::browser::{BrowserAction, QueryMode, ServerEvent};
use ws::Message;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Mode {
    /// Write batches as they arrive: constant memory, any size.
    Stream,
    /// The gateway collects the whole dataset and answers with one message
    /// (bounded by its `max_buffered_bytes`: larger datasets are refused
    /// with `too_large`, 4413).
    Buffered,
    /// The connector exports to S3-compatible storage; the gateway passes a
    /// presigned URL and the file is downloaded from the store directly.
    Offload,
}

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Download one dataset through the Sluice gateway into .arrow, .parquet or .csv"
)]
struct Cli {
    /// Gateway, ws://HOST:PORT or wss://HOST:PORT (not needed with --control).
    #[arg(long, env = "SLUICE_GATEWAY", required_unless_present_any = ["control", "flight"])]
    gateway: Option<String>,
    /// Read through the gateway's Arrow Flight endpoint instead of
    /// WebSocket: `--flight grpc+tls://HOST:PORT`, or `--flight` alone with
    /// `--control` to use the Flight URL of the grant.
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "", conflicts_with = "gateway")]
    flight: Option<String>,
    /// Session token from the control plane (or one you signed).
    #[arg(
        long,
        env = "SLUICE_TOKEN",
        hide_env_values = true,
        required_unless_present = "control"
    )]
    token: Option<String>,
    /// Control plane base URL: ask it for access (`POST /control/access`)
    /// instead of bringing a session token; it names the gateway.
    #[arg(long, env = "SLUICE_CONTROL", conflicts_with_all = ["gateway", "token", "session"], requires_all = ["client", "user_token"])]
    control: Option<String>,
    /// Tenant slug sent to the control plane (`X-Tenant-Slug`).
    #[arg(long, env = "SLUICE_TENANT", default_value = "local")]
    tenant: String,
    /// Client id to ask access for.
    #[arg(long, env = "SLUICE_CLIENT")]
    client: Option<String>,
    /// The user's JWT for the control plane.
    #[arg(long, env = "SLUICE_USER_TOKEN", hide_env_values = true)]
    user_token: Option<String>,
    /// Session id the token was issued for (default: the token's `sid`).
    #[arg(long)]
    session: Option<String>,
    /// The dataset to download.
    #[arg(long, required_unless_present = "list")]
    dataset: Option<String>,
    /// Print the datasets the token may read on its edge, one per line,
    /// and exit.
    #[arg(long, conflicts_with_all = ["control", "dataset", "output"])]
    list: bool,
    /// CA certificate (PEM) to trust for wss:// gateways and an https://
    /// control plane, besides the public web PKI roots.
    #[arg(long, env = "SLUICE_CA_CERT", value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "stream")]
    mode: Mode,
    /// Output file; its extension picks the format.
    #[arg(short = 'o', long, required_unless_present = "list")]
    output: Option<PathBuf>,
    /// Give up when no message arrives for this long.
    #[arg(long, default_value_t = 60)]
    idle_timeout_s: u64,
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run(&cli)) {
        eprintln!("sluice-fetch: {e:#}");
        std::process::exit(1);
    }
}

/// Decodes whole IPC messages and writes their batches; returns the rows.
fn feed(decoder: &mut StreamDecoder, bytes: Vec<u8>, out: &mut Output) -> Result<u64> {
    let mut rows = 0;
    let mut buf = Buffer::from_vec(bytes);
    while !buf.is_empty() {
        if let Some(batch) = decoder.decode(&mut buf)? {
            rows += batch.num_rows() as u64;
            out.write(&batch.schema(), &batch)?;
        }
    }
    Ok(rows)
}

/// The `sid` claim of a JWT, read without verifying (the gateway verifies).
fn sid_of(token: &str) -> Result<String> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    let claims = (parts.len() == 3)
        .then(|| base64_decode(parts[1]))
        .flatten()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .ok_or_else(|| {
            anyhow!("--token is not a JWT (three base64url parts separated by dots); `sluice token` or the control plane makes one")
        })?;
    claims["sid"].as_str().map(String::from).ok_or_else(|| {
        anyhow!(
            "the token has no `sid` claim; pass --session with the session id it was issued for"
        )
    })
}

/// base64url without padding (JWT segments), kept dependency-free.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let k = chunk.len();
        out.push((n >> 16) as u8);
        if k > 2 {
            out.push((n >> 8) as u8);
        }
        if k > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

/// Where to connect and with what: from the flags, or granted by the
/// control plane.
struct Session {
    url: String,
    /// The Flight endpoint to read through instead (`--flight`).
    flight: Option<String>,
    token: String,
    /// Dataset name to ask the gateway for.
    dataset: String,
    /// `(control base, sid)` to release the stream slot when done.
    release: Option<(String, String)>,
}

#[derive(serde::Deserialize)]
struct Grant {
    session_id: String,
    session_token: String,
    data_plane_url: String,
    #[serde(default)]
    flight_url: Option<String>,
    dataset: String,
}

/// TLS for a `wss://` gateway: the public roots plus `--ca-cert`.
fn tls_config(cli: &Cli) -> Result<std::sync::Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(p) = &cli.ca_cert {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(p)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow!("--ca-cert {}: {e}", p.display()))?;
        if certs.is_empty() {
            bail!("--ca-cert {}: no PEM certificate in it", p.display());
        }
        for c in certs {
            roots
                .add(c)
                .with_context(|| format!("--ca-cert {}", p.display()))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// HTTP client for the control plane, trusting `--ca-cert` too.
fn http_client(cli: &Cli) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder();
    if let Some(p) = &cli.ca_cert {
        let pem = std::fs::read(p).with_context(|| format!("--ca-cert {}", p.display()))?;
        for c in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca-cert {}", p.display()))?
        {
            b = b.add_root_certificate(c);
        }
    }
    Ok(b.build()?)
}

async fn ask_control(cli: &Cli, base: &str) -> Result<Session> {
    let base = base.trim_end_matches('/');
    let client = cli.client.as_deref().unwrap_or_default();
    let user = cli.user_token.as_deref().unwrap_or_default();
    let resp = http_client(cli)?
        .post(format!("{base}/control/access"))
        .header("X-Tenant-Slug", &cli.tenant)
        .bearer_auth(user)
        .json(&json!({"client_id": client, "dataset_id": cli.dataset, "requested_ops": ["read"]}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "cannot reach the control plane at {base}: {}",
                root_cause(&e)
            )
        })?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        bail!(
            "the control plane refused access ({}): {} {}",
            status.as_u16(),
            v["error"].as_str().unwrap_or("error"),
            v["message"].as_str().unwrap_or(&body)
        );
    }
    let g: Grant = serde_json::from_str(&body).context("control plane answer is not a grant")?;
    let flight = match cli.flight.as_deref() {
        None => None,
        Some("") => Some(g.flight_url.ok_or_else(|| {
            anyhow!("--flight: the gateway holding this dataset has no Flight listener ([flight] listen); fetch without --flight")
        })?),
        Some(url) => Some(url.to_owned()),
    };
    Ok(Session {
        url: g.data_plane_url,
        flight,
        token: g.session_token,
        dataset: g.dataset,
        release: Some((base.to_owned(), g.session_id)),
    })
}

/// Tells the control plane the stream slot is free again (best effort: it
/// frees itself when the token expires).
async fn release(cli: &Cli, base: &str, sid: &str) {
    let Ok(client) = http_client(cli) else { return };
    let res = client
        .post(format!("{base}/control/release/{sid}"))
        .header("X-Tenant-Slug", &cli.tenant)
        .bearer_auth(cli.user_token.as_deref().unwrap_or_default())
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    if let Err(e) = res {
        eprintln!("sluice-fetch: could not release session {sid}: {e}");
    }
}

async fn run(cli: &Cli) -> Result<()> {
    // Refuse a bad output name before asking anyone for anything.
    let out = match &cli.output {
        Some(path) => Some(Output::new(path)?),
        None => None,
    };
    let session = match &cli.control {
        Some(base) => ask_control(cli, base).await?,
        None => {
            let token = cli.token.clone().unwrap_or_default();
            let sid = match &cli.session {
                Some(s) => s.clone(),
                None => sid_of(&token)?,
            };
            let base = cli
                .gateway
                .as_deref()
                .unwrap_or_default()
                .trim_end_matches('/');
            let flight = match cli.flight.as_deref() {
                Some("") => bail!("--flight needs the Flight URL (grpc://HOST:PORT or grpc+tls://HOST:PORT) unless --control names the gateway"),
                other => other.map(str::to_owned),
            };
            if flight.is_none() && !base.starts_with("ws://") && !base.starts_with("wss://") {
                bail!("--gateway must be ws://HOST:PORT or wss://HOST:PORT");
            }
            Session {
                url: format!("{base}/stream/{sid}"),
                flight,
                token,
                dataset: cli.dataset.clone().unwrap_or_default(),
                release: None,
            }
        }
    };
    if session.flight.is_some() && cli.mode != Mode::Stream {
        bail!("--flight reads streamed (DoGet); --mode buffered and offload are WebSocket modes");
    }
    let res = match (out, &session.flight) {
        (Some(out), None) => download(cli, &session, out).await,
        (None, None) => list(cli, &session).await,
        (Some(out), Some(url)) => download_flight(cli, &session, url, out).await,
        (None, Some(url)) => flight::list(url, &session.token, cli.ca_cert.as_deref())
            .await
            .map(|names| names.iter().for_each(|d| println!("{d}"))),
    };
    if let Some((base, sid)) = &session.release {
        release(cli, base, sid).await;
    }
    res
}

async fn open(cli: &Cli, session: &Session) -> Result<ws::Gateway> {
    let base = session.url.as_str();
    let tls = if base.starts_with("wss://") {
        Some(tls_config(cli)?)
    } else {
        None
    };
    ws::Gateway::connect(base, &session.token, tls)
        .await
        .map_err(|e| anyhow!("cannot connect to {base}: {}", chain(&e)))
}

/// `--flight`: `DoGet` into the output file.
async fn download_flight(cli: &Cli, session: &Session, url: &str, mut out: Output) -> Result<()> {
    let bar = spinner();
    let dataset = &session.dataset;
    let idle = Duration::from_secs(cli.idle_timeout_s);
    let t0 = Instant::now();
    let ca = cli.ca_cert.as_deref();
    let moved = flight::download(
        url,
        &session.token,
        ca,
        dataset,
        idle,
        &mut out,
        |rows, bytes, t0| {
            if let Some(b) = &bar {
                b.set_message(progress(dataset, rows, bytes, t0));
            }
        },
    )
    .await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let moved = match moved.and_then(|m| {
        m.schema
            .clone()
            .ok_or_else(|| anyhow!("the stream carried no schema"))
            .map(|s| (m, s))
    }) {
        Ok(m) => m,
        Err(e) => {
            out.abandon();
            return Err(e);
        }
    };
    let (m, schema) = moved;
    let path = out.finish(&schema)?;
    summary(dataset, m.rows, m.bytes, m.messages, t0, &path);
    Ok(())
}

fn spinner() -> Option<ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("template"));
        b.enable_steady_tick(Duration::from_millis(120));
        b
    })
}

fn progress(dataset: &str, rows: u64, bytes: u64, t0: Instant) -> String {
    let secs = t0.elapsed().as_secs_f64().max(1e-3);
    format!(
        "{dataset}: {rows} rows, {:.1} MB, {:.1} MB/s",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / secs
    )
}

fn summary(
    dataset: &str,
    rows: u64,
    bytes: u64,
    messages: u64,
    t0: Instant,
    path: &std::path::Path,
) {
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "sluice-fetch: {dataset}: {rows} rows, {bytes} bytes in {messages} messages, {secs:.2} s ({:.1} MB/s) -> {}",
        bytes as f64 / 1e6 / secs.max(1e-6),
        path.display()
    );
}

/// An error and its causes, each said once: layers that restate their
/// source ("IO error: Connection refused" over "Connection refused") are
/// not repeated.
fn chain(e: &anyhow::Error) -> String {
    let mut out: Vec<String> = Vec::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.last().is_some_and(|prev| prev.contains(&msg)) {
            continue;
        }
        out.push(msg);
    }
    out.join(": ")
}

/// The innermost error: "Connection refused (os error 111)" rather than
/// every layer's restatement of it.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `--list`: the datasets the token may read, one per line.
async fn list(cli: &Cli, session: &Session) -> Result<()> {
    let mut ws = open(cli, session).await?;
    ws.send_text(BrowserAction::List.to_json()).await?;
    let result = loop {
        let msg = tokio::time::timeout(Duration::from_secs(cli.idle_timeout_s), ws.next())
            .await
            .map_err(|_| anyhow!("nothing from the gateway for {} s", cli.idle_timeout_s))??
            .ok_or_else(|| anyhow!("the gateway closed the connection without an answer"))?;
        match msg {
            Message::Text(t) => match serde_json::from_str::<ServerEvent>(&t) {
                Ok(ServerEvent::Datasets { datasets, .. }) => break Ok(datasets),
                Ok(ServerEvent::Error { code, message, .. }) => {
                    break Err(anyhow!("{message} ({code})"))
                }
                _ => continue,
            },
            Message::Close(c) => {
                break Err(anyhow!(
                    "the gateway closed the session: {}",
                    c.map(|(code, reason)| format!("{code} {reason}"))
                        .unwrap_or_default()
                ))
            }
            Message::Binary(_) => continue,
        }
    };
    ws.close().await;
    for d in result? {
        println!("{d}");
    }
    Ok(())
}

async fn download(cli: &Cli, session: &Session, mut out: Output) -> Result<()> {
    let mut ws = open(cli, session).await?;
    let mode = match cli.mode {
        Mode::Stream => QueryMode::Stream,
        Mode::Buffered => QueryMode::Buffered,
        Mode::Offload => QueryMode::Offload,
    };
    let query = BrowserAction::Query {
        dataset: session.dataset.clone(),
        mode,
    };
    ws.send_text(query.to_json()).await?;

    let mut decoder = StreamDecoder::new();
    let (mut rows, mut bytes, mut messages) = (0u64, 0u64, 0u64);
    let mut offloaded = false;
    let t0 = Instant::now();
    let bar = spinner();
    let result: Result<()> = async {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(cli.idle_timeout_s), ws.next())
                .await
                .map_err(|_| anyhow!("nothing from the gateway for {} s", cli.idle_timeout_s))??
                .ok_or_else(|| {
                    anyhow!("the gateway closed the connection before the end of the stream")
                })?;
            match msg {
                Message::Binary(b) => {
                    messages += 1;
                    bytes += b.len() as u64;
                    rows += feed(&mut decoder, b, &mut out)?;
                    if let Some(b) = &bar {
                        b.set_message(progress(&session.dataset, rows, bytes, t0));
                    }
                }
                Message::Text(t) => {
                    // Events this version does not know are skipped.
                    let Ok(event) = serde_json::from_str::<ServerEvent>(&t) else {
                        continue;
                    };
                    match event {
                        ServerEvent::Offload {
                            url, bytes: size, ..
                        } if cli.mode == Mode::Offload => {
                            let url = url
                                .as_str()
                                .ok_or_else(|| anyhow!("offload answer without a url"))?;
                            let resp = reqwest::get(url)
                                .await
                                .and_then(|r| r.error_for_status())
                                .context("downloading the offloaded export")?;
                            let mut body = resp.bytes_stream();
                            while let Some(chunk) = body.next().await {
                                let chunk = chunk.context("downloading the offloaded export")?;
                                bytes += chunk.len() as u64;
                                rows += feed(&mut decoder, chunk.to_vec(), &mut out)?;
                            }
                            if size.as_u64().is_some_and(|n| n != bytes) {
                                bail!("the export is {size} bytes, {bytes} downloaded");
                            }
                            offloaded = true;
                        }
                        ServerEvent::StreamEnd { total_bytes, .. } => {
                            let said = total_bytes.filter(|_| !offloaded);
                            if said.is_some_and(|n| n != bytes) {
                                bail!(
                                    "stream_end says {} bytes, {bytes} arrived",
                                    said.unwrap_or(0)
                                );
                            }
                            return Ok(());
                        }
                        ServerEvent::Error { code, message, .. } => {
                            bail!("{message} ({code})")
                        }
                        _ => {}
                    }
                }
                Message::Close(c) => bail!(
                    "the gateway closed the session: {}",
                    c.map(|(code, reason)| format!("{code} {reason}"))
                        .unwrap_or_default()
                ),
            }
        }
    }
    .await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    ws.close().await;
    match result {
        Ok(()) => {
            decoder.finish().context("the IPC stream is incomplete")?;
            let schema = decoder
                .schema()
                .ok_or_else(|| anyhow!("the stream carried no schema"))?;
            let path = out.finish(&schema)?;
            summary(&session.dataset, rows, bytes, messages, t0, &path);
            Ok(())
        }
        Err(e) => {
            out.abandon();
            Err(e)
        }
    }
}
