//! One worker connection to the gateway, for life: dial out, register,
//! answer `get_flight_info` / `do_get` / `cancel`, and when the link drops,
//! dial again with exponential backoff and jitter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketWrite};
use serde_json::{json, Value};
use sluice_protocol::connector::{
    ConnectorAction, FromGateway, GatewayRequest, Register, RegisterAnswer, Reply,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::ipc::schema_message;
use crate::link::{self, Link};
use crate::redial::Backoff;
use crate::source::Dataset;
use crate::stream::{self, Outcome, Piece};

/// What every worker shares.
pub struct Shared {
    pub cfg: Config,
    pub datasets: Vec<Arc<Dataset>>,
}

impl Shared {
    pub(crate) fn find(&self, name: &str) -> Option<Arc<Dataset>> {
        self.datasets.iter().find(|d| d.name() == name).cloned()
    }

    /// What `get_flight_info` answers for `name` (seed 001's `data`
    /// object, the schema base64 inside), or the error to report.
    pub(crate) async fn info(&self, name: &str) -> Result<Value, String> {
        let Some(ds) = self.find(name) else {
            return Err(format!("unknown dataset {name:?}"));
        };
        let i = tokio::task::spawn_blocking(move || ds.info())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.0)?;
        let schema = schema_message(&i.schema)
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
            .unwrap_or_default();
        Ok(json!({
            "dataset": name, "schema": schema, "rows": i.rows, "bytes": i.bytes, "files": i.files,
            "fields": i.schema.fields().iter().map(|f| json!({"name": f.name(), "type": f.data_type().to_string()})).collect::<Vec<_>>(),
        }))
    }

    /// The `register` message for the datasets available now.
    pub(crate) fn register(&self, datasets: &[String]) -> Register {
        Register {
            tenant_id: self.cfg.tenant.clone(),
            edge_id: Some(self.cfg.edge.clone()),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            datasets: datasets.to_vec(),
        }
    }
}

/// A message for the writer task (the only owner of the socket's write half).
enum Out {
    Text(String),
    Binary(Vec<u8>),
    Control(OpCode, Vec<u8>),
    Close(u16, &'static str),
}

/// Why a link ended.
enum End {
    /// Shutdown was asked for.
    Stop,
}

/// Runs worker `id` until `stop` turns true.
pub async fn run(
    id: usize,
    sh: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut avail: watch::Receiver<Vec<String>>,
) {
    let mut backoff = Backoff::new(&sh.cfg);
    let link = format!("worker {id}");
    loop {
        if *stop.borrow() {
            return;
        }
        let registered = Arc::new(AtomicBool::new(false));
        match session(id, &sh, &mut stop, &mut avail, &registered).await {
            Ok(End::Stop) => return,
            Err(e) => backoff.failed(&link, registered.load(Ordering::Relaxed), &e),
        }
        backoff.wait(&mut stop).await;
    }
}

async fn session(
    id: usize,
    sh: &Arc<Shared>,
    stop: &mut watch::Receiver<bool>,
    avail: &mut watch::Receiver<Vec<String>>,
    registered: &AtomicBool,
) -> Result<End> {
    let Link { fast, read, write } = link::connect(&sh.cfg).await?;
    let (tx, rx) = mpsc::channel::<Out>(16);
    let writer = tokio::spawn(write_loop(write, rx));
    let (in_tx, mut inbound) = mpsc::channel::<Result<Value>>(16);
    let reader = tokio::spawn(read_loop(read, tx.clone(), in_tx));
    let result = serve(id, sh, fast, &tx, &mut inbound, stop, avail, registered).await;
    reader.abort();
    if matches!(result, Ok(End::Stop)) {
        let _ = tx.send(Out::Close(1001, "connector shutting down")).await;
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    result
}

fn register_msg(sh: &Shared, datasets: &[String]) -> String {
    let register = ConnectorAction::Register(sh.register(datasets));
    serde_json::to_string(&register).expect("register always serializes")
}

/// A stream in progress on this worker.
struct Running {
    rid: String,
    cancel: Arc<AtomicBool>,
    /// Set just before the request's last message (`stream_end` or
    /// `error`) is queued. The gateway reuses the worker the moment it
    /// reads that message, possibly before this task has returned, so
    /// "free" must mean "said its last word", not "task finished".
    ended: Arc<AtomicBool>,
    done: JoinHandle<()>,
}

impl Running {
    fn busy(&self) -> bool {
        !self.ended.load(Ordering::Acquire) && !self.done.is_finished()
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    id: usize,
    sh: &Arc<Shared>,
    fast: bool,
    tx: &mpsc::Sender<Out>,
    inbound: &mut mpsc::Receiver<Result<Value>>,
    stop: &mut watch::Receiver<bool>,
    avail: &mut watch::Receiver<Vec<String>>,
    registered: &AtomicBool,
) -> Result<End> {
    let names = avail.borrow_and_update().clone();
    tx.send(Out::Text(register_msg(sh, &names)))
        .await
        .map_err(|_| anyhow!("writer gone"))?;
    let ok = tokio::time::timeout(Duration::from_secs(10), inbound.recv())
        .await
        .map_err(|_| anyhow!("no answer to register within 10 s"))?
        .ok_or_else(|| anyhow!("gateway closed the connection"))??;
    match serde_json::from_value::<RegisterAnswer>(ok) {
        Ok(RegisterAnswer::Ok { .. }) => {}
        Ok(RegisterAnswer::Error { error }) => {
            bail!("gateway refused the registration: {error}")
        }
        Err(_) => bail!("gateway refused the registration: no reason given"),
    }
    registered.store(true, Ordering::Relaxed);
    tracing::info!(
        worker = id,
        fast_path = fast,
        datasets = names.len(),
        "registered with the gateway"
    );
    let mut running: Option<Running> = None;
    loop {
        tokio::select! {
            msg = inbound.recv() => {
                let v = msg.ok_or_else(|| anyhow!("gateway closed the connection"))??;
                handle(sh, tx, v, &mut running).await?;
            }
            changed = avail.changed() => {
                if changed.is_ok() {
                    let names = avail.borrow_and_update().clone();
                    tracing::info!(worker = id, datasets = ?names, "dataset list changed; registering again");
                    tx.send(Out::Text(register_msg(sh, &names))).await.map_err(|_| anyhow!("writer gone"))?;
                }
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    if let Some(r) = running.take() {
                        // Let the running stream finish; past the grace, end it with an error.
                        let cancel = r.cancel.clone();
                        let mut done = r.done;
                        if tokio::time::timeout(Duration::from_secs(10), &mut done).await.is_err() {
                            cancel.store(true, Ordering::Relaxed);
                            let _ = tokio::time::timeout(Duration::from_secs(2), done).await;
                        }
                    }
                    return Ok(End::Stop);
                }
            }
        }
    }
}

async fn handle(
    sh: &Arc<Shared>,
    tx: &mpsc::Sender<Out>,
    v: Value,
    running: &mut Option<Running>,
) -> Result<()> {
    let send = |o: Out| async move { tx.send(o).await.map_err(|_| anyhow!("writer gone")) };
    let request = match serde_json::from_value::<FromGateway>(v) {
        Ok(FromGateway::Request(r)) => r,
        Ok(FromGateway::Answer(_)) => return Ok(()), // answer to a re-register
        Err(e) => {
            tracing::debug!(error = %e, "ignoring message from the gateway");
            return Ok(());
        }
    };
    match request {
        GatewayRequest::GetFlightInfo {
            request_id: rid,
            descriptor,
        } => {
            let name = descriptor.path.first().cloned().unwrap_or_default();
            let msg = match sh.info(&name).await {
                Ok(data) => Reply::flight_info(&rid, data).to_json(),
                Err(e) => error(&rid, &e),
            };
            send(Out::Text(msg)).await
        }
        GatewayRequest::DoGet {
            request_id: rid,
            ticket: name,
            live,
            offload,
        } => {
            if running.as_ref().is_some_and(Running::busy) {
                return send(Out::Text(error(&rid, "this worker is already streaming"))).await;
            }
            let Some(ds) = sh.find(&name) else {
                return send(Out::Text(error(&rid, &format!("unknown dataset {name:?}")))).await;
            };
            if offload {
                let (t, r, cfg, chunk) = (
                    tx.clone(),
                    rid.clone(),
                    sh.cfg.offload.clone(),
                    sh.cfg.chunk_bytes,
                );
                let ended = Arc::new(AtomicBool::new(false));
                let e = ended.clone();
                let done = tokio::spawn(async move {
                    let msg = match crate::offload::run(ds, chunk, &cfg, &r).await {
                        Ok(o) => {
                            let offloaded =
                                Reply::offload(&r, &o.url, o.bytes, o.rows, o.expires_at);
                            let _ = t.send(Out::Text(offloaded.to_json())).await;
                            Reply::stream_end(&r, 0, Some(o.rows)).to_json()
                        }
                        Err(e) => error(&r, &e),
                    };
                    e.store(true, Ordering::Release);
                    let _ = t.send(Out::Text(msg)).await;
                });
                *running = Some(Running {
                    rid,
                    cancel: Arc::new(AtomicBool::new(false)),
                    ended,
                    done,
                });
                return Ok(());
            }
            if ds.live_only() && !live {
                return send(Out::Text(error(
                    &rid,
                    &format!("dataset {name} is a live feed: subscribe to it"),
                )))
                .await;
            }
            let cancel = Arc::new(AtomicBool::new(false));
            let ended = Arc::new(AtomicBool::new(false));
            let (c, e, t, r, chunk) = (
                cancel.clone(),
                ended.clone(),
                tx.clone(),
                rid.clone(),
                sh.cfg.chunk_bytes,
            );
            let done = tokio::task::spawn_blocking(move || {
                let last = produce(&ds, &r, &t, &c, chunk, live);
                e.store(true, Ordering::Release);
                if let Some(last) = last {
                    let _ = t.blocking_send(Out::Text(last));
                }
            });
            *running = Some(Running {
                rid,
                cancel,
                ended,
                done,
            });
            Ok(())
        }
        GatewayRequest::Cancel { request_id } => {
            if let Some(r) = running.as_ref().filter(|r| r.rid == request_id) {
                r.cancel.store(true, Ordering::Relaxed);
            }
            Ok(())
        }
    }
}

fn error(rid: &str, message: &str) -> String {
    Reply::error(rid, message).to_json()
}

/// Streams a dataset on a blocking thread: `stream_start`, then binary IPC
/// messages. Returns the request's last message — `stream_end`, or `error`,
/// never a silently short stream — for the caller to send once it has
/// marked the worker free; `None` when the gateway is gone.
fn produce(
    ds: &Arc<Dataset>,
    rid: &str,
    tx: &mpsc::Sender<Out>,
    cancel: &AtomicBool,
    chunk: usize,
    live: bool,
) -> Option<String> {
    let send = |o: Out| tx.blocking_send(o).is_ok();
    let emit = |p: Piece| match p {
        Piece::Start(schema) => send(Out::Text(Reply::stream_start(rid, &schema).to_json())),
        Piece::Data(m) => send(Out::Binary(m)),
    };
    // A live feed runs until the gateway cancels it (last viewer gone).
    let outcome = if live {
        crate::live::run(ds, chunk, cancel, emit)
    } else {
        stream::run(ds, chunk, cancel, emit)
    };
    match outcome {
        Outcome::Done { bytes, rows } => {
            tracing::info!(dataset = ds.name(), rows, bytes, "stream complete");
            Some(Reply::stream_end(rid, bytes, Some(rows)).to_json())
        }
        Outcome::Failed(msg) => {
            tracing::warn!(dataset = ds.name(), error = %msg, "stream failed");
            Some(error(rid, &msg))
        }
        Outcome::Gone => None,
    }
}

async fn write_loop(
    mut w: WebSocketWrite<link::WriteHalf>,
    mut rx: mpsc::Receiver<Out>,
) -> Result<()> {
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(o) = next.take() {
            let frame = match o {
                Out::Text(t) => Frame::text(Payload::Owned(t.into_bytes())),
                Out::Binary(b) => Frame::binary(Payload::Owned(b)),
                Out::Control(op, p) => Frame::new(true, op, None, Payload::Owned(p)),
                Out::Close(code, reason) => {
                    w.write_frame(Frame::close(code, reason.as_bytes())).await?;
                    w.flush().await?;
                    return Ok(());
                }
            };
            w.write_frame(frame)
                .await
                .context("writing to the gateway")?;
            next = rx.try_recv().ok();
        }
        // Nothing else queued: a TLS stream may still hold the last
        // records (rustls buffers what the socket did not take), so push
        // them out now. A no-op on plain TCP.
        w.flush().await.context("writing to the gateway")?;
    }
    Ok(())
}

async fn read_loop(
    mut r: fastwebsockets::WebSocketRead<link::Prefixed>,
    tx: mpsc::Sender<Out>,
    inbound: mpsc::Sender<Result<Value>>,
) {
    let mut obligated = |f: Frame<'_>| {
        let (op, p, tx) = (f.opcode, f.payload.to_vec(), tx.clone());
        async move {
            tx.send(Out::Control(op, p))
                .await
                .map_err(|_| std::io::Error::other("writer gone"))
        }
    };
    loop {
        let msg = match r.read_frame(&mut obligated).await {
            Ok(f) => match f.opcode {
                OpCode::Text => serde_json::from_slice::<Value>(&f.payload)
                    .map_err(|e| anyhow!("bad JSON from the gateway: {e}")),
                OpCode::Close => {
                    let code = f.payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    let reason =
                        String::from_utf8_lossy(f.payload.get(2..).unwrap_or(&[])).into_owned();
                    Err(anyhow!("gateway closed the connection ({code:?} {reason})"))
                }
                _ => continue,
            },
            Err(e) => Err(anyhow!("reading from the gateway: {e}")),
        };
        let last = msg.is_err();
        if inbound.send(msg).await.is_err() || last {
            return;
        }
    }
}
