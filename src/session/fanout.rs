//! `subscribe`: one connector live stream fanned out to every subscribed
//! session of that edge and dataset, on whatever shard each session lives.
//!
//! The first subscriber's shard owns the feed: it takes a connector worker
//! and reads the stream. Each frame is frozen once into a `Bytes` and sent,
//! by reference, to one bounded channel per shard that has viewers; on that
//! shard a distributor puts it in each viewer's outbox. A viewer whose
//! outbox is over `limits.viewer_queue_bytes` is closed (4409) instead of
//! slowing the feed, so the others are never held back. A shard whose
//! channel is full has fallen behind as a whole; its viewers are closed the
//! same way.
//!
//! A viewer joining a running feed first gets the feed's header (the
//! `stream_start` message and the first binary message, which carries the
//! Arrow schema), then frames from the next one on: each binary message
//! holds whole IPC messages, so what it receives is a valid IPC stream.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sluice_protocol::browser::ServerEvent;
use sluice_protocol::connector::{GatewayRequest, Reply, ReplyKind};

use crate::edge::{self, EdgeConn, Release};
use crate::ids::FeedKey;
use crate::registry::{lock, Entry, Event};
use crate::registry::{ConnKind, Who};
use crate::session::{check_dataset, Flow, Session};
use crate::shard::{Shard, ShardMsg};
use crate::wire::keepalive;
use crate::wire::message::{self, close, ErrorCode, Refusal};
use crate::wire::peer::{Direct, Incoming, Peer, PeerError};
use crate::wire::reader::{freeze, Interrupter, Wire};

/// Frames in flight to one shard before that shard counts as fallen behind.
const SHARD_CHANNEL_FRAMES: usize = 1024;

/// A shard's viewers of one feed, and the header they have been sent.
#[derive(Default)]
struct Hub {
    viewers: Vec<Weak<Session>>,
    /// Header events this shard has seen (seeded from the entry when the
    /// hub joined a running feed), so a joining viewer gets exactly what
    /// precedes the frames still queued for this shard.
    header: Vec<Wire>,
    header_done: bool,
}

thread_local! {
    /// This shard's hubs and the feeds it owns. A shard is a thread, so a
    /// thread-local table is per shard, and the shard's own state need not
    /// know that live feeds exist.
    static LOCAL: Rc<LocalFeeds> = Rc::new(LocalFeeds::default());
}

fn local() -> Rc<LocalFeeds> {
    LOCAL.with(Rc::clone)
}

/// A shard's view of the feeds it serves or owns.
#[derive(Default)]
struct LocalFeeds {
    hubs: RefCell<HashMap<FeedKey, Hub>>,
    owned: RefCell<HashMap<FeedKey, Interrupter>>,
}

pub fn subscribe(sess: &Rc<Session>, dataset: &str) -> Flow {
    if sess.feed.borrow().is_some() {
        return Flow::Close(Refusal::new(
            close::BAD_REQUEST,
            ErrorCode::BadRequest,
            "session is already subscribed to a feed",
        ));
    }
    if let Some(refused) = check_dataset(sess, dataset) {
        return refused;
    }
    let shard = &sess.shard;
    let key: FeedKey = (sess.edge.clone(), dataset.to_owned());
    let (entry, start) = {
        let mut map = lock(&shard.shared.feeds.map);
        match map.get(&key) {
            Some(e) => (e.clone(), false),
            None => {
                let e = Arc::new(Mutex::new(Entry {
                    slots: vec![None; shard.shared.shard_count()],
                    owner: shard.id,
                    header: Vec::new(),
                    header_done: false,
                }));
                map.insert(key.clone(), e.clone());
                (e, true)
            }
        }
    };
    // Join this shard's distributor, starting one if needed. The seed and
    // the slot are set under the entry's lock, the same lock `broadcast`
    // holds, so seed + channel is the feed without a gap or a duplicate.
    {
        let mut e = lock(&entry);
        if e.slots[shard.id].is_none() {
            let (tx, rx) = flume::bounded(SHARD_CHANNEL_FRAMES);
            e.slots[shard.id] = Some(tx);
            let hub = Hub {
                viewers: Vec::new(),
                header: e.header.clone(),
                header_done: e.header_done,
            };
            local().hubs.borrow_mut().insert(key.clone(), hub);
            monoio::spawn(distribute(shard.clone(), key.clone(), entry.clone(), rx));
        }
    }
    let header = {
        let feeds = local();
        let mut hubs = feeds.hubs.borrow_mut();
        let hub = hubs.entry(key.clone()).or_default();
        hub.viewers.push(Rc::downgrade(sess));
        hub.header.clone()
    };
    sess.send(&ServerEvent::Subscribed {
        dataset: dataset.to_owned(),
    });
    *sess.feed.borrow_mut() = Some(key.clone());
    for (i, frame) in header.into_iter().enumerate() {
        let len = if i == 0 { 0 } else { payload_len(&frame) };
        if !deliver(sess, frame, len, i > 0) {
            break;
        }
    }
    if start {
        monoio::spawn(own(shard.clone(), key, entry, sess.claims.tenant.clone()));
    }
    Flow::Continue
}

/// Payload length of a server frame we built or forwarded.
fn payload_len(frame: &Wire) -> u64 {
    let frame = &frame.head;
    match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => u16::from_be_bytes([frame[2], frame[3]]) as u64,
        Some(127) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&frame[2..10]);
            u64::from_be_bytes(b)
        }
        Some(n) => n as u64,
        None => 0,
    }
}

/// Queues a frame for one viewer; closes the viewer if it is too far behind
/// or over quota. Returns whether the viewer is still subscribed.
fn deliver(sess: &Session, frame: Wire, len: u64, data: bool) -> bool {
    if !sess.outbox.is_open() {
        return false;
    }
    let m = sess.shard.metrics();
    let cap = sess.shard.cfg().limits.viewer_queue_bytes;
    if sess.outbox.queued_bytes() + frame.len() > cap {
        m.slow_viewer_closes.fetch_add(1, Relaxed);
        sess.fail(Refusal::new(
            close::SLOW_CONSUMER,
            ErrorCode::SlowConsumer,
            "viewer fell too far behind the live feed",
        ));
        return false;
    }
    if data {
        if !sess.quota.admit(len) {
            m.quota_closes.fetch_add(1, Relaxed);
            let msg = format!("byte quota of {} exceeded", sess.quota.limit().unwrap_or(0));
            sess.fail(Refusal::new(close::QUOTA, ErrorCode::QuotaExceeded, msg));
            return false;
        }
        if sess.expired() {
            sess.fail(Refusal::new(
                close::BAD_TOKEN,
                ErrorCode::TokenExpired,
                "session token expired",
            ));
            return false;
        }
        m.forwarded(len, 1);
    }
    sess.outbox.push_wire(frame).is_ok()
}

/// Viewers served per turn of the shard: a sweep of a frame to a thousand
/// viewers took 1–3 ms of one thread, and a revocation arriving meanwhile
/// waited for its end (`sluice-loadtest revoke`, sessions watching a feed:
/// p99 3.7–5.3 ms). Between turns the shard's other tasks run.
const SWEEP_TURN: usize = 128;

/// Lets the shard's other ready tasks run before this one goes on.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Runs on each shard with viewers: hands each event to the local viewers.
async fn distribute(
    shard: Rc<Shard>,
    key: FeedKey,
    entry: Arc<Mutex<Entry>>,
    rx: flume::Receiver<Event>,
) {
    let mut ended = false;
    while let Ok(ev) = rx.recv_async().await {
        let viewers: Vec<Rc<Session>> = {
            let feeds = local();
            let mut hubs = feeds.hubs.borrow_mut();
            let Some(hub) = hubs.get_mut(&key) else { break };
            match &ev {
                Event::Start(b) => {
                    hub.header = vec![Wire::from(b.clone())];
                    hub.header_done = false;
                }
                Event::Frame(b, _) if !hub.header_done => {
                    hub.header.push(b.clone());
                    hub.header_done = true;
                }
                _ => {}
            }
            hub.viewers.iter().filter_map(Weak::upgrade).collect()
        };
        // Viewers this event dropped (closed, or too far behind): taken off
        // the hub's list after the sweep, which subscribers and leavers may
        // have changed while the sweep yielded.
        let mut dropped: Vec<*const Session> = Vec::new();
        for (i, v) in viewers.into_iter().enumerate() {
            if i > 0 && i % SWEEP_TURN == 0 {
                YieldNow(false).await;
            }
            let still = match &ev {
                Event::Start(b) => deliver(&v, Wire::from(b.clone()), 0, false),
                Event::Frame(b, len) => deliver(&v, b.clone(), *len, true),
                Event::End(b) => {
                    let _ = v.outbox.push(b.clone());
                    *v.feed.borrow_mut() = None;
                    false
                }
            };
            if !still {
                dropped.push(Rc::as_ptr(&v));
            }
        }
        if matches!(ev, Event::End(_)) {
            ended = true;
        }
        let mut empty = true;
        if let Some(h) = local().hubs.borrow_mut().get_mut(&key) {
            // Usually none was dropped: then only the gone are let go.
            if dropped.is_empty() {
                h.viewers.retain(|w| w.strong_count() > 0);
            } else {
                let dropped: std::collections::HashSet<_> = dropped.into_iter().collect();
                h.viewers
                    .retain(|w| w.strong_count() > 0 && !dropped.contains(&w.as_ptr()));
            }
            empty = h.viewers.is_empty();
        }
        if empty {
            break;
        }
    }
    // No viewers left, the feed ended, or this shard fell behind (the owner
    // dropped its channel).
    let left: Vec<Rc<Session>> = local()
        .hubs
        .borrow_mut()
        .remove(&key)
        .map(|h| h.viewers)
        .unwrap_or_default()
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for v in left {
        if !ended {
            shard.metrics().slow_viewer_closes.fetch_add(1, Relaxed);
            v.fail(Refusal::new(
                close::SLOW_CONSUMER,
                ErrorCode::SlowConsumer,
                "viewer fell too far behind the live feed",
            ));
        }
        *v.feed.borrow_mut() = None;
    }
    detach(&shard, &key, &entry);
}

/// Removes this shard's slot; tells the owner when no shard has viewers.
fn detach(shard: &Shard, key: &FeedKey, entry: &Arc<Mutex<Entry>>) {
    let (owner, none_left) = {
        let mut e = lock(entry);
        e.slots[shard.id] = None;
        (e.owner, e.slots.iter().all(Option::is_none))
    };
    if none_left {
        let msg = ShardMsg::FeedIdle { key: key.clone() };
        if let Err(flume::TrySendError::Full(msg)) = shard.shared.mailboxes[owner].try_send(msg) {
            let to = shard.shared.mailboxes[owner].clone();
            monoio::spawn(async move {
                let _ = to.send_async(msg).await;
            });
        }
    }
}

/// A session leaves its feed (it closed, or was closed).
pub fn unsubscribe(sess: &Rc<Session>) {
    let Some(sub) = sess.feed.borrow_mut().take() else {
        return;
    };
    let shard = &sess.shard;
    let feeds = local();
    let mut hubs = feeds.hubs.borrow_mut();
    if let Some(h) = hubs.get_mut(&sub) {
        h.viewers
            .retain(|w| w.upgrade().is_some_and(|s| !Rc::ptr_eq(&s, sess)));
        if h.viewers.is_empty() {
            hubs.remove(&sub);
            drop(hubs);
            let entry = lock(&shard.shared.feeds.map).get(&sub).cloned();
            if let Some(entry) = entry {
                detach(shard, &sub, &entry);
            }
        }
    }
}

/// The owner shard was told no viewer is left: wake the feed's reader.
pub fn on_idle(key: &FeedKey) {
    if let Some(i) = local().owned.borrow().get(key) {
        i.interrupt();
    }
}

fn broadcast(entry: &Arc<Mutex<Entry>>, ev: Event) -> bool {
    let mut e = lock(entry);
    match &ev {
        Event::Start(b) => {
            e.header = vec![Wire::from(b.clone())];
            e.header_done = false;
        }
        Event::Frame(b, _) if !e.header_done => {
            e.header.push(b.clone());
            e.header_done = true;
        }
        _ => {}
    }
    for slot in e.slots.iter_mut() {
        if let Some(tx) = slot {
            if tx.try_send(ev.clone()).is_err() {
                // Full: that shard fell behind. Disconnected: it left.
                *slot = None;
            }
        }
    }
    e.slots.iter().any(Option::is_some)
}

/// Removes the feed if it still has no viewers; false if one joined.
fn retire_feed(shard: &Shard, key: &FeedKey, entry: &Arc<Mutex<Entry>>, force: bool) -> bool {
    let mut map = lock(&shard.shared.feeds.map);
    let idle = lock(entry).slots.iter().all(Option::is_none);
    if idle || force {
        map.remove(key);
        true
    } else {
        false
    }
}

/// The owner: reads the connector's live stream and broadcasts it.
/// `tenant` is the first viewer's; every later viewer passed the same
/// tenant check against the edge when it subscribed.
async fn own(shard: Rc<Shard>, key: FeedKey, entry: Arc<Mutex<Entry>>, tenant: String) {
    let (edge, dataset) = key.clone();
    let ended = |event: ServerEvent| message::text(&event);
    // The feed serves every viewer: held as the tenant's, no subject's.
    let who = Who {
        tenant: &tenant,
        sub: "",
    };
    let mut lease = match edge::acquire(&shard, &edge, ConnKind::Worker, Some(&dataset), who).await
    {
        Ok(lease) => lease,
        Err(_) => {
            retire_feed(&shard, &key, &entry, true);
            broadcast(
                &entry,
                Event::End(ended(ServerEvent::Error {
                    code: ErrorCode::EdgeOffline,
                    dataset: Some(dataset.clone()),
                    message: format!("no connector worker of edge {edge} for the live feed"),
                })),
            );
            return;
        }
    };
    let rid = format!("feed-{}", shard.shared.registry.new_conn_id());
    shard.metrics().streams_started.fetch_add(1, Relaxed);
    local()
        .owned
        .borrow_mut()
        .insert(key.clone(), lease.conn().reader.interrupter());
    let outcome = feed(&shard, lease.conn(), &key, &entry, &rid).await;
    local().owned.borrow_mut().remove(&key);
    retire_feed(&shard, &key, &entry, true);
    match outcome {
        FeedEnd::Ended(msg) => {
            broadcast(&entry, Event::End(ended(*msg)));
            shard.metrics().streams_completed.fetch_add(1, Relaxed);
            lease.release(Release::Finished).await;
        }
        FeedEnd::NoViewers => {
            shard.metrics().streams_cancelled.fetch_add(1, Relaxed);
            lease.release(Release::Abandoned { request_id: &rid }).await;
        }
        FeedEnd::Broken(code, why) => {
            shard.metrics().streams_failed.fetch_add(1, Relaxed);
            broadcast(
                &entry,
                Event::End(ended(ServerEvent::Error {
                    code: ErrorCode::EdgeDisconnected,
                    dataset: Some(dataset.clone()),
                    message: why,
                })),
            );
            let reason = "live feed failed";
            lease.release(Release::Broken { code, reason }).await;
        }
    }
}

enum FeedEnd {
    Ended(Box<ServerEvent>),
    NoViewers,
    /// Close code for the connector, and why.
    Broken(u16, String),
}

async fn feed(
    shard: &Rc<Shard>,
    w: &mut EdgeConn,
    key: &FeedKey,
    entry: &Arc<Mutex<Entry>>,
    rid: &str,
) -> FeedEnd {
    let dataset = &key.1;
    let cfg = shard.cfg();
    let get = GatewayRequest::DoGet {
        request_id: rid.to_owned(),
        ticket: dataset.clone(),
        live: true,
        offload: false,
    };
    if w.send_json(&get).await.is_err() {
        return FeedEnd::Broken(close::GOING_AWAY, "connector connection failed".into());
    }
    w.expect_stream();
    let live = keepalive::watch(
        Duration::from_millis(cfg.timeouts.ping_interval_ms),
        Duration::from_millis(cfg.timeouts.idle_timeout_ms),
        w.reader.interrupter(),
        None,
    );
    let mut peer = Peer::new(&mut w.reader, Direct, cfg.limits.max_text_bytes).watched(live);
    loop {
        match peer.next().await {
            Ok(Incoming::Data(f)) => {
                let len = f.payload_len();
                if !broadcast(entry, Event::Frame(freeze(f), len))
                    && retire_feed(shard, key, entry, false)
                {
                    return FeedEnd::NoViewers;
                }
            }
            Ok(Incoming::Text(t)) => {
                let Ok(r) = serde_json::from_str::<Reply>(&t) else {
                    continue;
                };
                if r.request_id != rid {
                    continue;
                }
                match r.kind {
                    ReplyKind::StreamStart => {
                        let start = ServerEvent::StreamStart {
                            dataset: dataset.clone(),
                            schema: r.schema.unwrap_or(Value::Null),
                            live: true,
                        };
                        broadcast(entry, Event::Start(message::text(&start)));
                    }
                    ReplyKind::StreamEnd => {
                        return FeedEnd::Ended(Box::new(ServerEvent::StreamEnd {
                            dataset: dataset.clone(),
                            total_bytes: r.total_bytes,
                            bytes_forwarded: None,
                        }))
                    }
                    ReplyKind::Error => {
                        return FeedEnd::Ended(Box::new(ServerEvent::Error {
                            code: ErrorCode::QueryFailed,
                            dataset: Some(dataset.clone()),
                            message: r.message.unwrap_or_else(|| "connector error".into()),
                        }))
                    }
                    _ => {}
                }
            }
            Ok(Incoming::Interrupted) => {
                if lock(entry).slots.iter().all(Option::is_none)
                    && retire_feed(shard, key, entry, false)
                {
                    return FeedEnd::NoViewers;
                }
                if shard.closing.get() {
                    return FeedEnd::Broken(close::GOING_AWAY, "gateway shutting down".into());
                }
            }
            Ok(Incoming::Close(_)) => {
                return FeedEnd::Broken(close::GOING_AWAY, "connector closed its connection".into())
            }
            Err(PeerError::TimedOut) => {
                return FeedEnd::Broken(close::GOING_AWAY, "connector stopped responding".into())
            }
            Err(PeerError::Write(e)) => {
                tracing::debug!(error = %e, "write to connector failed");
                return FeedEnd::Broken(close::GOING_AWAY, "connector connection failed".into());
            }
            Err(PeerError::Protocol(e)) => {
                return FeedEnd::Broken(
                    e.close_code(),
                    format!("connector connection failed: protocol violation: {e}"),
                )
            }
            Err(PeerError::Gone(e)) => {
                return FeedEnd::Broken(
                    close::GOING_AWAY,
                    format!("connector connection failed: {e}"),
                )
            }
        }
    }
}
