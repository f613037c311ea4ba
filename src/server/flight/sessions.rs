//! One gateway session per Flight token, kept between calls.
//!
//! A session token names one session, and the gateway ends a session
//! `timeouts.session_end_ms` after its last connection closes. A notebook
//! calls `list_flights`, then `get_flight_info`, then `do_get`, seconds
//! apart, each a separate gRPC call: if each opened and closed its own
//! connection the session would end between them. So the link a token
//! opened stays open for `flight.idle_ms` after its last call, its pings
//! answered, and calls with the same token take turns on it (a session
//! runs one query at a time, as in a browser). Links are keyed by the
//! token's hash, never by the session id alone: a link authenticated by one
//! token is never lent to another.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};
use sluice_protocol::sync::lock;
use tokio::sync::OwnedMutexGuard;
use tonic::codegen::http;
use tonic::Status;

use super::link::Link;
use super::status;
use crate::auth::jwks::unverified_tenant;
use crate::auth::token::TokenError;
use crate::ids::SessionId;
use crate::server::h2_front::FrontInfo;
use crate::server::h2_gate::Check;
use crate::shard::metrics::FlightStats;
use crate::shard::Shared;
use crate::wire::message::ErrorCode;

type Key = [u8; 32];

struct Slot {
    link: Arc<tokio::sync::Mutex<Option<Link>>>,
    last_used: Mutex<Instant>,
}

pub struct Sessions {
    shared: Arc<Shared>,
    stats: Arc<FlightStats>,
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
}

/// A session's link, held for one call.
pub type Held = OwnedMutexGuard<Option<Link>>;

impl Sessions {
    pub fn new(shared: Arc<Shared>, stats: Arc<FlightStats>) -> Arc<Sessions> {
        Arc::new(Sessions {
            shared,
            stats,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// The open link for `token`, opened now if there is none; waits while
    /// another call of the same token holds it.
    pub async fn hold(&self, token: &str, front: &FrontInfo) -> Result<Held, Status> {
        let sid = sid_of(token)?;
        let key: Key = Sha256::digest(token.as_bytes()).into();
        let slot = {
            let mut slots = lock(&self.slots);
            match slots.get(&key) {
                Some(s) => s.clone(),
                None => {
                    if slots.len() >= self.shared.cfg.flight.max_sessions {
                        return Err(Status::resource_exhausted(
                            "too many Flight sessions open (flight.max_sessions); retry later",
                        ));
                    }
                    let s = Arc::new(Slot {
                        link: Arc::new(tokio::sync::Mutex::new(None)),
                        last_used: Mutex::new(Instant::now()),
                    });
                    slots.insert(key, s.clone());
                    s
                }
            }
        };
        let mut held = slot.link.clone().lock_owned().await;
        *lock(&slot.last_used) = Instant::now();
        if held.as_ref().is_some_and(|l| !l.is_open()) {
            *held = None;
        }
        if held.is_none() {
            let link = Link::open(&self.shared, &sid, token, front.transport())
                .await
                .map_err(status::of_link)?;
            *held = Some(link);
        }
        Ok(held)
    }

    /// Every second: answers idle links' pings, and closes the links idle
    /// past `flight.idle_ms` or closed by the gateway (a revocation, the
    /// token's expiry), so the session can end.
    pub async fn tend(self: Arc<Self>) {
        let idle = Duration::from_millis(self.shared.cfg.flight.idle_ms);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let mut slots = lock(&self.slots);
            slots.retain(|_, slot| {
                let Ok(mut held) = slot.link.try_lock() else {
                    return true; // in a call
                };
                let fresh = lock(&slot.last_used).elapsed() < idle;
                let alive = held.as_mut().is_some_and(|l| l.tend());
                fresh && alive
            });
            self.stats
                .sessions
                .store(slots.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The Flight front's gate: a call's bearer token is verified (offline,
/// as the shard will verify it again) before its ticket or descriptor is
/// read, so a caller without a valid token cannot make the front buffer
/// anything.
pub struct Bearer {
    pub shared: Arc<Shared>,
    pub stats: Arc<FlightStats>,
}

impl Check for Bearer {
    fn check(
        &self,
        headers: &http::HeaderMap,
        _front: &FrontInfo,
    ) -> Pin<Box<dyn Future<Output = Result<(), Status>> + Send>> {
        let token = match bearer_of(headers).and_then(|t| Ok((sid_of(t)?, t.to_owned()))) {
            Ok(t) => t,
            Err(s) => {
                self.stats.refused.fetch_add(1, Relaxed);
                return Box::pin(std::future::ready(Err(s)));
            }
        };
        let (shared, stats) = (self.shared.clone(), self.stats.clone());
        Box::pin(async move {
            let (sid, token) = token;
            let v = &shared.verifier;
            let mut verified = v.verify(&token, &sid);
            // A tenant whose keys are not cached yet: fetched once, as the
            // shard would (on this front's runtime, not the shard's).
            if let (Err(TokenError::UnknownKey), Some(cache), Some(tenant)) =
                (&verified, v.jwks(), unverified_tenant(&token))
            {
                if let Some(done) = cache.ask(&tenant) {
                    let _ = tokio::time::timeout(cache.wait(), done.recv_async()).await;
                    verified = v.verify(&token, &sid);
                }
            }
            verified.map(drop).map_err(|e| {
                stats.refused.fetch_add(1, Relaxed);
                // Worded as the shard words it (`unauthorized: …`).
                Status::unauthenticated(format!("{}: {e}", ErrorCode::Unauthorized))
            })
        })
    }
}

/// The session id a token names. Read without verifying: it only picks
/// the shard; the shard verifies the token (and that `sid` matches).
fn sid_of(token: &str) -> Result<SessionId, Status> {
    let bad = || {
        Status::unauthenticated(
            "authorization: Bearer <session token> is not a JWT with a sid claim",
        )
    };
    let payload = token.split('.').nth(1).ok_or_else(bad)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| bad())?;
    #[derive(serde::Deserialize)]
    struct Sid {
        sid: String,
    }
    let sid: Sid = serde_json::from_slice(&raw).map_err(|_| bad())?;
    SessionId::parse(&sid.sid).ok_or_else(bad)
}

/// The token from the `authorization: Bearer …` header.
pub fn bearer(meta: &tonic::metadata::MetadataMap) -> Result<&str, Status> {
    bearer_of(meta.as_ref())
}

fn bearer_of(headers: &http::HeaderMap) -> Result<&str, Status> {
    let missing = || {
        Status::unauthenticated(
            "missing authorization: Bearer <session token> (from the control plane's access answer, or `sluice token`)",
        )
    };
    let v = headers.get("authorization").ok_or_else(missing)?;
    let v = v.to_str().map_err(|_| missing())?;
    let (scheme, token) = v.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing());
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_id_is_read_from_the_token_s_payload() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sid":"s-1"}"#);
        let sid = sid_of(&format!("h.{payload}.sig")).unwrap();
        assert_eq!(sid.as_str(), "s-1");
        for bad in ["", "abc", "h.!!.s", "h.e30.s"] {
            assert_eq!(
                sid_of(bad).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
    }

    #[test]
    fn only_a_bearer_header_carries_a_token() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert!(bearer(&m).is_err());
        m.insert("authorization", "Basic abc".parse().unwrap());
        assert!(bearer(&m).is_err());
        m.insert("authorization", "bearer  t.o.k ".parse().unwrap());
        assert_eq!(bearer(&m).unwrap(), "t.o.k");
    }
}
