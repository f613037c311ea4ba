//! The Arrow Flight front (`[flight] listen`): analytics clients (pyarrow,
//! pandas, Polars, DuckDB, ADBC) read a dataset with
//! `FlightClient(…).do_get(ticket)`, authenticated by the session token in
//! `authorization: Bearer …`.
//!
//! Like the TLS front it runs on tokio threads of its own beside the
//! shards, and like it, it reaches a shard only through a socket pair
//! carrying an ordinary session ([`link`]): every rule of `/stream` holds
//! for Flight because it is the same code. The cost is one local hop per
//! byte; `sluice-loadtest flight` measures it against the WebSocket path.

mod ipc;
mod link;
mod service;
mod sessions;
mod status;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::shard::metrics::FlightStats;
use crate::shard::Shared;
use crate::tls::Material;

/// Binds nothing (the caller bound `listener`); starts the Flight threads.
pub fn start(
    shared: Arc<Shared>,
    tls: Option<Arc<Material>>,
    listener: std::net::TcpListener,
    stats: Arc<FlightStats>,
) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let threads = match shared.cfg.flight.threads {
        0 => shared.shard_count(),
        n => n,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("sluice-flight")
        .enable_all()
        .build()
        .context("cannot start the Flight threads")?;
    std::thread::Builder::new()
        .name("sluice-flight-accept".into())
        .spawn(move || rt.block_on(serve(shared, tls, listener, stats)))
        .context("cannot spawn the Flight accept thread")?;
    Ok(addr)
}

async fn serve(
    shared: Arc<Shared>,
    tls: Option<Arc<Material>>,
    listener: std::net::TcpListener,
    stats: Arc<FlightStats>,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the Flight listener");
            return;
        }
    };
    let sessions = sessions::Sessions::new(shared.clone(), stats.clone(), tls.is_some());
    tokio::spawn(sessions.clone().tend());
    let cfg = &shared.cfg.flight;
    let front = service::Front { sessions, stats };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Conn>>(64);
    let handshake = Duration::from_millis(shared.cfg.timeouts.handshake_ms);
    tokio::spawn(accept(listener, tls, tx, handshake, cfg.max_connections));
    let incoming =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let served = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(cfg.max_streams_per_connection))
        .http2_keepalive_interval(Some(Duration::from_millis(
            shared.cfg.timeouts.ping_interval_ms,
        )))
        .add_service(FlightServiceServer::new(front).max_decoding_message_size(64 * 1024))
        .serve_with_incoming(incoming)
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "Flight server stopped");
    }
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
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "Flight accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "Flight connection refused: flight.max_connections reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (tx, tls) = (tx.clone(), tls.clone());
        tokio::spawn(async move {
            let conn = match tls {
                None => Io::Plain(tcp),
                Some(m) => {
                    // Flight speaks HTTP/2: the same certificate, ALPN h2.
                    let mut config = (*m.current()).clone();
                    config.alpn_protocols = vec![b"h2".to_vec()];
                    let acceptor = TlsAcceptor::from(Arc::new(config));
                    match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            m.stats
                                .handshakes
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            Io::Tls(Box::new(s))
                        }
                        _ => {
                            m.stats
                                .handshake_failures
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::debug!(%peer, "Flight TLS handshake failed");
                            return;
                        }
                    }
                }
            };
            let conn = Conn {
                io: conn,
                _place: permit,
            };
            let _ = tx.send(Ok(conn)).await;
        });
    }
}

/// A Flight connection, plain or TLS, holding its place under
/// `flight.max_connections` for its life.
struct Conn {
    io: Io,
    _place: tokio::sync::OwnedSemaphorePermit,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        let tcp = match &self.io {
            Io::Plain(t) => t,
            Io::Tls(t) => t.get_ref().0,
        };
        TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: tcp.peer_addr().ok(),
        }
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
