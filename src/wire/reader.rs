//! Reads WebSocket frames off a socket into owned buffers and hands each one
//! out already in server → client wire format.
//!
//! This is where "forward, don't re-frame" happens. Bytes land once, from
//! the kernel, in a `BytesMut`; a frame is split off that buffer without a
//! copy. A masked client frame is unmasked in place and its header rewritten
//! in place — the unmasked header is exactly 4 bytes shorter, so it ends
//! where the mask key ended and the payload never moves. A fast-path frame
//! (already unmasked) is handed out untouched. The resulting `Bytes` can be
//! written to another socket, or shared by many viewers, as it is.
//!
//! Reads can be interrupted from another task on the same shard (keepalive
//! timer, a browser that went away, a shard taking an idle connection)
//! through [`Interrupter`]. On the epoll driver a waiting read is only
//! readiness and a waker, so the interrupt is a flag and a wake; on
//! io_uring the read is cancelled through the ring's own cancellation.
//! Either way no byte already received is ever dropped.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{CancelHandle, CancelableAsyncReadRent, Canceller, RecvReady};
use thiserror::Error;

use crate::wire::acks::AckPacer;
use crate::wire::frame::{
    encode_server_header, parse_header, server_header_len, Fragmentation, FrameError, FrameHeader,
    MaskRule, Opcode,
};
use crate::wire::read_pool;

/// Smallest free space worth a read syscall, for large chunks; small
/// chunks (JSON-only browsers) use a quarter of theirs.
const MIN_READ: usize = 4 * 1024;
/// Smallest chunk: an authenticated JSON-only connection reads in pieces
/// this small (an action is a few dozen bytes; a larger message takes a
/// buffer sized for it), so an idle session holds 128 bytes of buffer.
pub const MIN_CHUNK: usize = 128;
/// Where a data connection's chunk starts before it has shown it streams:
/// 200 slow streams then hold 200 × 16 KiB of read buffer, not 200 × the
/// configured maximum.
const START_CHUNK: usize = 16 * 1024;
/// Reads this far in a row that use under an eighth of what was offered
/// halve the chunk again.
const SHRINK_AFTER: u32 = 32;

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("peer closed the connection")]
    Eof,
    #[error("read interrupted")]
    Interrupted,
    #[error("protocol violation: {0}")]
    Protocol(#[from] FrameError),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// One frame, in server → client wire format.
#[derive(Debug)]
pub struct InFrame {
    pub header: FrameHeader,
    /// Opcode of the message this frame belongs to (resolves continuations).
    pub message: Opcode,
    /// Header (unmasked form) + payload, ready to write to a client.
    pub wire: BytesMut,
    /// Where the payload starts inside `wire`.
    pub payload_at: usize,
    /// The rest of the payload when a binary frame straddled two read
    /// buffers: it stays in two pieces rather than being copied together.
    pub tail: Option<BytesMut>,
}

/// A frame ready for the wire: one piece, or two for a frame that
/// straddled read buffers. Cloning shares the bytes.
#[derive(Debug, Clone)]
pub struct Wire {
    pub head: Bytes,
    pub tail: Option<Bytes>,
}

impl Wire {
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.as_ref().map_or(0, Bytes::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Bytes> for Wire {
    fn from(head: Bytes) -> Self {
        Wire { head, tail: None }
    }
}

impl InFrame {
    /// The payload. Only binary data frames are ever split in two, and
    /// callers read the payload only of text and control frames.
    pub fn payload(&self) -> &[u8] {
        debug_assert!(self.tail.is_none(), "payload() of a split frame");
        &self.wire[self.payload_at..]
    }

    pub fn payload_len(&self) -> u64 {
        self.header.payload_len
    }

    /// The whole payload, a split frame's tail included, for tests that
    /// check what came out.
    #[cfg(test)]
    fn whole_payload(&self) -> Vec<u8> {
        let mut all = self.wire[self.payload_at..].to_vec();
        if let Some(t) = &self.tail {
            all.extend_from_slice(t);
        }
        all
    }
}

/// Interrupts the current (or next) read of one [`FrameReader`].
///
/// On the epoll driver a waiting read holds no buffer and no byte (it is
/// readiness plus a waker), so an interrupt is a flag and a wake: the read
/// sees the flag when its task runs and returns. On io_uring a submitted
/// receive may already hold bytes, so it is cancelled through the ring and
/// completes with them or with `ECANCELED`.
#[derive(Clone)]
pub struct Interrupter(Rc<Interrupt>);

struct Interrupt {
    requested: Cell<bool>,
    /// The peer sent something since the keepalive sweeper last looked
    /// (`wire::keepalive`). Kept here, beside `requested`, because the
    /// reader loads this line for every frame anyway: a flag in the
    /// liveness watch's own allocation cost a second cold line per frame
    /// of every slow stream (fan-in; docs/benchmarks.md, seventh sitting).
    progress: Cell<bool>,
    /// The io_uring path's cancel handle.
    canceller: RefCell<Option<Canceller>>,
    /// The task of a read waiting on the epoll path.
    reader: Cell<Option<Waker>>,
}

impl Interrupter {
    /// A fresh one: no interrupt requested, a canceller ready.
    pub(crate) fn new() -> Self {
        Interrupter(Rc::new(Interrupt {
            requested: Cell::new(false),
            progress: Cell::new(false),
            canceller: RefCell::new(Some(Canceller::new())),
            reader: Cell::new(None),
        }))
    }

    pub fn interrupt(&self) {
        let i = &*self.0;
        i.requested.set(true);
        let mut slot = i.canceller.borrow_mut();
        if let Some(c) = slot.take() {
            *slot = Some(c.cancel());
        }
        drop(slot);
        if let Some(w) = i.reader.take() {
            w.wake();
        }
    }

    /// Records that the peer sent something (see `Interrupt::progress`).
    pub(crate) fn mark_progress(&self) {
        self.0.progress.set(true);
    }

    /// Whether the peer sent something since the last call (and clears it).
    pub(crate) fn take_progress(&self) -> bool {
        self.0.progress.replace(false)
    }

    /// Whether `other` interrupts the same reader.
    pub(crate) fn same_as(&self, other: &Interrupter) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    /// Takes a pending interrupt (it interrupts one read).
    fn take_request(&self) -> bool {
        self.0.requested.replace(false)
    }

    /// Whether an interrupt is pending, leaving it pending.
    fn is_requested(&self) -> bool {
        self.0.requested.get()
    }

    /// The io_uring path's handle for one cancelable read.
    fn cancel_handle(&self) -> Option<CancelHandle> {
        self.0.canceller.borrow().as_ref().map(Canceller::handle)
    }

    /// Remembers the task of a read about to wait on the epoll path.
    fn park(&self, waker: &Waker) {
        let slot = &self.0.reader;
        match slot.take() {
            Some(w) if w.will_wake(waker) => slot.set(Some(w)),
            _ => slot.set(Some(waker.clone())),
        }
    }
}

/// A socket a [`FrameReader`] can read: in place by readiness on the epoll
/// driver, through cancelable operations on io_uring.
pub trait Source: CancelableAsyncReadRent + RecvReady {}

impl<T: CancelableAsyncReadRent + RecvReady> Source for T {}

pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    rule: MaskRule,
    max_payload: u64,
    frag: Fragmentation,
    chunk: Chunk,
    interrupter: Interrupter,
    /// A binary frame whose header and first bytes are in `.1`, waiting for
    /// the rest of its payload in `buf`.
    split: Option<(FrameHeader, Opcode, BytesMut)>,
    /// Keeps a streaming peer's socket in delayed-ACK mode.
    acks: Option<AckPacer>,
    /// What the task that forwards this reader's frames touches besides
    /// the reader (its session, the outbox it writes to): loaded ahead
    /// when the socket's event arrives (see [`FrameReader::hint_wakeups`]).
    hints: [usize; 4],
}

impl<R: Source> FrameReader<R> {
    /// `buf` holds bytes already read from this socket (after the HTTP head).
    pub fn new(io: R, buf: BytesMut, rule: MaskRule, max_payload: usize) -> Self {
        Self {
            io,
            buf,
            rule,
            max_payload: max_payload as u64,
            frag: Fragmentation::default(),
            chunk: Chunk::fixed(64 * 1024),
            interrupter: Interrupter::new(),
            split: None,
            acks: None,
            hints: [0; 4],
        }
    }

    /// How much the reader asks the kernel for at a time. Small for
    /// connections that carry only JSON (less memory per idle session).
    pub fn with_chunk(mut self, chunk: usize) -> Self {
        self.set_chunk(chunk);
        self
    }

    /// Sets the largest chunk; reading starts at `START_CHUNK` (or the
    /// maximum, if smaller) and adapts to the stream.
    pub fn set_chunk(&mut self, chunk: usize) {
        self.chunk = Chunk::adaptive(chunk);
    }

    /// Raises the frame size limit (a relay session carries data frames).
    pub fn set_max_payload(&mut self, max: usize) {
        self.max_payload = max as u64;
    }

    /// Gives back the read buffer's memory when it holds nothing, so an
    /// idle connection keeps only what its next read needs (one chunk,
    /// taken when that read starts). The buffer a request head was read
    /// into, or one grown for a large message, is otherwise kept for the
    /// connection's life.
    pub fn release_idle_buffer(&mut self) {
        if self.buf.is_empty() && self.split.is_none() {
            self.buf = BytesMut::new();
        }
    }

    pub fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    /// The peer sent something its liveness watch counts.
    pub(crate) fn mark_progress(&self) {
        self.interrupter.mark_progress();
    }

    pub fn rule(&self) -> MaskRule {
        self.rule
    }

    /// The socket and any bytes read but not yet consumed. Only called
    /// between frames (a connection is handed over when idle).
    pub fn into_parts(self) -> (R, BytesMut) {
        debug_assert!(self.split.is_none());
        (self.io, self.buf)
    }

    pub fn io(&self) -> &R {
        &self.io
    }

    /// The peer streams towards the gateway from now on: acknowledge its
    /// frames in pairs (see `wire::acks`). `fd` is the socket `io` reads.
    pub fn pace_acks(&mut self, fd: RawFd) {
        self.acks = Some(AckPacer::new(fd));
    }

    /// Names what the reader's task touches for each frame besides the
    /// reader itself (its session, the outbox it writes to): the driver
    /// starts loading those lines, with the task and the reader, as soon as
    /// the socket's readiness event arrives, so their cache misses overlap
    /// instead of following one another (a slow stream's frame finds every
    /// line of its state cold: docs/benchmarks.md, ninth sitting). Only a
    /// hint: a stale address costs one wasted load, nothing else.
    pub fn hint_wakeups(&mut self, lines: [*const (); 4]) {
        self.hints = lines.map(|p| p as usize);
    }

    /// The stream these hints named has ended: a reader that outlives it
    /// (a connector worker back in its pool, a browser's reader after a
    /// relay) stops asking the driver to load its freed lines.
    pub fn forget_hints(&mut self) {
        self.hints = [0; 4];
    }

    pub fn io_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// Whether [`next`](Self::next) would return a whole, single-frame
    /// binary message at once, without reading: it is buffered in full, no
    /// fragmented message is open and no interrupt is pending. A forwarder
    /// holds a frame back only while this is true, so that frames that
    /// arrived together (a backlog after a stall) leave together, in one
    /// send, where one send each made the last of twenty wait for the
    /// nineteen before it (docs/benchmarks.md, twelfth sitting).
    pub fn next_is_whole_binary(&self) -> bool {
        // The buffer first: it is empty after nearly every frame of a
        // steady stream, and the other checks would load more lines.
        let whole_binary = matches!(
            parse_header(&self.buf, self.rule, self.max_payload),
            Ok(Some(h)) if h.fin
                && h.opcode == Opcode::Binary
                && self.buf.len() as u64 >= h.frame_len()
        );
        whole_binary
            && self.split.is_none()
            && !self.frag.is_open()
            && !self.interrupter.is_requested()
    }

    /// Reads the next frame. Fragmentation is checked (RFC 6455 §5.4);
    /// UTF-8 of text is the caller's business, since only the caller knows
    /// whether it reassembles the message.
    pub async fn next(&mut self) -> Result<InFrame, ReadError> {
        loop {
            if self.interrupter.take_request() {
                return Err(ReadError::Interrupted);
            }
            if let Some((h, _, head)) = &self.split {
                let rest = h.frame_len() as usize - head.len();
                if self.buf.len() >= rest {
                    let (h, message, head) = self.split.take().expect("checked");
                    let tail = self.buf.split_to(rest);
                    return Ok(self.join_split(h, message, head, tail));
                }
                self.fill().await?;
                continue;
            }
            if let Some(h) = parse_header(&self.buf, self.rule, self.max_payload)? {
                let total = h.frame_len() as usize;
                if self.buf.len() >= total {
                    let message = self.frag.on_frame(&h)?;
                    return Ok(self.split_frame(h, message, total));
                }
                let need = total - self.buf.len();
                if self.buf.capacity() - self.buf.len() < need {
                    let message = self.frag.on_frame(&h)?;
                    if message == Opcode::Binary {
                        // Keep what we have as the frame's first piece and
                        // read the rest into a fresh buffer: nothing moves.
                        let head = self.buf.split_to(self.buf.len());
                        self.buf.reserve(need.max(self.chunk.get()));
                        self.split = Some((h, message, head));
                        continue;
                    }
                    // Text and control frames are small: make room (the
                    // part already received moves, once).
                    self.frag.undo(&h, message);
                    self.buf.reserve(need.max(self.chunk.get()));
                }
            } else {
                // Our buffer went back to the shard's pool while we waited,
                // and the wait was given up.
                self.take_pooled_buffer();
                if self.buf.is_empty() && self.buf.capacity() < self.chunk.get() {
                    // Between frames, with every earlier frame already
                    // sent and released: read the next one where the first
                    // was (no allocation, nothing to move). Otherwise each
                    // read lands a frame further into the chunk, and 200
                    // slow streams cycle 3 MiB of buffers through the
                    // cache instead of 0.8 (fan-in; docs/benchmarks.md).
                    // While a frame is still queued this does nothing, and
                    // the check below finds room as before.
                    let _reused = self.buf.try_reclaim(self.chunk.get());
                }
                if self.buf.capacity() - self.buf.len() < MIN_READ.min(self.chunk.get() / 4) {
                    self.buf.reserve(self.chunk.get());
                }
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), ReadError> {
        debug_assert!(
            self.buf.capacity() > self.buf.len(),
            "a read into no room would look like EOF"
        );
        let res = match poll_fn(|cx| self.poll_recv(cx)).await {
            Some(res) => res,
            // Boxed: the ring's operation future is ten times the rest of
            // this one, which every reading task carries in its cell
            // whichever driver runs (docs/benchmarks.md, eleventh sitting).
            None => Box::pin(self.cancelable_recv()).await,
        };
        match res {
            Ok(0) => Err(ReadError::Eof),
            Ok(n) => {
                // What the read was offered, measured after it: the wait
                // may have swapped the buffer (`poll_recv`).
                let offered = self.buf.capacity() - self.buf.len() + n;
                self.chunk.after_read(n, offered);
                if let Some(acks) = &mut self.acks {
                    acks.after_read();
                }
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => Err(ReadError::Interrupted),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(ReadError::Eof),
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// The epoll driver's read: one `recv` into the buffer's free room when
    /// the socket is readable, with no operation future or cancel handle
    /// in between (each cost a cold cache line per frame in `fan-in`:
    /// docs/benchmarks.md, sixth sitting). `Ready(None)` on io_uring.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<usize>>> {
        if self.interrupter.take_request() {
            return Poll::Ready(Some(Err(io::Error::from_raw_os_error(libc::ECANCELED))));
        }
        // Woken after giving the buffer back (below).
        self.take_pooled_buffer();
        let len = self.buf.len();
        let hints = [
            self as *const Self as usize,
            Rc::as_ptr(&self.interrupter.0) as usize,
            self.hints[0],
            self.hints[1],
            self.hints[2],
            self.hints[3],
        ];
        match self
            .io
            .poll_recv_ready(cx, self.buf.spare_capacity_mut(), &hints)
        {
            None => Poll::Ready(None),
            Some(Poll::Pending) => {
                self.interrupter.park(cx.waker());
                // Nothing to read and nothing buffered: the buffer waits in
                // the shard's pool instead of going cold here, if it has a
                // chunk's room (its frames sent, so it is whole again).
                if self.buf.is_empty()
                    && self.split.is_none()
                    && self.buf.try_reclaim(self.chunk.get())
                {
                    read_pool::give(std::mem::take(&mut self.buf));
                }
                Poll::Pending
            }
            Some(Poll::Ready(Ok(n))) => {
                // SAFETY: `recv` initialised the first `n` bytes of the
                // spare capacity it was given (it returns how many it
                // wrote, at most what it was offered), so the first
                // `len + n` bytes of the buffer are initialised. Covered by
                // every reader test (they run on the epoll driver).
                unsafe { self.buf.set_len(len + n) };
                Poll::Ready(Some(Ok(n)))
            }
            Some(Poll::Ready(Err(e))) => Poll::Ready(Some(Err(e))),
        }
    }

    /// A reader whose buffer went back to the shard's pool takes the one
    /// given back last, the warmest, whoever used it (a chunk of its own
    /// when none fits).
    #[inline]
    fn take_pooled_buffer(&mut self) {
        if self.buf.capacity() == 0 {
            let chunk = self.chunk.get();
            self.buf = read_pool::take(chunk).unwrap_or_else(|| BytesMut::with_capacity(chunk));
        }
    }

    /// The io_uring driver's read: an owned buffer lent to the ring, and a
    /// cancel handle so an interrupt gets the buffer (and any bytes the
    /// kernel already put in it) back.
    async fn cancelable_recv(&mut self) -> io::Result<usize> {
        let Some(handle) = self.interrupter.cancel_handle() else {
            return Err(io::Error::from_raw_os_error(libc::ECANCELED));
        };
        let (res, buf) = self.io.cancelable_read(spare(&mut self.buf), handle).await;
        self.buf = buf.into_inner();
        if res
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::ECANCELED))
        {
            // The cancellation answered the interrupt: it is used up.
            self.interrupter.take_request();
        }
        res
    }

    fn split_frame(&mut self, h: FrameHeader, message: Opcode, total: usize) -> InFrame {
        let wire = self.buf.split_to(total);
        to_server_format(h, message, wire, None)
    }

    fn join_split(
        &mut self,
        h: FrameHeader,
        message: Opcode,
        head: BytesMut,
        mut tail: BytesMut,
    ) -> InFrame {
        if let Some(key) = h.mask {
            let first = head.len() - h.header_len;
            crate::wire::frame::apply_mask(&mut tail, key, first % 4);
        }
        to_server_format(h, message, head, Some(tail))
    }
}

/// Unmasks the head's payload bytes in place and writes the unmasked
/// header over the end of the masked one, so the payload never moves.
fn to_server_format(
    h: FrameHeader,
    message: Opcode,
    mut wire: BytesMut,
    tail: Option<BytesMut>,
) -> InFrame {
    let Some(key) = h.mask else {
        return InFrame {
            header: h,
            message,
            wire,
            payload_at: h.header_len,
            tail,
        };
    };
    crate::wire::frame::apply_mask(&mut wire[h.header_len..], key, 0);
    let n = server_header_len(h.payload_len);
    let start = h.header_len - n;
    encode_server_header(
        h.fin,
        h.opcode,
        h.payload_len,
        &mut wire[start..h.header_len],
    );
    let _ = wire.split_to(start);
    InFrame {
        header: h,
        message,
        wire,
        payload_at: n,
        tail,
    }
}

/// The free capacity after the bytes already held: monoio reads into an
/// owned buffer from its start, so the read gets a view that begins at the
/// end of the data (its length grows by what the kernel wrote).
pub fn spare(buf: &mut BytesMut) -> SliceMut<BytesMut> {
    let buf = std::mem::take(buf);
    let (len, cap) = (buf.len(), buf.capacity());
    buf.slice_mut(len..cap)
}

/// Turns a frame into the shareable bytes that go on the wire.
pub fn freeze(frame: InFrame) -> Wire {
    Wire {
        head: frame.wire.freeze(),
        tail: frame.tail.map(BytesMut::freeze),
    }
}

/// Reassembles a text message from its frames, bounded, and checks UTF-8.
/// Used for the JSON control messages; data frames are never reassembled.
pub struct TextAssembler {
    buf: Vec<u8>,
    max: usize,
}

impl TextAssembler {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// Adds a frame of a text message; returns the text once it is whole.
    pub fn push(&mut self, f: &InFrame) -> Result<Option<String>, FrameError> {
        let size = self.buf.len() + f.payload().len();
        if size > self.max {
            self.buf = Vec::new();
            return Err(FrameError::TextTooLarge {
                size: size as u64,
                max: self.max as u64,
            });
        }
        if !f.header.fin {
            self.buf.extend_from_slice(f.payload());
            return Ok(None);
        }
        let bytes = if self.buf.is_empty() {
            f.payload().to_vec()
        } else {
            self.buf.extend_from_slice(f.payload());
            std::mem::take(&mut self.buf)
        };
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| FrameError::InvalidUtf8)
    }
}

/// Bytes asked of the kernel per read: doubles while reads fill what was
/// offered (a bulk stream), up to the configured maximum; halves again when
/// reads stay small, so slow streams keep small buffers.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    cur: usize,
    max: usize,
    small_reads: u32,
}

impl Chunk {
    fn fixed(size: usize) -> Self {
        Self {
            cur: size,
            max: size,
            small_reads: 0,
        }
    }

    fn adaptive(max: usize) -> Self {
        let max = max.max(MIN_CHUNK);
        Self {
            cur: max.min(START_CHUNK),
            max,
            small_reads: 0,
        }
    }

    fn get(&self) -> usize {
        self.cur
    }

    fn after_read(&mut self, n: usize, offered: usize) {
        let floor = self.max.min(START_CHUNK);
        if n == offered && self.cur < self.max {
            self.cur = (self.cur * 2).min(self.max);
            self.small_reads = 0;
        } else if n < self.cur / 8 && self.cur > floor {
            self.small_reads += 1;
            if self.small_reads >= SHRINK_AFTER {
                self.cur = (self.cur / 2).max(floor);
                self.small_reads = 0;
            }
        } else {
            self.small_reads = 0;
        }
    }
}

#[cfg(test)]
mod buffer_tests {
    use super::*;
    use crate::wire::frame::encode_client_frame;
    use crate::wire::test_io::{runtime, socket_pair};
    use monoio::io::AsyncWriteRentExt;
    use std::future::Future;

    /// A forwarder holds a frame back only while the next one is a whole
    /// binary message already buffered, which `next` then returns without
    /// a read; an interrupt, a text message, a fragment or a frame not yet
    /// whole all say no.
    #[test]
    fn the_next_whole_binary_frame_is_seen_without_a_read() {
        runtime().block_on(async {
            let (gw, _far) = socket_pair().await;
            let m = [1, 2, 3, 4];
            let mut bytes = encode_client_frame(Opcode::Binary, true, b"one", m);
            bytes.extend(encode_client_frame(Opcode::Binary, true, b"two", m));
            bytes.extend(encode_client_frame(Opcode::Text, true, b"{}", m));
            bytes.extend(encode_client_frame(Opcode::Binary, false, b"part", m));
            bytes.extend(encode_client_frame(Opcode::Continuation, true, b"end", m));
            let last = encode_client_frame(Opcode::Binary, true, b"three", m);
            bytes.extend_from_slice(&last[..4]);
            let mut reader =
                FrameReader::new(gw, BytesMut::from(&bytes[..]), MaskRule::Required, 1 << 20);
            assert!(reader.next_is_whole_binary());
            assert_eq!(reader.next().await.unwrap().payload(), b"one");
            assert!(reader.next_is_whole_binary(), "two is here");
            reader.interrupter().interrupt();
            assert!(!reader.next_is_whole_binary(), "the interrupt comes first");
            assert!(matches!(reader.next().await, Err(ReadError::Interrupted)));
            assert!(reader.next_is_whole_binary());
            assert_eq!(reader.next().await.unwrap().payload(), b"two");
            assert!(!reader.next_is_whole_binary(), "text is not forwarded");
            reader.next().await.unwrap();
            assert!(!reader.next_is_whole_binary(), "a message's first fragment");
            reader.next().await.unwrap();
            assert!(!reader.next_is_whole_binary(), "its continuation");
            assert_eq!(reader.next().await.unwrap().payload(), b"end");
            assert!(!reader.next_is_whole_binary(), "three is not whole yet");
        });
    }

    #[test]
    fn an_idle_reader_gives_its_buffer_back_but_keeps_unread_bytes() {
        runtime().block_on(async {
            let (gw, mut far) = socket_pair().await;
            // A request head's buffer: large, shared with nothing now.
            let head = BytesMut::with_capacity(1024);
            let mut reader =
                FrameReader::new(gw, head, MaskRule::Required, 1 << 20).with_chunk(512);
            let mut two = encode_client_frame(Opcode::Text, true, b"one", [1, 2, 3, 4]);
            two.extend(encode_client_frame(
                Opcode::Text,
                true,
                b"two",
                [5, 6, 7, 8],
            ));
            far.write_all(two).await.0.unwrap();
            let f = reader.next().await.unwrap();
            assert_eq!(f.payload(), b"one");
            drop(f);
            // The second frame is buffered: nothing may be dropped.
            reader.release_idle_buffer();
            assert_eq!(reader.next().await.unwrap().payload(), b"two");
            reader.release_idle_buffer();
            assert_eq!(reader.buf.capacity(), 0, "an idle reader holds no buffer");
            // And it reads on, into a chunk taken for that read.
            far.write_all(encode_client_frame(
                Opcode::Text,
                true,
                b"three",
                [9, 9, 9, 9],
            ))
            .await
            .0
            .unwrap();
            assert_eq!(reader.next().await.unwrap().payload(), b"three");
            assert!(reader.buf.capacity() <= 512, "{}", reader.buf.capacity());
        });
    }

    /// A frame's payload address, to see where reads land.
    fn at(f: &InFrame) -> usize {
        f.payload().as_ptr() as usize
    }

    /// A streaming reader (a connector's), and the far end of its socket.
    async fn streaming() -> (FrameReader<monoio::net::TcpStream>, monoio::net::TcpStream) {
        let (gw, far) = socket_pair().await;
        let reader = FrameReader::new(gw, BytesMut::new(), MaskRule::Required, 1 << 20)
            .with_chunk(64 * 1024);
        (reader, far)
    }

    /// Frame `i` of a slow stream: sent whole, then read.
    async fn frame(
        reader: &mut FrameReader<monoio::net::TcpStream>,
        far: &mut monoio::net::TcpStream,
        i: u8,
    ) -> InFrame {
        let bytes = encode_client_frame(Opcode::Binary, true, &[i; 3000], [7; 4]);
        far.write_all(bytes).await.0.unwrap();
        let f = reader.next().await.unwrap();
        assert_eq!(f.payload(), &[i; 3000][..]);
        f
    }

    #[test]
    fn a_slow_stream_reads_every_frame_into_the_same_place() {
        runtime().block_on(async {
            let (mut reader, mut far) = streaming().await;
            let mut first = None;
            for i in 0..40u8 {
                let f = frame(&mut reader, &mut far, i).await;
                // Released (sent) before the next frame arrives.
                let here = at(&f);
                drop(f);
                assert_eq!(*first.get_or_insert(here), here, "frame {i} moved");
            }
        });
    }

    /// Polls `next` once: whether it waits (a reader that waits with
    /// nothing buffered gives its buffer to the pool, if it can).
    async fn waits<F: Future>(mut next: std::pin::Pin<&mut F>) -> bool {
        poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx).is_pending())).await
    }

    /// Frame `i`, sent only after `reader` has found nothing to read and
    /// waits (so its buffer went back to the pool, if it could).
    async fn frame_after_a_wait(
        reader: &mut FrameReader<monoio::net::TcpStream>,
        far: &mut monoio::net::TcpStream,
        i: u8,
    ) -> InFrame {
        let mut next = std::pin::pin!(reader.next());
        assert!(waits(next.as_mut()).await, "nothing was sent yet");
        let bytes = encode_client_frame(Opcode::Binary, true, &[i; 3000], [7; 4]);
        far.write_all(bytes).await.0.unwrap();
        let f = next.await.unwrap();
        assert_eq!(f.payload(), &[i; 3000][..]);
        f
    }

    /// Readers waiting on their sockets hold no buffer: the one the last
    /// frame went through, still warm, serves whichever socket wakes next.
    /// Two streams in tasks of their own, as the gateway runs them, take
    /// turns; each frame is released (sent) before the next one arrives.
    #[test]
    fn waiting_readers_share_the_buffer_used_last() {
        runtime().block_on(async {
            while read_pool::take(0).is_some() {}
            let seen = Rc::new(RefCell::new(Vec::new()));
            let mut fars = Vec::new();
            for _ in 0..2 {
                let (mut reader, far) = streaming().await;
                fars.push(far);
                let seen = seen.clone();
                monoio::spawn(async move {
                    while let Ok(f) = reader.next().await {
                        seen.borrow_mut().push((f.payload()[0], at(&f)));
                    }
                });
            }
            for i in 0..20u8 {
                let bytes = encode_client_frame(Opcode::Binary, true, &[i; 3000], [7; 4]);
                fars[usize::from(i % 2)].write_all(bytes).await.0.unwrap();
                while seen.borrow().len() <= usize::from(i) {
                    monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
            let seen = seen.borrow();
            let first = seen[0].1;
            for (i, (id, here)) in seen.iter().enumerate() {
                assert_eq!(usize::from(*id), i, "frames out of order");
                assert_eq!(*here, first, "frame {i} read elsewhere");
            }
            assert_eq!(read_pool::kept(), 1, "one buffer served both streams");
        });
    }

    /// A frame still queued for a slow browser keeps its buffer out of the
    /// pool, and stays intact when its reader's session closes: the next
    /// reader, finding the pool empty, allocates and reads on.
    #[test]
    fn a_buffer_with_a_frame_in_flight_stays_out_of_the_pool() {
        runtime().block_on(async {
            while read_pool::take(0).is_some() {}
            let (mut a, mut far_a) = streaming().await;
            let held = freeze(frame_after_a_wait(&mut a, &mut far_a, 1).await);
            // `a` waits again with the frame still held: nothing to give.
            {
                let mut next = std::pin::pin!(a.next());
                assert!(waits(next.as_mut()).await);
                assert_eq!(read_pool::kept(), 0, "a buffer in flight was pooled");
            }
            // The session closes with its frame in flight.
            drop(a);
            drop(far_a);
            let (mut b, mut far_b) = streaming().await;
            let f = frame_after_a_wait(&mut b, &mut far_b, 2).await;
            assert!(held.head[held.head.len() - 3000..].iter().all(|x| *x == 1));
            drop(held);
            drop(f);
            // `b`'s buffer is whole again: its next wait gives it back, and
            // a wait given up takes it again.
            {
                let mut next = std::pin::pin!(b.next());
                assert!(waits(next.as_mut()).await);
                assert_eq!(read_pool::kept(), 1);
            }
            assert_eq!(b.buf.capacity(), 0, "a waiting reader holds no buffer");
            let f = frame(&mut b, &mut far_b, 3).await;
            assert_eq!(read_pool::kept(), 0);
            drop(f);
        });
    }

    #[test]
    fn a_frame_still_held_is_never_overwritten_by_the_next_read() {
        runtime().block_on(async {
            let (mut reader, mut far) = streaming().await;
            // Held frames, as an outbox behind a slow browser holds them.
            let (mut held, mut ids) = (Vec::new(), Vec::new());
            for i in 0..40u8 {
                let f = frame(&mut reader, &mut far, i).await;
                held.push(freeze(f));
                ids.push(i);
                if i % 10 == 9 {
                    // The oldest are sent and released; the rest stay queued.
                    held.drain(..5);
                    ids.drain(..5);
                }
            }
            assert_eq!(held.len(), 20);
            for (w, i) in held.iter().zip(ids) {
                let payload = &w.head[w.head.len() - 3000..];
                assert!(payload.iter().all(|x| *x == i), "frame {i} was overwritten");
            }
        });
    }
}

/// The gateway's monoio clears a socket's read readiness after a short read
/// on the epoll driver (crates/vendor/monoio/SLUICE.md), so the next read waits for
/// an event instead of trying first. These check that no wake-up is lost by
/// it. The test runtime is the epoll driver.
#[cfg(test)]
mod short_read_tests {
    use super::*;
    use crate::wire::frame::encode_client_frame;
    use crate::wire::test_io::{runtime, socket_pair};
    use monoio::io::AsyncWriteRentExt;
    use monoio::time::{sleep, timeout};
    use std::time::Duration;

    /// Far beyond any wait here: reaching it means a read never woke.
    const HUNG: Duration = Duration::from_secs(10);

    #[test]
    fn bytes_arriving_after_a_short_read_still_wake_the_reader() {
        runtime().block_on(async {
            let (gw, mut far) = socket_pair().await;
            let mut reader = FrameReader::new(gw, BytesMut::new(), MaskRule::Required, 1 << 20);
            let writer = monoio::spawn(async move {
                for i in 0..50u8 {
                    // Each frame in two writes, so the first read of it is
                    // short and the rest comes after its readiness cleared.
                    let mut frame =
                        encode_client_frame(Opcode::Binary, true, &[i; 200], [1, 2, 3, 4]);
                    let rest = frame.split_off(60);
                    far.write_all(frame).await.0.unwrap();
                    sleep(Duration::from_millis(2)).await;
                    far.write_all(rest).await.0.unwrap();
                }
                far
            });
            for i in 0..50u8 {
                let f = timeout(HUNG, reader.next())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("frame {i}: the rest arrived but the reader never woke")
                    })
                    .unwrap();
                assert_eq!(f.payload(), &[i; 200][..], "frame {i}");
            }
            drop(writer.await);
        });
    }

    #[test]
    fn a_close_that_comes_with_the_last_bytes_still_ends_the_next_read() {
        runtime().block_on(async {
            let (gw, mut far) = socket_pair().await;
            let mut reader = FrameReader::new(gw, BytesMut::new(), MaskRule::Required, 1 << 20);
            far.write_all(encode_client_frame(
                Opcode::Binary,
                true,
                b"last",
                [1, 2, 3, 4],
            ))
            .await
            .0
            .unwrap();
            drop(far);
            // Both land before the first read: one event carries the bytes
            // and the close, and the short read that takes the bytes must
            // leave the close for the next read.
            sleep(Duration::from_millis(50)).await;
            let f = timeout(HUNG, reader.next())
                .await
                .expect("first read")
                .unwrap();
            assert_eq!(f.payload(), b"last");
            drop(f);
            let end = timeout(HUNG, reader.next()).await.expect(
                "the close came with the bytes, yet the next read waited for another event",
            );
            assert!(matches!(end, Err(ReadError::Eof)), "{end:?}");
        });
    }
}

#[cfg(test)]
mod interrupt_tests {
    //! Interrupts on both drivers: the epoll path (a flag and a wake, no
    //! operation to cancel) and io_uring's (a cancelled receive).
    use super::*;
    use crate::wire::frame::encode_client_frame;
    use crate::wire::test_io::{runtime, socket_pair, within_hung};
    use monoio::io::AsyncWriteRentExt;
    use monoio::time::sleep;
    use std::time::Duration;

    /// Half a frame arrives, the read waiting for the rest is interrupted,
    /// then the rest arrives: the frame comes out whole, not a byte lost.
    /// Then an interrupt asked for while no read waits ends the next read
    /// only, at once.
    async fn interrupts_lose_no_byte_and_end_one_read_each() {
        let (gw, mut far) = socket_pair().await;
        let mut reader = FrameReader::new(gw, BytesMut::new(), MaskRule::Required, 1 << 20);
        let interrupter = reader.interrupter();
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut frame = encode_client_frame(Opcode::Binary, true, &payload, [9, 8, 7, 6]);
        let rest = frame.split_off(1000);
        far.write_all(frame).await.0.unwrap();
        let stop = {
            let interrupter = interrupter.clone();
            monoio::spawn(async move {
                sleep(Duration::from_millis(30)).await;
                interrupter.interrupt();
            })
        };
        let first = reader.next().await;
        assert!(matches!(first, Err(ReadError::Interrupted)), "{first:?}");
        stop.await;
        far.write_all(rest).await.0.unwrap();
        let f = reader.next().await.unwrap();
        assert_eq!(f.whole_payload(), payload);

        interrupter.interrupt();
        let once = reader.next().await;
        assert!(matches!(once, Err(ReadError::Interrupted)), "{once:?}");
        far.write_all(encode_client_frame(Opcode::Binary, true, b"next", [1; 4]))
            .await
            .0
            .unwrap();
        assert_eq!(reader.next().await.unwrap().payload(), b"next");
    }

    #[test]
    fn on_the_epoll_driver() {
        within_hung(|| runtime().block_on(interrupts_lose_no_byte_and_end_one_read_each()));
    }

    #[test]
    fn on_the_io_uring_driver() {
        within_hung(|| {
            let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build();
            match built {
                Ok(mut rt) => rt.block_on(interrupts_lose_no_byte_and_end_one_read_each()),
                // CI sets SLUICE_REQUIRE_IO_URING where the kernel allows
                // io_uring: there a ring that cannot be built fails.
                Err(e) if std::env::var_os("SLUICE_REQUIRE_IO_URING").is_some() => {
                    panic!("io_uring required (SLUICE_REQUIRE_IO_URING) but unavailable: {e}")
                }
                Err(e) => eprintln!(
                    "SKIPPED on_the_io_uring_driver: io_uring is not available here ({e}); \
                     only the epoll path ran"
                ),
            }
        });
    }
}

#[cfg(test)]
mod wake_hints_tests {
    //! A reader's wake-up hints are only loaded ahead, never read (monoio,
    //! `SLUICE.md` §6): whatever they point at (nothing, freed memory,
    //! unmapped addresses) the read that waited is woken, and its frame
    //! comes out whole.
    use super::*;
    use crate::wire::frame::encode_client_frame;
    use crate::wire::test_io::{runtime, socket_pair, within_hung};
    use monoio::io::AsyncWriteRentExt;
    use monoio::time::sleep;
    use std::ptr::{null, without_provenance};
    use std::time::Duration;

    #[test]
    fn any_address_wakes_the_reader_and_loses_nothing() {
        within_hung(|| {
            runtime().block_on(async {
                let (gw, mut far) = socket_pair().await;
                let mut reader = FrameReader::new(gw, BytesMut::new(), MaskRule::Required, 1 << 20);
                let freed = {
                    let gone = vec![0u8; 256];
                    gone.as_ptr().cast::<()>()
                };
                let sets: [[*const (); 4]; 3] = [
                    [null(); 4],
                    [
                        freed,
                        without_provenance(0xdead_0000_0000),
                        without_provenance(usize::MAX - 63),
                        without_provenance(1),
                    ],
                    [freed, null(), without_provenance(4096), freed],
                ];
                for (i, lines) in sets.into_iter().enumerate() {
                    reader.hint_wakeups(lines);
                    let payload = vec![i as u8 + 1; 3000];
                    let frame = encode_client_frame(Opcode::Binary, true, &payload, [1, 2, 3, 4]);
                    // The frame arrives after the read has started waiting,
                    // so the event that wakes it dispatches the hints.
                    let writer = monoio::spawn(async move {
                        sleep(Duration::from_millis(20)).await;
                        far.write_all(frame).await.0.unwrap();
                        far
                    });
                    let f = reader.next().await.unwrap();
                    assert_eq!(f.whole_payload(), payload, "set {i}");
                    far = writer.await;
                }
                // A reader that outlives its stream names nothing after it.
                reader.forget_hints();
                assert_eq!(reader.hints, [0; 4]);
            })
        });
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::*;

    #[test]
    fn grows_while_reads_fill_the_buffer_up_to_the_maximum() {
        let mut c = Chunk::adaptive(256 * 1024);
        assert_eq!(c.get(), START_CHUNK);
        for _ in 0..10 {
            let offered = c.get();
            c.after_read(offered, offered);
        }
        assert_eq!(c.get(), 256 * 1024);
    }

    #[test]
    fn shrinks_back_after_a_run_of_small_reads_but_not_below_the_start() {
        let mut c = Chunk::adaptive(256 * 1024);
        for _ in 0..10 {
            let offered = c.get();
            c.after_read(offered, offered);
        }
        for _ in 0..SHRINK_AFTER - 1 {
            c.after_read(100, 256 * 1024);
        }
        assert_eq!(c.get(), 256 * 1024, "one short run is not enough");
        c.after_read(100, 256 * 1024);
        assert_eq!(c.get(), 128 * 1024);
        for _ in 0..SHRINK_AFTER * 20 {
            c.after_read(100, c.get());
        }
        assert_eq!(c.get(), START_CHUNK);
    }

    #[test]
    fn a_small_maximum_is_used_as_is() {
        let mut c = Chunk::adaptive(4096);
        assert_eq!(c.get(), 4096);
        c.after_read(4096, 4096);
        assert_eq!(c.get(), 4096);
        assert_eq!(Chunk::adaptive(1).get(), MIN_CHUNK);
    }
}
