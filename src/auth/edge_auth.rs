//! Who may connect as an edge: an `Edge-Key`, a client certificate whose
//! CN is the tenant id (mutual TLS, seed 002), or both, as
//! `tls.connector_auth` says.
//!
//! The decision is made once, at the upgrade, from what the transport
//! proved ([`Transport`]) and the request's headers; what it grants (the
//! edge ids this connection may serve, and the tenant its `register` must
//! name) travels with the connection as a [`Grant`].

use crate::config::{Config, ConnectorAuth};
use crate::config::{EdgeKeys, MIN_EDGE_KEY_CHARS};
use crate::wire::http::{HttpError, Request};

/// What the transport proved about the peer before any HTTP was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Transport {
    /// The plaintext listener.
    #[default]
    Plain,
    /// The TLS listener; `client` is the tenant named by a client
    /// certificate that chained to `tls.client_ca_file` and was valid now.
    Tls {
        client: Option<CertTenant>,
        /// The client's address (the shard sees a local socket pair).
        peer: Option<std::net::IpAddr>,
    },
    /// A plaintext front (Flight, the gRPC tunnel) speaking for a client
    /// over a socket pair, which has no address of its own: `peer` is the
    /// client's.
    Fronted { peer: Option<std::net::IpAddr> },
}

impl Transport {
    pub fn cert_tenant(&self) -> Option<&CertTenant> {
        match self {
            Transport::Tls { client, .. } => client.as_ref(),
            Transport::Plain | Transport::Fronted { .. } => None,
        }
    }

    /// The client's address, for per-address limits: the front's word for
    /// it, or the socket's peer on the plaintext listener.
    pub fn source(
        &self,
        socket_peer: impl FnOnce() -> Option<std::net::IpAddr>,
    ) -> Option<std::net::IpAddr> {
        match self {
            Transport::Tls { peer, .. } | Transport::Fronted { peer } => *peer,
            Transport::Plain => socket_peer(),
        }
    }
}

/// A tenant id read from a verified client certificate's CN. Only the TLS
/// front makes one, after rustls has verified the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertTenant(String);

impl CertTenant {
    /// `cn` must come from a certificate rustls verified.
    pub fn from_verified_cn(cn: String) -> Self {
        Self(cn)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CertTenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an authenticated edge connection may do.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Edge ids it may serve.
    pub edges: Vec<String>,
    /// Set when a certificate authenticated it: `register` must name this
    /// tenant.
    pub tenant: Option<CertTenant>,
}

impl Grant {
    pub fn allows(&self, edge: &str) -> bool {
        self.edges.iter().any(|e| e == edge)
    }
}

/// Why an edge was refused; each becomes a 401 with this reason.
fn refuse(reason: &'static str) -> HttpError {
    HttpError::new(401, reason)
}

/// Decides at the upgrade. `Edge-Key` edges win over the certificate's
/// (the key names edges; the certificate names the tenant, checked at
/// `register`); a certificate alone grants the edge named by its tenant id
/// and those listed for it in `tls.tenant_edges`.
pub fn authenticate(
    cfg: &Config,
    keys: &EdgeKeys,
    transport: &Transport,
    req: &Request,
) -> Result<Grant, HttpError> {
    authenticate_key(cfg, keys, transport, req.header("edge-key"))
}

/// [`authenticate`] from the `Edge-Key` alone (the gRPC tunnel's
/// `edge-key` metadata).
pub fn authenticate_key(
    cfg: &Config,
    keys: &EdgeKeys,
    transport: &Transport,
    key: Option<&str>,
) -> Result<Grant, HttpError> {
    let key = key.filter(|k| !k.is_empty());
    let cert = transport.cert_tenant();
    let mode = cfg.tls.connector_auth;
    if mode != ConnectorAuth::Either && cert.is_none() {
        return Err(refuse(
            "client certificate required: connect to the TLS listener with a certificate signed by the gateway's client CA",
        ));
    }
    if mode == ConnectorAuth::Both && key.is_none() {
        return Err(refuse("missing Edge-Key header"));
    }
    let edges = match (key, cert) {
        // Too short to be a real key: refused without hashing, the same
        // answer as a wrong key.
        (Some(k), _) if k.len() < MIN_EDGE_KEY_CHARS => return Err(refuse("invalid Edge-Key")),
        (Some(k), _) => {
            let edges = keys.edges_for(k.as_bytes());
            if edges.is_empty() {
                return Err(refuse("invalid Edge-Key"));
            }
            edges
        }
        (None, Some(t)) => {
            let mut edges = vec![t.as_str().to_owned()];
            if let Some(more) = cfg.tls.tenant_edges.get(t.as_str()) {
                edges.extend(more.iter().cloned());
            }
            edges
        }
        (None, None) => return Err(refuse("missing Edge-Key header")),
    };
    Ok(Grant {
        edges,
        tenant: cert.cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyHash;

    fn req(key: Option<&str>) -> Request {
        let mut raw = String::from("GET /ws/connect HTTP/1.1\r\nHost: x\r\n");
        if let Some(k) = key {
            raw.push_str(&format!("Edge-Key: {k}\r\n"));
        }
        raw.push_str("\r\n");
        crate::wire::http::parse_request(raw.as_bytes(), 8192, 64)
            .unwrap()
            .unwrap()
    }

    const GLOBEX_KEY: &str = "globex-key-0123456789abcdef";

    fn setup(mode: ConnectorAuth) -> (Config, EdgeKeys) {
        let mut cfg = Config::default();
        cfg.tls.connector_auth = mode;
        cfg.tls
            .tenant_edges
            .insert("acme".into(), vec!["acme-plant".into()]);
        cfg.edge_keys.insert(
            "globex".into(),
            KeyHash::of(GLOBEX_KEY.as_bytes()).to_config_string(),
        );
        let keys = EdgeKeys::from_config(&cfg.edge_keys).unwrap();
        (cfg, keys)
    }

    fn tls(tenant: Option<&str>) -> Transport {
        Transport::Tls {
            client: tenant.map(|t| CertTenant::from_verified_cn(t.into())),
            peer: None,
        }
    }

    #[test]
    fn either_accepts_a_key_or_a_certificate() {
        let (cfg, keys) = setup(ConnectorAuth::Either);
        let g = authenticate(&cfg, &keys, &Transport::Plain, &req(Some(GLOBEX_KEY))).unwrap();
        assert_eq!(g.edges, ["globex"]);
        assert!(g.tenant.is_none());
        let g = authenticate(&cfg, &keys, &tls(Some("acme")), &req(None)).unwrap();
        assert_eq!(g.edges, ["acme", "acme-plant"]);
        assert_eq!(g.tenant.unwrap().as_str(), "acme");
        let e = authenticate(&cfg, &keys, &tls(None), &req(None)).unwrap_err();
        assert_eq!(e.status, 401);
        let e = authenticate(&cfg, &keys, &Transport::Plain, &req(Some("nope"))).unwrap_err();
        assert_eq!(e.reason, "invalid Edge-Key");
    }

    #[test]
    fn a_key_and_a_certificate_are_both_checked() {
        let (cfg, keys) = setup(ConnectorAuth::Either);
        // The key names the edges; the certificate's tenant still binds register.
        let g = authenticate(&cfg, &keys, &tls(Some("acme")), &req(Some(GLOBEX_KEY))).unwrap();
        assert_eq!(g.edges, ["globex"]);
        assert_eq!(g.tenant.unwrap().as_str(), "acme");
        assert!(authenticate(&cfg, &keys, &tls(Some("acme")), &req(Some("bad"))).is_err());
    }

    #[test]
    fn certificate_mode_refuses_keys_alone_and_plaintext() {
        let (cfg, keys) = setup(ConnectorAuth::Certificate);
        assert!(authenticate(&cfg, &keys, &Transport::Plain, &req(Some(GLOBEX_KEY))).is_err());
        assert!(authenticate(&cfg, &keys, &tls(None), &req(Some(GLOBEX_KEY))).is_err());
        assert!(authenticate(&cfg, &keys, &tls(Some("acme")), &req(None)).is_ok());
    }

    #[test]
    fn both_mode_needs_both() {
        let (cfg, keys) = setup(ConnectorAuth::Both);
        assert!(authenticate(&cfg, &keys, &tls(Some("acme")), &req(None)).is_err());
        assert!(authenticate(&cfg, &keys, &tls(None), &req(Some(GLOBEX_KEY))).is_err());
        assert!(authenticate(&cfg, &keys, &tls(Some("acme")), &req(Some(GLOBEX_KEY))).is_ok());
    }
}
