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
//! ordinary one: same routes, limits, close codes and handoffs. A browser
//! session's frames come back in process instead of through the pair
//! ([`crate::wire::egress`]), so the bulk direction crosses no socket
//! between the shard and the encryption.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsAcceptor;

use crate::tls::Material;

use crate::auth::edge_auth::Transport;
use crate::server::front;
use crate::shard::metrics::Front;
use crate::shard::{ShardMsg, Shared};
use crate::wire::egress::{self, Ingress};
use crate::wire::handoff::Detached;
use crate::wire::http::{self, HttpError};

/// Binds the TLS listener and starts its threads; returns its address.
pub fn start(
    shared: Arc<Shared>,
    material: Arc<Material>,
    listener: std::net::TcpListener,
) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    crate::tls::offload::log_path("tls");
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
    let Some(listener) = front::listen(std, Front::Wss) else {
        return;
    };
    let next = Arc::new(AtomicUsize::new(0));
    let max = shared.cfg.tls.max_connections;
    let each = shared.clone();
    front::accept_each(each, listener, Front::Wss, max, move |tcp, peer, place| {
        let (shared, material, next) = (shared.clone(), material.clone(), next.clone());
        async move {
            serve(&shared, &material, &next, tcp, peer).await;
            drop(place);
        }
    })
    .await;
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
    let Some((mut tls, client)) =
        front::tls_handshake(material, acceptor, tcp, peer, wait, Front::Wss).await
    else {
        return;
    };
    let (ours, theirs) = match pair() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot make a socket pair for a TLS connection");
            return;
        }
    };
    let n = shared.shard_count();
    let target = next.fetch_add(1, Relaxed) % n;
    let (egress, ingress) = egress::channel();
    let msg = ShardMsg::AdoptFronted {
        sock: Detached {
            fd: theirs,
            buffered: BytesMut::new(),
        },
        transport: Transport::Tls {
            client,
            peer: Some(peer.ip()),
        },
        egress: Some(egress),
    };
    if front::hand_off(shared, target, msg, Front::Wss).is_err() {
        let busy = HttpError::new(503, "gateway busy; retry").retry_after(1);
        let _ = tls.write_all(&http::error_response(&busy)).await;
        let _ = tls.shutdown().await;
        return;
    }
    stats.active.fetch_add(1, Relaxed);
    let linger = Duration::from_millis(shared.cfg.timeouts.shutdown_ms);
    pump(tls, ours, ingress, shared.cfg.tls.buffer_bytes, linger).await;
    stats.active.fetch_sub(1, Relaxed);
}

fn pair() -> std::io::Result<(UnixStream, OwnedFd)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    Ok((UnixStream::from_std(ours)?, OwnedFd::from(theirs)))
}

/// Copies both ways. When one side finishes, the other gets `linger` to
/// finish too (the close handshake), so a peer that never closes cannot
/// hold the connection open.
async fn pump<T>(tls: T, plain: UnixStream, ingress: Ingress, buf: usize, linger: Duration)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (tls_r, tls_w) = tokio::io::split(tls);
    let (plain_r, plain_w) = plain.into_split();
    let up = one_way(tls_r, plain_w, buf);
    let down = down(plain_r, ingress, tls_w, buf);
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut up => { let _ = tokio::time::timeout(linger, down).await; }
        _ = &mut down => { let _ = tokio::time::timeout(linger, up).await; }
    }
}

/// What the shard sends the client. A browser session hands its bytes
/// over in process (its upgrade's answer first, then every frame, the
/// same `Bytes`: `wire::egress`), so they are encrypted straight from the
/// shard's buffers; every other route, and a refusal before an upgrade,
/// answers on the socket and drops the egress unused. Whichever comes
/// first decides: nothing is written to the socket after an upgrade.
async fn down<R, W>(plain: R, ingress: Ingress, mut w: W, max: usize)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Ok(mut batch) = ingress.recv_async().await else {
        return one_way(plain, w, max).await;
    };
    loop {
        for piece in batch {
            if w.write_all(&piece).await.is_err() {
                return;
            }
        }
        // The TLS writer keeps what the socket did not take until flushed.
        if w.flush().await.is_err() {
            return;
        }
        match ingress.recv_async().await {
            Ok(b) => batch = b,
            Err(_) => break,
        }
    }
    let _ = w.shutdown().await;
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
