//! The TLS listener's certificate, key and client CA: read from PEM files,
//! built into a rustls `ServerConfig`, and swapped in whole when the files
//! change or on SIGHUP. A handshake takes the config current when it
//! starts; connections already up keep theirs, so a reload drops nobody.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use thiserror::Error;

use crate::config::Tls;

#[derive(Debug, Error)]
pub enum MaterialError {
    #[error("tls: cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("tls: {path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("tls: {path} holds no PEM private key")]
    NoKey { path: String },
    #[error("tls: client CA {path}: {reason}")]
    ClientCa { path: String, reason: String },
    #[error("tls: certificate {cert} and key {key} do not go together: {reason}")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub handshakes: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub active: AtomicI64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Unix time the serving certificate stops being valid.
    pub cert_not_after: AtomicI64,
}

/// What a file looked like when last read, to notice a change.
type Fingerprint = Vec<Option<(SystemTime, u64, u64)>>;

pub struct Material {
    cfg: Tls,
    current: ArcSwap<ServerConfig>,
    seen: Mutex<Fingerprint>,
    pub stats: Stats,
}

impl Material {
    /// Reads the files; an error here stops the gateway from starting.
    pub fn load(cfg: &Tls) -> Result<Material, MaterialError> {
        let seen = fingerprint(cfg);
        let (config, not_after) = build(cfg)?;
        let stats = Stats::default();
        stats.cert_not_after.store(not_after, Relaxed);
        Ok(Material {
            cfg: cfg.clone(),
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(seen),
            stats,
        })
    }

    pub fn reload_check_ms(&self) -> u64 {
        self.cfg.reload_check_ms
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Rereads the files now. On failure the running config stays (a
    /// half-written pair must not take the listener down).
    pub fn reload(&self) -> Result<(), MaterialError> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = fingerprint(&self.cfg);
        match build(&self.cfg) {
            Ok((config, not_after)) => {
                self.current.store(Arc::new(config));
                self.stats.cert_not_after.store(not_after, Relaxed);
                self.stats.reloads.fetch_add(1, Relaxed);
                tracing::info!(cert = %self.cfg.cert_file, not_after, "tls certificate reloaded");
                Ok(())
            }
            Err(e) => {
                self.stats.reload_failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "tls reload failed; still serving the previous certificate");
                Err(e)
            }
        }
    }

    /// Reloads if any file changed since it was last read (a failed read
    /// counts as seen: the next write to the files tries again).
    pub fn reload_if_changed(&self) {
        let now = fingerprint(&self.cfg);
        let changed = *self.seen.lock().unwrap_or_else(|e| e.into_inner()) != now;
        if changed {
            let _ = self.reload();
        }
    }
}

fn files(cfg: &Tls) -> [&str; 3] {
    [&cfg.cert_file, &cfg.key_file, &cfg.client_ca_file]
}

fn fingerprint(cfg: &Tls) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    files(cfg)
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        })
        .collect()
}

fn read(path: &str) -> Result<Vec<u8>, MaterialError> {
    std::fs::read(path).map_err(|e| MaterialError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| MaterialError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(MaterialError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn build(cfg: &Tls) -> Result<(ServerConfig, i64), MaterialError> {
    let chain = certs(&cfg.cert_file)?;
    let key =
        PrivateKeyDer::from_pem_slice(&read(&cfg.key_file)?).map_err(|_| MaterialError::NoKey {
            path: cfg.key_file.clone(),
        })?;
    let not_after = x509_parser::parse_x509_certificate(&chain[0])
        .map(|(_, c)| c.validity().not_after.timestamp())
        .unwrap_or(0);
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs provider supports the default versions");
    let builder = if cfg.client_ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let ca_err = |reason: String| MaterialError::ClientCa {
            path: cfg.client_ca_file.clone(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for c in certs(&cfg.client_ca_file)? {
            roots.add(c).map_err(|e| ca_err(e.to_string()))?;
        }
        // Browsers present no certificate; connectors do. Whether a
        // connection needed one is decided per endpoint (edge_auth).
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| ca_err(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| MaterialError::Mismatch {
            cert: cfg.cert_file.clone(),
            key: cfg.key_file.clone(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, not_after))
}

/// The tenant id a verified client certificate names: its subject CN.
pub fn tenant_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = c.subject().iter_common_name().next()?.as_str().ok()?;
    (!cn.is_empty()).then(|| cn.to_owned())
}

/// A TLS client config trusting the public web PKI roots and the CA
/// certificates in `ca_file`, if one is named (for fetching keys from a
/// control plane whose certificate a private CA signed).
pub fn client_config(ca_file: &str) -> Result<Arc<rustls::ClientConfig>, MaterialError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if !ca_file.is_empty() {
        for c in certs(ca_file)? {
            roots.add(c).map_err(|e| MaterialError::ClientCa {
                path: ca_file.to_owned(),
                reason: e.to_string(),
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs provider supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
