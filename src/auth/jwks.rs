//! Tenants' public keys fetched from the control plane's JWKS endpoint
//! (`auth.jwks_url` + `?tenant=…`), so a key rotated in on the control
//! plane is accepted here without a restart.
//!
//! Lookups are synchronous and lock-free of I/O (a read lock on a map). A
//! token naming a `kid` the cache lacks makes its session ask the fetcher
//! thread for that tenant's keys and wait (bounded by
//! `jwks_fetch_timeout_ms`); fetches for one tenant are at most one per
//! `jwks_refresh_min_ms`, so made-up kids cannot flood the control plane.
//! Entries older than `jwks_max_age_s` stay usable while a background
//! refresh replaces them: a key the control plane stopped publishing stops
//! working after one refresh, and a control plane that is briefly down
//! does not stop new sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;

use crate::config::Auth;

struct TenantKeys {
    keys: HashMap<String, DecodingKey>,
    /// Last successful fetch (staleness).
    fetched: Instant,
    /// Last attempt, successful or not (rate limit).
    attempted: Instant,
}

struct Fetch {
    tenant: String,
    reply: Option<flume::Sender<()>>,
}

pub struct JwksCache {
    tenants: RwLock<HashMap<String, TenantKeys>>,
    fetch: flume::Sender<Fetch>,
    max_age: Duration,
    min: Duration,
    wait: Duration,
    max_tenants: usize,
    /// Fetches made, failed, and skipped for want of budget or queue room.
    pub fetched: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
}

/// Fetches pending for the fetcher thread; past it a session that would
/// wait for one is refused at once (its key is unknown).
const FETCH_QUEUE: usize = 256;

/// The global fetch budget: `per_minute` tokens, refilled continuously.
struct Budget {
    per_minute: f64,
    left: f64,
    at: Instant,
}

impl Budget {
    fn take(&mut self) -> bool {
        if self.per_minute <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.per_minute / 60.0;
        self.left = (self.left + refill).min(self.per_minute);
        self.at = now;
        if self.left >= 1.0 {
            self.left -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    crv: String,
    #[serde(default)]
    x: String,
    #[serde(default)]
    kid: Option<String>,
}

/// The Ed25519 keys of a JWKS document by kid (keys without one get
/// `jwks-<index>`); other key types are for other services and skipped.
pub fn parse(text: &str) -> Result<HashMap<String, DecodingKey>, String> {
    let jwks: Jwks = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut out = HashMap::new();
    for (i, k) in jwks.keys.iter().enumerate() {
        if k.kty != "OKP" || k.crv != "Ed25519" {
            continue;
        }
        let key = DecodingKey::from_ed_components(&k.x).map_err(|e| e.to_string())?;
        out.insert(k.kid.clone().unwrap_or_else(|| format!("jwks-{i}")), key);
    }
    Ok(out)
}

/// A tenant slug safe to put in a URL: what the control plane accepts.
fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The `tenant` claim of a token *before* verification: only used to pick
/// which tenant's keys to verify it with. A token claiming tenant A is
/// checked with A's keys alone, so a claim cannot borrow another tenant's
/// key.
pub fn unverified_tenant(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct T {
        tenant: String,
    }
    let payload = token.split('.').nth(1)?;
    let raw = B64URL.decode(payload).ok()?;
    let t: T = serde_json::from_slice(&raw).ok()?;
    valid_tenant(&t.tenant).then_some(t.tenant)
}

impl JwksCache {
    /// Starts the fetcher thread when `auth.jwks_url` is set.
    pub fn start(auth: &Auth) -> std::io::Result<Option<Arc<JwksCache>>> {
        if auth.jwks_url.is_empty() {
            return Ok(None);
        }
        let (tx, rx) = flume::bounded::<Fetch>(FETCH_QUEUE);
        let cache = Arc::new(JwksCache {
            tenants: RwLock::new(HashMap::new()),
            fetch: tx,
            max_age: Duration::from_secs(auth.jwks_max_age_s.max(1)),
            min: Duration::from_millis(auth.jwks_refresh_min_ms),
            wait: Duration::from_millis(auth.jwks_fetch_timeout_ms.max(1)),
            max_tenants: auth.jwks_max_tenants.max(1),
            fetched: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        });
        let per_minute = f64::from(auth.jwks_fetches_per_minute);
        let mut budget = Budget {
            per_minute,
            left: per_minute,
            at: Instant::now(),
        };
        let url = auth.jwks_url.clone();
        let min = Duration::from_millis(auth.jwks_refresh_min_ms);
        let timeout = Duration::from_millis(auth.jwks_fetch_timeout_ms.max(100));
        let weak = Arc::downgrade(&cache);
        // The web PKI's roots, and the private CA of `auth.jwks_ca_file`.
        let tls = crate::tls::material::client_config(&auth.jwks_ca_file)
            .map_err(|e| std::io::Error::other(format!("auth.jwks_ca_file: {e}")))?;
        let tls = (*tls).clone();
        std::thread::Builder::new()
            .name("sluice-jwks".into())
            .spawn(move || {
                // Built on this thread: the blocking client runs a small
                // runtime of its own, which must not start inside another.
                let agent = match reqwest::blocking::Client::builder()
                    .timeout(timeout)
                    .tls_backend_preconfigured(tls)
                    .build()
                {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot build the JWKS HTTP client; keys will not be fetched");
                        return;
                    }
                };
                while let Ok(req) = rx.recv() {
                    let Some(cache) = weak.upgrade() else { return };
                    cache.serve(&agent, &url, min, req, &mut budget);
                }
            })?;
        Ok(Some(cache))
    }

    fn serve(
        &self,
        agent: &reqwest::blocking::Client,
        url: &str,
        min: Duration,
        req: Fetch,
        budget: &mut Budget,
    ) {
        let recent = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&req.tenant)
            .is_some_and(|t| t.attempted.elapsed() < min);
        let allowed = !recent && budget.take();
        if !recent && !allowed {
            let n = self.skipped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(skipped = n, "JWKS fetch budget (auth.jwks_fetches_per_minute) used up: tokens of tenants whose keys are not cached are refused meanwhile");
            }
        }
        if allowed {
            let sep = if url.contains('?') { '&' } else { '?' };
            let full = format!("{url}{sep}tenant={}", req.tenant);
            match fetch(agent, &full) {
                Ok(keys) => {
                    self.fetched.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(tenant = ?req.tenant, keys = keys.len(), "JWKS fetched");
                    let mut m = self.tenants.write().unwrap_or_else(|p| p.into_inner());
                    self.make_room(&mut m, &req.tenant);
                    let now = Instant::now();
                    m.insert(
                        req.tenant.clone(),
                        TenantKeys {
                            keys,
                            fetched: now,
                            attempted: now,
                        },
                    );
                }
                Err(e) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(tenant = ?req.tenant, error = %e, "cannot fetch JWKS");
                    // Keep what we had; do not retry before `min`.
                    let mut m = self.tenants.write().unwrap_or_else(|p| p.into_inner());
                    self.make_room(&mut m, &req.tenant);
                    let now = Instant::now();
                    m.entry(req.tenant.clone())
                        .and_modify(|t| t.attempted = now)
                        .or_insert_with(|| TenantKeys {
                            keys: HashMap::new(),
                            fetched: now,
                            attempted: now,
                        });
                }
            }
        }
        if let Some(r) = req.reply {
            let _ = r.send(());
        }
    }

    /// Keeps the cache under `max_tenants` before `tenant` is inserted:
    /// tenants without keys (made-up or failed) go first, then the least
    /// recently fetched.
    fn make_room(&self, m: &mut HashMap<String, TenantKeys>, tenant: &str) {
        if m.len() < self.max_tenants || m.contains_key(tenant) {
            return;
        }
        m.retain(|_, t| !t.keys.is_empty());
        while m.len() >= self.max_tenants {
            let oldest = m
                .iter()
                .min_by_key(|(_, t)| t.fetched)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => m.remove(&k),
                None => break,
            };
        }
    }

    /// Tenants cached now.
    pub fn cached(&self) -> usize {
        self.tenants.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The key `kid` of `tenant`, if cached. A stale entry is still used
    /// and refreshed in the background.
    pub fn key(&self, tenant: &str, kid: Option<&str>) -> Vec<DecodingKey> {
        let m = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        let Some(t) = m.get(tenant) else {
            return Vec::new();
        };
        if t.fetched.elapsed() >= self.max_age && t.attempted.elapsed() >= self.min {
            let _ = self.fetch.try_send(Fetch {
                tenant: tenant.to_owned(),
                reply: None,
            });
        }
        match kid {
            Some(k) => t.keys.get(k).cloned().into_iter().collect(),
            None => t.keys.values().cloned().collect(),
        }
    }

    /// Asks for `tenant`'s keys to be fetched, and waits for it (bounded).
    pub async fn refresh(&self, tenant: &str) {
        if let Some(done) = self.ask(tenant) {
            let _ = monoio::time::timeout(self.wait, done.recv_async()).await;
        }
    }

    /// Asks for `tenant`'s keys to be fetched; the receiver hears when the
    /// fetch is over, on any runtime (wait for it at most [`Self::wait`]).
    /// `None`: the queue is full, refused now rather than after a flood.
    pub fn ask(&self, tenant: &str) -> Option<flume::Receiver<()>> {
        let (tx, rx) = flume::bounded(1);
        let sent = self.fetch.try_send(Fetch {
            tenant: tenant.to_owned(),
            reply: Some(tx),
        });
        if sent.is_err() {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(rx)
    }

    /// How long a caller waits for a fetch it asked for.
    pub fn wait(&self) -> Duration {
        self.wait
    }
}

fn fetch(
    agent: &reqwest::blocking::Client,
    url: &str,
) -> Result<HashMap<String, DecodingKey>, String> {
    let body = agent
        .get(url)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .map_err(|e| e.to_string())?;
    parse(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_claim_is_read_only_when_it_is_a_slug() {
        let tok = |p: &str| format!("h.{}.s", B64URL.encode(p));
        assert_eq!(
            unverified_tenant(&tok(r#"{"tenant":"acme"}"#)).as_deref(),
            Some("acme")
        );
        assert_eq!(unverified_tenant(&tok(r#"{"tenant":"a&b=c"}"#)), None);
        assert_eq!(unverified_tenant(&tok(r#"{"sub":"x"}"#)), None);
        assert_eq!(unverified_tenant("garbage"), None);
    }
}
