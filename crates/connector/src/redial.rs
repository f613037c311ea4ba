//! Dialing the gateway again after a link ends, the same for WebSocket
//! workers and the gRPC tunnel: exponential backoff from
//! `reconnect_delay_ms` to `max_reconnect_delay_ms` with ±50 % jitter (so a
//! fleet of connectors does not reconnect in lockstep after a gateway
//! restart), reset once a link had registered.

use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;

pub struct Backoff {
    base: Duration,
    max: Duration,
    delay: Duration,
}

impl Backoff {
    pub fn new(cfg: &Config) -> Backoff {
        let (base, max) = cfg.reconnect();
        Backoff {
            base,
            max,
            delay: base,
        }
    }

    /// Logs why `link` ended; a link that had registered starts the
    /// backoff over.
    pub fn failed(&mut self, link: &str, registered: bool, e: &anyhow::Error) {
        if registered {
            self.delay = self.base;
            tracing::warn!(link, error = %format!("{e:#}"), "link to the gateway lost; reconnecting");
        } else {
            tracing::warn!(link, error = %format!("{e:#}"), retry_ms = self.delay.as_millis() as u64, "cannot register with the gateway");
        }
    }

    /// Sleeps the jittered delay (cut short by `stop`), then doubles it.
    pub async fn wait(&mut self, stop: &mut watch::Receiver<bool>) {
        let jittered = self.delay.mul_f64(0.5 + rand::random::<f64>());
        tokio::select! {
            _ = tokio::time::sleep(jittered) => {}
            _ = stop.changed() => {}
        }
        self.delay = (self.delay * 2).min(self.max);
    }
}
