//! Delayed acknowledgements on a connection that streams towards the
//! gateway.
//!
//! Linux acknowledges a full-sized segment that has PSH set as soon as the
//! reader drains it, unless the socket is in its delayed ("ping-pong")
//! mode. It enters that mode only when the gateway happens to send within
//! the delayed-ACK timeout (40 ms) of receiving, and leaves it whenever the
//! delayed-ACK timer fires. A connector's stream is one way, so its socket
//! was usually out of the mode and answered every frame with an ACK of its
//! own: a second packet per frame, built, sent and delivered on the shard's
//! core. Measured in fan-in (200 streams of 4 KiB frames at 50/s) on the
//! fast path: 2.0 packets sent per frame, against 1.0 in relay mode, whose
//! sockets were in the mode by accident of the pairing message.
//!
//! In delayed mode the kernel acknowledges every second full segment, as
//! TCP does for bulk data, and the timer covers a lone one. Since a pause
//! in the stream lets the timer fire and end the mode, the reader puts the
//! socket back every [`EVERY`] reads: one `setsockopt` per 16 reads instead
//! of one ACK per frame. Every connector and the load generator set
//! `TCP_NODELAY`, so a delayed ACK never holds back their next frame.

use std::os::fd::RawFd;

/// Reads between two `TCP_QUICKACK` resets: after a pause ended the mode,
/// at most this many frames are acknowledged one by one.
pub const EVERY: u32 = 16;

/// Keeps one socket in delayed-ACK mode while it is read.
pub struct AckPacer {
    /// None once the socket refused the option (a Unix socket from the TLS
    /// front): there is nothing to pace.
    fd: Option<RawFd>,
    reads: u32,
}

impl AckPacer {
    /// `fd` is the socket the owner reads; the owner keeps it open.
    pub fn new(fd: RawFd) -> Self {
        Self {
            fd: Some(fd),
            reads: 0,
        }
    }

    /// Called after each read that returned data: the first read and every
    /// [`EVERY`]th one re-enter delayed mode.
    pub fn after_read(&mut self) {
        if let Some(fd) = self.fd {
            if self.reads.is_multiple_of(EVERY) && !delay_acks(fd) {
                self.fd = None;
            }
            self.reads = self.reads.wrapping_add(1);
        }
    }
}

/// Puts the socket in delayed-ACK mode; false if it is not a TCP socket
/// (or not open), which only costs the packets this would save.
pub fn delay_acks(fd: RawFd) -> bool {
    set_quickack(fd, false)
}

/// `TCP_QUICKACK`: on leaves delayed mode (what the kernel's delayed-ACK
/// timer does), off enters it. False if the socket refused it.
fn set_quickack(fd: RawFd, on: bool) -> bool {
    let value = libc::c_int::from(on);
    // SAFETY: setsockopt reads `optlen` bytes from `optval`, which points
    // at a live local c_int of exactly that size; it writes nothing. A
    // stale or foreign descriptor makes it fail (EBADF, ENOTSOCK,
    // EOPNOTSUPP), never touch memory.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Whether the kernel acknowledges at once (quick mode) rather than
/// delaying: `TCP_QUICKACK` reads as the opposite of ping-pong mode.
#[cfg(test)]
fn quick_acks(fd: RawFd) -> bool {
    let mut on: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `on`, a live
    // local c_int of that size, and the new length into `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&mut on as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt: {}", std::io::Error::last_os_error());
    on != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_io::{runtime, socket_pair};
    use std::os::fd::AsRawFd;

    #[test]
    fn a_socket_is_put_in_delayed_ack_mode() {
        runtime().block_on(async {
            let (gw, _far) = socket_pair().await;
            let fd = gw.as_raw_fd();
            assert!(quick_acks(fd), "a new connection acknowledges at once");
            assert!(delay_acks(fd));
            assert!(!quick_acks(fd), "delay_acks left quick-ACK mode on");
        });
    }

    #[test]
    fn the_pacer_resets_the_mode_on_the_first_read_and_every_sixteenth() {
        runtime().block_on(async {
            let (gw, _far) = socket_pair().await;
            let fd = gw.as_raw_fd();
            let mut pacer = AckPacer::new(fd);
            pacer.after_read();
            assert!(!quick_acks(fd), "the first read enters delayed mode");
            for read in 1..3 * EVERY {
                // What the kernel's delayed-ACK timer does after a pause.
                set_quickack(fd, true);
                pacer.after_read();
                let reset = read % EVERY == 0;
                assert_eq!(!quick_acks(fd), reset, "read {read}");
            }
        });
    }

    #[test]
    fn a_socket_that_refuses_the_option_is_no_longer_paced() {
        // A Unix socket, as a TLS connector's plaintext reaches its shard.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        assert!(!delay_acks(fd), "a Unix socket has no TCP_QUICKACK");
        let mut pacer = AckPacer::new(fd);
        pacer.after_read();
        assert_eq!(pacer.fd, None, "the pacer gave up after the refusal");
        for _ in 0..2 * EVERY {
            pacer.after_read();
        }
        assert_eq!(pacer.reads, 1, "no more attempts were counted or made");
    }
}
