//! The idle pool: a registered edge connection waits here, on the shard
//! that accepted it, answering pings and noticing its death, until a
//! session on any shard takes it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::edge::conn::{adopt, gauge, EdgeConn};
use crate::registry::ConnKind;
use crate::shard::{IdleSlot, MovedConn, Shard};
use crate::wire::frame::{parse_close, Opcode};
use crate::wire::handoff;
use crate::wire::keepalive;
use crate::wire::message::{self, close};
use crate::wire::reader::{ReadError, TextAssembler};
use sluice_protocol::connector::ConnectorAction;

type TakeCell = Rc<RefCell<Option<flume::Sender<Option<MovedConn>>>>>;

/// Gives the shard a handle on an idle connection, so a session can take
/// it. Done before the registry shows the connection as idle: a `Take`
/// that arrives before the idle task first runs finds the slot, and the
/// task hands the connection over as soon as it starts.
pub(crate) fn mind(shard: &Shard, c: &EdgeConn) -> TakeCell {
    let take: TakeCell = Rc::new(RefCell::new(None));
    shard.idle.borrow_mut().insert(
        c.meta.conn,
        IdleSlot {
            interrupter: c.reader.interrupter(),
            take: take.clone(),
        },
    );
    take
}

/// Puts a connection back in the pool on this shard.
pub fn park(shard: Rc<Shard>, c: EdgeConn) {
    let take = mind(&shard, &c);
    shard
        .shared
        .registry
        .release(&c.meta.edge, c.meta.conn, shard.id);
    monoio::spawn(idle(shard, c, take));
}

/// Minds an idle connection: answers pings, keeps it alive, notices when
/// it dies, accepts a re-register (dataset list refresh), and hands it over
/// when a session on any shard takes it.
pub(crate) async fn idle(shard: Rc<Shard>, mut c: EdgeConn, take: TakeCell) {
    let t = &shard.cfg().timeouts;
    let live = keepalive::watch(
        Duration::from_millis(t.ping_interval_ms),
        Duration::from_millis(t.idle_timeout_ms),
        c.reader.interrupter(),
        None,
    );
    let mut text = TextAssembler::new(shard.cfg().limits.max_text_bytes);
    let reason: (u16, String) = loop {
        match c.reader.next().await {
            Ok(f) => {
                live.seen();
                match f.message {
                    Opcode::Ping => {
                        let pong = message::pong(f.payload());
                        if c.send(pong).await.is_err() {
                            break (close::GOING_AWAY, "write failed".into());
                        }
                    }
                    Opcode::Close => {
                        let code = parse_close(f.payload())
                            .ok()
                            .flatten()
                            .map_or(close::NORMAL, |s| s.code);
                        break (code, "connector closed".into());
                    }
                    Opcode::Text if c.kind == ConnKind::Worker => match text.push(&f) {
                        Ok(Some(t)) => refresh(&shard, &c, &t),
                        Ok(None) => {}
                        Err(e) => break (e.close_code(), e.to_string()),
                    },
                    // Late frames of a cancelled stream, pongs: nothing to do.
                    _ => {}
                }
            }
            Err(ReadError::Interrupted) => {
                if let Some(reply) = take.borrow_mut().take() {
                    live.stop();
                    hand_over(&shard, c, reply);
                    return;
                }
                if shard.closing.get() {
                    break (close::GOING_AWAY, "gateway shutting down".into());
                }
                if live.timed_out() {
                    break (close::GOING_AWAY, "idle timeout".into());
                }
                if live.take_ping_due() {
                    let ping = message::ping();
                    if c.send(ping).await.is_err() {
                        break (close::GOING_AWAY, "write failed".into());
                    }
                }
            }
            Err(ReadError::Protocol(e)) => break (e.close_code(), e.to_string()),
            Err(e) => break (close::GOING_AWAY, e.to_string()),
        }
    };
    live.stop();
    shard.idle.borrow_mut().remove(&c.meta.conn);
    retire(&shard, c, reason.0, &reason.1).await;
}

/// Ends a connection for good: close frame, registry, gauges.
pub async fn retire(shard: &Shard, mut c: EdgeConn, code: u16, reason: &str) {
    shard.shared.registry.remove(&c.meta.edge, c.meta.conn);
    gauge(shard, c.kind).fetch_sub(1, Relaxed);
    tracing::info!(edge = %c.meta.edge, conn = %c.meta.conn, code, reason, "edge connection closed");
    let _ = monoio::time::timeout(
        Duration::from_millis(500),
        c.send(message::closing(code, reason)),
    )
    .await;
}

fn refresh(shard: &Shard, c: &EdgeConn, text: &str) {
    if let Ok(ConnectorAction::Register(r)) = serde_json::from_str(text) {
        shard
            .shared
            .registry
            .update_datasets(&c.meta.edge, c.meta.conn, r.datasets);
    }
}

fn hand_over(shard: &Rc<Shard>, c: EdgeConn, reply: flume::Sender<Option<MovedConn>>) {
    gauge(shard, c.kind).fetch_sub(1, Relaxed);
    let kind = c.kind;
    let meta = c.meta.clone();
    let (stream, buffered) = c.reader.into_parts();
    let moved = MovedConn {
        sock: handoff::detach(stream, buffered),
        meta,
    };
    if let Err(flume::SendError(Some(back))) = reply.send(Some(moved)) {
        // The session gave up waiting: keep the connection here, idle.
        if let Some(c) = adopt(shard, back, kind) {
            park(shard.clone(), c);
        }
    }
}
