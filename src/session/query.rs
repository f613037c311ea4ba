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

use serde_json::Value;
use sluice_protocol::browser::ServerEvent;
use sluice_protocol::connector::{Descriptor, GatewayRequest, Reply, ReplyKind};

use crate::edge::{self, EdgeConn, Release, Unavailable};
use crate::registry::ConnKind;
use crate::session::burst::{Burst, Step};
use crate::session::{check_dataset, other_tenant, Flow, Session};
use crate::wire::frame::Opcode;
use crate::wire::keepalive;
use crate::wire::message::{close, ErrorCode, Refusal};
use crate::wire::peer::{Direct, Incoming, Peer, PeerError};

pub use sluice_protocol::browser::QueryMode;

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

/// [`run`] as a task of its own (see `browser::serve_actions`).
///
/// Every frame of the stream wakes this task, and the first load of each
/// line of its future that the frame's poll touches is a cache miss (200
/// streams pass through the core between two frames of one; fan-in in
/// docs/benchmarks.md). So what the stream awaits only once (a worker,
/// the request, the worker's release) is boxed (here, or by `edge::acquire`
/// and `Lease::release` themselves): kept inline, the largest of those set
/// the future's size (3,968 bytes, against 992 without) and spread the
/// lines a frame touches across it.
/// `the_stream_task_stays_small` holds it there.
pub async fn task(sess: Rc<Session>, dataset: String, mode: QueryMode) -> Flow {
    run(&sess, &dataset, mode).await
}

pub async fn run(sess: &Rc<Session>, dataset: &str, mode: QueryMode) -> Flow {
    if sess.feed.borrow().is_some() {
        return Flow::Close(Refusal::new(
            close::BAD_REQUEST,
            ErrorCode::BadRequest,
            "session is subscribed to a live feed",
        ));
    }
    let shard = &sess.shard;
    let mut lease = match take_worker(sess, dataset).await {
        Ok(lease) => lease,
        Err(flow) => return flow,
    };
    if sess.gone.get() {
        lease.release(Release::Finished).await;
        return Flow::Ended;
    }
    let info_id = sess.request_id("i");
    let get_id = sess.request_id("g");
    shard.metrics().streams_started.fetch_add(1, Relaxed);
    *sess.upstream.borrow_mut() = Some(lease.conn().reader.interrupter());
    let end = stream(sess, lease.conn(), dataset, &info_id, &get_id, mode).await;
    lease.conn().reader.forget_hints();
    *sess.upstream.borrow_mut() = None;
    match end {
        End::Done => {
            lease.release(Release::Finished).await;
            if sess.outbox.is_open() {
                Flow::Continue
            } else {
                Flow::Ended
            }
        }
        End::Cancel(flow) => {
            shard.metrics().streams_cancelled.fetch_add(1, Relaxed);
            let request_id = &get_id;
            lease.release(Release::Abandoned { request_id }).await;
            flow
        }
        End::Broken(code, flow) => {
            shard.metrics().streams_failed.fetch_add(1, Relaxed);
            let reason = "stream failed";
            lease.release(Release::Broken { code, reason }).await;
            flow
        }
    }
}

/// Checks the dataset against the token and the edge, then leases one of
/// the edge's idle workers for it.
async fn take_worker(sess: &Rc<Session>, dataset: &str) -> Result<edge::Lease, Flow> {
    if let Some(refused) = check_dataset(sess, dataset) {
        return Err(refused);
    }
    let lease = edge::acquire(
        &sess.shard,
        &sess.edge,
        ConnKind::Worker,
        Some(dataset),
        sess.who(),
    )
    .await;
    match lease {
        Ok(lease) => Ok(lease),
        Err(Unavailable::Offline) => Err(Flow::Close(Refusal::new(
            close::EDGE_OFFLINE,
            ErrorCode::EdgeOffline,
            format!("edge {} has no connector serving {dataset:?}", sess.edge),
        ))),
        Err(Unavailable::OtherTenant) => Err(Flow::Close(other_tenant())),
        Err(Unavailable::Busy) => Err(Flow::Close(Refusal::new(
            close::EDGE_OFFLINE,
            ErrorCode::EdgeBusy,
            format!(
                "no connector worker of edge {} became free in time",
                sess.edge
            ),
        ))),
    }
}

/// `info`: asks a worker for the dataset's `flight_info` and passes it on,
/// streaming nothing (Arrow Flight's `GetFlightInfo` rests on it).
pub async fn info(sess: &Rc<Session>, dataset: &str) -> Flow {
    let mut lease = match take_worker(sess, dataset).await {
        Ok(lease) => lease,
        Err(flow) => return flow,
    };
    let info_id = sess.request_id("i");
    let wait = Duration::from_millis(sess.shard.cfg().timeouts.request_ms);
    let asked = monoio::time::timeout(wait, ask_info(sess, lease.conn(), dataset, &info_id)).await;
    let reply = match asked {
        Ok(Ok(Some(reply))) => reply,
        Ok(Ok(None)) => {
            lease.release(Release::Finished).await;
            return Flow::Ended;
        }
        Ok(Err(why)) => {
            let (code, reason) = (close::GOING_AWAY, "info failed");
            lease.release(Release::Broken { code, reason }).await;
            return edge_lost(why);
        }
        Err(_) => {
            let (code, reason) = (close::GOING_AWAY, "info timed out");
            lease.release(Release::Broken { code, reason }).await;
            return edge_lost("connector did not answer get_flight_info in time");
        }
    };
    lease.release(Release::Finished).await;
    sess.send(&reply);
    Flow::Continue
}

/// Sends `get_flight_info` and reads until its answer: the event for the
/// browser, `None` when the session left meanwhile.
async fn ask_info(
    sess: &Session,
    w: &mut EdgeConn,
    dataset: &str,
    info_id: &str,
) -> Result<Option<ServerEvent>, &'static str> {
    w.send_json(&GatewayRequest::GetFlightInfo {
        request_id: info_id.to_owned(),
        descriptor: Descriptor::dataset(dataset),
    })
    .await
    .map_err(|_| "connector connection failed")?;
    let max = sess.shard.cfg().limits.max_text_bytes;
    let mut peer = Peer::new(&mut w.reader, Direct, max);
    loop {
        let text = match peer.next().await {
            Ok(Incoming::Text(t)) => t,
            Ok(Incoming::Interrupted) if sess.gone.get() => return Ok(None),
            Ok(Incoming::Interrupted) | Ok(Incoming::Data(_)) => continue,
            Ok(Incoming::Close(_)) | Err(_) => {
                return Err("connector connection failed during info")
            }
        };
        let reply = match serde_json::from_str::<Reply>(&text) {
            Ok(r) if r.request_id == info_id => r,
            // A late answer to an earlier, cancelled request.
            _ => continue,
        };
        let dataset = dataset.to_owned();
        return Ok(Some(if reply.kind == ReplyKind::Error {
            ServerEvent::Error {
                code: ErrorCode::QueryFailed,
                dataset: Some(dataset),
                message: reply.message.unwrap_or_else(|| "connector error".into()),
            }
        } else {
            let info = reply.data.unwrap_or_else(|| strip(&text));
            ServerEvent::FlightInfo { dataset, info }
        }));
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
        w.send_json(&GatewayRequest::GetFlightInfo {
            request_id: info_id.to_owned(),
            descriptor: Descriptor::dataset(dataset),
        })
        .await?;
        w.send_json(&GatewayRequest::DoGet {
            request_id: get_id.to_owned(),
            ticket: dataset.to_owned(),
            live: false,
            offload: mode == QueryMode::Offload,
        })
        .await
    };
    if Box::pin(ask).await.is_err() {
        return End::Broken(close::GOING_AWAY, edge_lost("connector connection failed"));
    }
    w.expect_stream();
    w.reader.hint_wakeups(sess.frame_lines(&sess.outbox));
    let live = keepalive::watch(
        Duration::from_millis(cfg.timeouts.ping_interval_ms),
        Duration::from_millis(cfg.timeouts.request_ms.max(cfg.timeouts.ping_interval_ms)),
        w.reader.interrupter(),
        None,
    );
    let metrics = shard.metrics();
    // `request_ms` measures the stream's progress: pongs do not count.
    let mut peer = Peer::new(&mut w.reader, Direct, cfg.limits.max_text_bytes)
        .watched(live)
        .progress_only();
    // `buffered`: the payloads, concatenated, sent as one message at the end.
    let mut held: Vec<u8> = Vec::new();
    // Frames admitted but not yet queued, while the next one is already
    // here: they go to the browser together.
    let mut burst = Burst::default();
    loop {
        let next = peer.next().await;
        if burst
            .flush_unless_data(&next, &sess.outbox, metrics)
            .is_err()
        {
            return End::Cancel(Flow::Ended);
        }
        let f = match next {
            Ok(Incoming::Data(f)) => f,
            Ok(Incoming::Text(t)) => {
                let Ok(reply) = serde_json::from_str::<Reply>(&t) else {
                    tracing::warn!(edge = %sess.edge, "connector sent a message that is not JSON; ignored");
                    continue;
                };
                let rid = reply.request_id.as_str();
                if rid == info_id {
                    if reply.kind == ReplyKind::Error {
                        continue; // the do_get that follows reports it
                    }
                    let info = reply.data.clone().unwrap_or_else(|| strip(&t));
                    sess.send(&ServerEvent::FlightInfo {
                        dataset: dataset.to_owned(),
                        info,
                    });
                } else if rid == get_id {
                    match reply.kind {
                        ReplyKind::StreamStart => {
                            sess.send(&ServerEvent::StreamStart {
                                dataset: dataset.to_owned(),
                                schema: reply.schema.unwrap_or(Value::Null),
                                live: false,
                            });
                        }
                        ReplyKind::Offload if mode == QueryMode::Offload => {
                            let or_null = |v: Option<Value>| v.unwrap_or(Value::Null);
                            sess.send(&ServerEvent::Offload {
                                dataset: dataset.to_owned(),
                                url: or_null(reply.url),
                                bytes: or_null(reply.bytes),
                                rows: or_null(reply.rows.map(Value::from)),
                                expires_at: or_null(reply.expires_at),
                            });
                        }
                        ReplyKind::StreamEnd => {
                            metrics.streams_completed.fetch_add(1, Relaxed);
                            if buffered {
                                let frame =
                                    crate::wire::frame::encode_server_frame(Opcode::Binary, &held);
                                metrics.forwarded(held.len() as u64, 1);
                                if sess.outbox.push(frame.into()).is_err() {
                                    return End::Done;
                                }
                            }
                            sess.send(&ServerEvent::StreamEnd {
                                dataset: dataset.to_owned(),
                                total_bytes: reply.total_bytes,
                                bytes_forwarded: Some(sess.quota.used()),
                            });
                            return End::Done;
                        }
                        ReplyKind::Error => {
                            metrics.streams_failed.fetch_add(1, Relaxed);
                            sess.send(&ServerEvent::Error {
                                code: ErrorCode::QueryFailed,
                                dataset: Some(dataset.to_owned()),
                                message: reply.message.unwrap_or_else(|| "connector error".into()),
                            });
                            return End::Done;
                        }
                        _ => {}
                    }
                }
                // Anything else belongs to an earlier, cancelled request.
                continue;
            }
            Ok(Incoming::Interrupted) if sess.gone.get() => return End::Cancel(Flow::Ended),
            Ok(Incoming::Interrupted) => continue,
            Ok(Incoming::Close(_)) => {
                return End::Broken(
                    close::GOING_AWAY,
                    edge_lost("connector closed its connection mid-stream"),
                )
            }
            Err(PeerError::TimedOut) => {
                return End::Broken(
                    close::GOING_AWAY,
                    edge_lost("connector stopped responding mid-stream"),
                )
            }
            Err(PeerError::Protocol(e)) => {
                tracing::warn!(edge = %sess.edge, error = %e, "connector protocol violation");
                return End::Broken(e.close_code(), edge_lost("connector sent an invalid frame"));
            }
            Err(PeerError::Write(e)) => {
                tracing::debug!(error = %e, "write to connector failed");
                return End::Broken(close::GOING_AWAY, edge_lost("connector connection failed"));
            }
            Err(PeerError::Gone(_)) => {
                return End::Broken(
                    close::GOING_AWAY,
                    edge_lost("connector disconnected mid-stream"),
                )
            }
        };
        // A data frame: binary, or a continuation of one.
        {
            let len = f.payload_len();
            let refused = if sess.expired() {
                Some(End::Cancel(Flow::Close(Refusal::new(
                    close::BAD_TOKEN,
                    ErrorCode::TokenExpired,
                    "session token expired",
                ))))
            } else if buffered && held.len() as u64 + len > cfg.limits.max_buffered_bytes as u64 {
                Some(End::Cancel(Flow::Close(Refusal::new(close::TOO_LARGE, ErrorCode::TooLarge, format!(
                            "dataset {dataset} is larger than the buffered limit of {} bytes; fetch it streamed",
                            cfg.limits.max_buffered_bytes
                        )))))
            } else if !sess.quota.admit(len) {
                metrics.quota_closes.fetch_add(1, Relaxed);
                Some(End::Cancel(quota_exceeded(sess, len)))
            } else {
                None
            };
            if let Some(end) = refused {
                // The frames admitted before this one still go out.
                let _ = burst.flush(&sess.outbox, metrics);
                return end;
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
            let more = peer.next_is_whole_binary();
            match burst.forward(f, more, &sess.outbox, metrics) {
                // The next `peer.next()` returns that frame at once.
                Ok(Step::Held) => continue,
                Ok(Step::Queued) => {}
                Err(_) => return End::Cancel(Flow::Ended),
            }
            // Backpressure: stop reading the connector until the browser
            // has taken enough; TCP does the rest.
            // The wait is rare and boxed: kept inline, its timer would
            // double the stream task's future (see the test below).
            if !matches!(sess.outbox.has_room(), Ok(true)) {
                if let Some(end) = Box::pin(room_or_end(sess)).await {
                    return end;
                }
            }
        }
    }
}

/// Waits for room in the browser's full outbox; `Some`: the stream ends.
/// A browser that takes nothing for `timeouts.reader_stall_ms` is ended
/// (4409), so that the worker goes back to its edge instead of waiting on
/// a client that may never read again.
async fn room_or_end(sess: &Session) -> Option<End> {
    let stall = Duration::from_millis(sess.shard.cfg().timeouts.reader_stall_ms);
    match sess.outbox.space_within(stall).await {
        Ok(true) => None,
        Ok(false) => Some(End::Cancel(Flow::Close(stopped_reading(stall)))),
        Err(_) => Some(End::Cancel(Flow::Ended)),
    }
}

/// Why a stream whose client stopped reading was ended.
fn stopped_reading(stall: Duration) -> Refusal {
    Refusal::new(
        close::SLOW_CONSUMER,
        ErrorCode::SlowConsumer,
        format!(
            "the client read nothing for {} ms: the stream was ended to give the connector worker back (timeouts.reader_stall_ms)",
            stall.as_millis()
        ),
    )
}

fn strip(text: &str) -> Value {
    let mut v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("request_id");
    }
    v
}

fn edge_lost(why: &str) -> Flow {
    Flow::Close(Refusal::new(
        close::EDGE_OFFLINE,
        ErrorCode::EdgeDisconnected,
        why,
    ))
}

fn quota_exceeded(sess: &Session, len: u64) -> Flow {
    Flow::Close(Refusal::new(
        close::QUOTA,
        ErrorCode::QuotaExceeded,
        format!(
            "byte quota of {} exceeded: {} used, next frame {len}",
            sess.quota.limit().unwrap_or(0),
            sess.quota.used()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, F: Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The driver loads the first 16 lines (1 KiB) of a woken task's cell
    /// ahead of its poll; a stream task's future should fit in about that.
    /// Measured in release builds: 992 bytes (3,968 before its one-off
    /// awaits were boxed); 1,024 in debug builds. The bound leaves room for
    /// a few more locals, not for another one-off wait kept inline.
    #[test]
    fn the_stream_task_stays_small() {
        let size = future_size::<Rc<Session>, String, QueryMode, _>(task);
        eprintln!("query task future: {size} bytes");
        assert!(size <= 1280, "the query task's future grew to {size} bytes");
    }
}
