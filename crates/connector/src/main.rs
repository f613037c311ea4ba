//! `sluice-connector`: the edge agent.
//!
//!     SLUICE_EDGE_KEY=… sluice-connector --gateway ws://gw:8081 --tenant acme \
//!         --edge plant-1 --dataset sales=/data/sales.csv --dataset orders='/data/orders/*.parquet'
//!     sluice-connector --config connector.toml
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;
use sluice_connector::config::{Compression, Config, DatasetConfig, Transport};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Sluice edge connector: dials out to the gateway and serves local datasets as Arrow IPC"
)]
struct Cli {
    /// TOML config file (flags below override its values).
    #[arg(long, env = "SLUICE_CONNECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// Gateway, ws://HOST:PORT or wss://HOST:PORT; with --transport grpc,
    /// https://HOST:PORT (or http://) of its grpc.listen.
    #[arg(long)]
    gateway: Option<String>,
    /// websocket (seed 001, the default) or grpc (seed 002's tunnel over
    /// HTTP/2 with mutual TLS).
    #[arg(long, value_name = "websocket|grpc")]
    transport: Option<String>,
    /// CA certificate that signed the gateway's (wss://; default: public roots).
    #[arg(long, value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// This site's client certificate (CN = tenant id) for mutual TLS.
    #[arg(long, value_name = "PEM", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long, value_name = "PEM", requires = "client_cert")]
    client_key: Option<PathBuf>,
    #[arg(long)]
    tenant: Option<String>,
    /// Edge id (default: the tenant id).
    #[arg(long)]
    edge: Option<String>,
    /// NAME=PATH (a file or a glob; the format from the extension; `metrics`
    /// for a synthetic live feed). Repeatable.
    #[arg(long = "dataset", value_name = "NAME=PATH")]
    datasets: Vec<String>,
    /// Parallel worker connections.
    #[arg(long)]
    workers: Option<usize>,
    /// Bytes per binary message (65536 to 1048576).
    #[arg(long)]
    chunk_bytes: Option<usize>,
    /// IPC body compression for datasets given with --dataset: none, lz4, zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// CSV / NDJSON datasets given with --dataset follow appended lines when subscribed to.
    #[arg(long)]
    tail: bool,
    /// Do not connect: read every dataset once into DIR/<name>.arrows
    /// (IPC stream files) and print rows, bytes and time. Checks a dataset
    /// before it goes live; measures conversion speed.
    #[arg(long, value_name = "DIR")]
    convert: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    // A misspelled `SLUICE_CONNECTOR_…` variable would otherwise be ignored.
    let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    for (var, near) in sluice_protocol::suggest::unknown_vars(
        env.iter().map(String::as_str),
        "SLUICE_CONNECTOR_",
        &["SLUICE_CONNECTOR_CONFIG"],
    ) {
        match near {
            Some(n) => {
                tracing::warn!("unknown environment variable {var} is ignored; did you mean {n}?")
            }
            None => tracing::warn!("unknown environment variable {var} is ignored"),
        }
    }
    if let Some(dir) = &cli.convert {
        let cfg = match build_offline(&cli) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("sluice-connector: {e:#}");
                std::process::exit(2);
            }
        };
        match sluice_connector::convert(&cfg, dir) {
            Ok(done) => {
                for (name, rows, bytes, secs) in done {
                    println!(
                        "{name}: {rows} rows, {bytes} bytes of IPC in {secs:.3} s ({:.0} rows/s, {:.1} MB/s)",
                        rows as f64 / secs,
                        bytes as f64 / secs / 1e6
                    );
                }
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("sluice-connector: {e:#}");
                std::process::exit(1);
            }
        }
    }
    let cfg = match build(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice-connector: {e:#}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("shutting down: finishing running streams");
            let _ = stop_tx.send(true);
        });
        println!(
            "sluice-connector: edge {} of tenant {} dialing {} with {} workers, {} datasets",
            cfg.edge,
            cfg.tenant,
            cfg.gateway,
            cfg.workers,
            cfg.datasets.len()
        );
        match sluice_connector::run(cfg, stop_rx).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("sluice-connector: {e:#}");
                1
            }
        }
    });
    std::process::exit(code);
}

/// For `--convert`: datasets and sizes only; no gateway, tenant or key needed.
fn build_offline(cli: &Cli) -> anyhow::Result<Config> {
    let mut c = apply(cli)?;
    c.edge_key_file = None;
    c.mtls = Default::default();
    c.gateway = "ws://offline".into();
    c.transport = Transport::Websocket;
    if c.tenant.is_empty() {
        c.tenant = "offline".into();
    }
    Ok(c.finish(Some("offline".into()))?)
}

fn build(cli: &Cli) -> anyhow::Result<Config> {
    Ok(apply(cli)?.finish(std::env::var("SLUICE_EDGE_KEY").ok())?)
}

fn apply(cli: &Cli) -> anyhow::Result<Config> {
    let mut cfg = match &cli.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(g) = &cli.gateway {
        cfg.gateway = g.clone();
    }
    if let Some(t) = &cli.transport {
        cfg.transport = match t.as_str() {
            "websocket" | "ws" => Transport::Websocket,
            "grpc" => Transport::Grpc,
            other => anyhow::bail!("--transport must be websocket or grpc, not {other:?}"),
        };
    }
    if let Some(t) = &cli.tenant {
        cfg.tenant = t.clone();
    }
    if let Some(e) = &cli.edge {
        cfg.edge = e.clone();
    }
    if let Some(w) = cli.workers {
        cfg.workers = w;
    }
    if let Some(p) = &cli.ca_cert {
        cfg.mtls.ca_cert = Some(p.clone());
    }
    if let Some(p) = &cli.client_cert {
        cfg.mtls.client_cert = Some(p.clone());
    }
    if let Some(p) = &cli.client_key {
        cfg.mtls.client_key = Some(p.clone());
    }
    if let Some(c) = cli.chunk_bytes {
        cfg.chunk_bytes = c;
    }
    let compression = match cli.compression.as_str() {
        "none" => Compression::None,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => anyhow::bail!("--compression must be none, lz4 or zstd, not {other:?}"),
    };
    for d in &cli.datasets {
        let (name, path) = d
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--dataset {d:?} is not NAME=PATH"))?;
        cfg.datasets.push(DatasetConfig {
            compression,
            tail: cli.tail,
            ..DatasetConfig::new(name, path)
        });
    }
    Ok(cfg)
}
