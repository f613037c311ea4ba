//! Dialing the gateway again after a link ends, the same for WebSocket
//! workers and the gRPC tunnel: exponential backoff from
//! `reconnect_delay_ms` to `max_reconnect_delay_ms` with ±50 % jitter (so a
//! fleet of connectors does not reconnect in lockstep after a gateway
//! restart), reset once a link had registered.

use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::link::LinkError;

pub struct Backoff {
    base: Duration,
    max: Duration,
    delay: Duration,
    /// The gateway said when to come back (`Retry-After`): the next wait
    /// is at least this.
    floor: Option<Duration>,
}

impl Backoff {
    pub fn new(cfg: &Config) -> Backoff {
        let (base, max) = cfg.reconnect();
        Backoff {
            base,
            max,
            delay: base,
            floor: None,
        }
    }

    /// Logs why `link` ended; a link that had registered starts the
    /// backoff over.
    pub fn failed(&mut self, link: &str, registered: bool, e: &anyhow::Error) {
        self.floor = e.chain().find_map(|c| match c.downcast_ref::<LinkError>() {
            Some(LinkError::Refused { retry_after, .. }) => *retry_after,
            _ => None,
        });
        if registered {
            self.delay = self.base;
            tracing::warn!(link, error = %format!("{e:#}"), "link to the gateway lost; reconnecting");
        } else {
            let retry = self.floor.map_or(self.delay, |f| f.max(self.delay));
            tracing::warn!(link, error = %format!("{e:#}"), retry_ms = retry.as_millis() as u64, "cannot register with the gateway");
        }
    }

    /// Sleeps the jittered delay (cut short by `stop`), then doubles it.
    pub async fn wait(&mut self, stop: &mut watch::Receiver<bool>) {
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {}
        }
    }

    /// The jittered delay, at least what the gateway asked for; doubles
    /// the next one.
    pub fn next_delay(&mut self) -> Duration {
        let mut jittered = self.delay.mul_f64(0.5 + rand::random::<f64>());
        if let Some(floor) = self.floor.take() {
            jittered = jittered.max(floor);
        }
        self.delay = (self.delay * 2).min(self.max);
        jittered
    }
}
