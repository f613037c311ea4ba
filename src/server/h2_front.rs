//! The accept side of the fronts that speak HTTP/2 (Arrow Flight, the gRPC
//! connector tunnel): TCP, TLS with `[tls]`'s certificate and ALPN `h2`,
//! a bound on open connections, and what the handshake proved ([`FrontInfo`],
//! in every request's extensions) for tonic's server.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

use crate::auth::edge_auth::{CertTenant, Transport};
use crate::server::tls_front::{client_tenant, handshake_failed};
use crate::tls::Material;

/// What a connection's handshake proved, for the calls on it.
#[derive(Debug, Clone)]
pub struct FrontInfo {
    pub peer: Option<SocketAddr>,
    pub tls: bool,
    /// The tenant a verified client certificate names (its CN).
    pub tenant: Option<CertTenant>,
}

impl FrontInfo {
    /// What the shard is told about a connection it gets from this front.
    pub fn transport(&self) -> Transport {
        if self.tls {
            Transport::Tls {
                client: self.tenant.clone(),
                peer: self.peer.map(|p| p.ip()),
            }
        } else {
            Transport::Fronted {
                peer: self.peer.map(|p| p.ip()),
            }
        }
    }
}

/// Connections past their handshake, as tonic's `serve_with_incoming`
/// takes them.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<Material>>,
    handshake: Duration,
    max: usize,
    what: &'static str,
) -> impl futures_util::Stream<Item = std::io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Conn>>(64);
    tokio::spawn(accept(listener, tls, tx, handshake, max, what));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

/// Accepts and (with TLS) completes handshakes off the server's path, so a
/// slow handshake holds up no one; at `max` open connections new ones are
/// closed at once.
async fn accept(
    listener: TcpListener,
    tls: Option<Arc<Material>>,
    tx: tokio::sync::mpsc::Sender<std::io::Result<Conn>>,
    handshake: Duration,
    max: usize,
    what: &'static str,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(place) = limit.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "{what} connection refused: max_connections reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (tx, tls) = (tx.clone(), tls.clone());
        tokio::spawn(async move {
            let Some(m) = tls else {
                let info = FrontInfo {
                    peer: Some(peer),
                    tls: false,
                    tenant: None,
                };
                let _ = tx
                    .send(Ok(Conn {
                        io: Io::Plain(tcp),
                        info,
                        _place: place,
                    }))
                    .await;
                return;
            };
            // HTTP/2: the same certificate and client CA, ALPN h2.
            let mut config = (*m.current()).clone();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let acceptor = TlsAcceptor::from(Arc::new(config));
            let s = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return handshake_failed(&m, peer, Some(&e), what),
                Err(_) => return handshake_failed(&m, peer, None, what),
            };
            m.stats.handshakes.fetch_add(1, Relaxed);
            let tenant = client_tenant(s.get_ref().1, peer);
            let info = FrontInfo {
                peer: Some(peer),
                tls: true,
                tenant,
            };
            let conn = Conn {
                io: Io::Tls(Box::new(s)),
                info,
                _place: place,
            };
            let _ = tx.send(Ok(conn)).await;
        });
    }
}

/// A connection, plain or TLS, holding its place under the front's
/// `max_connections` for its life.
pub struct Conn {
    io: Io,
    info: FrontInfo,
    _place: tokio::sync::OwnedSemaphorePermit,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for Conn {
    type ConnectInfo = FrontInfo;

    fn connect_info(&self) -> FrontInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(t) => Pin::new(t).poll_read(cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(t) => Pin::new(t).poll_write(cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(t) => t.is_write_vectored(),
            Io::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(t) => Pin::new(t).poll_flush(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}
