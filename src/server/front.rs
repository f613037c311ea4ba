//! What every front beside the shards shares (the TLS listener, Arrow
//! Flight, the gRPC tunnel): one accept loop with its bound on open
//! connections, one TLS handshake with its deadline, one hand-off into a
//! shard. A limit reached on any of them is answered and counted the same
//! way (`sluice_front_refusals_total{front,reason}`), so the copies cannot
//! drift apart again.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::auth::edge_auth::CertTenant;
use crate::shard::metrics::{Front, Refused};
use crate::shard::{ShardMsg, Shared};
use crate::tls::Material;

/// Registers a bound listener with the current tokio runtime.
pub fn listen(std: std::net::TcpListener, front: Front) -> Option<TcpListener> {
    match std
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(std))
    {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(front = front.label(), error = %e, "cannot register the listener");
            None
        }
    }
}

/// Accepts until the process ends. Each connection within `max` open is
/// served on a task of its own, given its place (dropping the permit frees
/// it); past `max` a connection is closed at once and counted.
pub async fn accept_each<F, Fut>(
    shared: Arc<Shared>,
    listener: TcpListener,
    front: Front,
    max: usize,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let places = Arc::new(Semaphore::new(max));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                let why = if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    shared
                        .metrics
                        .fronts
                        .count(front, Refused::OutOfDescriptors);
                    "out of file descriptors"
                } else {
                    "accept failed"
                };
                tracing::warn!(front = front.label(), error = %e, "{why}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            shared.metrics.fronts.count(front, Refused::MaxConnections);
            tracing::debug!(%peer, front = front.label(), "connection refused: max_connections reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve(tcp, peer, place));
    }
}

/// A completed TLS handshake: the stream and the tenant a verified client
/// certificate names.
pub type Handshaken = (TlsStream<TcpStream>, Option<CertTenant>);

/// Completes a TLS handshake within `deadline`, counting it; `None` when it
/// failed or took too long (counted and logged by [`handshake_failed`]).
pub async fn tls_handshake(
    material: &Material,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    deadline: Duration,
    front: Front,
) -> Option<Handshaken> {
    let what = front.label();
    let tls = match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            handshake_failed(material, peer, Some(&e), what);
            return None;
        }
        Err(_) => {
            handshake_failed(material, peer, None, what);
            return None;
        }
    };
    material.stats.handshakes.fetch_add(1, Relaxed);
    let tenant = client_tenant(tls.get_ref().1, peer);
    Some((tls, tenant))
}

/// The shard had no room for the connection: the front answers 503 with
/// `Retry-After`, as the shards' own listener does.
#[derive(Debug)]
pub struct ShardBusy;

/// Hands `msg` to shard `target` without waiting: a full mailbox is a
/// refusal the client can retry, not a wait that piles connections up in
/// front of a shard that is already behind.
pub fn hand_off(
    shared: &Shared,
    target: usize,
    msg: ShardMsg,
    front: Front,
) -> Result<(), ShardBusy> {
    match shared.mailboxes[target].try_send(msg) {
        Ok(()) => Ok(()),
        Err(flume::TrySendError::Full(_)) => {
            shared.metrics.fronts.count(front, Refused::ShardBusy);
            Err(ShardBusy)
        }
        Err(flume::TrySendError::Disconnected(_)) => {
            tracing::error!(target, "shard mailbox closed");
            Err(ShardBusy)
        }
    }
}

/// Counts a failed handshake (`None`: not completed in time) and logs it:
/// a refused client certificate (wrong CA, expired) is worth an operator's
/// attention; scanners and aborted handshakes are not. `what` names the
/// listener.
fn handshake_failed(material: &Material, peer: SocketAddr, e: Option<&std::io::Error>, what: &str) {
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
fn client_tenant(conn: &rustls::ServerConnection, peer: SocketAddr) -> Option<CertTenant> {
    let leaf = conn.peer_certificates()?.first()?;
    match crate::tls::material::tenant_of(leaf) {
        Some(cn) => Some(CertTenant::from_verified_cn(cn)),
        None => {
            tracing::warn!(%peer, "client certificate verified but names no CN: treated as no certificate");
            None
        }
    }
}
