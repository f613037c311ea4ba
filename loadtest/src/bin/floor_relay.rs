//! `sluice-floor-relay`: the least any proxy can do per frame on this host,
//! for `sluice-loadtest --targets tcp-floor`.
//!
//! One thread, one epoll set, no protocol: each accepted connection gets one
//! upstream connection, and whatever one side sends is read once and written
//! to the other at once. No timers, no tasks, no frame parsing, no buffer
//! held while a socket is idle; acknowledgements are paced by the
//! gateway's own `AckPacer` (`src/wire/acks.rs`). What it costs per frame
//! is the kernel's price for a wake-up, a receive and a send — the floor under the gateway, haproxy
//! and nginx alike — so a goal below it is out of reach for a proxy that
//! forwards each frame as it arrives.
//!
//!     sluice-floor-relay LISTEN_PORT UPSTREAM_ADDR
//!
//! A benchmark instrument, not a product: it trusts its peers (loopback,
//! the load generator's own origin), exits on a setup error, and closes
//! both sockets of a pair when either side ends (no half-close), which is
//! all the streaming scenarios need.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use sluice::wire::acks::AckPacer;

/// The listener's epoll token; connection sides use their slot index.
const LISTENER: u64 = u64::MAX;
/// Bytes one read takes: a whole 64 KiB bulk frame, and any fan-in frame.
const READ_CHUNK: usize = 64 * 1024;

/// One end of a relayed pair.
struct Side {
    sock: TcpStream,
    /// The other end's slot.
    peer: usize,
    /// Bytes read from the peer that this socket has not taken yet. Only
    /// under backpressure; while it is non-empty the peer is not read, so
    /// it holds at most one read's worth.
    pending: Vec<u8>,
    /// Keeps the socket in delayed-ACK mode while it is read, as the
    /// gateway does for a streaming connector.
    acks: AckPacer,
}

struct Relay {
    epoll: RawFd,
    sides: Vec<Option<Side>>,
    free: Vec<usize>,
    upstream: SocketAddr,
    buf: Vec<u8>,
}

#[path = "../floor_cli.rs"]
mod floor_cli;

fn main() {
    floor_cli::main("sluice-floor-relay", run);
}

fn run(listener: TcpListener, upstream: SocketAddr) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    // SAFETY: epoll_create1 takes no pointers; the result is checked.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut relay = Relay {
        epoll,
        sides: Vec::new(),
        free: Vec::new(),
        upstream,
        buf: vec![0; READ_CHUNK],
    };
    relay.ctl(
        libc::EPOLL_CTL_ADD,
        listener.as_raw_fd(),
        libc::EPOLLIN,
        LISTENER,
    )?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        // SAFETY: `events` is a live buffer of `events.len()` entries that
        // the kernel fills; the count it returns is checked before use.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            let (token, flags) = (ev.u64, ev.events as i32);
            if token == LISTENER {
                relay.accept_all(&listener)?;
            } else {
                relay.on_event(token as usize, flags);
            }
        }
    }
}

impl Relay {
    fn ctl(&self, op: i32, fd: RawFd, events: i32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: events as u32,
            u64: token,
        };
        // SAFETY: `ev` outlives the call; `fd` is a socket this relay owns.
        if unsafe { libc::epoll_ctl(self.epoll, op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn accept_all(&mut self, listener: &TcpListener) -> io::Result<()> {
        loop {
            let client = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            // A refused upstream drops the client, as any proxy would.
            let Ok(upstream) = TcpStream::connect(self.upstream) else {
                continue;
            };
            for s in [&client, &upstream] {
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
            }
            let (a, b) = (self.slot(), self.slot());
            let (fa, fb) = (client.as_raw_fd(), upstream.as_raw_fd());
            self.sides[a] = Some(Side {
                sock: client,
                peer: b,
                pending: Vec::new(),
                acks: AckPacer::new(fa),
            });
            self.sides[b] = Some(Side {
                sock: upstream,
                peer: a,
                pending: Vec::new(),
                acks: AckPacer::new(fb),
            });
            self.ctl(libc::EPOLL_CTL_ADD, fa, libc::EPOLLIN, a as u64)?;
            self.ctl(libc::EPOLL_CTL_ADD, fb, libc::EPOLLIN, b as u64)?;
        }
    }

    fn slot(&mut self) -> usize {
        self.free.pop().unwrap_or_else(|| {
            self.sides.push(None);
            self.sides.len() - 1
        })
    }

    fn on_event(&mut self, at: usize, flags: i32) {
        if self.sides.get(at).is_none_or(Option::is_none) {
            return; // closed earlier in this batch
        }
        if flags & libc::EPOLLOUT != 0 && !self.flush(at) {
            return;
        }
        if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) == 0 {
            return;
        }
        let peer = self.sides[at].as_ref().expect("live side").peer;
        if self.sides[peer]
            .as_ref()
            .is_some_and(|p| !p.pending.is_empty())
        {
            // Paused behind its peer's backlog: read nothing (bytes keep
            // their order); a hang-up ends the pair.
            if flags & (libc::EPOLLHUP | libc::EPOLLERR) != 0 {
                self.close(at);
            }
            return;
        }
        self.forward(at);
    }

    /// Reads once from `at` and writes it all to its peer, or parks the
    /// rest there and stops reading `at` until the peer drains.
    fn forward(&mut self, at: usize) {
        let side = self.sides[at].as_mut().expect("live side");
        let fd = side.sock.as_raw_fd();
        let peer = side.peer;
        // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::recv(fd, self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
        if n <= 0 {
            let e = io::Error::last_os_error();
            if n < 0 && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) {
                return;
            }
            self.close(at);
            return;
        }
        side.acks.after_read();
        let n = n as usize;
        let out = self.sides[peer].as_mut().expect("live peer");
        let sent = send(out.sock.as_raw_fd(), &self.buf[..n]);
        match sent {
            Ok(m) if m == n => {}
            Ok(m) => {
                out.pending.extend_from_slice(&self.buf[m..n]);
                let pfd = out.sock.as_raw_fd();
                let _ = self.ctl(libc::EPOLL_CTL_MOD, pfd, libc::EPOLLOUT, peer as u64);
                let _ = self.ctl(libc::EPOLL_CTL_MOD, fd, 0, at as u64);
            }
            Err(_) => self.close(at),
        }
    }

    /// Writes what `at` has pending; true once it is empty (and reading
    /// its peer resumes), false if it closed or still holds bytes.
    fn flush(&mut self, at: usize) -> bool {
        let side = self.sides[at].as_mut().expect("live side");
        let fd = side.sock.as_raw_fd();
        match send(fd, &side.pending) {
            Ok(m) => {
                side.pending.drain(..m);
                if !side.pending.is_empty() {
                    return false;
                }
                side.pending = Vec::new();
                let peer = side.peer;
                let pfd = self.sides[peer]
                    .as_ref()
                    .expect("live peer")
                    .sock
                    .as_raw_fd();
                let _ = self.ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN, at as u64);
                let _ = self.ctl(libc::EPOLL_CTL_MOD, pfd, libc::EPOLLIN, peer as u64);
                true
            }
            Err(_) => {
                self.close(at);
                false
            }
        }
    }

    /// Closes both ends of the pair (closing a socket leaves the epoll set).
    fn close(&mut self, at: usize) {
        if let Some(side) = self.sides[at].take() {
            self.free.push(at);
            if self.sides[side.peer].take().is_some() {
                self.free.push(side.peer);
            }
        }
    }
}

/// A non-blocking send: the bytes taken (0 when the socket is full).
fn send(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is live for the call and its length is passed.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::Interrupted => Ok(0),
        _ => Err(e),
    }
}
