//! Requests the shards sent to gRPC connectors, by the front's id for them:
//! where their answers and their `Serve` calls go.
//!
//! A request's id is the worker's tag (a counter and 64 random bits) and
//! the shard's request id, so it is unique across connectors and cannot be
//! guessed; a `Serve` call must also come from the connector that received
//! the request ([`Owner`]).

use sluice_protocol::sync::lock;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

use super::out::Out;
use crate::auth::edge_auth::CertTenant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Info,
    Get,
}

/// Who a connector proved to be: its certificate's tenant and its edge key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub tenant: Option<CertTenant>,
    pub edge_key: Option<String>,
}

pub struct Route {
    /// The shard's request id, for the replies.
    pub rid: String,
    pub kind: Kind,
    /// The tag of the worker that asked.
    pub worker: String,
    pub owner: Owner,
    pub out: mpsc::Sender<Out>,
    pub cancelled: Arc<AtomicBool>,
    pub cancel: Arc<Notify>,
    /// A `Serve` call is streaming it (it stays here so a cancel finds it).
    pub taken: bool,
}

impl Route {
    pub fn handle(&self) -> RouteHandle {
        RouteHandle {
            rid: self.rid.clone(),
            out: self.out.clone(),
            cancelled: self.cancelled.clone(),
            cancel: self.cancel.clone(),
        }
    }
}

/// What a `Serve` call keeps of its route.
pub struct RouteHandle {
    pub rid: String,
    pub out: mpsc::Sender<Out>,
    pub cancelled: Arc<AtomicBool>,
    pub cancel: Arc<Notify>,
}

#[derive(Default)]
pub struct Routes {
    map: Mutex<HashMap<Arc<str>, Route>>,
}

impl Routes {
    pub fn insert(&self, tag: Arc<str>, r: Route) {
        lock(&self.map).insert(tag, r);
    }

    pub fn remove(&self, tag: &str) -> Option<Route> {
        lock(&self.map).remove(tag)
    }

    /// The `do_get` `tag` names, if `owner` received it and no `Serve`
    /// call took it yet. It stays listed (a cancel must find it) until the
    /// call ends.
    pub fn take_get(&self, tag: &str, owner: &Owner) -> Option<(Arc<str>, RouteHandle)> {
        let mut m = lock(&self.map);
        let key = m.get_key_value(tag)?.0.clone();
        let r = m.get_mut(tag)?;
        if r.kind != Kind::Get || &r.owner != owner || r.taken {
            return None;
        }
        r.taken = true;
        Some((key, r.handle()))
    }

    /// The `get_flight_info` or `do_get` `tag` names, for an answer on
    /// `Connect` from `owner`.
    pub fn take_for(&self, tag: &str, owner: &Owner) -> Option<Route> {
        let mut m = lock(&self.map);
        if m.get(tag).is_some_and(|r| &r.owner == owner && !r.taken) {
            return m.remove(tag);
        }
        None
    }

    /// Forgets a worker's requests (its connection closed).
    pub fn drop_worker(&self, worker: &str) {
        self.map
            .lock()
            .expect("routes lock")
            .retain(|_, r| r.worker != worker);
    }
}
