//! HTTPS for the control plane (`--tls-cert`, `--tls-key`). A dashboard
//! loaded from the gateway over `https://` may only call an `https://`
//! control plane, so the control plane terminates TLS itself rather than
//! needing a proxy for the one API it serves. SIGHUP rereads the files;
//! connections already open keep theirs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::server::{drain, router, serve_connection, App};

/// The certificate and key files, and the config built from them.
pub struct Files {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<ServerConfig>,
}

impl Files {
    pub fn load(cert: &Path, key: &Path) -> Result<Files> {
        let config = build(cert, key)?;
        Ok(Files {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(config),
        })
    }

    /// Rereads the files; on failure the running certificate stays.
    pub fn reload(&self) {
        match build(&self.cert, &self.key) {
            Ok(c) => {
                self.current.store(Arc::new(c));
                tracing::info!(cert = %self.cert.display(), "tls certificate reloaded");
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "tls reload failed; still serving the previous certificate")
            }
        }
    }
}

fn build(cert: &Path, key: &Path) -> Result<ServerConfig> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("--tls-cert {}", cert.display()))?;
    if chain.is_empty() {
        bail!("--tls-cert {}: no PEM certificate in it", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key {}: no PEM private key", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .with_context(|| {
        format!(
            "{} and {} do not go together",
            cert.display(),
            key.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves the API over TLS until SIGTERM or Ctrl-C; then stops accepting
/// and gives open connections up to 5 s.
pub async fn serve(app: Arc<App>, listener: tokio::net::TcpListener, files: Files) -> Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "control plane listening (https)");
    let files = Arc::new(files);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let open = Arc::new(AtomicUsize::new(0));
    let read_timeout = app.read_timeout;
    let conns = app.conns.clone();
    let routes = router(app);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = hup.recv() => { files.reload(); continue; }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(files.current.load_full());
        let (routes, open) = (routes.clone(), open.clone());
        // Placed before the handshake: it counts among the bound too.
        let place = conns.admit();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "tls handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "tls handshake timed out"),
                };
            open.fetch_add(1, Ordering::Relaxed);
            serve_connection(tls, peer, routes, read_timeout, place).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    tracing::info!("shutting down");
    drain(&open).await;
    Ok(())
}
