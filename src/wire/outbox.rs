//! The bounded queue of frames waiting to be written to one socket, and the
//! task that writes them.
//!
//! Every byte the gateway sends a peer goes through its outbox, so there is
//! one writer per socket (no interleaved frames) and one place where
//! buffered bytes are counted. Producers that respect [`Outbox::space`]
//! stop reading their own source while the queue is over its cap: that is
//! how a browser that stops reading slows its connector through TCP flow
//! control instead of growing the gateway's memory. A fan-out producer that
//! must not wait checks [`Outbox::queued_bytes`] and drops the viewer instead.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use monoio::io::{AsyncWriteRent, OwnedWriteHalf};
use monoio::net::TcpStream;

use crate::wire::egress::{Batch, Egress};
use crate::wire::reader::Wire;

/// Most frames, and bytes, one gathered write takes.
const BATCH_FRAMES: usize = 64;
/// Most frames one direct (non-blocking) send takes.
const DIRECT_FRAMES: usize = 16;
/// Most bytes queued for a direct send. Past it the copy dominates a
/// frame's cost and the ring's batched writes are cheaper: bulk through
/// the writer task made 3.9 syscalls per MB, direct sends 19 (measured
/// with `sluice-loadtest bulk`).
const DIRECT_BYTES: usize = 16 * 1024;
const BATCH_BYTES: usize = 1024 * 1024;
/// Most frames, and bytes, a forwarder holds back to send together with
/// [`Outbox::push_wires`]: what one direct send takes (each frame may be
/// two pieces).
pub const GATHER_FRAMES: usize = DIRECT_FRAMES / 2;
pub const GATHER_BYTES: usize = DIRECT_BYTES;

/// The iovec covering one frame, for a gathered write.
fn iovec(b: &Bytes) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

/// One non-blocking send of up to `DIRECT_FRAMES` buffers to `fd`; the
/// bytes the kernel took (0 on `EAGAIN` or any error: the writer task
/// retries, waits for room and reports errors).
///
/// One buffer, which is every frame of a slow stream, goes out with plain
/// `send`: `sendmsg` first copies the `msghdr` and imports the iovec array
/// from user memory, which cost a tenth of the gateway's CPU in `fan-in`
/// (perf, 200 streams of 4 KiB frames; docs/benchmarks.md).
fn send_now<'a>(fd: RawFd, bufs: impl Iterator<Item = &'a Bytes>) -> usize {
    let mut iov = [iovec(&Bytes::new()); DIRECT_FRAMES];
    let mut n = 0;
    for b in bufs.take(DIRECT_FRAMES) {
        iov[n] = iovec(b);
        n += 1;
    }
    if n == 1 {
        // SAFETY: `iov[0]` points into a `Bytes` the caller holds, with its
        // exact length, until the call returns; the kernel only reads it.
        // `fd` is the socket of the parked write half, which the outbox
        // holds open.
        let sent = unsafe {
            libc::send(
                fd,
                iov[0].iov_base,
                iov[0].iov_len,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        return sent.max(0) as usize;
    }
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = n as _;
    // SAFETY: every iovec points into a `Bytes` the caller holds, with its
    // exact length, and the caller holds it (and the queue it sits in,
    // untouched) until the call returns; `msg` and `iov` outlive the call.
    // The kernel only reads through them. `fd` is the socket of the parked
    // write half, which is open: the outbox holds that half.
    let sent = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    sent.max(0) as usize
}

/// Frames for one `writev`, and the iovecs that point into them.
pub struct Gather {
    frames: Vec<Bytes>,
    iovecs: Vec<libc::iovec>,
}

// SAFETY: every iovec points into a `Bytes` held in `frames`, with that
// `Bytes`'s exact length. The heap data of a `Bytes` never moves while it is
// alive, and neither `frames` nor `iovecs` is touched while the runtime owns
// this value (it is only read through these two methods), so the pointer
// and the count stay valid for the whole operation. Covered by the
// `gather_*` tests below and by every integration test (all writes go here).
unsafe impl monoio::buf::IoVecBuf for Gather {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iovecs.len()
    }
}

impl Gather {
    pub fn new(frames: Vec<Bytes>) -> Self {
        let iovecs = frames.iter().map(iovec).collect();
        Gather { frames, iovecs }
    }

    pub fn is_empty(&self) -> bool {
        self.frames.iter().all(Bytes::is_empty)
    }

    /// What is left after the kernel took `n` bytes.
    pub fn advance(self, mut n: usize) -> Gather {
        let mut rest = Vec::with_capacity(self.frames.len());
        for mut b in self.frames {
            if n >= b.len() {
                n -= b.len();
                continue;
            }
            if n > 0 {
                let _ = b.split_to(n);
                n = 0;
            }
            rest.push(b);
        }
        Gather::new(rest)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A close frame is queued: nothing more is accepted.
    Closing,
    /// The writer stopped (socket error, stall, or after the close frame).
    Done,
}

// `repr(C)`, hot fields first: a frame pushed to an idle connection
// touches the `RefCell`'s flag and everything up to `queue`'s length, and a
// slow stream finds all of it cold (fan-in: 200 streams between two of its
// frames). In Rust's own order the flag and `state` lay three lines apart;
// in this order, with the stall timeout out of `parked`, flag to `queue`
// span 80 bytes, two lines, and both are loaded ahead when the stream's
// socket wakes (`Outbox::lines`).
#[repr(C)]
struct Inner {
    state: State,
    /// The last data frame queued had FIN=0: the peer is inside a
    /// fragmented message, and only its continuations or control frames
    /// (a close) may follow.
    mid_message: bool,
    /// The socket's descriptor, for the direct write.
    fd: Option<RawFd>,
    queued: usize,
    cap: usize,
    /// The socket half while no writer task runs. A writer task lives only
    /// while the socket cannot take what is queued, so an idle connection
    /// costs no task: `push` writes straight to the socket when it can
    /// (see [`Outbox::write_now`]) and starts a writer only for the rest.
    parked: Option<Writer>,
    /// Frames in write order; `true` marks the second piece of a frame
    /// split across two buffers, which must never be separated from the
    /// first (see [`Outbox::discard_pending`]).
    queue: VecDeque<(Bytes, bool)>,
    /// How long a write may make no progress before the peer is dropped.
    stall: Duration,
    waiters: Vec<Waker>,
    /// Where the writer hands the frames instead of the socket, for a
    /// session a front speaks for (`wire::egress`). Cold: read once per
    /// gathered batch by the writer task.
    egress: Option<Egress>,
}

/// What a frame does to the message framing of the stream it joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Joins {
    /// A text or binary frame: starts a message.
    NewMessage {
        fin: bool,
    },
    Continuation {
        fin: bool,
    },
    Control,
}

impl Joins {
    fn of(first_byte: Option<u8>) -> Joins {
        let Some(b0) = first_byte else {
            return Joins::Control;
        };
        let fin = b0 & 0x80 != 0;
        match b0 & 0x0F {
            0x0 => Joins::Continuation { fin },
            0x1 | 0x2 => Joins::NewMessage { fin },
            _ => Joins::Control,
        }
    }
}

type Writer = OwnedWriteHalf<TcpStream>;

impl Inner {
    /// One non-blocking gathered send of the queued frames, made while no
    /// writer task runs (so it cannot interleave with one); `true` when
    /// the queue is now empty.
    ///
    /// A frame pushed to an idle connection, which is every frame of a
    /// slow stream, then costs one `sendmsg` instead of a task, a timer
    /// and a ring operation and its completion. Whatever the socket does
    /// not take (a full send buffer, `EAGAIN`) or any error is left to the
    /// writer task, which waits for room, applies the stall timeout and
    /// reports errors: only the fast case is handled here. The close frame
    /// is always written by the task (it shuts the socket down after).
    fn write_now(&mut self) -> bool {
        let Some(fd) = self.fd else {
            return false;
        };
        let sent = send_now(fd, self.queue.iter().take(DIRECT_FRAMES).map(|(b, _)| b));
        if sent == 0 {
            return false;
        }
        let mut left = sent;
        self.sent(left);
        while left > 0 {
            let front = &mut self.queue.front_mut().expect("sent bytes were queued").0;
            if left >= front.len() {
                left -= front.len();
                self.queue.pop_front();
            } else {
                let _ = front.split_to(left);
                // What is left of a frame is its continuation: a discard
                // must keep it (see `discard_pending`).
                self.queue.front_mut().expect("front").1 = true;
                left = 0;
            }
        }
        self.queue.is_empty()
    }

    /// Whether a frame of `len` bytes pushed now may go straight to the
    /// socket: nothing is queued ahead of it, no writer task runs, and it
    /// is small (large frames are cheaper through the writer's batched
    /// ring writes, see `DIRECT_BYTES`).
    #[inline(always)]
    fn may_send_now(&self, len: impl FnOnce() -> usize) -> bool {
        self.parked.is_some() && self.queue.is_empty() && self.fd.is_some() && len() <= DIRECT_BYTES
    }

    /// Sends one frame (its head, and the tail of a frame split across
    /// two buffers) with one non-blocking `sendmsg`, queueing only what
    /// the socket did not take, the part of a frame already sent marking
    /// the rest as its continuation. A frame that goes out whole never
    /// touches the queue: an idle connection keeps no queue storage, a
    /// slow stream no queue traffic. `true` when it went out whole;
    /// `false` means a writer must run (trying the same send again would
    /// only repeat the `EAGAIN`).
    #[inline(never)]
    fn send_unqueued(&mut self, head: Bytes, tail: Option<Bytes>) -> bool {
        let fd = self.fd.expect("checked by may_send_now");
        let len = head.len() + tail.as_ref().map_or(0, Bytes::len);
        self.queued += len;
        let sent = send_now(fd, std::iter::once(&head).chain(tail.as_ref()));
        self.sent(sent);
        self.queue_unsent(
            sent,
            [(head, false)].into_iter().chain(tail.map(|t| (t, true))),
        )
    }

    /// [`send_unqueued`](Self::send_unqueued) for several frames' pieces
    /// (at most `DIRECT_FRAMES`), in one gathered send.
    fn send_pieces_unqueued(&mut self, pieces: Vec<(Bytes, bool)>) -> bool {
        let fd = self.fd.expect("checked by may_send_now");
        self.queued += pieces.iter().map(|(b, _)| b.len()).sum::<usize>();
        let sent = send_now(fd, pieces.iter().map(|(b, _)| b));
        self.sent(sent);
        self.queue_unsent(sent, pieces.into_iter())
    }

    /// The parked socket half, for a writer task.
    fn take_parked(&mut self) -> Option<Writer> {
        self.parked.take()
    }

    /// Queues one piece for the writer (`continues`: the second piece of
    /// a frame split across two buffers). One piece at a time, not an
    /// iterator: `push_wire` is the per-frame hot path, and chaining its
    /// head and tail into an iterator cost it 15 % more instructions
    /// (`.ci/instructions`, `outbox_push`).
    #[inline]
    fn queue_piece(&mut self, piece: Bytes, continues: bool) {
        self.queued += piece.len();
        self.queue.push_back((piece, continues));
    }

    /// Queues what a direct send of `pieces` did not take (`sent` bytes
    /// from their start went out): the part of a piece already sent marks
    /// the rest as its frame's continuation. `true` when nothing is left.
    fn queue_unsent(
        &mut self,
        mut sent: usize,
        pieces: impl Iterator<Item = (Bytes, bool)>,
    ) -> bool {
        for (mut piece, mut continues) in pieces {
            if sent >= piece.len() {
                sent -= piece.len();
                continue;
            }
            if sent > 0 {
                let _ = piece.split_to(sent);
                continues = true;
                sent = 0;
            }
            self.queue.push_back((piece, continues));
        }
        self.queue.is_empty()
    }

    /// `n` queued bytes reached the socket: producers waiting for room
    /// are woken when the queue drops under its cap.
    fn sent(&mut self, n: usize) {
        let before = self.queued;
        self.queued -= n;
        if before >= self.cap && self.queued < self.cap {
            for w in self.waiters.drain(..) {
                w.wake();
            }
        }
    }

    /// Whether a frame may join the stream, keeping `mid_message` current.
    fn admits(&mut self, joins: Joins) -> bool {
        match joins {
            Joins::NewMessage { .. } if self.mid_message => {
                tracing::debug!("frame dropped: the peer's current message is unfinished");
                false
            }
            Joins::NewMessage { fin } | Joins::Continuation { fin } => {
                self.mid_message = !fin;
                true
            }
            Joins::Control => true,
        }
    }
}

/// Cheap to clone; all clones are the same queue.
#[derive(Clone)]
pub struct Outbox(Rc<RefCell<Inner>>);

/// The peer can no longer be written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl Outbox {
    pub fn new(cap: usize) -> Self {
        Outbox(Rc::new(RefCell::new(Inner {
            state: State::Open,
            mid_message: false,
            fd: None,
            queued: 0,
            cap,
            parked: None,
            queue: VecDeque::new(),
            stall: Duration::ZERO,
            waiters: Vec::new(),
            egress: None,
        })))
    }

    /// Hands the socket half to the outbox; frames pushed from now on are
    /// written to it, each `stall` without progress dropping the peer.
    pub fn attach(&self, io: Writer, stall: Duration) {
        // SAFETY: the half's stream is only ever borrowed, mutably, inside
        // the poll of one of its own operations; on this single thread none
        // is being polled while `attach` runs, so this shared borrow
        // overlaps no other. It reads the descriptor number and ends.
        let fd = unsafe { (*io.0.get()).as_raw_fd() };
        {
            let mut g = self.0.borrow_mut();
            g.parked = Some(io);
            g.stall = stall;
            g.fd = Some(fd);
        }
        self.kick();
    }

    /// [`Outbox::attach`] for a session a front speaks for: everything
    /// the session sends from `first` on (its upgrade's answer) goes to
    /// `egress`, in the writer's gathered batches, never to the socket (no
    /// direct sends: `fd` stays unset), so the front reads the session's
    /// bytes from one place, in order. The socket half is kept, and shut
    /// down after the close like any other.
    pub fn attach_egress(&self, io: Writer, egress: Egress, stall: Duration, first: Bytes) {
        {
            let mut g = self.0.borrow_mut();
            g.parked = Some(io);
            g.stall = stall;
            g.egress = Some(egress);
            g.queue_piece(first, false);
        }
        self.kick();
    }

    /// Raises (or lowers) the queue's cap and the stall timeout: a session
    /// starts under the small pre-authentication bounds and gets its
    /// working ones once it has authenticated. A writer already running
    /// applies the new stall from its next write.
    pub fn set_limits(&self, cap: usize, stall: Duration) {
        let mut g = self.0.borrow_mut();
        let woke = g.queued >= g.cap && g.queued < cap;
        g.cap = cap;
        g.stall = stall;
        if woke {
            for w in g.waiters.drain(..) {
                w.wake();
            }
        }
    }

    /// Queues a control answer (a pong) only if the queue is under its cap;
    /// `false`: dropped. For a peer not yet authenticated, whose unread
    /// answers must not hold memory: RFC 6455 lets a pong answer only the
    /// latest ping, so dropping them loses nothing a reading peer needs.
    pub fn push_if_room(&self, frame: Bytes) -> Result<bool, Gone> {
        {
            let g = self.0.borrow();
            if g.state != State::Open {
                return Err(Gone);
            }
            if g.queued + frame.len() > g.cap {
                return Ok(false);
            }
        }
        self.push(frame).map(|()| true)
    }

    /// The socket did not take a frame sent straight to it: the parked
    /// writer takes over the rest.
    #[cold]
    fn wake_writer(&self) {
        let job = self.0.borrow_mut().take_parked();
        self.start_writer(job);
    }

    fn start_writer(&self, job: Option<Writer>) {
        if let Some(io) = job {
            monoio::spawn(self.clone().run_writer(io));
        }
    }

    /// Writes what is queued: straight to the socket when no writer runs
    /// and the socket takes it all, else through a writer task.
    fn kick(&self) {
        let job = {
            let mut g = self.0.borrow_mut();
            let writable = !g.queue.is_empty() && g.parked.is_some();
            if !writable || (g.state == State::Open && g.queued <= DIRECT_BYTES && g.write_now()) {
                None
            } else {
                g.take_parked()
            }
        };
        self.start_writer(job);
    }

    /// Queues a frame regardless of the cap (the caller waits on
    /// [`Outbox::space`] before its next read).
    ///
    /// A frame that would start a new message while the peer is inside an
    /// unfinished one (a connector sent FIN=0 and then failed) is dropped:
    /// the peer could only answer it with a protocol error (1002) and
    /// would never learn why the stream ended. Only a close can follow an
    /// unfinished message, and the close frame carries the code and reason
    /// the dropped message would have.
    pub fn push(&self, frame: Bytes) -> Result<(), Gone> {
        let mut g = self.0.borrow_mut();
        if g.state != State::Open {
            return Err(Gone);
        }
        if !g.admits(Joins::of(frame.first().copied())) {
            return Ok(());
        }
        if g.may_send_now(|| frame.len()) {
            let whole = g.send_unqueued(frame, None);
            drop(g);
            if !whole {
                self.wake_writer();
            }
            return Ok(());
        }
        g.queue_piece(frame, false);
        drop(g);
        self.kick();
        Ok(())
    }

    /// The lines a frame pushed here touches first: the `RefCell`'s flag
    /// and the last byte of `queue`, the ends of the hot fields (80 bytes,
    /// two lines at most; see `Inner`). A prefetch hint, see
    /// `FrameReader::hint_wakeups`.
    pub fn lines(&self) -> [*const (); 2] {
        let g = self.0.borrow();
        let last = std::ptr::from_ref(&g.queue)
            .cast::<u8>()
            .wrapping_add(std::mem::size_of_val(&g.queue) - 1);
        [Rc::as_ptr(&self.0).cast(), last.cast()]
    }

    /// Queues a forwarded frame (one or two pieces, written back to back).
    pub fn push_wire(&self, frame: Wire) -> Result<(), Gone> {
        let mut g = self.0.borrow_mut();
        if g.state != State::Open {
            return Err(Gone);
        }
        if !g.admits(Joins::of(frame.head.first().copied())) {
            return Ok(());
        }
        if g.may_send_now(|| frame.head.len() + frame.tail.as_ref().map_or(0, Bytes::len)) {
            let whole = g.send_unqueued(frame.head, frame.tail);
            drop(g);
            if !whole {
                self.wake_writer();
            }
            return Ok(());
        }
        g.queue_piece(frame.head, false);
        if let Some(t) = frame.tail {
            g.queue_piece(t, true);
        }
        drop(g);
        self.kick();
        Ok(())
    }

    /// Queues forwarded frames that arrived together, in order, with one
    /// gathered send where [`push_wire`](Self::push_wire) each would make
    /// one `send` each: a stream's backlog after a stall leaves at once,
    /// as a byte proxy's would. Takes the frames out of `frames`.
    pub fn push_wires(&self, frames: &mut Vec<Wire>) -> Result<(), Gone> {
        if frames.len() == 1 {
            let f = frames.pop().expect("one frame");
            return self.push_wire(f);
        }
        let mut g = self.0.borrow_mut();
        if g.state != State::Open {
            frames.clear();
            return Err(Gone);
        }
        let mut pieces = Vec::with_capacity(frames.len() * 2);
        for f in frames.drain(..) {
            if !g.admits(Joins::of(f.head.first().copied())) {
                continue;
            }
            pieces.push((f.head, false));
            if let Some(t) = f.tail {
                pieces.push((t, true));
            }
        }
        let bytes = || pieces.iter().map(|(b, _)| b.len()).sum();
        if pieces.len() <= DIRECT_FRAMES && g.may_send_now(bytes) {
            let whole = g.send_pieces_unqueued(pieces);
            drop(g);
            if !whole {
                self.wake_writer();
            }
            return Ok(());
        }
        for (piece, continues) in pieces {
            g.queue_piece(piece, continues);
        }
        drop(g);
        self.kick();
        Ok(())
    }

    /// Drops the frames no write has started on, so that what is queued
    /// next (a revocation's close) goes out now instead of after megabytes
    /// of data. A frame whose first piece is already with the writer keeps
    /// its second piece: the stream stays well-framed.
    pub fn discard_pending(&self) {
        let mut g = self.0.borrow_mut();
        if g.state != State::Open {
            return;
        }
        let keep = g.queue.iter().take_while(|(_, tail)| *tail).count();
        let dropped: usize = g.queue.iter().skip(keep).map(|(b, _)| b.len()).sum();
        g.queue.truncate(keep);
        g.queued -= dropped;
        if g.queued < g.cap {
            for w in g.waiters.drain(..) {
                w.wake();
            }
        }
    }

    /// Queues a close frame; after it nothing is accepted, and the writer
    /// stops once it is on the wire. A second close is ignored.
    pub fn close(&self, frame: Bytes) {
        let mut g = self.0.borrow_mut();
        if g.state != State::Open {
            return;
        }
        g.queue_piece(frame, false);
        g.state = State::Closing;
        for w in g.waiters.drain(..) {
            w.wake();
        }
        drop(g);
        self.kick();
    }

    pub fn is_open(&self) -> bool {
        self.0.borrow().state == State::Open
    }

    /// Whether the peer was last sent the start or middle of a message.
    pub fn mid_message(&self) -> bool {
        self.0.borrow().mid_message
    }

    pub fn queued_bytes(&self) -> usize {
        self.0.borrow().queued
    }

    /// Waits until the queue is under its cap.
    pub async fn space(&self) -> Result<(), Gone> {
        poll_fn(|cx| {
            let mut g = self.0.borrow_mut();
            match g.state {
                State::Open if g.queued < g.cap => Poll::Ready(Ok(())),
                State::Open => {
                    g.waiters.push(cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(Err(Gone)),
            }
        })
        .await
    }

    /// Whether the queue is under its cap now (`Err`: the peer is gone).
    pub fn has_room(&self) -> Result<bool, Gone> {
        let g = self.0.borrow();
        match g.state {
            State::Open => Ok(g.queued < g.cap),
            _ => Err(Gone),
        }
    }

    /// [`Outbox::space`], giving up after `stall` without room: `Ok(false)`.
    /// For a queue found full ([`Outbox::has_room`]): the timer is armed
    /// only then, never per frame.
    pub async fn space_within(&self, stall: Duration) -> Result<bool, Gone> {
        match monoio::time::timeout(stall, self.space()).await {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    /// Waits until the writer has stopped (close written, or the peer gone).
    pub async fn finished(&self) {
        poll_fn(|cx| {
            let mut g = self.0.borrow_mut();
            if g.state == State::Done {
                Poll::Ready(())
            } else {
                g.waiters.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn finish(&self) {
        let mut g = self.0.borrow_mut();
        g.state = State::Done;
        g.parked = None;
        g.egress = None;
        g.queue.clear();
        g.queued = 0;
        for w in g.waiters.drain(..) {
            w.wake();
        }
    }

    /// Takes the queued frames (up to a batch) for one gathered write;
    /// `true` when the close frame is among them. `None`: nothing to write.
    fn next_batch(&self) -> Option<(Vec<Bytes>, bool)> {
        let mut g = self.0.borrow_mut();
        if g.queue.is_empty() {
            return None;
        }
        let mut batch = Vec::with_capacity(g.queue.len().min(BATCH_FRAMES));
        let mut bytes = 0;
        while let Some((b, _)) = g.queue.front() {
            if batch.len() == BATCH_FRAMES || (bytes > 0 && bytes + b.len() > BATCH_BYTES) {
                break;
            }
            bytes += b.len();
            batch.push(g.queue.pop_front().expect("front exists").0);
        }
        let last = g.queue.is_empty() && g.state == State::Closing;
        Some((batch, last))
    }

    /// Hands one batch to the session's front; `false`: the front is gone,
    /// or took nothing for `stall`.
    async fn hand_over(&self, tx: &flume::Sender<Batch>, batch: Batch, stall: Duration) -> bool {
        let bytes: usize = batch.iter().map(Bytes::len).sum();
        match monoio::time::timeout(stall, tx.send_async(batch)).await {
            Ok(Ok(())) => {
                self.0.borrow_mut().sent(bytes);
                true
            }
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::debug!(
                    stall_ms = stall.as_millis() as u64,
                    "front stalled; dropping peer"
                );
                false
            }
        }
    }

    /// Writes queued frames until the queue is empty (then parks the
    /// socket half), the close frame is written, the peer is gone, or a
    /// write makes no progress for `stall`. Frames queued together go out
    /// in one `writev`.
    async fn run_writer(self, mut io: Writer) {
        loop {
            let Some((batch, last)) = self.next_batch() else {
                // Nothing left: park. A later push starts a new writer.
                self.0.borrow_mut().parked = Some(io);
                // A frame may have arrived while this task was finishing.
                self.kick();
                return;
            };
            // Once per batch, off the per-frame path: `set_limits` may have
            // changed it since this writer started.
            let (stall, egress) = {
                let g = self.0.borrow();
                (g.stall, g.egress.as_ref().map(|e| e.0.clone()))
            };
            if let Some(tx) = egress {
                if !self.hand_over(&tx, batch, stall).await {
                    return self.finish();
                }
                if last {
                    let _ = io.shutdown().await;
                    return self.finish();
                }
                continue;
            }
            let mut pending = Gather::new(batch);
            while !pending.is_empty() {
                let (res, g) = match monoio::time::timeout(stall, io.writev(pending)).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::debug!(
                            stall_ms = stall.as_millis() as u64,
                            "write stalled; dropping peer"
                        );
                        return self.finish();
                    }
                };
                match res {
                    Ok(n) if n > 0 => {
                        self.0.borrow_mut().sent(n);
                        pending = g.advance(n);
                    }
                    Ok(_) => return self.finish(),
                    Err(e) => {
                        tracing::debug!(error = %e, "write failed; peer gone");
                        return self.finish();
                    }
                }
            }
            if last {
                // The close is on the wire: half-close, so the peer reads
                // end-of-stream after it (RFC 6455 §7.1.1). The read side
                // stays open for the session to drain (`wire::closing`).
                let _ = io.shutdown().await;
                return self.finish();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(g: &Gather) -> Vec<u8> {
        let mut out = Vec::new();
        for v in &g.iovecs {
            // SAFETY: each iovec points at `iov_len` live bytes of a `Bytes`
            // in `g.frames` (what this test checks against).
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
            });
        }
        out
    }

    /// What a frame pushed to an idle connection reads lies between the
    /// two lines `lines` names, at most 80 bytes apart: reordering
    /// `Inner`'s fields, or a new field among the hot ones, fails here
    /// instead of quietly adding a cache miss per frame in fan-in.
    #[test]
    fn the_hot_fields_lie_within_the_hinted_lines() {
        let outbox = Outbox::new(1 << 20);
        let [flag, last] = outbox.lines().map(|p| p as usize);
        let g = outbox.0.borrow();
        let hot = [
            (
                std::ptr::from_ref(&g.state).cast::<()>(),
                std::mem::size_of::<State>(),
            ),
            (std::ptr::from_ref(&g.mid_message).cast(), 1),
            (
                std::ptr::from_ref(&g.fd).cast(),
                std::mem::size_of_val(&g.fd),
            ),
            (std::ptr::from_ref(&g.queued).cast(), 8),
            (std::ptr::from_ref(&g.cap).cast(), 8),
            (
                std::ptr::from_ref(&g.parked).cast(),
                std::mem::size_of_val(&g.parked),
            ),
            (
                std::ptr::from_ref(&g.queue).cast(),
                std::mem::size_of_val(&g.queue),
            ),
        ];
        for (i, (at, len)) in hot.into_iter().enumerate() {
            let at = at as usize;
            assert!(
                at > flag && at + len - 1 <= last,
                "hot field {i} outside the hinted span"
            );
        }
        assert!(last - flag < 80, "hot span is {} bytes", last - flag + 1);
        // Cold fields come after.
        assert!(std::ptr::from_ref(&g.waiters) as usize > last);
        assert!(std::ptr::from_ref(&g.stall) as usize > last);
    }

    /// Issue 13, defect 6: nothing but continuations and control frames
    /// may follow a frame with FIN=0.
    #[test]
    fn no_new_message_starts_inside_an_unfinished_one() {
        use crate::wire::frame::{encode_server_frame, encode_server_header, Opcode};
        let frame = |fin: bool, op: Opcode, payload: &[u8]| {
            let mut h = [0u8; 14];
            let n = encode_server_header(fin, op, payload.len() as u64, &mut h);
            Bytes::from([&h[..n], payload].concat())
        };
        let outbox = Outbox::new(1 << 20);
        let queued = |o: &Outbox| o.0.borrow().queue.len();
        outbox.push(frame(false, Opcode::Binary, b"part")).unwrap();
        assert!(outbox.mid_message());
        // The gateway's own JSON error would interleave: dropped.
        outbox
            .push(encode_server_frame(Opcode::Text, br#"{"type":"error"}"#).into())
            .unwrap();
        outbox.push(frame(true, Opcode::Ping, b"")).unwrap();
        assert_eq!(queued(&outbox), 2, "the ping joins, the text does not");
        outbox
            .push(frame(true, Opcode::Continuation, b"end"))
            .unwrap();
        assert!(!outbox.mid_message());
        outbox
            .push(encode_server_frame(Opcode::Text, b"{}").into())
            .unwrap();
        assert_eq!(queued(&outbox), 4);
        // The close always goes out.
        outbox.push(frame(false, Opcode::Binary, b"again")).unwrap();
        outbox.close(frame(true, Opcode::Close, &[0x11, 0x97]));
        assert_eq!(queued(&outbox), 6);
    }

    /// With an egress, every frame (the upgrade's answer first) reaches the
    /// front in order through the channel, none through the socket; the
    /// close ends the channel, and the socket half is shut down after it.
    #[test]
    fn an_egress_gets_every_frame_in_order_and_ends_after_the_close() {
        use crate::wire::frame::{encode_server_frame, Opcode};
        use crate::wire::test_io::{runtime, socket_pair, within_hung};
        use monoio::io::{AsyncReadRent, Splitable};
        within_hung(|| {
            runtime().block_on(async {
                let (gw, mut far) = socket_pair().await;
                let (_rd, wr) = gw.into_split();
                let (egress, ingress) = crate::wire::egress::channel();
                let outbox = Outbox::new(64 << 20);
                let answer = Bytes::from_static(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
                outbox.attach_egress(wr, egress, Duration::from_secs(5), answer.clone());
                let mut expect = vec![answer];
                for i in 0..40u8 {
                    let f = encode_server_frame(Opcode::Binary, &[i; 3000]);
                    expect.push(Bytes::from(f.clone()));
                    outbox.push(f.into()).unwrap();
                }
                let close = Bytes::from(encode_server_frame(Opcode::Close, &[0x03, 0xE8]));
                expect.push(close.clone());
                outbox.close(close);
                let mut got = Vec::new();
                while let Ok(batch) = ingress.recv_async().await {
                    got.extend(batch);
                }
                assert_eq!(got, expect);
                outbox.finished().await;
                let (r, _) = far.read(Vec::with_capacity(64)).await;
                assert_eq!(r.unwrap(), 0, "nothing on the socket, then its end");
            })
        });
    }

    /// A front that stops taking frames is dropped after the stall, as a
    /// socket that stops draining is: the outbox does not wait forever.
    #[test]
    fn a_front_that_takes_nothing_is_dropped_after_the_stall() {
        use crate::wire::frame::{encode_server_frame, Opcode};
        use crate::wire::test_io::{runtime, socket_pair, within_hung};
        use monoio::io::Splitable;
        within_hung(|| {
            runtime().block_on(async {
                let (gw, _far) = socket_pair().await;
                let (_rd, wr) = gw.into_split();
                let (egress, ingress) = crate::wire::egress::channel();
                let outbox = Outbox::new(64 << 20);
                outbox.attach_egress(wr, egress, Duration::from_millis(100), Bytes::new());
                for _ in 0..64 {
                    let f = encode_server_frame(Opcode::Binary, &[7; 1 << 16]);
                    if outbox.push(f.into()).is_err() {
                        break;
                    }
                    monoio::time::sleep(Duration::from_millis(5)).await;
                }
                outbox.finished().await;
                assert!(!outbox.is_open());
                drop(ingress);
            })
        });
    }

    /// Frames that arrived together go out together: in order, whole, in
    /// one send when they fit one (no writer task), and through the writer
    /// when they do not (more pieces than one send takes).
    #[test]
    fn frames_pushed_together_arrive_in_order() {
        use crate::wire::test_io::{runtime, socket_pair};
        use monoio::io::{AsyncReadRent, Splitable};
        let frame = |i: u8, len: usize| {
            let mut f = vec![i; len];
            f[0] = 0x82;
            Bytes::from(f)
        };
        runtime().block_on(async {
            let (gw, mut far) = socket_pair().await;
            let (_rd, wr) = gw.into_split();
            let outbox = Outbox::new(64 << 20);
            outbox.attach(wr, Duration::from_secs(5));
            let mut expect = Vec::new();
            let mut batch = Vec::new();
            for i in 0..GATHER_FRAMES as u8 {
                let mut f = frame(i, 300);
                expect.extend_from_slice(&f);
                // One frame in two pieces, as a frame split across reads.
                let tail = (i == 2).then(|| f.split_off(100));
                batch.push(Wire { head: f, tail });
            }
            outbox.push_wires(&mut batch).unwrap();
            assert!(batch.is_empty());
            assert_eq!(outbox.queued_bytes(), 0, "one direct send took them all");
            assert!(outbox.0.borrow().parked.is_some(), "no writer task ran");
            // Twenty frames of two pieces each: more than one send takes.
            for i in 0..20u8 {
                let mut f = frame(100 + i, 2000);
                expect.extend_from_slice(&f);
                let tail = Some(f.split_off(700));
                batch.push(Wire { head: f, tail });
            }
            outbox.push_wires(&mut batch).unwrap();
            let mut got = Vec::with_capacity(expect.len());
            while got.len() < expect.len() {
                let (r, buf) = far.read(Vec::with_capacity(1 << 16)).await;
                assert!(r.unwrap() > 0);
                got.extend_from_slice(&buf);
            }
            assert!(got == expect, "bytes arrive whole and in order");
        });
    }

    /// Small frames to an idle peer go out directly (no writer task); once
    /// the socket's buffer is full the rest waits for the writer task and
    /// everything arrives, in order, byte for byte.
    #[test]
    fn direct_writes_hand_over_to_the_writer_when_the_socket_is_full() {
        use crate::wire::test_io::{runtime, socket_pair};
        use monoio::io::{AsyncReadRent, Splitable};
        runtime().block_on(async {
            let (gw, mut far) = socket_pair().await;
            let (_rd, wr) = gw.into_split();
            let outbox = Outbox::new(64 << 20);
            outbox.attach(wr, Duration::from_secs(5));
            // Direct: written at once, the socket is parked again.
            outbox.push(Bytes::from_static(b"first")).unwrap();
            assert_eq!(outbox.queued_bytes(), 0);
            assert!(outbox.0.borrow().parked.is_some(), "no writer task ran");
            assert_eq!(
                outbox.0.borrow().queue.capacity(),
                0,
                "a frame sent whole never touched the queue"
            );
            // Far more than a socket buffer holds, in pieces of 1-16 KiB;
            // every third is a forwarded frame in two pieces (head and
            // tail), so the socket also fills up in the middle of one.
            let mut expect = b"first".to_vec();
            for i in 0..2000u32 {
                let len = 1024 + (i as usize * 37) % 15_000;
                // Each piece starts like a whole binary frame (FIN, 0x2),
                // which is all the outbox looks at.
                let mut piece = vec![(i % 251) as u8; len];
                piece[0] = 0x82;
                let mut piece = Bytes::from(piece);
                expect.extend_from_slice(&piece);
                if i % 3 == 0 {
                    let head = piece.split_to(len / 3);
                    outbox
                        .push_wire(Wire {
                            head,
                            tail: Some(piece),
                        })
                        .unwrap();
                } else {
                    outbox.push(piece).unwrap();
                }
            }
            assert!(outbox.queued_bytes() > 0, "the socket filled up");
            let mut got = Vec::with_capacity(expect.len());
            while got.len() < expect.len() {
                let (r, buf) = far.read(Vec::with_capacity(1 << 16)).await;
                assert!(r.unwrap() > 0);
                got.extend_from_slice(&buf);
            }
            assert_eq!(got.len(), expect.len());
            assert!(got == expect, "bytes arrive in order");
            assert_eq!(outbox.queued_bytes(), 0);
        });
    }

    #[test]
    fn gather_iovecs_cover_exactly_the_frames() {
        let frames = vec![
            Bytes::from_static(b"abc"),
            Bytes::from(vec![1u8; 10]),
            Bytes::new(),
            Bytes::from_static(b"z"),
        ];
        let g = Gather::new(frames.clone());
        assert_eq!(g.iovecs.len(), 4);
        assert_eq!(flat(&g), frames.concat());
    }

    #[test]
    fn gather_advance_keeps_the_unwritten_tail() {
        let frames = vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"defgh"),
            Bytes::from_static(b"ij"),
        ];
        let all = frames.concat();
        for n in 0..=all.len() {
            let g = Gather::new(frames.clone()).advance(n);
            assert_eq!(flat(&g), all[n..].to_vec(), "after {n} bytes");
            assert_eq!(g.is_empty(), n == all.len());
        }
    }
}
