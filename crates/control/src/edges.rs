//! Where an edge is online, and how to reach the gateway that holds it.
//!
//! With Redis, every gateway records the edges connected to it under
//! `sluice:edges:{edge}` → `{"url", "tenant", "datasets"}` with a TTL its
//! heartbeat refreshes; the control plane sends the client to that URL.
//! Without Redis (one gateway), the control plane asks the gateway's admin
//! endpoint, and sends revocations there too.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use serde::Deserialize;

use crate::error::ApiError;

/// An edge a gateway reports as connected.
#[derive(Debug, Clone, Deserialize)]
pub struct Online {
    /// Base WebSocket URL of the gateway holding it (`ws://host:port`).
    pub url: String,
    /// Its Arrow Flight listener (`grpc+tls://host:port`), when it has one.
    #[serde(default)]
    pub flight_url: Option<String>,
    pub tenant: String,
    #[serde(default)]
    pub datasets: Vec<String>,
}

#[derive(Deserialize)]
struct AdminEdges {
    public_url: String,
    #[serde(default)]
    flight_url: Option<String>,
    edges: Vec<AdminEdge>,
}

#[derive(Deserialize)]
struct AdminEdge {
    edge: String,
    tenant: String,
    #[serde(default)]
    datasets: Vec<String>,
}

/// The gateway's admin endpoint (single node), as this control plane
/// sees it: logged once when it goes, counted, logged once when it returns.
pub static GATEWAY: sluice_protocol::outage::Outage =
    sluice_protocol::outage::Outage::new("gateway admin endpoint");

/// A single gateway reached through its admin endpoint.
pub struct GatewayAdmin {
    pub base: String,
    token: String,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<Option<(Instant, std::sync::Arc<AdminEdges>)>>,
}

/// How long the admin endpoint's edge list is reused.
const ADMIN_CACHE: Duration = Duration::from_millis(500);

impl GatewayAdmin {
    pub fn new(base: &str, token: String, http: reqwest::Client) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ApiError {
        GATEWAY.failed(&format!("{}: {e}", self.base));
        ApiError::new(
            503,
            "gateway_unreachable",
            "the gateway's admin endpoint cannot be reached",
        )
    }

    async fn edges(&self) -> Result<std::sync::Arc<AdminEdges>, ApiError> {
        let mut c = self.cache.lock().await;
        if let Some((at, e)) = c.as_ref() {
            if at.elapsed() < ADMIN_CACHE {
                return Ok(e.clone());
            }
        }
        let resp = self.call(reqwest::Method::GET, "/admin/edges").await?;
        let e = std::sync::Arc::new(
            resp.json::<AdminEdges>()
                .await
                .map_err(|e| self.unreachable(e))?,
        );
        *c = Some((Instant::now(), e.clone()));
        Ok(e)
    }

    pub async fn revoke(&self, sid: &str, exp: u64) -> Result<(), ApiError> {
        let path = format!("/admin/revoke/{sid}?exp={exp}");
        self.call(reqwest::Method::POST, &path).await.map(drop)
    }

    /// One admin request; anything but a 2xx is the gateway being unreachable.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::Response, ApiError> {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(self.unreachable(format!("HTTP {}", resp.status())));
        }
        GATEWAY.ok();
        Ok(resp)
    }

    pub async fn ping(&self) -> bool {
        let mut c = self.cache.lock().await;
        *c = None;
        drop(c);
        self.edges().await.is_ok()
    }
}

pub enum Locator {
    Redis {
        conn: ConnectionManager,
        prefix: String,
    },
    Gateway(GatewayAdmin),
}

impl Locator {
    /// The gateway holding `edge`, if the edge is online for `tenant`.
    pub async fn find(&self, tenant: &str, edge: &str) -> Result<Option<Online>, ApiError> {
        match self {
            Locator::Redis { conn, prefix } => {
                let mut c = conn.clone();
                let v: Option<String> = redis::cmd("GET")
                    .arg(format!("{prefix}{edge}"))
                    .query_async(&mut c)
                    .await
                    .map_err(|e| {
                        crate::store::REDIS.failed(&format!("edge registry read: {e}"));
                        ApiError::new(
                            503,
                            "registry_unavailable",
                            "edge registry (Redis) is unreachable",
                        )
                    })?;
                Ok(v.and_then(|j| serde_json::from_str::<Online>(&j).ok())
                    .filter(|o| o.tenant == tenant))
            }
            Locator::Gateway(g) => {
                let list = g.edges().await?;
                Ok(list
                    .edges
                    .iter()
                    .find(|e| e.edge == edge && e.tenant == tenant)
                    .map(|e| Online {
                        url: list.public_url.clone(),
                        flight_url: list.flight_url.clone(),
                        tenant: e.tenant.clone(),
                        datasets: e.datasets.clone(),
                    }))
            }
        }
    }
}
