//! Taking an edge connection for a session: find an idle one of the edge
//! (on any shard), bring it to the session's shard, and hand it over as a
//! [`Lease`]. The session only says how its use ended ([`Release`]); the
//! lease decides the connection's fate — back to the pool, cancelled then
//! reused, or closed — so no session code steers a connection's life.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use sluice_protocol::connector::{GatewayRequest, Reply};

use crate::edge::conn::{adopt, EdgeConn};
use crate::edge::idle::{park, retire};
use crate::ids::EdgeId;
use crate::registry::{Acquire, ConnKind, Who};
use crate::shard::{ConnMeta, Shard, ShardMsg};
use crate::wire::message::close;
use crate::wire::peer::{Direct, Incoming, Peer};

/// How often a relay session waiting for an offline edge looks again.
const OFFLINE_POLL: Duration = Duration::from_millis(10);

/// Why no connection could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The edge has no connection of this kind at all.
    Offline,
    /// All busy for the whole wait.
    Busy,
    /// The edge now online under this id belongs to another tenant.
    OtherTenant,
}

/// An edge connection taken for one session. A lease dropped without a
/// [`Lease::release`] closes its connection: one whose state nobody vouched
/// for never goes back to the pool.
pub struct Lease {
    shard: Rc<Shard>,
    conn: Option<EdgeConn>,
}

/// How a session's use of its edge connection ended.
#[derive(Debug, Clone, Copy)]
pub enum Release<'a> {
    /// No request is open on it (it ended with `stream_end` or `error`, or
    /// none was made): it is reusable at once.
    Finished,
    /// The session left while `request_id` was running: the connector is
    /// told to cancel it, and the connection is reused once it confirms
    /// within `timeouts.cancel_drain_ms`, else closed.
    Abandoned { request_id: &'a str },
    /// The connection failed or broke the protocol: closed with `code`.
    Broken { code: u16, reason: &'a str },
}

impl Lease {
    pub fn conn(&mut self) -> &mut EdgeConn {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until released")
    }

    /// Gives the connection back, and decides what becomes of it.
    ///
    /// Boxed, like [`acquire`]: a lease is released once, but kept inline
    /// this future (the connection, a cancel's wait for the connector)
    /// would set the size of every task that holds a lease, and each frame
    /// a streaming task forwards touches more lines of a larger task
    /// (docs/benchmarks.md, eleventh sitting).
    pub fn release<'a>(mut self, how: Release<'a>) -> Pin<Box<impl Future<Output = ()> + 'a>> {
        Box::pin(async move {
            let Some(c) = self.conn.take() else { return };
            match how {
                Release::Finished => park(self.shard.clone(), c),
                Release::Abandoned { request_id } => cancel(&self.shard, c, request_id).await,
                Release::Broken { code, reason } => retire(&self.shard, c, code, reason).await,
            }
        })
    }

    /// Relay mode: the connection becomes the session's for good (it is
    /// never reused after a relay). It stays counted as one of the edge's
    /// connections until the returned [`RelayHold`] is dropped.
    pub fn into_relay(mut self) -> (EdgeConn, RelayHold) {
        let c = self
            .conn
            .take()
            .expect("a lease holds its connection until released");
        let hold = RelayHold {
            shard: self.shard.clone(),
            meta: c.meta.clone(),
        };
        (c, hold)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let shard = self.shard.clone();
            monoio::spawn(async move {
                retire(&shard, c, close::GOING_AWAY, "released without a decision").await;
            });
        }
    }
}

/// A relay connection's place in the registry and the gauges, given up
/// when the relay ends.
pub struct RelayHold {
    shard: Rc<Shard>,
    meta: ConnMeta,
}

impl Drop for RelayHold {
    fn drop(&mut self) {
        self.shard
            .shared
            .registry
            .remove(&self.meta.edge, self.meta.conn);
        self.shard
            .metrics()
            .relay_conns_active
            .fetch_sub(1, Relaxed);
    }
}

/// Takes an idle connection of `edge` (serving `dataset`, for workers) for
/// a session of `who` (within its fair share of the edge's workers) and
/// brings it to this shard, waiting up to
/// `timeouts.pair_wait_ms`.
///
/// Boxed: the wait is once per lease, and its 1,152 bytes would otherwise
/// be part of every task that takes a lease and then streams (see
/// [`Lease::release`]).
pub fn acquire<'a>(
    shard: &'a Rc<Shard>,
    edge: &'a EdgeId,
    kind: ConnKind,
    dataset: Option<&'a str>,
    who: Who<'a>,
) -> Pin<Box<impl Future<Output = Result<Lease, Unavailable>> + 'a>> {
    Box::pin(wait_for_conn(shard, edge, kind, dataset, who))
}

async fn wait_for_conn(
    shard: &Rc<Shard>,
    edge: &EdgeId,
    kind: ConnKind,
    dataset: Option<&str>,
    who: Who<'_>,
) -> Result<Lease, Unavailable> {
    let deadline = Instant::now() + Duration::from_millis(shard.cfg().timeouts.pair_wait_ms);
    loop {
        match shard
            .shared
            .registry
            .acquire(edge, kind, dataset, who, shard.id)
        {
            Acquire::Got { conn, shard: owner } => {
                let (tx, rx) = flume::bounded(1);
                // Waits for room in a full mailbox (the owner drains it on
                // a task of its own); fails only when the owner is gone.
                if shard.shared.mailboxes[owner]
                    .send_async(ShardMsg::Take { conn, reply: tx })
                    .await
                    .is_err()
                {
                    continue;
                }
                if let Ok(Some(moved)) = rx.recv_async().await {
                    if let Some(c) = adopt(shard, moved, kind) {
                        return Ok(Lease {
                            shard: shard.clone(),
                            conn: Some(c),
                        });
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
            // Seed 000: whichever side comes first waits. A relay session
            // that arrives before its edge (or while the edge re-dials after
            // its previous session) waits for it within `pair_wait_ms`,
            // looking again every few milliseconds; a worker query has
            // checked that its edge is online before it asks.
            Acquire::Offline if kind == ConnKind::Relay => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Unavailable::Offline);
                }
                monoio::time::sleep(left.min(OFFLINE_POLL)).await;
            }
            Acquire::Offline => return Err(Unavailable::Offline),
            Acquire::OtherTenant => return Err(Unavailable::OtherTenant),
        }
    }
}

/// Tells the connector to stop request `rid`, and waits (bounded by
/// `timeouts.cancel_drain_ms`) for its `stream_end`/`error` so the worker can
/// be reused; a connector that does not confirm in time is disconnected.
async fn cancel(shard: &Rc<Shard>, mut w: EdgeConn, rid: &str) {
    let wait = Duration::from_millis(shard.cfg().timeouts.cancel_drain_ms);
    let max = shard.cfg().limits.max_text_bytes;
    let drained = monoio::time::timeout(wait, async {
        let cancel = GatewayRequest::Cancel {
            request_id: rid.to_owned(),
        };
        if w.send_json(&cancel).await.is_err() {
            return false;
        }
        let mut peer = Peer::new(&mut w.reader, Direct, max);
        loop {
            match peer.next().await {
                Ok(Incoming::Text(t)) => {
                    if let Ok(r) = serde_json::from_str::<Reply>(&t) {
                        if r.kind.ends_request() && r.request_id == rid {
                            return true;
                        }
                    }
                }
                // Late frames of the cancelled stream.
                Ok(Incoming::Data(_) | Incoming::Interrupted) => {}
                Ok(Incoming::Close(_)) | Err(_) => return false,
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::Arc;

    use bytes::BytesMut;
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    use monoio::net::TcpStream;

    use super::*;
    use crate::auth::revocations::Revocations;
    use crate::auth::token::Verifier;
    use crate::config::{Config, EdgeKeys};
    use crate::edge::idle::{idle, mind, take};
    use crate::registry::{Feeds, Registry};
    use crate::shard::metrics::Metrics;
    use crate::shard::{ConnMeta, Shared};
    use crate::static_files::StaticFiles;
    use crate::wire::frame::{encode_client_frame, MaskRule, Opcode};
    use crate::wire::reader::FrameReader;
    use crate::wire::test_io::{runtime, socket_pair};

    /// One shard with its mailbox answered the way the real one answers
    /// `Take`, and a short cancel drain.
    fn shard() -> Rc<Shard> {
        let mut cfg = Config::default();
        cfg.timeouts.cancel_drain_ms = 200;
        cfg.timeouts.pair_wait_ms = 200;
        let (tx, rx) = flume::unbounded();
        let shared = Arc::new(Shared {
            verifier: Verifier::from_config(&cfg.auth).unwrap(),
            cfg,
            edge_keys: EdgeKeys::default(),
            registry: Registry::default(),
            feeds: Feeds::default(),
            metrics: Metrics::new(1),
            mailboxes: vec![tx],
            draining: AtomicBool::new(false),
            sessions: AtomicUsize::new(0),
            pending_handshakes: AtomicUsize::new(0),
            unauthenticated: AtomicUsize::new(0),
            revocations: Revocations::new(false, 1000),
            edge_lockout: crate::auth::lockout::Lockout::new("edge", 0, 1),
            admin_lockout: crate::auth::lockout::Lockout::new("admin", 0, 1),
            spends: crate::registry::Spends::new(1000),
            spend_link: None,
            end_reports: crate::registry::EndReports::new(None),
            public_url: "ws://test".into(),
            web: StaticFiles::load("", 0).unwrap(),
            tls: None,
            flight: None,
            grpc: None,
        });
        let shard = Rc::new(Shard::new(0, shared));
        let s = shard.clone();
        monoio::spawn(async move {
            while let Ok(msg) = rx.recv_async().await {
                if let ShardMsg::Take { conn, reply } = msg {
                    take(&s, conn, reply);
                }
            }
        });
        shard
    }

    /// A registered worker of `edge-a` idling on the shard; returns the
    /// connector's end of its socket.
    async fn worker(shard: &Rc<Shard>) -> TcpStream {
        let (gw, far) = socket_pair().await;
        let edge = EdgeId::parse("edge-a").unwrap();
        let conn = shard.shared.registry.new_conn_id();
        let c = EdgeConn {
            meta: ConnMeta {
                conn,
                edge: edge.clone(),
                fast_path: false,
            },
            kind: ConnKind::Worker,
            reader: FrameReader::new(gw, BytesMut::new(), MaskRule::Required, 1 << 20),
        };
        let slot = mind(shard, &c);
        shard
            .shared
            .registry
            .add(
                &edge,
                "acme",
                "t",
                ConnKind::Worker,
                conn,
                0,
                vec!["d".into()],
                8,
            )
            .unwrap();
        shard.metrics().connector_conns_active.fetch_add(1, Relaxed);
        monoio::spawn(idle(shard.clone(), c, slot));
        far
    }

    async fn lease(shard: &Rc<Shard>) -> Lease {
        let edge = EdgeId::parse("edge-a").unwrap();
        match acquire(
            shard,
            &edge,
            ConnKind::Worker,
            Some("d"),
            Who {
                tenant: "acme",
                sub: "t",
            },
        )
        .await
        {
            Ok(l) => l,
            Err(e) => panic!("no lease: {e:?}"),
        }
    }

    /// Everything the gateway wrote to the connector until it closed (or
    /// a quiet 500 ms).
    async fn received(far: &mut TcpStream) -> Vec<u8> {
        let mut all = Vec::new();
        loop {
            let read = far.read(Vec::with_capacity(4096));
            match monoio::time::timeout(std::time::Duration::from_millis(500), read).await {
                Ok((Ok(n), buf)) if n > 0 => all.extend_from_slice(&buf[..n]),
                _ => return all,
            }
        }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn idle_workers(shard: &Shard) -> usize {
        shard.shared.registry.stats().workers_idle
    }

    #[test]
    fn a_finished_lease_goes_back_to_the_pool() {
        runtime().block_on(async {
            let shard = shard();
            let _far = worker(&shard).await;
            let l = lease(&shard).await;
            assert_eq!(idle_workers(&shard), 0, "leased, so busy");
            l.release(Release::Finished).await;
            monoio::time::sleep(std::time::Duration::from_millis(20)).await;
            assert_eq!(idle_workers(&shard), 1);
            // And it can be leased again.
            lease(&shard).await.release(Release::Finished).await;
        });
    }

    #[test]
    fn an_abandoned_request_is_cancelled_and_reused_once_confirmed() {
        runtime().block_on(async {
            let shard = shard();
            let mut far = worker(&shard).await;
            let l = lease(&shard).await;
            let answer = async {
                let mut got = Vec::new();
                while !contains(&got, b"\"cancel\"") {
                    let (r, buf) = far.read(Vec::with_capacity(1024)).await;
                    got.extend_from_slice(&buf[..r.unwrap()]);
                }
                let end = Reply::stream_end("g1", 0, None).to_json();
                let frame = encode_client_frame(Opcode::Text, true, end.as_bytes(), [9, 9, 9, 9]);
                far.write_all(frame).await.0.unwrap();
                got
            };
            let (_, got) = futures_util::future::join(
                l.release(Release::Abandoned { request_id: "g1" }),
                answer,
            )
            .await;
            assert!(contains(&got, br#"{"action":"cancel","request_id":"g1"}"#));
            assert_eq!(idle_workers(&shard), 1, "confirmed in time: reused");
        });
    }

    #[test]
    fn a_silent_connector_a_broken_one_and_an_unreleased_lease_are_closed() {
        runtime().block_on(async {
            let shard = shard();
            // Abandoned, never confirmed: closed after the drain.
            let mut far = worker(&shard).await;
            lease(&shard)
                .await
                .release(Release::Abandoned { request_id: "g1" })
                .await;
            let got = received(&mut far).await;
            assert!(contains(&got, b"\"cancel\""));
            assert!(contains(&got, b"stream not cancelled in time"));
            assert_eq!(shard.shared.registry.stats().edges_online, 0);

            // Broken: closed with the code given.
            let mut far = worker(&shard).await;
            let code = close::PROTOCOL;
            lease(&shard)
                .await
                .release(Release::Broken {
                    code,
                    reason: "bad frame",
                })
                .await;
            let got = received(&mut far).await;
            assert!(contains(&got, &[0x88]) && contains(&got, &code.to_be_bytes()));
            assert_eq!(shard.shared.registry.stats().edges_online, 0);

            // Dropped without a decision: closed, never back in the pool.
            let mut far = worker(&shard).await;
            drop(lease(&shard).await);
            let got = received(&mut far).await;
            assert!(contains(&got, b"released without a decision"));
            assert_eq!(idle_workers(&shard), 0);
            assert_eq!(shard.shared.registry.stats().edges_online, 0);
        });
    }
}
