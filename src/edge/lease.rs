//! Taking an edge connection for a session: find an idle one of the edge
//! (on any shard), bring it to the session's shard, and give it back —
//! parked, cancelled or retired — when the session is done with it.

use std::rc::Rc;
use std::time::{Duration, Instant};

use sluice_protocol::connector::{GatewayRequest, Reply};

use crate::edge::conn::{adopt, EdgeConn};
use crate::edge::idle::{park, retire};
use crate::ids::EdgeId;
use crate::registry::{Acquire, ConnKind};
use crate::shard::{Shard, ShardMsg};
use crate::wire::frame::Opcode;
use crate::wire::message::close;
use crate::wire::reader::{ReadError, TextAssembler};

/// Why no connection could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The edge has no connection of this kind at all.
    Offline,
    /// All busy for the whole wait.
    Busy,
}

/// Takes an idle connection of `edge` (serving `dataset`, for workers) and
/// brings it to this shard, waiting up to `timeouts.pair_wait_ms`.
pub async fn acquire(
    shard: &Rc<Shard>,
    edge: &EdgeId,
    kind: ConnKind,
    dataset: Option<&str>,
) -> Result<EdgeConn, Unavailable> {
    let deadline = Instant::now() + Duration::from_millis(shard.cfg().timeouts.pair_wait_ms);
    loop {
        match shard.shared.registry.acquire(edge, kind, dataset, shard.id) {
            Acquire::Got { conn, shard: owner } => {
                let (tx, rx) = flume::bounded(1);
                if shard.shared.mailboxes[owner]
                    .send(ShardMsg::Take { conn, reply: tx })
                    .is_err()
                {
                    continue;
                }
                if let Ok(Some(moved)) = rx.recv_async().await {
                    if let Some(c) = adopt(shard, moved, kind) {
                        return Ok(c);
                    }
                }
                // It died on the way; ask again.
            }
            Acquire::Busy(wake) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero()
                    || monoio::time::timeout(left, wake.recv_async())
                        .await
                        .is_err()
                {
                    return Err(Unavailable::Busy);
                }
            }
            Acquire::Offline => return Err(Unavailable::Offline),
        }
    }
}

/// Tells the connector to stop request `rid`, and waits (bounded by
/// `timeouts.cancel_drain_ms`) for its `stream_end`/`error` so the worker can
/// be reused; a connector that does not confirm in time is disconnected.
pub async fn cancel(shard: &Rc<Shard>, mut w: EdgeConn, rid: &str) {
    let wait = Duration::from_millis(shard.cfg().timeouts.cancel_drain_ms);
    let max = shard.cfg().limits.max_text_bytes;
    let drained = monoio::time::timeout(wait, async {
        let cancel = GatewayRequest::Cancel {
            request_id: rid.to_owned(),
        };
        if w.send_json(&cancel).await.is_err() {
            return false;
        }
        let mut text = TextAssembler::new(max);
        loop {
            match w.reader.next().await {
                Ok(f) if f.message == Opcode::Text => {
                    let Ok(Some(t)) = text.push(&f) else { continue };
                    if let Ok(r) = serde_json::from_str::<Reply>(&t) {
                        if r.kind.ends_request() && r.request_id == rid {
                            return true;
                        }
                    }
                }
                Ok(f) if f.message == Opcode::Close => return false,
                Ok(_) | Err(ReadError::Interrupted) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    if drained == Ok(true) {
        park(shard.clone(), w);
    } else {
        retire(shard, w, close::GOING_AWAY, "stream not cancelled in time").await;
    }
}
