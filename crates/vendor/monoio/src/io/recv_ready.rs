//! Sluice patch (`SLUICE.md` §5): a receive driven by readiness alone.

use std::{
    io,
    mem::MaybeUninit,
    task::{Context, Poll},
};

use crate::driver::prefetch::WakeHints;

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
    /// A read that waits leaves `hints` with its waker: the addresses its
    /// task loads first when woken, which the driver starts loading as
    /// it dispatches the socket's event (`SLUICE.md` §6).
    fn poll_recv_ready(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [MaybeUninit<u8>],
        hints: &WakeHints,
    ) -> Option<Poll<io::Result<usize>>> {
        self.poll_recv_ready_held(cx, buf, hints, 0)
    }

    /// The same, for a socket reached through the object at `holder` (a
    /// split half's shared cell; 0: none), whose line a woken read loads
    /// first too.
    fn poll_recv_ready_held(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [MaybeUninit<u8>],
        hints: &WakeHints,
        holder: usize,
    ) -> Option<Poll<io::Result<usize>>>;
}
