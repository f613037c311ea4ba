//! Larger reads under rustls.
//!
//! rustls asks its transport for at most 4 KiB at a time (its record
//! buffer grows by that much per read), so a connector streaming 16 KiB
//! records over mutual TLS cost the TLS front four or five `recvfrom`s per
//! record. [`ReadAhead`] reads what the socket has, up to
//! [`ReadAhead::MAX`], in one system call and hands it to rustls from
//! memory. Its buffer grows only while reads fill it and is freed whenever
//! the socket runs dry, so an idle connection holds none.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct ReadAhead<T> {
    io: T,
    buf: BytesMut,
    /// How much the next read into `buf` asks for.
    chunk: usize,
}

impl<T> ReadAhead<T> {
    /// The first read-ahead: what rustls would have asked for anyway.
    const MIN: usize = 4 * 1024;
    /// Four full TLS records.
    const MAX: usize = 64 * 1024;

    pub fn new(io: T) -> Self {
        ReadAhead {
            io,
            buf: BytesMut::new(),
            chunk: Self::MIN,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            // A caller that asks for a chunk's worth reads directly.
            if out.remaining() >= this.chunk {
                return Pin::new(&mut this.io).poll_read(cx, out);
            }
            this.buf.resize(this.chunk, 0);
            let mut into = ReadBuf::new(&mut this.buf);
            let polled = Pin::new(&mut this.io).poll_read(cx, &mut into);
            let got = into.filled().len();
            this.buf.truncate(got);
            if let Poll::Pending | Poll::Ready(Err(_)) = polled {
                // Dry (or failed): an idle connection keeps no buffer.
                this.buf = BytesMut::new();
                return polled;
            }
            if got == this.chunk {
                this.chunk = (this.chunk * 2).min(Self::MAX);
            } else if got < this.chunk / 4 {
                this.chunk = (this.chunk / 2).max(Self::MIN);
            }
            if got == 0 {
                this.buf = BytesMut::new();
                return Poll::Ready(Ok(()));
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        if this.buf.is_empty() {
            this.buf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whatever sizes the reader asks for, every byte comes out once and
    /// in order, and a dry socket leaves no buffer behind.
    #[tokio::test]
    async fn small_reads_see_every_byte_in_order_and_idle_holds_nothing() {
        let (mut tx, rx) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(7_001) {
                tx.write_all(piece).await.unwrap();
            }
            tx
        });
        let mut r = ReadAhead::new(rx);
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        while got.len() < data.len() {
            let want = 1 + got.len() % small.len();
            let n = r.read(&mut small[..want]).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
        let _tx = writer.await.unwrap();
        // Nothing more is coming: the read waits, and the buffer is gone.
        let pending = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            r.read(&mut small[..10]),
        )
        .await;
        assert!(pending.is_err());
        assert_eq!(r.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn eof_reads_as_zero() {
        let (tx, rx) = tokio::io::duplex(1024);
        drop(tx);
        let mut r = ReadAhead::new(rx);
        let mut b = [0u8; 16];
        assert_eq!(r.read(&mut b).await.unwrap(), 0);
    }
}
