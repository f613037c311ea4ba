//! Moving a socket from one shard to another.
//!
//! A monoio `TcpStream` belongs to the runtime (io_uring ring or epoll
//! instance) of the thread that made it. To give a socket to another shard
//! we take its file descriptor out of the runtime, send it as an `OwnedFd`
//! (which is `Send`) together with the bytes already read from it, and the
//! receiving shard wraps it in its own runtime. Nothing is copied but the
//! buffered bytes' pointer.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use bytes::BytesMut;
use monoio::net::TcpStream;

/// A socket in transit between shards.
#[derive(Debug)]
pub struct Detached {
    pub fd: OwnedFd,
    /// Bytes read from the socket but not yet consumed.
    pub buffered: BytesMut,
}

/// Takes the socket out of this shard's runtime.
///
/// Must be called with no operation in flight on `stream` (monoio panics
/// otherwise, rather than hand out an fd the kernel is still using). All
/// callers own the stream outright at this point: its reader has returned.
pub fn detach(stream: TcpStream, buffered: BytesMut) -> Detached {
    let raw = stream.into_raw_fd();
    // SAFETY: `into_raw_fd` gave up monoio's ownership of `raw`, an open
    // socket descriptor (it deregistered it from epoll on the legacy driver;
    // io_uring holds no registration). Nothing else refers to it, so the
    // `OwnedFd` becomes its sole owner and closes it if the transfer fails.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    Detached { fd, buffered }
}

/// Wraps a socket received from another shard in this shard's runtime.
pub fn attach(d: Detached) -> std::io::Result<(TcpStream, BytesMut)> {
    let std_stream = std::net::TcpStream::from(d.fd);
    std_stream.set_nonblocking(true)?;
    Ok((TcpStream::from_std(std_stream)?, d.buffered))
}
