//! `grpc`: bulk from a connector on seed 002's gRPC tunnel against the
//! WebSocket fast path, in interleaved rounds on one gateway. The loader
//! plays the gRPC connector with tonic (plaintext, edge key in metadata):
//! `Connect`, then one `Serve` call of `--frames` chunks of `--frame-size`
//! bytes of real Arrow IPC; a browser reads them on `/stream`.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use sluice::auth::token::Mode;
use sluice_protocol::browser::{BrowserAction, QueryMode};
use sluice_protocol::tunnel::connector_tunnel_client::ConnectorTunnelClient;
use sluice_protocol::tunnel::{
    connector_message, data_message, gateway_message, ArrowChunk, ConnectorMessage, DataMessage,
    RegisterRequest, StreamEnd, StreamStart,
};

use super::bulk::Params;
use super::flight::against_websocket;
use super::{pin_current, sinks, Ctx};
use crate::report::Outcome;
use crate::sink::Event;
use crate::wire::Encoding;

pub fn run(ctx: &Ctx, grpc: SocketAddr, p: &Params) -> Result<Vec<Outcome>> {
    against_websocket(ctx, "gateway-grpc", p, |ctx, d, schema, batch, round| {
        via_grpc(ctx, d, grpc, schema, batch, p.frames, round)
    })
}

/// Who the loader's gRPC connector is and what it serves.
struct Serving {
    grpc: SocketAddr,
    tenant: String,
    edge: String,
    key: String,
    schema: Bytes,
    batch: Bytes,
    n: u64,
}

async fn connector(s: Serving, ready: mpsc::Sender<()>) -> Result<()> {
    let Serving {
        grpc,
        tenant,
        edge,
        key,
        schema,
        batch,
        n,
    } = s;
    let channel = super::h2_channel(grpc, 4 << 20, "the gRPC listener").await?;
    let mut client = ConnectorTunnelClient::new(channel)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel::<ConnectorMessage>(4);
    tx.send(ConnectorMessage {
        request_id: String::new(),
        kind: Some(connector_message::Kind::Register(RegisterRequest {
            tenant_id: tenant,
            version: "loadtest".into(),
            datasets: vec!["bulk".into()],
            edge_id: edge,
        })),
    })
    .await?;
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut inbound = client.connect(keyed(&key, outbound)).await?.into_inner();
    let mut rid = None;
    while let Some(m) = inbound.message().await? {
        match m.kind {
            Some(gateway_message::Kind::Registered(_)) => {
                let _ = ready.send(());
            }
            Some(gateway_message::Kind::DoGet(_)) => {
                rid = Some(m.request_id);
                break;
            }
            _ => {}
        }
    }
    let rid = rid.ok_or_else(|| anyhow!("the tunnel ended before a do_get"))?;
    let total = (schema.len() as u64) + n * batch.len() as u64;
    let start = DataMessage {
        kind: Some(data_message::Kind::Start(StreamStart {
            request_id: rid,
            schema: schema.clone(),
        })),
    };
    let chunk = |data: Bytes| DataMessage {
        kind: Some(data_message::Kind::Chunk(ArrowChunk { data })),
    };
    let end = DataMessage {
        kind: Some(data_message::Kind::End(StreamEnd {
            total_bytes: total as i64,
        })),
    };
    let msgs = std::iter::once(start)
        .chain(std::iter::once(chunk(schema)))
        .chain((0..n).map(move |_| chunk(batch.clone())))
        .chain(std::iter::once(end));
    let summary = client
        .serve(keyed(&key, futures_util::stream::iter(msgs)))
        .await?;
    drop(tx);
    if summary.get_ref().cancelled {
        bail!("the gateway cancelled the stream");
    }
    Ok(())
}

fn keyed<T>(key: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("edge-key", key.parse().expect("edge key is a header value"));
    r
}

fn via_grpc(
    ctx: &Ctx,
    d: &super::Driven,
    grpc: SocketAddr,
    schema: &[u8],
    batch: &[u8],
    n: u64,
    round: usize,
) -> Result<f64> {
    let gw = d.route.gw;
    let serving = Serving {
        grpc,
        tenant: gw.tenant.clone(),
        edge: gw.edge.clone(),
        key: gw.edge_key.clone(),
        schema: Bytes::copy_from_slice(schema),
        batch: Bytes::copy_from_slice(batch),
        n,
    };
    let batch_len = batch.len() as u64;
    let cpu = ctx.layout.source_cpu(d.route.target, false);
    let (ready_tx, ready) = mpsc::channel();
    let conn = std::thread::spawn(move || -> Result<()> {
        pin_current(cpu);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(connector(serving, ready_tx))
    });
    ready
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow!("the gRPC connector never registered"))?;
    let sid = format!("lt-grpc-{round}-{}", std::process::id());
    let mut browser = d.route.browser(&sid, Mode::Query)?;
    let t0 = Instant::now();
    let query = BrowserAction::Query {
        dataset: "bulk".into(),
        mode: QueryMode::Stream,
    };
    browser.send_json(Encoding::Masked, &query)?;
    let mut sink = sinks(ctx.rt, vec![browser.into_parts()])?
        .pop()
        .expect("one sink");
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
    conn.join().expect("connector thread")?;
    got?;
    Ok((n * batch_len) as f64 / secs / 1e6)
}
