//! One shard's own state: a thread, so everything here is `Rc`/`RefCell`
//! with no lock and no atomic. It knows which edge connections idle here
//! and what closes each session on shutdown or revocation; it knows nothing
//! of what a session does.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use crate::config::Config;
use crate::ids::{ConnId, SessionId};
use crate::shard::metrics::ShardMetrics;
use crate::shard::{MovedConn, Shared};
use crate::wire::reader::Interrupter;

/// An idle connection's slot, so the shard can take it or close it.
pub struct IdleSlot {
    pub interrupter: Interrupter,
    pub take: Rc<RefCell<Option<flume::Sender<Option<MovedConn>>>>>,
}

/// What closes each session open under one id (a browser may reconnect
/// with the same token while its first connection is still open).
/// A session id's closers: almost always one (a session whose token allows
/// several connections has one per connection), so a small vector, not a
/// map per idle session.
type Closers = Vec<(u64, Rc<dyn Fn()>)>;

/// Per-thread shard context.
pub struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub idle: RefCell<HashMap<ConnId, IdleSlot>>,
    /// Closers of everything open here, run on shutdown.
    closers: RefCell<HashMap<u64, Rc<dyn Fn()>>>,
    /// Closers of the sessions open here, by session id, run on revocation.
    revokers: RefCell<HashMap<SessionId, Closers>>,
    next_local: Cell<u64>,
    pub closing: Cell<bool>,
    /// Connections on this shard still sending their request head, oldest
    /// first, each with the sender that evicts it.
    handshakes: RefCell<VecDeque<(u64, flume::Sender<()>)>>,
    /// Upgraded sessions on this shard not yet authenticated, likewise.
    unauthenticated: RefCell<VecDeque<(u64, flume::Sender<()>)>>,
}

/// Which of a shard's waiting lists a connection is on: both are bounded
/// as a whole, and at the bound a newcomer evicts the oldest (a real
/// client sends its head and its token at once; those that linger are the
/// slow, the idle and the hostile).
#[derive(Clone, Copy)]
pub enum Waiting {
    /// Sending its request head.
    Handshake,
    /// Upgraded, not yet authenticated.
    Unauthenticated,
}

/// A connection listed on its shard's waiting list; the receiver fires
/// when a newer connection evicted it.
pub struct Handshake {
    shard: Rc<Shard>,
    list: Waiting,
    id: u64,
    pub evicted: flume::Receiver<()>,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.shard
            .list(self.list)
            .borrow_mut()
            .retain(|(id, _)| *id != self.id);
    }
}

/// Removes a closer when the thing it closes ends.
pub struct CloserGuard {
    shard: Rc<Shard>,
    id: u64,
}

impl Drop for CloserGuard {
    fn drop(&mut self) {
        self.shard.closers.borrow_mut().remove(&self.id);
    }
}

/// Removes a session's revoker when the session ends.
pub struct RevokerGuard {
    shard: Rc<Shard>,
    sid: SessionId,
    id: u64,
}

impl Drop for RevokerGuard {
    fn drop(&mut self) {
        let mut map = self.shard.revokers.borrow_mut();
        if let Some(m) = map.get_mut(&self.sid) {
            m.retain(|(id, _)| *id != self.id);
            if m.is_empty() {
                map.remove(&self.sid);
            }
        }
    }
}

impl Shard {
    pub fn new(id: usize, shared: Arc<Shared>) -> Self {
        Shard {
            id,
            shared,
            idle: RefCell::new(HashMap::new()),
            closers: RefCell::new(HashMap::new()),
            revokers: RefCell::new(HashMap::new()),
            next_local: Cell::new(0),
            closing: Cell::new(false),
            handshakes: RefCell::new(VecDeque::new()),
            unauthenticated: RefCell::new(VecDeque::new()),
        }
    }

    fn list(&self, which: Waiting) -> &RefCell<VecDeque<(u64, flume::Sender<()>)>> {
        match which {
            Waiting::Handshake => &self.handshakes,
            Waiting::Unauthenticated => &self.unauthenticated,
        }
    }

    /// Lists a connection that is about to send its request head.
    pub fn handshake_started(self: &Rc<Self>) -> Handshake {
        self.wait_on(Waiting::Handshake)
    }

    /// Lists a connection on one of the shard's waiting lists.
    pub fn wait_on(self: &Rc<Self>, list: Waiting) -> Handshake {
        let id = self.next_local.get() + 1;
        self.next_local.set(id);
        let (tx, rx) = flume::bounded(1);
        self.list(list).borrow_mut().push_back((id, tx));
        Handshake {
            shard: self.clone(),
            list,
            id,
            evicted: rx,
        }
    }

    /// Evicts this shard's oldest connection still sending its request
    /// head; false when there is none.
    pub fn evict_oldest_handshake(&self) -> bool {
        self.evict_oldest(Waiting::Handshake)
    }

    /// Evicts the oldest connection on `list`; false when there is none.
    pub fn evict_oldest(&self, list: Waiting) -> bool {
        match self.list(list).borrow_mut().pop_front() {
            Some((_, tx)) => tx.try_send(()).is_ok(),
            None => false,
        }
    }

    pub fn metrics(&self) -> &ShardMetrics {
        &self.shared.metrics.shards[self.id]
    }

    pub fn cfg(&self) -> &Config {
        &self.shared.cfg
    }

    pub fn on_close_all(self: &Rc<Self>, f: Rc<dyn Fn()>) -> CloserGuard {
        let id = self.next_local.get();
        self.next_local.set(id + 1);
        self.closers.borrow_mut().insert(id, f);
        CloserGuard {
            shard: self.clone(),
            id,
        }
    }

    /// Registers what closes session `sid` if it is revoked.
    pub fn on_revoke(self: &Rc<Self>, sid: &SessionId, f: Rc<dyn Fn()>) -> RevokerGuard {
        let id = self.next_local.get();
        self.next_local.set(id + 1);
        self.revokers
            .borrow_mut()
            .entry(sid.clone())
            .or_insert_with(|| Vec::with_capacity(1))
            .push((id, f));
        RevokerGuard {
            shard: self.clone(),
            sid: sid.clone(),
            id,
        }
    }

    /// Closes every session open here under `sid` (it was revoked).
    pub fn revoke(&self, sid: &SessionId) {
        let closers: Vec<_> = self
            .revokers
            .borrow()
            .get(sid)
            .map(|m| m.iter().map(|(_, f)| f.clone()).collect())
            .unwrap_or_default();
        for c in closers {
            c();
        }
    }

    /// Shutdown: closes every session and idle connection on this shard.
    pub fn close_all(&self) {
        self.closing.set(true);
        let closers: Vec<_> = self.closers.borrow().values().cloned().collect();
        for c in closers {
            c();
        }
        let idle: Vec<_> = self
            .idle
            .borrow()
            .values()
            .map(|s| s.interrupter.clone())
            .collect();
        for i in idle {
            i.interrupt();
        }
    }
}
