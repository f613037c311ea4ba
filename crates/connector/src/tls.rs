//! TLS to the gateway (`wss://`), with a client certificate when the site
//! has one (mutual TLS: the gateway reads the tenant id from its CN).
//! Settings are seed 002's `[mtls]` section.

use std::path::Path;
use std::sync::Arc;

use crate::config::{ConfigError, Mtls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

impl Mtls {
    pub fn has_client_cert(&self) -> bool {
        self.client_cert.is_some()
    }

    /// Reads the files; errors name the file.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, ConfigError> {
        let mut roots = RootCertStore::empty();
        match &self.ca_cert {
            Some(p) => {
                for c in certs(p)? {
                    roots
                        .add(c)
                        .map_err(|e| invalid(p, &format!("not a usable CA certificate: {e}")))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs provider supports the default versions")
        .with_root_certificates(roots);
        let config = match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => {
                let key = PrivateKeyDer::from_pem_file(k)
                    .map_err(|e| invalid(k, &format!("no PEM private key: {e}")))?;
                builder
                    .with_client_auth_cert(certs(c)?, key)
                    .map_err(|e| invalid(c, &format!("certificate and key do not match: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(ConfigError::Invalid(
                    "mtls.client_cert and mtls.client_key go together".into(),
                ))
            }
        };
        Ok(Arc::new(config))
    }
}

fn invalid(p: &Path, why: &str) -> ConfigError {
    ConfigError::Invalid(format!("{}: {why}", p.display()))
}

fn certs(p: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = std::fs::read(p).map_err(|source| ConfigError::Read {
        path: p.display().to_string(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(p, &format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(p, "holds no PEM certificate"));
    }
    Ok(certs)
}
