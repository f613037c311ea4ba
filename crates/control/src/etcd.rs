//! Tenants, plans, clients, datasets, edges and signing keys in etcd
//! (`--etcd`), for several control-plane nodes: the store seed 004 asks
//! for, built on the engine made for it (Raft, transactions, watches)
//! rather than on a consensus of our own.
//!
//! Layout under the prefix (default `/sluice/`):
//!
//! - `tenants/{slug}`: the tenant as one JSON document (settings, plans,
//!   clients, datasets, edges, keys; secrets and private keys sealed under
//!   `SLUICE_MASTER_KEY` exactly as in the data directory);
//! - `edges/{edge}`: the tenant that owns the edge id, written in the same
//!   transaction as the tenant, so two admins cannot give one edge to two
//!   tenants.
//!
//! Every write is one transaction that compares the tenant's revision (and
//! each newly claimed edge's absence) before it puts: a concurrent change
//! makes it read again and reapply, never overwrite. Nodes serve from an
//! in-memory copy fed by a watch ([`EtcdTenants::watch`]); the request path
//! never reads etcd. When etcd is unreachable the copy keeps serving and
//! writes fail with a clear error; when it returns, the watch resumes from
//! the last revision seen, or reloads everything if that was compacted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, SortOrder,
    SortTarget, TlsOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use sluice_protocol::secret::Secret;

use crate::tenants::{
    Client as TenantClient, Dataset, Edge, KeyFile, Plan, Settings, Tenant, TenantError, TenantSlug,
};

/// How to reach etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// User and password (a `Secret`: `Debug` leaves it out).
    pub user: Option<(String, Secret)>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Per-request deadline: how soon a member that does not answer is
    /// given up for the next one.
    pub timeout: Duration,
    /// How long one operation keeps trying while no member can take it (a
    /// member down, a leader being elected after the leader died): longer
    /// than the cluster's election (etcd's default election timeout is 1 s,
    /// and an election can take two, more on slow disks).
    pub retry: Duration,
}

/// A tenant as stored: everything but its slug, which is the key.
#[derive(Serialize, Deserialize)]
struct Doc {
    settings: Settings,
    #[serde(default)]
    plans: Vec<Plan>,
    #[serde(default)]
    clients: Vec<TenantClient>,
    #[serde(default)]
    datasets: Vec<Dataset>,
    #[serde(default)]
    edges: Vec<Edge>,
    #[serde(default)]
    keys: Vec<KeyFile>,
}

impl Doc {
    fn of(t: &Tenant) -> Doc {
        Doc {
            settings: t.settings.clone(),
            plans: t.plans.clone(),
            clients: t.clients.clone(),
            datasets: t.datasets.clone(),
            edges: t.edges.clone(),
            keys: t.keys.clone(),
        }
    }

    fn into_tenant(self, slug: TenantSlug) -> Tenant {
        Tenant {
            slug,
            settings: self.settings,
            plans: self.plans,
            clients: self.clients,
            datasets: self.datasets,
            edges: self.edges,
            keys: self.keys,
        }
    }
}

/// Whether the watch is live, and the last revision it applied.
#[derive(Debug, Default)]
pub struct WatchState {
    pub up: AtomicBool,
    pub revision: AtomicI64,
    /// Full reloads (start, compaction, a watch that could not resume).
    pub reloads: AtomicI64,
}

pub struct EtcdTenants {
    rt: tokio::runtime::Runtime,
    /// Tells the watch to start again (etcd came back: a watch opened on a
    /// dead connection may never say so itself).
    restart: Arc<tokio::sync::Notify>,
    /// One client per member, used in turn: the library's own balancer
    /// keeps sending to a member that is down.
    clients: Vec<Client>,
    current: std::sync::atomic::AtomicUsize,
    prefix: String,
    timeout: Duration,
    retry: Duration,
    /// Said with a request no member took: over TLS without a client
    /// certificate, etcd that requires one just closes the connection
    /// (a bare "broken pipe").
    no_cert_hint: &'static str,
    copy: Arc<RwLock<HashMap<TenantSlug, Arc<Tenant>>>>,
    pub state: Arc<WatchState>,
}

/// The request failed in the transport (a member down, its connection
/// not made in time) or during an election: worth another try. Writes are
/// compare-and-swap, so a repeat can never overwrite a concurrent change.
fn not_sent(e: &etcd_client::Error) -> bool {
    let s = e.to_string();
    [
        "connect error",
        "Connection refused",
        "Transport",
        "leader changed",
        "no leader",
        "request timed out",
    ]
    .iter()
    .any(|m| s.contains(m))
}

fn store_err(e: impl std::fmt::Display) -> TenantError {
    TenantError::Store(format!("etcd: {e}"))
}

impl EtcdTenants {
    /// Connects (lazily: an unreachable etcd is an error at the first
    /// request, not here, so a node can start while etcd is down).
    pub fn connect(opts: &EtcdOptions) -> Result<EtcdTenants, TenantError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-etcd")
            .enable_all()
            .build()
            .map_err(store_err)?;
        let mut clients = Vec::with_capacity(opts.endpoints.len());
        for e in &opts.endpoints {
            clients.push(rt.block_on(dial(opts, e))?);
        }
        if clients.is_empty() {
            return Err(TenantError::Store("etcd: no endpoint given".into()));
        }
        Ok(EtcdTenants {
            rt,
            clients,
            current: Default::default(),
            prefix: opts.prefix.clone(),
            timeout: opts.timeout,
            retry: opts.retry,
            no_cert_hint: if opts.ca.is_some() && opts.cert.is_none() {
                "; this client presents no certificate: if etcd requires one \
                 (--client-cert-auth), give --etcd-cert and --etcd-key"
            } else {
                ""
            },
            copy: Arc::default(),
            state: Arc::default(),
            restart: Arc::default(),
        })
    }

    /// The member in use now.
    fn client(&self) -> Client {
        let i = self.current.load(Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone()
    }

    /// The member in use failed: the next one takes over.
    fn next_member(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }
}

async fn dial(opts: &EtcdOptions, endpoint: &str) -> Result<Client, TenantError> {
    {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(opts.timeout)
            .with_timeout(opts.timeout)
            .with_keep_alive(Duration::from_secs(5), opts.timeout)
            .with_keep_alive_while_idle(true);
        if let Some((u, p)) = &opts.user {
            o = o.with_user(u, p.expose());
        }
        if opts.ca.is_some() || opts.cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &opts.ca {
                let pem = std::fs::read(ca).map_err(|e| TenantError::Io {
                    path: ca.display().to_string(),
                    source: e,
                })?;
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
            }
            if let (Some(c), Some(k)) = (&opts.cert, &opts.key) {
                let read = |p: &PathBuf| {
                    std::fs::read(p).map_err(|e| TenantError::Io {
                        path: p.display().to_string(),
                        source: e,
                    })
                };
                tls = tls.identity(Identity::from_pem(read(c)?, read(k)?));
            }
            o = o.with_tls(tls);
        }
        Client::connect([endpoint], Some(o))
            .await
            .map_err(store_err)
    }
}

impl EtcdTenants {
    fn tenant_key(&self, slug: &TenantSlug) -> String {
        format!("{}tenants/{slug}", self.prefix)
    }

    fn edge_key(&self, edge: &str) -> String {
        format!("{}edges/{edge}", self.prefix)
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Runs one etcd request, again on the next member while none could
    /// take it (a member down: the client's balancer may still pick it; no
    /// leader yet), for up to the retry window; then says so, with the last
    /// error.
    async fn once<T, Fut>(&self, mut f: impl FnMut() -> Fut) -> Result<T, TenantError>
    where
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.retry;
        loop {
            match f().await {
                Ok(r) => return Ok(r),
                Err(e) if not_sent(&e) && Instant::now() < deadline => {
                    self.next_member();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) if not_sent(&e) => {
                    return Err(TenantError::Store(format!(
                        "etcd: no member took the request within {} ms (members down or \
                         refusing the connection, or a leader election longer than \
                         --etcd-retry-ms); last error: {e}{}",
                        self.retry.as_millis(),
                        self.no_cert_hint
                    )));
                }
                Err(e) => return Err(store_err(e)),
            }
        }
    }

    /// Every tenant's slug, read from etcd.
    pub fn tenants(&self) -> Result<Vec<TenantSlug>, TenantError> {
        let prefix = format!("{}tenants/", self.prefix);
        let resp = self.block(self.once(|| {
            let mut c = self.client().kv_client();
            let p = prefix.clone();
            async move {
                c.get(p, Some(GetOptions::new().with_prefix().with_keys_only()))
                    .await
            }
        }))?;
        let mut out: Vec<TenantSlug> = resp
            .kvs()
            .iter()
            .filter_map(|kv| slug_of(kv, &prefix))
            .collect();
        out.sort();
        Ok(out)
    }

    async fn read(&self, slug: &TenantSlug) -> Result<Option<(Tenant, i64)>, TenantError> {
        let key = self.tenant_key(slug);
        let resp = self
            .once(|| {
                let mut c = self.client().kv_client();
                let k = key.clone();
                async move { c.get(k, None).await }
            })
            .await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let doc: Doc = serde_json::from_slice(kv.value()).map_err(|e| TenantError::Corrupt {
            path: self.tenant_key(slug),
            msg: e.to_string(),
        })?;
        Ok(Some((doc.into_tenant(slug.clone()), kv.mod_revision())))
    }

    pub fn load(&self, slug: &TenantSlug) -> Result<Tenant, TenantError> {
        match self.block(self.read(slug))? {
            Some((t, _)) => Ok(t),
            None => Err(TenantError::Unknown(slug.to_string())),
        }
    }

    /// Changes a tenant in one transaction: read it with its revision,
    /// apply `f`, write it back only if nobody wrote it meanwhile (else read
    /// again and reapply). A newly claimed edge id must be free.
    pub fn update<T>(
        &self,
        slug: &TenantSlug,
        create: bool,
        mut f: impl FnMut(&mut Tenant) -> Result<T, TenantError>,
    ) -> Result<T, TenantError> {
        let deadline = Instant::now() + self.retry;
        loop {
            let (mut t, rev) = match self.block(self.read(slug))? {
                Some((t, rev)) => (t, rev),
                None if create => (Tenant::new(slug.clone()), 0),
                None => return Err(TenantError::Unknown(slug.to_string())),
            };
            let before: Vec<String> = t.edges.iter().map(|e| e.id.clone()).collect();
            let out = f(&mut t)?;
            let key = self.tenant_key(slug);
            let doc = serde_json::to_vec(&Doc::of(&t)).map_err(store_err)?;
            let mut when = vec![if rev == 0 {
                Compare::create_revision(key.clone(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(key.clone(), CompareOp::Equal, rev)
            }];
            let mut then = vec![TxnOp::put(key, doc, None)];
            for e in t.edges.iter().filter(|e| !before.contains(&e.id)) {
                let k = self.edge_key(&e.id);
                when.push(Compare::create_revision(k.clone(), CompareOp::Equal, 0));
                then.push(TxnOp::put(k, slug.as_str(), None));
            }
            for gone in before
                .iter()
                .filter(|b| !t.edges.iter().any(|e| &e.id == *b))
            {
                then.push(TxnOp::delete(self.edge_key(gone), None));
            }
            let txn = Txn::new().when(when).and_then(then);
            let resp = self.block(self.once(|| {
                let mut c = self.client().kv_client();
                let t = txn.clone();
                async move { c.txn(t).await }
            }))?;
            let mut c = self.client().kv_client();
            if resp.succeeded() {
                return Ok(out);
            }
            // Lost a race: the tenant changed, or an edge was claimed.
            let taken = t
                .edges
                .iter()
                .filter(|e| !before.contains(&e.id))
                .find_map(|e| {
                    let owner = self
                        .block(c.get(self.edge_key(&e.id), None))
                        .ok()?
                        .kvs()
                        .first()
                        .and_then(|kv| kv.value_str().ok().map(str::to_owned))?;
                    (owner != slug.as_str()).then(|| (e.id.clone(), owner))
                });
            if let Some((edge, owner)) = taken {
                return Err(TenantError::Invalid(format!(
                    "edge {edge} belongs to tenant {owner}"
                )));
            }
            if Instant::now() > deadline {
                return Err(TenantError::Store(
                    "etcd: the tenant kept changing under this write; try again".into(),
                ));
            }
        }
    }

    /// The in-memory copy the server serves from.
    pub fn get(&self, slug: &TenantSlug) -> Result<Arc<Tenant>, TenantError> {
        let copy = self.copy.read().unwrap_or_else(|p| p.into_inner());
        match copy.get(slug) {
            Some(t) => Ok(t.clone()),
            None if self.state.up.load(Ordering::Relaxed) || !copy.is_empty() => {
                Err(TenantError::Unknown(slug.to_string()))
            }
            None => Err(TenantError::Store(
                "etcd unreachable and no copy of the tenants yet".into(),
            )),
        }
    }

    /// Keeps the in-memory copy current: a full read, then a watch from
    /// the revision after it; resumes where it stopped, reloads when etcd
    /// compacted what it missed.
    pub fn watch(self: &Arc<Self>) {
        // Whether etcd answers, probed every second: what /readyz reports.
        let probe = self.clone();
        self.rt.spawn(async move {
            let prefix = format!("{}tenants/", probe.prefix);
            let mut lagging = false;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                // Reachable when any member answers (that one is used
                // next). The answer is the newest tenant's revision: a copy
                // that stays behind it (a watch stuck on a member that lost
                // its cluster) is resumed from where it stopped.
                let mut newest = None;
                for _ in 0..probe.clients.len() {
                    let mut c = probe.client().kv_client();
                    let opts = GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_sort(SortTarget::Mod, SortOrder::Descend)
                        .with_limit(1);
                    let ask = c.get(prefix.clone(), Some(opts));
                    if let Ok(Ok(r)) = tokio::time::timeout(probe.timeout, ask).await {
                        newest = Some(r.kvs().first().map_or(0, |kv| kv.mod_revision()));
                        break;
                    }
                    probe.next_member();
                }
                let ok = newest.is_some();
                let behind =
                    newest.is_some_and(|n| n > probe.state.revision.load(Ordering::Relaxed));
                // Two probes in a row behind the same or a newer revision.
                if behind && lagging {
                    tracing::info!("the in-memory copy is behind etcd: resuming the watch");
                    probe.restart.notify_waiters();
                    lagging = false;
                } else {
                    lagging = behind;
                }
                let was = probe.state.up.swap(ok, Ordering::Relaxed);
                if ok && !was {
                    tracing::info!("etcd reachable again: resuming the watch");
                    probe.restart.notify_waiters();
                } else if !ok && was {
                    tracing::warn!(
                        "etcd unreachable: serving from the in-memory copy; admin writes fail"
                    );
                }
            }
        });
        let me = self.clone();
        self.rt.spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let mut need_reload = true;
            loop {
                if need_reload {
                    match me.reload().await {
                        Ok(()) => need_reload = false,
                        Err(e) => {
                            me.state.up.store(false, Ordering::Relaxed);
                            // Logged once per outage by the probe above;
                            // each retry is only a debug line.
                            tracing::debug!(error = %e, "etcd unreachable: serving from the in-memory copy");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                            continue;
                        }
                    }
                }
                match me.follow().await {
                    Ok(Follow::Compacted) => need_reload = true,
                    Ok(Follow::Ended) => {
                        tracing::debug!("etcd watch ended; opening it again");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "etcd watch failed; resuming on the next member");
                        me.next_member();
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
                backoff = Duration::from_millis(100);
            }
        });
    }

    async fn reload(&self) -> Result<(), TenantError> {
        let prefix = format!("{}tenants/", self.prefix);
        let mut c = self.client().kv_client();
        let resp = c
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(store_err)?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let mut all = HashMap::new();
        for kv in resp.kvs() {
            let Some(slug) = slug_of(kv, &prefix) else {
                continue;
            };
            match serde_json::from_slice::<Doc>(kv.value()) {
                Ok(d) => {
                    all.insert(slug.clone(), Arc::new(d.into_tenant(slug)));
                }
                Err(e) => {
                    tracing::error!(tenant = %slug, error = %e, "tenant in etcd is not readable; skipped")
                }
            }
        }
        *self.copy.write().unwrap_or_else(|p| p.into_inner()) = all;
        self.state.revision.store(rev, Ordering::Relaxed);
        self.state.reloads.fetch_add(1, Ordering::Relaxed);
        self.state.up.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn follow(&self) -> Result<Follow, etcd_client::Error> {
        let prefix = format!("{}tenants/", self.prefix);
        let from = self.state.revision.load(Ordering::Relaxed) + 1;
        let mut w = self.client().watch_client();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        // Opening a watch on a dead connection may never return.
        let Ok(opened) =
            tokio::time::timeout(self.timeout, w.watch(prefix.clone(), Some(opts))).await
        else {
            return Ok(Follow::Ended);
        };
        let mut stream = opened?;
        tracing::debug!(from, "etcd watch open");
        loop {
            let resp = tokio::select! {
                r = stream.message() => match r? {
                    Some(resp) => resp,
                    None => break,
                },
                _ = self.restart.notified() => return Ok(Follow::Ended),
            };
            if resp.compact_revision() > 0 {
                tracing::warn!(
                    compacted = resp.compact_revision(),
                    "etcd compacted past the watch: reloading every tenant"
                );
                return Ok(Follow::Compacted);
            }
            if resp.canceled() {
                return Ok(Follow::Ended);
            }
            tracing::debug!(events = resp.events().len(), "etcd watch response");
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Some(slug) = slug_of(kv, &prefix) else {
                    continue;
                };
                let mut copy = self.copy.write().unwrap_or_else(|p| p.into_inner());
                match ev.event_type() {
                    EventType::Put => match serde_json::from_slice::<Doc>(kv.value()) {
                        Ok(d) => {
                            copy.insert(slug.clone(), Arc::new(d.into_tenant(slug)));
                        }
                        Err(e) => {
                            tracing::error!(tenant = %slug, error = %e, "tenant in etcd is not readable; kept the previous copy")
                        }
                    },
                    EventType::Delete => {
                        copy.remove(&slug);
                    }
                }
                self.state
                    .revision
                    .fetch_max(kv.mod_revision(), Ordering::Relaxed);
            }
            // A progress notification (no events): everything up to its
            // revision has been delivered.
            if resp.events().is_empty() && !resp.created() {
                if let Some(h) = resp.header() {
                    self.state
                        .revision
                        .fetch_max(h.revision(), Ordering::Relaxed);
                }
            }
        }
        Ok(Follow::Ended)
    }
}

/// The tenant a `{prefix}tenants/{slug}` key names.
fn slug_of(kv: &etcd_client::KeyValue, prefix: &str) -> Option<TenantSlug> {
    TenantSlug::parse(kv.key_str().ok()?.strip_prefix(prefix)?)
}

enum Follow {
    Compacted,
    Ended,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_debug_leaves_the_password_out() {
        let o = EtcdOptions {
            user: Some(("root".into(), "s3cret-pass".into())),
            ..Default::default()
        };
        let shown = format!("{o:?}");
        assert!(
            shown.contains("root") && !shown.contains("s3cret-pass"),
            "{shown}"
        );
    }
}
