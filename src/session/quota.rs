//! A connection's membership of its session: its share of the session's
//! byte quota and of its connection allowance. The count lives in the
//! gateway-wide [`Spends`](crate::registry::Spends) ledger, so a token
//! reused over several connections (one after the other, or at once, on
//! any shard) spends one quota; when the last connection has been gone
//! for `timeouts.session_end_ms`, the session ends and the end is
//! reported (see `cluster::session_end`).
//!
//! A frame is admitted whole or not at all: the session never receives half
//! a frame, and the count is exactly the payload bytes of the data frames it
//! did receive (headers and the gateway's own JSON messages are free).

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::token::Claims;
use crate::ids::SessionId;
use crate::registry::{Ended, OpenError, RemoteJoin, Spend};
use crate::shard::Shard;
use crate::wire::message::{close, ErrorCode, Refusal};

/// How often a join waiting for a closing connection tries again.
const RETRY_FULL: Duration = Duration::from_millis(10);

// `repr(C)`, `spend` first: it is the field a forwarded frame reads, and
// it then sits beside the session's other per-frame fields (`Session`).
#[repr(C)]
pub struct Quota {
    spend: Arc<Spend>,
    shard: Rc<Shard>,
    sid: SessionId,
    tenant: String,
    client: Option<String>,
    exp: u64,
    /// Counted in Redis too (so leaving must uncount it there).
    counted_remotely: bool,
    /// Refused after joining: leaves without ending the session.
    refused: bool,
}

/// Why a join did not happen.
enum NotJoined {
    /// The session holds all the connections it may: worth waiting for one
    /// that is closing.
    Full {
        max: u32,
    },
    Refused(Refusal),
}

impl Quota {
    /// Joins the session `sid` for this connection, or says why not. With
    /// Redis the connection is also counted across gateways, and the
    /// session's first connection here reserves what is left of its quota.
    ///
    /// A browser that drops its connection and reconnects at once (a page
    /// reload) can get here before its old connection's end has been read
    /// and counted: a session at its connection limit is retried for up to
    /// `timeouts.reconnect_grace_ms` before the new connection is refused
    /// (4429). `sluice-loadtest chaos` saw a few such reconnects refused in
    /// every run before.
    pub async fn join(
        shard: &Rc<Shard>,
        sid: &SessionId,
        claims: &Claims,
    ) -> Result<Quota, Refusal> {
        let grace = Duration::from_millis(shard.cfg().timeouts.reconnect_grace_ms);
        let until = std::time::Instant::now() + grace;
        loop {
            match Self::try_join(shard, sid, claims).await {
                Ok(quota) => return Ok(quota),
                Err(NotJoined::Full { max }) if std::time::Instant::now() >= until => {
                    return Err(too_many(max))
                }
                Err(NotJoined::Full { .. }) => monoio::time::sleep(RETRY_FULL).await,
                Err(NotJoined::Refused(r)) => return Err(r),
            }
        }
    }

    async fn try_join(
        shard: &Rc<Shard>,
        sid: &SessionId,
        claims: &Claims,
    ) -> Result<Quota, NotJoined> {
        let cfg = shard.cfg();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let ttl = Duration::from_secs(claims.exp.saturating_sub(now) + cfg.auth.leeway_s);
        let limit = claims
            .quota
            .or(Some(cfg.limits.default_quota_bytes))
            .filter(|&l| l > 0);
        let max = cfg.limits.max_connections_per_session;
        match shard.shared.spends.open(sid, limit, max, ttl) {
            Ok(joined) => {
                let mut quota = Quota {
                    spend: joined.spend,
                    shard: shard.clone(),
                    sid: sid.clone(),
                    tenant: claims.tenant.clone(),
                    client: claims.client.clone(),
                    exp: claims.exp,
                    counted_remotely: false,
                    refused: false,
                };
                let Some(link) = &shard.shared.spend_link else {
                    return Ok(quota);
                };
                if joined.first && limit.is_some() {
                    // Nothing may be delivered before the reservation lands.
                    quota.spend.set_cap(quota.spend.used());
                }
                let want = limit.unwrap_or(0);
                match link.join(sid, claims.exp, max, want, joined.first).await {
                    Ok(RemoteJoin::TooMany) => {
                        // `quota` drops here: the local count is undone
                        // (the remote one was never taken), and nothing
                        // ends: the session lives on another gateway.
                        quota.refused = true;
                        Err(NotJoined::Full { max })
                    }
                    Ok(RemoteJoin::Reserved(left)) => {
                        quota.counted_remotely = true;
                        quota.spend.set_cap(quota.spend.used() + left);
                        Ok(quota)
                    }
                    Ok(RemoteJoin::Counted) => {
                        quota.counted_remotely = true;
                        Ok(quota)
                    }
                    Err(e) => {
                        // Per session: debug. The outage itself is logged
                        // once, by the link (`shard::health::REDIS`).
                        tracing::debug!(sid = %sid, error = %e, "session spend across gateways unavailable; counting on this gateway");
                        if joined.first {
                            if let Some(l) = limit {
                                quota.spend.set_cap(l);
                            }
                        }
                        Ok(quota)
                    }
                }
            }
            Err(OpenError::Ended) => Err(NotJoined::Refused(Refusal::new(
                close::REVOKED,
                ErrorCode::SessionEnded,
                "session ended: its token cannot open new streams (ask the control plane for a new session)",
            ))),
            Err(OpenError::TooManyConnections { max }) => Err(NotJoined::Full { max }),
        }
    }

    /// Where the pointer to that count lives, inside the session (a
    /// prefetch hint).
    pub fn spend_addr(&self) -> *const () {
        std::ptr::from_ref(&self.spend).cast()
    }

    /// Where the shared count `admit` charges lives (a prefetch hint).
    pub fn counter_addr(&self) -> *const () {
        Arc::as_ptr(&self.spend).cast()
    }

    /// Charges `len` bytes if they fit the session's quota; otherwise
    /// charges nothing.
    pub fn admit(&self, len: u64) -> bool {
        self.spend.admit(len)
    }

    /// Bytes the session received, over all its connections.
    pub fn used(&self) -> u64 {
        self.spend.used()
    }

    pub fn limit(&self) -> Option<u64> {
        self.spend.limit()
    }
}

fn too_many(max: u32) -> Refusal {
    Refusal::new(
        close::QUOTA,
        ErrorCode::TooManyConnections,
        format!("session already holds {max} connection(s) (limits.max_connections_per_session)"),
    )
}

impl Drop for Quota {
    fn drop(&mut self) {
        let shared = self.shard.shared.clone();
        if self.refused {
            shared.spends.abandon(&self.sid);
            return;
        }
        let last = shared.spends.close(&self.sid);
        if let Some(link) = shared.spend_link.as_ref().filter(|_| self.counted_remotely) {
            // The last connection here gives back what it reserved and did
            // not use, so a reconnect through another gateway finds it.
            let unused = match (last, self.spend.limit()) {
                (Some(_), Some(_)) => self.spend.release_unused(),
                _ => 0,
            };
            link.leave(&self.sid, self.exp, unused);
        }
        let Some(generation) = last else {
            return;
        };
        let wait = Duration::from_millis(self.shard.cfg().timeouts.session_end_ms);
        let mut end = Ended {
            sid: self.sid.clone(),
            tenant: std::mem::take(&mut self.tenant),
            client: self.client.take(),
            exp: self.exp,
            bytes: 0,
        };
        monoio::spawn(async move {
            monoio::time::sleep(wait).await;
            let remember = shared.spend_link.is_none();
            if let Some(bytes) = shared.spends.end_if_idle(&end.sid, generation, remember) {
                end.bytes = bytes;
                tracing::info!(sid = %end.sid, bytes, "session ended");
                shared.end_reports.report(end);
            }
        });
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    /// A forwarded frame reads `spend` beside the session's other
    /// per-frame fields (`Session`'s layout test relies on this).
    #[test]
    fn the_count_comes_first() {
        assert_eq!(std::mem::offset_of!(Quota, spend), 0);
    }
}
