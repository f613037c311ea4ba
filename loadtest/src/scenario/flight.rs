//! `flight`: the same dataset read through the WebSocket fast path and
//! through Arrow Flight's `DoGet`, in interleaved rounds on one gateway.
//! The connector serves real Arrow IPC (a schema, then record batches of
//! `--frame-size` bytes), since the Flight front reads each message's
//! header to cut it into `FlightData`. Both clients count bytes without
//! decoding batches: the figure is the gateway's, not a decoder's.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use arrow_array::{Int64Array, RecordBatch};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::Ticket;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema};
use sluice::auth::token::Mode;
use sluice::wire::frame::Opcode;
use sluice_protocol::connector::Reply;

use super::bulk::Params;
use super::{pin_current, sinks, Ctx, Driven, Meter};
use crate::report::Outcome;
use crate::sink::Event;
use crate::wire;

/// The IPC schema message and one record-batch message of about `size`
/// bytes: what a connector's binary messages carry.
pub(super) fn ipc_messages(size: usize) -> Result<(Vec<u8>, Vec<u8>)> {
    let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
    let rows = (size / 8).max(1) as i64;
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from_iter_values(0..rows))],
    )?;
    let mut w = StreamWriter::try_new(Vec::new(), &schema)?;
    let head = std::mem::take(w.get_mut());
    w.write(&batch)?;
    let body = std::mem::take(w.get_mut());
    Ok((head, body))
}

pub fn run(ctx: &Ctx, flight: SocketAddr, p: &Params, pyarrow: bool) -> Result<Vec<Outcome>> {
    let mut out = against_websocket(ctx, "gateway-flight", p, |ctx, d, schema, batch, round| {
        via_flight(ctx, d, flight, schema, batch, p.frames, round)
    })?;
    if pyarrow {
        out.push(pyarrow_direct(ctx, p)?);
    }
    Ok(out)
}

/// Interleaved rounds of the same IPC dataset through the WebSocket fast
/// path and through `other` (reported as `name`), on the gateway the
/// scenario started: MB/s, and the gateway's CPU per GiB.
pub(super) fn against_websocket(
    ctx: &Ctx,
    name: &str,
    p: &Params,
    other: impl Fn(&Ctx, &Driven, &[u8], &[u8], usize) -> Result<f64>,
) -> Result<Vec<Outcome>> {
    let d = ctx
        .targets
        .first()
        .context("this scenario runs on the gateway it starts")?;
    let (schema, batch) = ipc_messages(p.size)?;
    let mut out = vec![Outcome::new("gateway"), Outcome::new(name)];
    for round in 0..p.runs {
        for (i, o) in out.iter_mut().enumerate() {
            let meter = Meter::start(d.proc);
            let r = if i == 0 {
                websocket(ctx, d, &schema, &batch, p.frames, round)
            } else {
                other(ctx, d, &schema, &batch, round)
            };
            match r {
                Ok(mb) => {
                    o.runs_mb_per_s.push(mb);
                    o.cost.payload_bytes += p.frames * batch.len() as u64;
                }
                Err(e) => o.error(format!("round {round}: {e:#}")),
            }
            meter.stop(o);
        }
    }
    summarize(&mut out, p.frames, batch.len(), p.runs);
    Ok(out)
}

/// Medians over the runs, per-run averages, and CPU per GiB.
fn summarize(out: &mut [Outcome], frames: u64, size: usize, runs: usize) {
    let gib = (frames as f64 * size as f64) / (1u64 << 30) as f64;
    for o in out.iter_mut() {
        o.mb_per_s = super::bulk::median(&o.runs_mb_per_s);
        o.messages = frames * o.runs_mb_per_s.len() as u64;
        let runs = runs.max(1) as f64;
        for v in [&mut o.proxy_cpu_s, &mut o.loader_cpu_s, &mut o.wall_s] {
            *v = v.map(|x| x / runs);
        }
        if let Some(c) = o.proxy_cpu_s {
            o.note = Some(format!("{:.2} gateway CPU-s per GiB", c / gib));
        }
    }
}

fn websocket(
    ctx: &Ctx,
    d: &Driven,
    schema: &[u8],
    batch: &[u8],
    n: u64,
    round: usize,
) -> Result<f64> {
    let (mut src, parts) = d.route.open_stream(round)?;
    let (head, frame) = (
        src.enc.frame(Opcode::Binary, schema),
        src.enc.frame(Opcode::Binary, batch),
    );
    let mut sink = sinks(ctx.rt, vec![parts])?.pop().expect("one sink");
    let cpu = ctx.layout.source_cpu(d.route.target, false);
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<_> {
        pin_current(cpu);
        src.stream.write_all(&head)?;
        for _ in 0..n {
            src.stream.write_all(&frame)?;
        }
        src.end();
        Ok(src)
    });
    let got = ctx.rt.block_on(async {
        let mut frames = 0u64;
        while frames < n + 1 {
            match sink.next().await? {
                Event::Binary { .. } => frames += 1,
                Event::Closed { code, reason } => {
                    bail!("closed {code:?} {reason} after {frames} frames")
                }
                Event::Text(_) => {}
            }
        }
        sink.close().await;
        Ok(frames)
    });
    let secs = t0.elapsed().as_secs_f64();
    drop(writer.join().expect("writer thread")?);
    got?;
    Ok((n * batch.len() as u64) as f64 / secs / 1e6)
}

fn via_flight(
    ctx: &Ctx,
    d: &Driven,
    flight: SocketAddr,
    schema: &[u8],
    batch: &[u8],
    n: u64,
    round: usize,
) -> Result<f64> {
    let (mut worker, enc) = d.route.connector(true, &["bulk"])?;
    let sid = format!("lt-flight-{round}-{}", std::process::id());
    let token = d.route.token(&sid, Mode::Query);
    let (head, frame) = (
        enc.frame(Opcode::Binary, schema),
        enc.frame(Opcode::Binary, batch),
    );
    let cpu = ctx.layout.source_cpu(d.route.target, false);
    let t0 = Instant::now();
    // The connector answers the do_get the Flight call causes.
    let writer = std::thread::spawn(move || -> Result<()> {
        pin_current(cpu);
        let rid = worker.wait_do_get(std::time::Duration::from_secs(10))?;
        worker.send_json(enc, &Reply::stream_start(&rid, ""))?;
        let mut s = worker.into_parts().0;
        s.write_all(&head)?;
        for _ in 0..n {
            s.write_all(&frame)?;
        }
        s.write_all(&wire::stream_end(enc, &rid))?;
        Ok(())
    });
    let got = ctx.rt.block_on(do_get(flight, Some(&token)));
    let secs = t0.elapsed().as_secs_f64();
    writer.join().expect("connector thread")?;
    let batches = got?;
    if batches != n {
        bail!("received {batches} record batches, sent {n}");
    }
    Ok((n * batch.len() as u64) as f64 / secs / 1e6)
}

/// Reads one `DoGet` to its end as an analytics client would, counting
/// record batches without decoding them.
async fn do_get(at: SocketAddr, token: Option<&str>) -> Result<u64> {
    let channel = super::h2_channel(at, 8 << 20, "the Flight listener").await?;
    let mut client = FlightServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let mut req = tonic::Request::new(Ticket::new("bulk"));
    if let Some(token) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .map_err(|_| anyhow!("token is not a header value"))?,
        );
    }
    let mut stream = client.do_get(req).await?.into_inner();
    let mut batches = 0u64;
    while let Some(m) = stream.message().await? {
        if !m.data_body.is_empty() {
            batches += 1;
        }
    }
    Ok(batches)
}

/// Arrow's own Flight server (pyarrow, C++) serving the same batches with
/// no gateway, on the gateway's CPU: the row Flight through Sluice is held
/// to. Its CPU is the Python process's, all threads.
pub fn pyarrow_direct(ctx: &Ctx, p: &Params) -> Result<Outcome> {
    const SERVER: &str = include_str!("../../py/pyarrow_flight_server.py");
    let dir = crate::targets::TempDir::new("pyarrow-flight")?;
    let script = dir.0.join("server.py");
    std::fs::write(&script, SERVER)?;
    let rows = (p.size / 8).max(1);
    let mut cmd = match ctx.layout.proxy_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "python3"]);
            c
        }
        None => Command::new("python3"),
    };
    let mut child = cmd
        .arg(&script)
        .args([
            "--rows",
            &rows.to_string(),
            "--batches",
            &p.frames.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting python3 with pyarrow (pip install pyarrow)")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("server stdout")?).read_line(&mut line)?;
    let port: u16 = line
        .trim()
        .parse()
        .with_context(|| format!("pyarrow server printed {line:?}, not its port"))?;
    let at = SocketAddr::from(([127, 0, 0, 1], port));
    let proc = Some(crate::targets::Proc(child.id()));
    let (_, batch) = ipc_messages(p.size)?;
    let mut o = Outcome::new("pyarrow-flight-direct");
    for round in 0..p.runs {
        let meter = Meter::start(proc);
        let t0 = Instant::now();
        match ctx.rt.block_on(do_get(at, None)) {
            Ok(n) if n == p.frames => {
                let secs = t0.elapsed().as_secs_f64();
                o.runs_mb_per_s
                    .push((n * batch.len() as u64) as f64 / secs / 1e6);
                o.cost.payload_bytes += n * batch.len() as u64;
            }
            Ok(n) => o.error(format!("round {round}: {n} batches of {}", p.frames)),
            Err(e) => o.error(format!("round {round}: {e:#}")),
        }
        meter.stop(&mut o);
    }
    drop(child.stdin.take());
    let _ = child.wait();
    let mut out = [o];
    summarize(&mut out, p.frames, batch.len(), p.runs);
    let [o] = out;
    Ok(o)
}
