//! The Sluice connector (edge agent): dials out to the gateway — no inbound
//! port — and serves local datasets (CSV, NDJSON, Parquet files, PostgreSQL
//! queries, live feeds) as Arrow IPC streams over the seed-001 WebSocket
//! protocol, on the gateway's fast path when it offers one, or over seed
//! 002's gRPC tunnel ([`grpc`]).
#![forbid(unsafe_code)]

pub mod config;
pub mod grpc;
pub mod ipc;
pub mod link;
pub mod live;
pub mod offload;
pub mod redial;
pub mod source;
pub mod stream;
pub mod tls;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::source::Dataset;
use crate::worker::Shared;

/// Runs the connector until `stop` turns true; then finishes running
/// streams (bounded) and closes every link with 1001.
pub async fn run(cfg: Config, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let datasets = cfg
        .datasets
        .iter()
        .map(|d| Dataset::new(d.clone(), cfg.batch_rows).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    for d in &datasets {
        d.check_plain_path()?;
    }
    let sh = Arc::new(Shared { cfg, datasets });
    let (avail_tx, avail_rx) = watch::channel(available(&sh).await);
    for d in &sh.datasets {
        if !avail_rx.borrow().iter().any(|n| n == d.name()) {
            tracing::warn!(dataset = d.name(), source = %d.cfg.source, "no file yet; not advertised until one appears");
        }
    }
    // Files appear and vanish: re-read the globs and re-register on change.
    let rescan = {
        let sh = sh.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(sh.cfg.rescan_ms.max(100));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
                let now = available(&sh).await;
                avail_tx.send_if_modified(|cur| {
                    let changed = *cur != now;
                    *cur = now.clone();
                    changed
                });
            }
        })
    };
    if sh.cfg.transport == config::Transport::Grpc {
        grpc::run(sh.clone(), stop, avail_rx).await;
        rescan.abort();
        return Ok(());
    }
    let workers: Vec<_> = (0..sh.cfg.workers)
        .map(|i| tokio::spawn(worker::run(i, sh.clone(), stop.clone(), avail_rx.clone())))
        .collect();
    for w in workers {
        let _ = w.await;
    }
    rescan.abort();
    Ok(())
}

async fn available(sh: &Arc<Shared>) -> Vec<String> {
    let sh = sh.clone();
    tokio::task::spawn_blocking(move || {
        sh.datasets
            .iter()
            .filter(|d| d.available())
            .map(|d| d.name().to_string())
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// `--convert`: each dataset once, to `DIR/<name>.arrows` (an IPC stream
/// file pyarrow opens with `pyarrow.ipc.open_stream`), through the same
/// reader and framer the workers use. Returns (name, rows, bytes, seconds).
pub fn convert(
    cfg: &Config,
    dir: &std::path::Path,
) -> anyhow::Result<Vec<(String, u64, u64, f64)>> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for d in &cfg.datasets {
        let ds = Arc::new(Dataset::new(d.clone(), cfg.batch_rows)?);
        let path = dir.join(format!("{}.arrows", ds.name()));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let t0 = std::time::Instant::now();
        let never = std::sync::atomic::AtomicBool::new(false);
        let mut io_error = None;
        let outcome = stream::run(&ds, cfg.chunk_bytes, &never, |p| match p {
            stream::Piece::Start(_) => true,
            stream::Piece::Data(m) => match file.write_all(&m) {
                Ok(()) => true,
                Err(e) => {
                    io_error = Some(e);
                    false
                }
            },
        });
        file.flush()?;
        match outcome {
            stream::Outcome::Done { bytes, rows } => out.push((
                ds.name().to_string(),
                rows,
                bytes,
                t0.elapsed().as_secs_f64(),
            )),
            stream::Outcome::Failed(e) => anyhow::bail!(e),
            stream::Outcome::Gone => anyhow::bail!(
                "writing {}: {}",
                path.display(),
                io_error.map(|e| e.to_string()).unwrap_or_default()
            ),
        }
    }
    Ok(out)
}
