//! The receiving end of a stream (a browser, a viewer), on the async
//! runtime so that thousands of them fit in one thread. Decoded with
//! fastwebsockets, not the gateway's codec.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use anyhow::{bail, Result};
use fastwebsockets::{OpCode, Role, WebSocket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A socket whose first reads return bytes already read during setup
/// (plain TCP here; the `tls` scenario wraps TLS streams in it).
pub struct Prefixed<S = TcpStream> {
    pending: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(inner: S, pending: Vec<u8>) -> Self {
        Prefixed {
            pending,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.pending.len() {
            let n = buf.remaining().min(self.pending.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.pending[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a sink saw.
#[derive(Debug)]
pub enum Event {
    /// A binary message: its length and its first 16 bytes' stamp.
    Binary {
        len: usize,
        stamp: Option<(u64, u64)>,
    },
    Text(String),
    Closed {
        code: Option<u16>,
        reason: String,
    },
}

pub struct Sink {
    ws: WebSocket<Prefixed>,
}

impl Sink {
    /// Must be called inside the runtime that will drive it.
    pub fn new(stream: std::net::TcpStream, pending: Vec<u8>, role: Role) -> Result<Sink> {
        stream.set_nonblocking(true)?;
        let inner = TcpStream::from_std(stream)?;
        let mut ws = WebSocket::after_handshake(Prefixed::new(inner, pending), role);
        ws.set_auto_pong(true);
        ws.set_auto_close(true);
        ws.set_max_message_size(64 << 20);
        Ok(Sink { ws })
    }

    pub async fn next(&mut self) -> Result<Event> {
        loop {
            let f = match self.ws.read_frame().await {
                Ok(f) => f,
                Err(e) => bail!("read: {e}"),
            };
            return Ok(match f.opcode {
                OpCode::Binary | OpCode::Continuation => Event::Binary {
                    len: f.payload.len(),
                    stamp: crate::wire::stamp_of(&f.payload),
                },
                OpCode::Text => Event::Text(String::from_utf8_lossy(&f.payload).into_owned()),
                OpCode::Close => Event::Closed {
                    code: f.payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])),
                    reason: String::from_utf8_lossy(f.payload.get(2..).unwrap_or(&[])).into_owned(),
                },
                OpCode::Ping | OpCode::Pong => continue,
            });
        }
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws
            .write_frame(fastwebsockets::Frame::text(fastwebsockets::Payload::Owned(
                text.as_bytes().to_vec(),
            )))
            .await?;
        Ok(())
    }

    pub async fn close(&mut self) {
        let _ = self
            .ws
            .write_frame(fastwebsockets::Frame::close(1000, b"done"))
            .await;
    }
}

/// Sends the opening handshake for `path` on `s` and reads the answer's
/// head; returns `s` with the bytes read past the head, ready for frames.
pub async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, String)],
) -> Result<Prefixed<S>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = crate::wire::upgrade_request(addr, path, headers);
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("{path}: connection closed during the handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                let line = String::from_utf8_lossy(&buf[..at]).into_owned();
                bail!(
                    "{path}: upgrade refused: {}",
                    line.lines().next().unwrap_or("")
                );
            }
            return Ok(Prefixed::new(s, buf[at + 4..].to_vec()));
        }
        if buf.len() > 16 * 1024 {
            bail!("{path}: response head too large");
        }
    }
}

/// Opens `path` as a WebSocket client entirely on the runtime (for churn,
/// where sessions open concurrently at a fixed rate).
pub async fn connect(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, String)],
) -> Result<Sink> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut ws = WebSocket::after_handshake(upgrade(s, addr, path, headers).await?, Role::Client);
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    Ok(Sink { ws })
}
