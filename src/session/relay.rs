//! Relay mode (seed 000): the session takes one idle edge connection, the
//! edge is told it is paired, and from then on data frames flow both ways
//! unchanged, frame for frame, until either side closes; the close code is
//! passed on to the other side.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use monoio::io::{OwnedReadHalf, Splitable};
use monoio::net::TcpStream;
use sluice_protocol::relay::RelayEvent;

use crate::edge::{self, Release, Unavailable};
use crate::registry::ConnKind;
use crate::session::burst::{Burst, Step};
use crate::session::{other_tenant, BrowserReader, Session};
use crate::wire::frame::{parse_close, Opcode};
use crate::wire::keepalive;
use crate::wire::message::{self, close, ErrorCode, Refusal};
use crate::wire::outbox::Outbox;
use crate::wire::peer::{Incoming, Peer, PeerError, ViaOutbox};
use crate::wire::reader::{freeze, FrameReader};
use crate::wire::utf8::Utf8Stream;

/// Which way a pump carries frames.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// edge → browser: counted against the quota.
    Down,
    /// browser → edge.
    Up,
}

/// Relays until either side ends; gives back the browser's read half for
/// the closing handshake.
pub async fn run(sess: &Rc<Session>, mut browser: BrowserReader) -> Option<BrowserReader> {
    let shard = &sess.shard;
    let cfg = shard.cfg();
    let lease = match edge::acquire(shard, &sess.edge, ConnKind::Relay, None, sess.who()).await {
        Ok(lease) => lease,
        Err(Unavailable::OtherTenant) => {
            sess.fail(other_tenant());
            return Some(browser);
        }
        Err(Unavailable::Offline) | Err(Unavailable::Busy) => {
            let msg = format!("no idle connection of edge {} to pair with", sess.edge);
            sess.fail(Refusal::new(
                close::EDGE_OFFLINE,
                ErrorCode::EdgeOffline,
                msg,
            ));
            return Some(browser);
        }
    };
    if sess.gone.get() {
        lease.release(Release::Finished).await;
        return Some(browser);
    }
    // The relay owns the connection from here; `_hold` gives its place in
    // the registry back when the relay ends.
    let (edge, _hold) = lease.into_relay();
    let meta = edge.meta.clone();
    let rule = edge.reader.rule();
    let (stream, buffered) = edge.reader.into_parts();
    let fd = stream.as_raw_fd();
    let (erd, ewr) = stream.into_split();
    let edge_out = Outbox::new(cfg.limits.session_buffer_bytes);
    let stall = Duration::from_millis(cfg.timeouts.write_stall_ms);
    edge_out.attach(ewr, stall);
    let mut edge_reader: FrameReader<OwnedReadHalf<TcpStream>> =
        FrameReader::new(erd, buffered, rule, cfg.limits.max_frame_bytes)
            .with_chunk(cfg.limits.read_chunk_bytes);
    // The edge streams towards the browser: its frames are acknowledged in
    // pairs (`wire::acks`); `fd` stays open while the reader owns `erd`.
    edge_reader.pace_acks(fd);
    let _ = edge_out.push(message::text(&RelayEvent::Paired {
        session_id: sess.sid.as_str().to_owned(),
        sub: sess.claims.sub.clone(),
    }));
    tracing::info!(sid = %sess.sid, edge = %meta.edge, conn = %meta.conn, "relay paired");

    browser.set_max_payload(cfg.limits.max_frame_bytes);
    browser.set_chunk(cfg.limits.read_chunk_bytes);
    let ping = Duration::from_millis(cfg.timeouts.ping_interval_ms);
    let idle = Duration::from_millis(cfg.timeouts.idle_timeout_ms);
    let up_int = browser.interrupter();
    let down_int = edge_reader.interrupter();
    // Either pump ending stops the other.
    *sess.upstream.borrow_mut() = Some(down_int.clone());
    let up_live = keepalive::watch(ping, idle, up_int.clone(), Some(sess.outbox.clone()));
    let down_live = keepalive::watch(ping, idle, down_int.clone(), Some(edge_out.clone()));
    let down = {
        let sess = sess.clone();
        let (browser_out, edge_out) = (sess.outbox.clone(), edge_out.clone());
        let up_int = up_int.clone();
        monoio::spawn(async move {
            pump(
                &sess,
                edge_reader,
                Dir::Down,
                &edge_out,
                &browser_out,
                down_live,
            )
            .await;
            up_int.interrupt();
        })
    };
    let browser = pump(sess, browser, Dir::Up, &sess.outbox, &edge_out, up_live).await;
    down_int.interrupt();
    down.await;
    *sess.upstream.borrow_mut() = None;
    // Whatever ended the relay, both sides get a close (no-op if sent).
    edge_out.close(message::closing(close::NORMAL, "session closed"));
    edge_out.finished().await;
    tracing::info!(sid = %sess.sid, edge = %meta.edge, "relay ended");
    Some(browser)
}

/// Carries frames from `reader` into `to`; answers pings on `own`.
async fn pump(
    sess: &Session,
    mut reader: FrameReader<OwnedReadHalf<TcpStream>>,
    dir: Dir,
    own: &Outbox,
    to: &Outbox,
    live: Rc<keepalive::Liveness>,
) -> FrameReader<OwnedReadHalf<TcpStream>> {
    let metrics = sess.shard.metrics();
    let mut utf8 = Utf8Stream::default();
    reader.hint_wakeups(sess.frame_lines(to));
    // Pongs to a peer that does not read are bounded by its outbox.
    let mut peer = Peer::raw(&mut reader, ViaOutbox(own.clone())).watched(live);
    // Edge frames admitted but not yet queued, while the next one is
    // already here: they go to the browser together.
    let mut burst = Burst::default();
    loop {
        let next = peer.next().await;
        if burst.flush_unless_data(&next, to, metrics).is_err() {
            break;
        }
        let f = match next {
            Ok(Incoming::Data(f)) => f,
            // A raw peer yields text frames as data; there is no whole text.
            Ok(Incoming::Text(_)) => continue,
            Ok(Incoming::Interrupted) => {
                if sess.gone.get() || !own.is_open() || !to.is_open() {
                    break;
                }
                continue;
            }
            Ok(Incoming::Close(f)) => {
                let status = match parse_close(f.payload()) {
                    Ok(s) => s,
                    Err(e) => {
                        own.close(message::closing(e.close_code(), &e.to_string()));
                        to.close(message::closing(
                            close::GOING_AWAY,
                            "peer sent an invalid close",
                        ));
                        break;
                    }
                };
                let (code, reason) =
                    status.map_or((close::NORMAL, String::new()), |s| (s.code, s.reason));
                to.close(message::closing(code, &reason));
                own.close(message::closing(code, &reason));
                break;
            }
            Err(PeerError::TimedOut) => {
                own.close(message::closing(close::GOING_AWAY, "idle timeout"));
                to.close(message::closing(close::GOING_AWAY, "peer idle timeout"));
                break;
            }
            Err(PeerError::Protocol(e)) => {
                metrics.protocol_errors.fetch_add(1, Relaxed);
                own.close(message::closing(e.close_code(), &e.to_string()));
                to.close(message::closing(
                    close::GOING_AWAY,
                    "peer violated the protocol",
                ));
                break;
            }
            // Its own outbox is closed: the session is ending.
            Err(PeerError::Write(_)) => break,
            Err(PeerError::Gone(_)) => {
                // Vanished without a close frame: tell the other side.
                let (code, why) = match dir {
                    Dir::Down => (close::EDGE_OFFLINE, "edge disconnected"),
                    Dir::Up => (close::GOING_AWAY, "browser disconnected"),
                };
                if dir == Dir::Down {
                    let _ = to.push(message::error(&Refusal::edge_disconnected(why)));
                }
                to.close(message::closing(code, why));
                break;
            }
        };
        if f.message == Opcode::Text && !utf8.feed(f.payload(), f.header.fin) {
            let _ = burst.flush(to, metrics);
            own.close(message::closing(
                close::INVALID_UTF8,
                "text message is not valid UTF-8",
            ));
            to.close(message::closing(
                close::GOING_AWAY,
                "peer sent invalid UTF-8",
            ));
            break;
        }
        if f.header.fin {
            utf8 = Utf8Stream::default();
        }
        let len = f.payload_len();
        if dir == Dir::Down {
            if !sess.quota.admit(len) {
                // The frames admitted before this one still go out.
                let _ = burst.flush(to, metrics);
                metrics.quota_closes.fetch_add(1, Relaxed);
                let why = Refusal::new(
                    close::QUOTA,
                    ErrorCode::QuotaExceeded,
                    format!("byte quota of {} exceeded", sess.quota.limit().unwrap_or(0)),
                );
                let _ = to.push(message::error(&why));
                to.close(message::closing(why.close, &why.message));
                own.close(message::closing(close::QUOTA, "session quota exceeded"));
                break;
            }
            match burst.forward(f, peer.next_is_whole_binary(), to, metrics) {
                // The next `peer.next()` returns that frame at once.
                Ok(Step::Held) => continue,
                Ok(Step::Queued) => {}
                Err(_) => break,
            }
        } else {
            metrics.bytes_upstream.fetch_add(len, Relaxed);
            if to.push_wire(freeze(f)).is_err() {
                break;
            }
        }
        if to.space().await.is_err() {
            break;
        }
    }
    drop(peer);
    reader.forget_hints();
    reader
}
