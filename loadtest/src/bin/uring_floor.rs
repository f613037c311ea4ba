//! `sluice-uring-floor`: the floor again, driven by io_uring the way the
//! best io_uring servers drive it, for `sluice-loadtest --targets
//! tcp-floor-uring`.
//!
//! `sluice-floor-relay` pays three system calls per frame that arrives
//! alone (`epoll_wait`, `recv`, `send`). This one pays one `io_uring_enter`
//! per wake-up, however many frames it carries:
//!
//! - one ring, set up for a single issuer with deferred task running, so
//!   completions are posted only when the loop asks for them and never
//!   interrupt it;
//! - multishot receive on every socket with a provided buffer ring, so a
//!   socket is armed once for its whole life and an idle one holds no
//!   buffer;
//! - a send submitted for each received chunk in the same `io_uring_enter`
//!   that waits for the next completions; one send in flight per socket,
//!   the rest queued behind it in order.
//!
//! Same contract as `sluice-floor-relay` otherwise: no protocol, acks paced
//! by the gateway's `AckPacer`, both sockets of a pair closed when either
//! ends. If it costs less CPU per frame than the epoll floor, a forwarding
//! loop below the runtime could go under the floor; if not, no proxy that
//! forwards each frame as it arrives can, on this host.
//!
//!     sluice-uring-floor LISTEN_PORT UPSTREAM_ADDR
//!
//! Environment: `URING_FLOOR_BUFS` (buffers in the ring, a power of two,
//! default 256) and `URING_FLOOR_BUF_SIZE` (bytes each, default 65536).
//! A benchmark instrument, not a product: it trusts its peers.

use std::alloc::{alloc_zeroed, Layout};
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use sluice::wire::acks::AckPacer;

/// The buffer group every receive selects from.
const GROUP: u16 = 0;

/// What a completion is for: the low 8 bits of its user data.
const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;

fn tag(kind: u64, slot: usize) -> u64 {
    kind | ((slot as u64) << 8)
}

/// One chunk waiting to leave on a socket: a ring buffer and the part of
/// it not sent yet.
struct Chunk {
    bid: u16,
    from: u32,
    to: u32,
}

struct Side {
    sock: TcpStream,
    peer: usize,
    acks: AckPacer,
    /// Chunks for this socket in order; the front one is in flight when
    /// `sending`.
    out: VecDeque<Chunk>,
    sending: bool,
    /// The pair has ended but a send still reads the front chunk's
    /// buffer: the side stays until that send completes, so the buffer
    /// is not handed back to the kernel while it is being read.
    closing: bool,
}

/// The provided buffer ring: `count` buffers of `size` bytes, and the
/// ring of entries the kernel picks them from.
struct Buffers {
    mem: *mut u8,
    size: usize,
    ring: *mut types::BufRingEntry,
    mask: u16,
    tail: u16,
}

impl Buffers {
    fn new(uring: &IoUring, count: usize, size: usize) -> io::Result<Buffers> {
        // The kernel takes at most 32,768 entries, a power of two, and a
        // buffer's length is a u32.
        let count = u16::try_from(count)
            .ok()
            .filter(|c| c.is_power_of_two() && *c <= 1 << 15);
        let (Some(count), Ok(_)) = (count, u32::try_from(size)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "URING_FLOOR_BUFS must be a power of two up to 32768, URING_FLOOR_BUF_SIZE at most 4 GiB",
            ));
        };
        if size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "URING_FLOOR_BUF_SIZE must not be 0",
            ));
        }
        // SAFETY: both layouts have a non-zero size; the pages are
        // zeroed, never freed (they live as long as the process), and the
        // ring is page-aligned as the kernel requires.
        let (mem, ring) = unsafe {
            let mem = alloc_zeroed(Layout::from_size_align(count as usize * size, 4096).unwrap());
            let ring = alloc_zeroed(
                Layout::from_size_align(
                    count as usize * std::mem::size_of::<types::BufRingEntry>(),
                    4096,
                )
                .unwrap(),
            )
            .cast::<types::BufRingEntry>();
            (mem, ring)
        };
        assert!(!mem.is_null() && !ring.is_null());
        // SAFETY: the ring is `count` entries, live for the process.
        unsafe {
            uring
                .submitter()
                .register_buf_ring(ring as u64, count, GROUP)?
        };
        let mut b = Buffers {
            mem,
            size,
            ring,
            mask: count - 1,
            tail: 0,
        };
        for bid in 0..count {
            b.give(bid);
        }
        Ok(b)
    }

    fn at(&self, bid: u16) -> *mut u8 {
        // SAFETY: bid < count, so the offset is inside the allocation.
        unsafe { self.mem.add(bid as usize * self.size) }
    }

    /// Hands buffer `bid` back to the kernel.
    fn give(&mut self, bid: u16) {
        // SAFETY: the index is masked into the ring, so the entry is in
        // the allocation. The kernel reads only entries below the tail it
        // was last given, and this one is at the tail, so nothing reads it
        // until the store below publishes it. The setters write the
        // address, length and id, never `resv`, which in entry 0 is the
        // tail the kernel does read.
        unsafe {
            let e = &mut *self.ring.add((self.tail & self.mask) as usize);
            e.set_addr(self.at(bid) as u64);
            e.set_len(self.size as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field overlays entry 0's reserved field; the
        // kernel reads it, so it is published with a release store.
        unsafe {
            let t = types::BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*t).store(self.tail, Ordering::Release);
        }
    }
}

#[path = "../floor_cli.rs"]
mod floor_cli;

fn main() {
    floor_cli::main("sluice-uring-floor", run);
}

/// A numeric setting from the environment: `default` when unset, an
/// error naming it when it is not a number.
fn env_num(name: &str, default: usize) -> io::Result<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}={v:?} is not a number"),
            )
        }),
    }
}

struct Relay {
    uring: IoUring,
    bufs: Buffers,
    sides: Vec<Option<Side>>,
    upstream: SocketAddr,
    /// Sockets whose multishot receive ended for want of a buffer: armed
    /// again by [`Relay::give`] when one comes back.
    starved: Vec<usize>,
}

fn run(listener: TcpListener, upstream: SocketAddr) -> io::Result<()> {
    let mut b = IoUring::builder();
    match std::env::var("URING_FLOOR_MODE").as_deref() {
        Ok("plain") => {}
        Ok("coop") => {
            b.setup_coop_taskrun().setup_single_issuer();
        }
        _ => {
            b.setup_single_issuer().setup_defer_taskrun();
        }
    }
    b.setup_cqsize(8192);
    let uring = b.build(1024)?;
    let bufs = Buffers::new(
        &uring,
        env_num("URING_FLOOR_BUFS", 256)?,
        env_num("URING_FLOOR_BUF_SIZE", 64 * 1024)?,
    )?;
    let mut relay = Relay {
        uring,
        bufs,
        sides: Vec::new(),
        upstream,
        starved: Vec::new(),
    };
    relay.push(
        opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
            .build()
            .user_data(ACCEPT),
    );
    let min_wait_us = u32::try_from(env_num("URING_FLOOR_MIN_WAIT_US", 0)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "URING_FLOOR_MIN_WAIT_US is too large",
        )
    })?;
    let mut done: Vec<cqueue::Entry> = Vec::with_capacity(1024);
    loop {
        let entered = if min_wait_us == 0 {
            relay.uring.submit_and_wait(1)
        } else {
            relay.enter_batched(min_wait_us)
        };
        match entered {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        done.extend(relay.uring.completion());
        for c in done.drain(..) {
            relay.on_completion(c)?;
        }
    }
}

impl Relay {
    /// Submits and waits the way io_uring batches wake-ups (kernel 6.12
    /// and later, deferred task running): the loop sleeps until 64
    /// completions are pending or `min_wait_us` has passed with at least
    /// one, so frames that arrive within the window share one wake-up and
    /// leave in one `io_uring_enter`, each waiting at most the window. io-uring
    /// 0.6.4 has no field for `min_wait_usec`, hence the raw call.
    fn enter_batched(&mut self, min_wait_us: u32) -> io::Result<usize> {
        /// `struct io_uring_getevents_arg` as of 6.12.
        #[repr(C)]
        struct GetEventsArg {
            sigmask: u64,
            sigmask_sz: u32,
            min_wait_usec: u32,
            ts: u64,
        }
        const GETEVENTS: u32 = 1;
        const EXT_ARG: u32 = 1 << 3;
        let arg = GetEventsArg {
            sigmask: 0,
            sigmask_sz: 0,
            min_wait_usec: min_wait_us,
            ts: 0,
        };
        let to_submit = self.uring.submission().len() as u32;
        // SAFETY: io_uring_enter reads `arg` (a live local of the size
        // passed) and the rings this process mapped; nothing else.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.uring.as_raw_fd(),
                to_submit,
                64u32,
                GETEVENTS | EXT_ARG,
                &arg as *const GetEventsArg,
                std::mem::size_of::<GetEventsArg>(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ETIME) {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(r as usize)
    }

    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every entry points at memory that outlives its
        // operation: ring buffers (never freed) and fds kept open until
        // the pair closes, after which completions are only drained.
        while unsafe { self.uring.submission().push(&e) }.is_err() {
            self.uring.submit().expect("io_uring_enter");
        }
    }

    fn arm(&mut self, slot: usize) {
        let fd = self.sides[slot].as_ref().expect("live").sock.as_raw_fd();
        self.push(
            opcode::RecvMulti::new(types::Fd(fd), GROUP)
                .build()
                .user_data(tag(RECV, slot)),
        );
    }

    fn on_completion(&mut self, c: cqueue::Entry) -> io::Result<()> {
        let (kind, slot) = (c.user_data() & 0xff, (c.user_data() >> 8) as usize);
        match kind {
            ACCEPT => {
                if c.result() >= 0 {
                    // SAFETY: a successful accept returns a new socket
                    // that nothing else owns.
                    let client = unsafe { TcpStream::from_raw_fd(c.result()) };
                    self.pair(client)?;
                }
                if !cqueue::more(c.flags()) {
                    return Err(io::Error::other("multishot accept ended"));
                }
            }
            RECV => self.on_recv(slot, c),
            SEND => self.on_send(slot, c.result()),
            _ => unreachable!(),
        }
        Ok(())
    }

    fn pair(&mut self, client: TcpStream) -> io::Result<()> {
        let Ok(upstream) = TcpStream::connect(self.upstream) else {
            return Ok(());
        };
        client.set_nodelay(true)?;
        upstream.set_nodelay(true)?;
        let (a, b) = (self.sides.len(), self.sides.len() + 1);
        for (sock, peer) in [(client, b), (upstream, a)] {
            let acks = AckPacer::new(sock.as_raw_fd());
            self.sides.push(Some(Side {
                sock,
                peer,
                acks,
                out: VecDeque::new(),
                sending: false,
                closing: false,
            }));
        }
        self.arm(a);
        self.arm(b);
        Ok(())
    }

    fn on_recv(&mut self, slot: usize, c: cqueue::Entry) {
        let more = cqueue::more(c.flags());
        let bid = cqueue::buffer_select(c.flags());
        let n = c.result();
        let Some(side) = self.live(slot) else {
            if let Some(bid) = bid {
                self.give(bid);
            }
            return;
        };
        if n > 0 {
            side.acks.after_read();
            let peer = side.peer;
            let bid = bid.expect("a receive with data names its buffer");
            self.queue(
                peer,
                Chunk {
                    bid,
                    from: 0,
                    to: n as u32,
                },
            );
            if !more {
                self.arm(slot);
            }
            return;
        }
        if n == -libc::ENOBUFS {
            self.starved.push(slot);
            return;
        }
        if !more {
            self.close(slot);
        }
    }

    /// A side whose pair has not ended.
    fn live(&mut self, slot: usize) -> Option<&mut Side> {
        self.sides
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|s| !s.closing)
    }

    fn queue(&mut self, slot: usize, chunk: Chunk) {
        let Some(side) = self.live(slot) else {
            self.give(chunk.bid);
            return;
        };
        side.out.push_back(chunk);
        if !side.sending {
            self.send_front(slot);
        }
    }

    fn send_front(&mut self, slot: usize) {
        let side = self.sides[slot].as_mut().expect("live");
        let Some(c) = side.out.front() else {
            side.sending = false;
            return;
        };
        side.sending = true;
        let fd = side.sock.as_raw_fd();
        // SAFETY: from..to lies inside buffer `bid`.
        let ptr = unsafe { self.bufs.at(c.bid).add(c.from as usize) };
        let e = opcode::Send::new(types::Fd(fd), ptr, c.to - c.from)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(tag(SEND, slot));
        self.push(e);
    }

    fn on_send(&mut self, slot: usize, res: i32) {
        let Some(side) = self.sides.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if side.closing {
            let bid = side.out.pop_front().expect("the send that kept it").bid;
            self.sides[slot] = None;
            self.give(bid);
            return;
        }
        if res < 0 {
            // This send is over: its chunk goes back with the rest.
            side.sending = false;
            self.close(slot);
            return;
        }
        let c = side.out.front_mut().expect("a send in flight");
        c.from += res as u32;
        if c.from == c.to {
            let bid = c.bid;
            side.out.pop_front();
            self.give(bid);
        }
        self.send_front(slot);
    }

    /// Closes both ends. Their multishot receives end (the shutdown makes
    /// them complete) and hand their buffers back through `on_recv`;
    /// queued chunks go back here, except one that a send is still
    /// reading, which goes back when that send completes.
    fn close(&mut self, slot: usize) {
        let Some(peer) = self.live(slot).map(|s| s.peer) else {
            return;
        };
        for at in [slot, peer] {
            let Some(side) = self.sides[at].as_mut() else {
                continue;
            };
            let _ = side.sock.shutdown(std::net::Shutdown::Both);
            let keep = usize::from(side.sending);
            let freed: Vec<u16> = side.out.drain(keep..).map(|c| c.bid).collect();
            if side.sending {
                side.closing = true;
            } else {
                self.sides[at] = None;
            }
            for bid in freed {
                self.give(bid);
            }
        }
    }

    /// Hands buffer `bid` back to the kernel, and arms again every live
    /// receive that ended for want of one. Every buffer comes back through
    /// here (a send done, a pair closed, a receive for a pair gone), so a
    /// starved socket never waits for a buffer that already came back.
    fn give(&mut self, bid: u16) {
        self.bufs.give(bid);
        if self.starved.is_empty() {
            return; // nearly always
        }
        for s in std::mem::take(&mut self.starved) {
            if self.live(s).is_some() {
                self.arm(s);
            }
        }
    }
}
