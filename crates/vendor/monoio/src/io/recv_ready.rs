//! Sluice patch (`SLUICE.md` §5): a receive driven by readiness alone.

use std::{
    io,
    mem::MaybeUninit,
    task::{Context, Poll},
};

/// A stream socket that, on the epoll driver, can be read in place: one
/// `recv` into a borrowed buffer when the socket is readable, with no
/// operation future, no owned buffer and no cancel handle in between.
///
/// `None` means the runtime's driver cannot (io_uring: a receive is an
/// operation the ring owns); use the operation-based reads then. On the
/// epoll driver, `Pending` holds no buffer and no byte: dropping the
/// caller's future at that point loses nothing, which is what makes an
/// interrupt as simple as a flag and a wake.
pub trait RecvReady {
    /// Receives into `buf` once the socket is readable. A read shorter
    /// than `buf` marks the socket drained, as `AsyncReadRent::read` does.
    fn poll_recv_ready(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [MaybeUninit<u8>],
    ) -> Option<Poll<io::Result<usize>>>;
}
