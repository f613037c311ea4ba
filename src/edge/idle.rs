//! The idle pool: a registered edge connection waits here, on the shard
//! that accepted it, answering pings and noticing its death, until a
//! session on any shard takes it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::edge::conn::{adopt, gauge, EdgeConn};
use crate::ids::ConnId;
use crate::registry::ConnKind;
use crate::shard::{ConnMeta, IdleSlot, MovedConn, Shard};
use crate::wire::handoff;
use crate::wire::keepalive;
use crate::wire::message::{self, close};
use crate::wire::peer::{close_code, Direct, Incoming, Peer, PeerError};
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

/// Another shard (or this one) takes idle connection `conn`: its idle task
/// is woken to hand it over through `reply` (`None` when it is gone).
pub fn take(shard: &Shard, conn: ConnId, reply: flume::Sender<Option<MovedConn>>) {
    let slot = shard.idle.borrow_mut().remove(&conn);
    match slot {
        Some(slot) => {
            *slot.take.borrow_mut() = Some(reply);
            slot.interrupter.interrupt();
        }
        None => {
            let _ = reply.send(None);
        }
    }
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
    let max_text = shard.cfg().limits.max_text_bytes;
    let exit = {
        // Workers may send `register` again (dataset list refresh); a relay
        // edge's frames while idle mean nothing.
        let peer = match c.kind {
            ConnKind::Worker => Peer::new(&mut c.reader, Direct, max_text),
            ConnKind::Relay => Peer::raw(&mut c.reader, Direct),
        };
        let mut peer = peer.watched(live);
        loop {
            match peer.next().await {
                Ok(Incoming::Text(t)) => refresh(&shard, &c.meta, &t),
                // Late frames of a cancelled stream: nothing to do.
                Ok(Incoming::Data(_)) => {}
                Ok(Incoming::Close(f)) => {
                    break Exit::Retire(close_code(&f), "connector closed".into())
                }
                Ok(Incoming::Interrupted) => {
                    if let Some(reply) = take.borrow_mut().take() {
                        break Exit::HandOver(reply);
                    }
                    if shard.closing.get() {
                        break Exit::Retire(close::GOING_AWAY, "gateway shutting down".into());
                    }
                }
                Err(PeerError::TimedOut) => {
                    break Exit::Retire(close::GOING_AWAY, "idle timeout".into())
                }
                Err(PeerError::Protocol(e)) => break Exit::Retire(e.close_code(), e.to_string()),
                Err(PeerError::Write(_)) => {
                    break Exit::Retire(close::GOING_AWAY, "write failed".into())
                }
                Err(e) => break Exit::Retire(close::GOING_AWAY, e.to_string()),
            }
        }
    };
    match exit {
        Exit::HandOver(reply) => hand_over(&shard, c, reply),
        Exit::Retire(code, reason) => {
            shard.idle.borrow_mut().remove(&c.meta.conn);
            retire(&shard, c, code, &reason).await;
        }
    }
}

/// How an idle connection stops being idle.
enum Exit {
    /// A session took it.
    HandOver(flume::Sender<Option<MovedConn>>),
    /// It is closed for good, with this code and reason.
    Retire(u16, String),
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

fn refresh(shard: &Shard, meta: &ConnMeta, text: &str) {
    if let Ok(ConnectorAction::Register(r)) = serde_json::from_str(text) {
        shard
            .shared
            .registry
            .update_datasets(&meta.edge, meta.conn, r.datasets);
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
