//! The TLS listener (`wss://`, `https://`, mutual TLS for connectors).
//!
//! Shards move sockets between each other as raw file descriptors
//! ([`crate::wire::handoff`]), which a TLS session cannot follow, and the hot
//! path forwards frames from socket to socket without looking at them. So
//! TLS is terminated in front of the shards: rustls on threads of its own
//! completes the handshake, reads the client certificate's tenant, and
//! hands the shard one end of a Unix socket pair carrying the plaintext,
//! with what the handshake proved passed beside it ([`Transport`]), never
//! in a header a client could forge. From there on the connection is an
//! ordinary one: same routes, limits, close codes and handoffs.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::tls::Material;

use crate::auth::edge_auth::{CertTenant, Transport};
use crate::shard::{ShardMsg, Shared};
use crate::wire::handoff::Detached;

/// Binds the TLS listener and starts its threads; returns its address.
pub fn start(
    shared: Arc<Shared>,
    material: Arc<Material>,
    listener: std::net::TcpListener,
) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let tls = &shared.cfg.tls;
    let threads = if tls.threads > 0 {
        tls.threads
    } else {
        shared.shard_count()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("sluice-tls")
        .enable_all()
        .build()
        .context("cannot start the TLS threads")?;
    std::thread::Builder::new()
        .name("sluice-tls-accept".into())
        .spawn(move || rt.block_on(accept_loop(shared, material, listener)))
        .context("cannot spawn the TLS accept thread")?;
    Ok(addr)
}

/// Rereads the certificate files when they change (`tls.reload_check_ms`),
/// for every listener that uses them.
pub fn watch_files(material: Arc<Material>) -> anyhow::Result<()> {
    let check_ms = material.reload_check_ms();
    if check_ms > 0 {
        let every = Duration::from_millis(check_ms);
        std::thread::Builder::new()
            .name("sluice-tls-reload".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                material.reload_if_changed();
            })
            .context("cannot spawn the TLS reload thread")?;
    }
    Ok(())
}

async fn accept_loop(shared: Arc<Shared>, material: Arc<Material>, std: std::net::TcpListener) {
    let listener = match TcpListener::from_std(std) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the TLS listener");
            return;
        }
    };
    let limit = Arc::new(Semaphore::new(shared.cfg.tls.max_connections));
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "tls accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            material.stats.refused_over_limit.fetch_add(1, Relaxed);
            tracing::debug!(%peer, "tls connection refused: tls.max_connections reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (shared, material, next) = (shared.clone(), material.clone(), next.clone());
        tokio::spawn(async move {
            serve(&shared, &material, &next, tcp, peer).await;
            drop(permit);
        });
    }
}

/// Handshake, hand the plaintext end to a shard, then pump bytes both ways
/// until both sides are done.
async fn serve(
    shared: &Shared,
    material: &Material,
    next: &AtomicUsize,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let stats = &material.stats;
    let acceptor = TlsAcceptor::from(material.current());
    let wait = Duration::from_millis(shared.cfg.timeouts.handshake_ms);
    let tls = match tokio::time::timeout(wait, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return handshake_failed(material, peer, Some(&e), "tls"),
        Err(_) => return handshake_failed(material, peer, None, "tls"),
    };
    stats.handshakes.fetch_add(1, Relaxed);
    let client = client_tenant(tls.get_ref().1, peer);
    let (ours, theirs) = match pair() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot make a socket pair for a TLS connection");
            return;
        }
    };
    let n = shared.shard_count();
    let target = next.fetch_add(1, Relaxed) % n;
    let msg = ShardMsg::AdoptFronted {
        sock: Detached {
            fd: theirs,
            buffered: BytesMut::new(),
        },
        transport: Transport::Tls {
            client,
            peer: Some(peer.ip()),
        },
    };
    if shared.mailboxes[target].send_async(msg).await.is_err() {
        tracing::error!(target, "shard mailbox closed");
        return;
    }
    stats.active.fetch_add(1, Relaxed);
    let linger = Duration::from_millis(shared.cfg.timeouts.shutdown_ms);
    pump(tls, ours, shared.cfg.tls.buffer_bytes, linger).await;
    stats.active.fetch_sub(1, Relaxed);
}

/// Counts a failed handshake (`None`: not completed in time) and logs it:
/// a refused client certificate (wrong CA, expired) is worth an operator's
/// attention; scanners and aborted handshakes are not. `what` names the
/// listener.
pub(crate) fn handshake_failed(
    material: &Material,
    peer: SocketAddr,
    e: Option<&std::io::Error>,
    what: &str,
) {
    material.stats.handshake_failures.fetch_add(1, Relaxed);
    let Some(e) = e else {
        tracing::debug!(%peer, "{what}: TLS handshake not completed in time");
        return;
    };
    let cert = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
    if cert {
        tracing::warn!(%peer, error = %e, "{what}: client certificate refused");
    } else {
        tracing::debug!(%peer, error = %e, "{what}: TLS handshake failed");
    }
}

/// The tenant a verified client certificate names (its CN), if any.
pub(crate) fn client_tenant(
    conn: &rustls::ServerConnection,
    peer: SocketAddr,
) -> Option<CertTenant> {
    let leaf = conn.peer_certificates()?.first()?;
    match crate::tls::material::tenant_of(leaf) {
        Some(cn) => Some(CertTenant::from_verified_cn(cn)),
        None => {
            tracing::warn!(%peer, "client certificate verified but names no CN: treated as no certificate");
            None
        }
    }
}

fn pair() -> std::io::Result<(UnixStream, OwnedFd)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    Ok((UnixStream::from_std(ours)?, OwnedFd::from(theirs)))
}

/// Copies both ways. When one side finishes, the other gets `linger` to
/// finish too (the close handshake), so a peer that never closes cannot
/// hold the connection open.
async fn pump<T>(tls: T, plain: UnixStream, buf: usize, linger: Duration)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (tls_r, tls_w) = tokio::io::split(tls);
    let (plain_r, plain_w) = plain.into_split();
    let up = one_way(tls_r, plain_w, buf);
    let down = one_way(plain_r, tls_w, buf);
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut up => { let _ = tokio::time::timeout(linger, down).await; }
        _ = &mut down => { let _ = tokio::time::timeout(linger, up).await; }
    }
}

/// Copies until EOF, then shuts the writer. The buffer starts at 1 KiB and
/// doubles (up to `max`) while reads fill it, halving again when they use
/// little of it: an idle connection holds 2 KiB, a bulk one full records.
async fn one_way<R, W>(mut r: R, mut w: W, max: usize)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    const MIN: usize = 1024;
    let mut buf = vec![0u8; MIN];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // The TLS writer keeps what the socket did not take until flushed.
        if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
            return;
        }
        if n == buf.len() && buf.len() < max {
            buf = vec![0u8; (buf.len() * 2).min(max)];
        } else if n < buf.len() / 4 && buf.len() > MIN {
            buf = vec![0u8; buf.len() / 2];
        }
    }
    let _ = w.shutdown().await;
}
