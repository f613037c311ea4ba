//! The accept side of the fronts that speak HTTP/2 (Arrow Flight, the gRPC
//! connector tunnel): TCP, TLS with `[tls]`'s certificate and ALPN `h2`,
//! a bound on open connections, and what the handshake proved ([`FrontInfo`],
//! in every request's extensions) for tonic's server.
//!
//! A connection is *unauthenticated* until one of its calls passes the
//! front's gate ([`super::h2_gate`]). Until then it is bounded like a
//! WebSocket before its `auth`: at most `max_unauthenticated` such
//! connections per front (a newcomer evicts the oldest), each closed
//! `timeouts.auth_ms` after its handshake — enforced in the connection's
//! own reads and writes, so it holds whether or not the client reads.

use sluice_protocol::sync::lock;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

use crate::auth::edge_auth::{CertTenant, Transport};
use crate::server::front;
use crate::shard::metrics::{Front, PreAuthStats};
use crate::shard::Shared;
use crate::tls::Material;

/// What a connection's handshake proved, for the calls on it.
#[derive(Debug, Clone)]
pub struct FrontInfo {
    pub peer: Option<SocketAddr>,
    pub tls: bool,
    /// The tenant a verified client certificate names (its CN).
    pub tenant: Option<CertTenant>,
    /// Whether a call on this connection has authenticated yet.
    pub auth: Arc<ConnAuth>,
}

/// One connection's authentication state, shared by its calls (through
/// [`FrontInfo`]) and its I/O ([`Conn`]).
#[derive(Debug)]
pub struct ConnAuth {
    authenticated: AtomicBool,
    /// Still counted in `stats.open` (given back once, by whichever of
    /// authentication or closing comes first).
    counted: AtomicBool,
    evicted: AtomicBool,
    waker: futures_util::task::AtomicWaker,
    stats: Arc<PreAuthStats>,
}

impl ConnAuth {
    fn new(stats: Arc<PreAuthStats>) -> Self {
        stats.open.fetch_add(1, Relaxed);
        ConnAuth {
            authenticated: AtomicBool::new(false),
            counted: AtomicBool::new(true),
            evicted: AtomicBool::new(false),
            waker: futures_util::task::AtomicWaker::new(),
            stats,
        }
    }

    /// A call on this connection passed the gate: its deadline and the
    /// eviction no longer apply.
    pub fn authenticated(&self) {
        self.authenticated.store(true, Relaxed);
        self.leave();
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Relaxed)
    }

    fn leave(&self) {
        if self.counted.swap(false, Relaxed) {
            self.stats.open.fetch_sub(1, Relaxed);
        }
    }

    /// Closes the connection if it has not authenticated; false if it has.
    fn evict(&self) -> bool {
        if self.is_authenticated() {
            return false;
        }
        self.evicted.store(true, Relaxed);
        self.waker.wake();
        true
    }
}

/// What bounds a front's unauthenticated connections.
#[derive(Clone)]
pub struct PreAuth {
    pub max: usize,
    pub deadline: Duration,
    pub stats: Arc<PreAuthStats>,
}

/// A front's unauthenticated connections, oldest first.
#[derive(Default)]
struct Waiting(Mutex<VecDeque<Weak<ConnAuth>>>);

impl Waiting {
    /// Lists a new connection; at the bound, evicts the oldest one still
    /// unauthenticated first.
    fn admit(&self, auth: &Arc<ConnAuth>, max: usize) {
        let mut q = lock(&self.0);
        q.retain(|w| w.upgrade().is_some_and(|a| !a.is_authenticated()));
        while q.len() >= max {
            match q.pop_front().and_then(|w| w.upgrade()) {
                Some(old) if old.evict() => old.stats.closed.fetch_add(1, Relaxed),
                _ => continue,
            };
        }
        q.push_back(Arc::downgrade(auth));
    }
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
/// takes them. Accepts and (with TLS) completes handshakes off the
/// server's path, so a slow handshake holds up no one; at
/// `max_connections` new ones are closed at once and counted.
pub fn incoming(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<Arc<Material>>,
    max: usize,
    preauth: PreAuth,
    front: Front,
) -> impl futures_util::Stream<Item = std::io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Conn>>(64);
    let handshake = Duration::from_millis(shared.cfg.timeouts.handshake_ms);
    let waiting = Arc::new(Waiting::default());
    // HTTP/2: the same certificate and client CA, ALPN h2.
    let each = move |tcp: TcpStream, peer: SocketAddr, place: OwnedSemaphorePermit| {
        let (tx, tls) = (tx.clone(), tls.clone());
        let (preauth, waiting) = (preauth.clone(), waiting.clone());
        async move {
            let (io, tenant) = match tls {
                None => (Io::Plain(tcp), None),
                Some(m) => {
                    let mut config = (*m.current()).clone();
                    config.alpn_protocols = vec![b"h2".to_vec()];
                    let acceptor = TlsAcceptor::from(Arc::new(config));
                    let shaken =
                        front::tls_handshake(&m, acceptor, tcp, peer, handshake, front).await;
                    let Some((s, tenant)) = shaken else {
                        return;
                    };
                    (Io::Tls(Box::new(s)), tenant)
                }
            };
            let conn = Conn::new(io, peer, tenant, &preauth, &waiting, place);
            let _ = tx.send(Ok(conn)).await;
        }
    };
    tokio::spawn(front::accept_each(shared, listener, front, max, each));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

/// A connection, plain or TLS, holding its place under the front's
/// `max_connections` for its life.
pub struct Conn {
    io: Io,
    info: FrontInfo,
    auth: Arc<ConnAuth>,
    /// Until a call authenticates: when the connection is closed.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    out: Coalesce,
    _place: OwnedSemaphorePermit,
}

impl Conn {
    /// A connection just past its handshake, listed among the front's
    /// unauthenticated ones with its deadline running.
    fn new(
        io: Io,
        peer: SocketAddr,
        tenant: Option<CertTenant>,
        preauth: &PreAuth,
        waiting: &Waiting,
        place: OwnedSemaphorePermit,
    ) -> Self {
        let auth = Arc::new(ConnAuth::new(preauth.stats.clone()));
        waiting.admit(&auth, preauth.max);
        let info = FrontInfo {
            peer: Some(peer),
            tls: matches!(io, Io::Tls(_)),
            tenant,
            auth: auth.clone(),
        };
        Conn {
            io,
            info,
            auth,
            deadline: Some(Box::pin(tokio::time::sleep(preauth.deadline))),
            out: Coalesce::default(),
            _place: place,
        }
    }

    /// Fails the connection's I/O once it is evicted or past its deadline
    /// without an authenticated call. Checked on every read and write, and
    /// the deadline's timer wakes the read, so a client that sends nothing
    /// and reads nothing is closed all the same.
    fn refused(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        if self.auth.is_authenticated() {
            self.deadline = None;
            return None;
        }
        let why = if self.auth.evicted.load(Relaxed) {
            "evicted: too many unauthenticated connections"
        } else {
            self.auth.waker.register(cx.waker());
            let d = self.deadline.as_mut()?;
            if d.as_mut().poll(cx).is_pending() {
                return None;
            }
            self.auth.stats.closed.fetch_add(1, Relaxed);
            self.deadline = None;
            self.auth.evicted.store(true, Relaxed);
            "no authenticated call in time"
        };
        Some(std::io::Error::new(std::io::ErrorKind::TimedOut, why))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.auth.leave();
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What both kinds of connection are to [`Conn`].
trait Stream: AsyncRead + AsyncWrite + Unpin {}

impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

impl Io {
    /// The connection, plain or TLS: the one place the two are told apart.
    fn stream(&mut self) -> Pin<&mut dyn Stream> {
        match self {
            Io::Plain(t) => Pin::new(t),
            Io::Tls(t) => Pin::new(t.as_mut()),
        }
    }
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
        let this = self.get_mut();
        if let Some(e) = this.refused(cx) {
            return Poll::Ready(Err(e));
        }
        this.io.stream().poll_read(cx, buf)
    }
}

/// Writes h2 would make one HTTP/2 frame at a time, gathered into one
/// system call.
///
/// h2 writes each DATA frame (at most the client's `SETTINGS_MAX_FRAME_SIZE`,
/// 16 KiB for gRPC's own clients) and flushes before buffering the next, so
/// a `DoGet` cost one `writev` — and one loopback or NIC packet's worth of
/// kernel work — per 16 KiB. Here a frame is copied into `buf` and the
/// flush is deferred by yielding (the task wakes itself at once) while h2
/// still has frames queued, up to [`Coalesce::FLUSH_AT`] bytes or
/// [`Coalesce::MAX_YIELDS`] deferrals; a flush that finds nothing new
/// behind it writes what is held. One copy in user space buys three times
/// fewer writes (Flight `DoGet`: 78 → 27 syscalls per MB, 0.80 → 0.73–0.76
/// gateway CPU-s per GiB, `sluice-loadtest flight`), and the bytes reach
/// the socket no later than the end of the connection task's next turn.
/// (Before `DoGet`'s bytes came back in process the socket pair cost more
/// than this saved, and it measured no gain.)
#[derive(Default)]
struct Coalesce {
    buf: bytes::BytesMut,
    yields: u8,
}

impl Coalesce {
    /// Held bytes written at the latest once this many are gathered.
    const FLUSH_AT: usize = 128 * 1024;
    /// Flushes deferred in a row before the held bytes are written anyway.
    const MAX_YIELDS: u8 = 16;
    /// A single write this large goes to the socket without being copied.
    const DIRECT: usize = 64 * 1024;
}

impl Conn {
    /// Writes every held byte.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        use bytes::Buf;
        while !self.out.buf.is_empty() {
            let n = ready!(self.io.stream().poll_write(cx, &self.out.buf))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.out.buf.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    fn gather(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.out.buf.len() + total > Coalesce::FLUSH_AT {
            ready!(self.drain(cx))?;
        }
        if self.out.buf.is_empty() && total >= Coalesce::DIRECT {
            return self.io.stream().poll_write_vectored(cx, bufs);
        }
        self.out.buf.reserve(total);
        for b in bufs {
            self.out.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn flush_gathered(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.out.buf.is_empty() {
            if self.out.buf.len() < Coalesce::FLUSH_AT && self.out.yields < Coalesce::MAX_YIELDS {
                self.out.yields += 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(self.drain(cx))?;
            // An idle connection holds no write buffer.
            self.out.buf = bytes::BytesMut::new();
        }
        self.out.yields = 0;
        self.io.stream().poll_flush(cx)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.refused(cx) {
            return Poll::Ready(Err(e));
        }
        this.gather(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().flush_gathered(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        this.io.stream().poll_shutdown(cx)
    }
}
