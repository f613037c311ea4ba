//! One `query`: take an idle connector worker, ask it for the dataset, and
//! forward its frames to the browser until `stream_end`.
//!
//! The worker's socket has been moved to this session's shard, so this loop
//! reads it and writes into the browser's outbox with no lock and no copy:
//! each binary frame is the same `Bytes` the kernel filled, header rewritten
//! in place (masked seed-001 connector) or untouched (fast path).

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde_json::{json, Value};

use crate::connector::{self, EdgeConn, Unavailable};
use crate::frame::Opcode;
use crate::keepalive;
use crate::protocol::{self, close, Reply};
use crate::reader::{freeze, ReadError, TextAssembler};
use crate::registry::ConnKind;
use crate::session::{check_dataset, Flow, Session};

/// The three transfer patterns of seed 003.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryMode {
    /// Frames forwarded as they come (the default).
    Stream,
    /// Collected whole and sent as one message, bounded by `max_buffered_bytes`.
    Buffered,
    /// The connector exports to object storage; only its presigned URL
    /// crosses the gateway.
    Offload,
}

/// How a stream ended, for the worker's fate and the metrics.
enum End {
    /// `stream_end` or a connector `error`: the worker is reusable.
    Done,
    /// The session went away (or hit its quota): cancel, then reuse if the
    /// connector confirms in time.
    Cancel(Flow),
    /// The connector connection failed (or broke the protocol: the code
    /// says how): it is closed, never reused.
    Broken(u16, Flow),
}

pub async fn run(sess: &Rc<Session>, dataset: &str, mode: QueryMode) -> Flow {
    if sess.feed.borrow().is_some() {
        return Flow::Close(
            close::BAD_REQUEST,
            "bad_request",
            "session is subscribed to a live feed".into(),
        );
    }
    if let Some(refused) = check_dataset(sess, dataset) {
        return refused;
    }
    let shard = &sess.shard;
    let mut w = match connector::acquire(shard, &sess.edge, ConnKind::Worker, Some(dataset)).await {
        Ok(w) => w,
        Err(Unavailable::Offline) => {
            return Flow::Close(
                close::EDGE_OFFLINE,
                "edge_offline",
                format!("edge {} has no connector serving {dataset:?}", sess.edge),
            )
        }
        Err(Unavailable::Busy) => {
            return Flow::Close(
                close::EDGE_OFFLINE,
                "edge_busy",
                format!(
                    "no connector worker of edge {} became free in time",
                    sess.edge
                ),
            )
        }
    };
    if sess.gone.get() {
        connector::park(shard.clone(), w);
        return Flow::Ended;
    }
    let info_id = sess.request_id("i");
    let get_id = sess.request_id("g");
    shard.metrics().streams_started.fetch_add(1, Relaxed);
    *sess.upstream.borrow_mut() = Some(w.reader.interrupter());
    let end = stream(sess, &mut w, dataset, &info_id, &get_id, mode).await;
    *sess.upstream.borrow_mut() = None;
    match end {
        End::Done => {
            connector::park(shard.clone(), w);
            if sess.outbox.is_open() {
                Flow::Continue
            } else {
                Flow::Ended
            }
        }
        End::Cancel(flow) => {
            shard.metrics().streams_cancelled.fetch_add(1, Relaxed);
            connector::cancel(shard, w, &get_id).await;
            flow
        }
        End::Broken(code, flow) => {
            shard.metrics().streams_failed.fetch_add(1, Relaxed);
            connector::retire(shard, w, code, "stream failed").await;
            flow
        }
    }
}

async fn stream(
    sess: &Rc<Session>,
    w: &mut EdgeConn,
    dataset: &str,
    info_id: &str,
    get_id: &str,
    mode: QueryMode,
) -> End {
    let buffered = mode == QueryMode::Buffered;
    let shard = &sess.shard;
    let cfg = shard.cfg();
    let ask = async {
        w.send_json(&json!({"action": "get_flight_info", "request_id": info_id, "descriptor": {"path": [dataset]}}))
            .await?;
        let mut get = json!({"action": "do_get", "request_id": get_id, "ticket": dataset});
        if mode == QueryMode::Offload {
            get["offload"] = true.into();
        }
        w.send_json(&get).await
    };
    if ask.await.is_err() {
        return End::Broken(close::GOING_AWAY, edge_lost("connector connection failed"));
    }
    let live = keepalive::watch(
        Duration::from_millis(cfg.timeouts.ping_interval_ms),
        Duration::from_millis(cfg.timeouts.request_ms.max(cfg.timeouts.ping_interval_ms)),
        w.reader.interrupter(),
        None,
    );
    let metrics = shard.metrics();
    let mut text = TextAssembler::new(cfg.limits.max_text_bytes);
    // `buffered`: the payloads, concatenated, sent as one message at the end.
    let mut held: Vec<u8> = Vec::new();
    loop {
        let f = match w.reader.next().await {
            Ok(f) => f,
            Err(ReadError::Interrupted) => {
                if sess.gone.get() {
                    return End::Cancel(Flow::Ended);
                }
                if live.timed_out() {
                    return End::Broken(
                        close::GOING_AWAY,
                        edge_lost("connector stopped responding mid-stream"),
                    );
                }
                if live.take_ping_due() && w.send(protocol::ping()).await.is_err() {
                    return End::Broken(
                        close::GOING_AWAY,
                        edge_lost("connector connection failed"),
                    );
                }
                continue;
            }
            Err(ReadError::Protocol(e)) => {
                tracing::warn!(edge = %sess.edge, error = %e, "connector protocol violation");
                return End::Broken(e.close_code(), edge_lost("connector sent an invalid frame"));
            }
            Err(_) => {
                return End::Broken(
                    close::GOING_AWAY,
                    edge_lost("connector disconnected mid-stream"),
                )
            }
        };
        live.seen();
        match f.message {
            Opcode::Binary => {
                let len = f.payload_len();
                if sess.expired() {
                    return End::Cancel(Flow::Close(
                        close::BAD_TOKEN,
                        "token_expired",
                        "session token expired".into(),
                    ));
                }
                if buffered && held.len() as u64 + len > cfg.limits.max_buffered_bytes as u64 {
                    return End::Cancel(Flow::Close(
                        close::TOO_LARGE,
                        "too_large",
                        format!(
                            "dataset {dataset} is larger than the buffered limit of {} bytes; fetch it streamed",
                            cfg.limits.max_buffered_bytes
                        ),
                    ));
                }
                if !sess.quota.admit(len) {
                    metrics.quota_closes.fetch_add(1, Relaxed);
                    return End::Cancel(quota_exceeded(sess, len));
                }
                if buffered {
                    // Collecting is the point of this mode: one copy, bounded.
                    // A frame that straddled two reads is in two pieces.
                    held.extend_from_slice(&f.wire[f.payload_at..]);
                    if let Some(t) = &f.tail {
                        held.extend_from_slice(t);
                    }
                    continue;
                }
                if sess.outbox.push_wire(freeze(f)).is_err() {
                    return End::Cancel(Flow::Ended);
                }
                metrics.bytes_forwarded.fetch_add(len, Relaxed);
                metrics.frames_forwarded.fetch_add(1, Relaxed);
                // Backpressure: stop reading the connector until the browser
                // has taken enough; TCP does the rest.
                if sess.outbox.space().await.is_err() {
                    return End::Cancel(Flow::Ended);
                }
            }
            Opcode::Text => {
                let t = match text.push(&f) {
                    Ok(Some(t)) => t,
                    Ok(None) => continue,
                    Err(e) => {
                        return End::Broken(
                            e.close_code(),
                            edge_lost("connector sent an invalid text message"),
                        )
                    }
                };
                let Ok(reply) = serde_json::from_str::<Reply>(&t) else {
                    tracing::warn!(edge = %sess.edge, "connector sent a message that is not JSON; ignored");
                    continue;
                };
                let rid = reply.request_id.as_deref().unwrap_or("");
                if rid == info_id {
                    let info = reply.data.clone().unwrap_or_else(|| strip(&t));
                    if reply.kind.as_deref() == Some("error") {
                        continue; // the do_get that follows reports it
                    }
                    sess.send(&json!({"type": "flight_info", "dataset": dataset, "info": info}));
                } else if rid == get_id {
                    match reply.kind.as_deref() {
                        Some("stream_start") => {
                            let schema = reply.schema.unwrap_or(Value::Null);
                            sess.send(&json!({"type": "stream_start", "dataset": dataset, "schema": schema}));
                        }
                        Some("offload") if mode == QueryMode::Offload => {
                            let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                            sess.send(&json!({"type": "offload", "dataset": dataset, "url": v["url"],
                                "bytes": v["bytes"], "rows": v["rows"], "expires_at": v["expires_at"]}));
                        }
                        Some("stream_end") => {
                            metrics.streams_completed.fetch_add(1, Relaxed);
                            if buffered {
                                let frame =
                                    crate::frame::encode_server_frame(Opcode::Binary, &held);
                                metrics
                                    .bytes_forwarded
                                    .fetch_add(held.len() as u64, Relaxed);
                                metrics.frames_forwarded.fetch_add(1, Relaxed);
                                if sess.outbox.push(frame.into()).is_err() {
                                    return End::Done;
                                }
                            }
                            sess.send(&json!({
                                "type": "stream_end",
                                "dataset": dataset,
                                "total_bytes": reply.total_bytes,
                                "bytes_forwarded": sess.quota.used(),
                            }));
                            return End::Done;
                        }
                        Some("error") => {
                            metrics.streams_failed.fetch_add(1, Relaxed);
                            let msg = reply.message.unwrap_or_else(|| "connector error".into());
                            sess.send(&json!({"type": "error", "code": "query_failed", "dataset": dataset, "message": msg}));
                            return End::Done;
                        }
                        _ => {}
                    }
                }
                // Anything else belongs to an earlier, cancelled request.
            }
            Opcode::Ping => {
                let pong = protocol::pong(f.payload());
                if let Err(e) = w.send(pong).await {
                    tracing::debug!(error = %e, "pong to connector failed");
                    return End::Broken(
                        close::GOING_AWAY,
                        edge_lost("connector connection failed"),
                    );
                }
            }
            Opcode::Close => {
                return End::Broken(
                    close::GOING_AWAY,
                    edge_lost("connector closed its connection mid-stream"),
                )
            }
            _ => {}
        }
    }
}

fn strip(text: &str) -> Value {
    let mut v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("request_id");
    }
    v
}

fn edge_lost(why: &str) -> Flow {
    Flow::Close(close::EDGE_OFFLINE, "edge_disconnected", why.to_owned())
}

fn quota_exceeded(sess: &Session, len: u64) -> Flow {
    Flow::Close(
        close::QUOTA,
        "quota_exceeded",
        format!(
            "byte quota of {} exceeded: {} used, next frame {len}",
            sess.quota.limit().unwrap_or(0),
            sess.quota.used()
        ),
    )
}
