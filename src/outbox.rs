//! The bounded queue of frames waiting to be written to one socket, and the
//! task that writes them.
//!
//! Every byte the gateway sends a peer goes through its outbox, so there is
//! one writer per socket (no interleaved frames) and one place where
//! buffered bytes are counted. Producers that respect [`Outbox::space`]
//! stop reading their own source while the queue is over its cap: that is
//! how a browser that stops reading slows its connector through TCP flow
//! control instead of growing the gateway's memory. A fan-out producer that
//! must not wait uses [`Outbox::try_push`] and drops the viewer instead.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};

use crate::reader::Wire;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A close frame is queued: nothing more is accepted.
    Closing,
    /// The writer stopped (socket error, stall, or after the close frame).
    Done,
}

struct Inner {
    queue: VecDeque<Bytes>,
    queued: usize,
    cap: usize,
    state: State,
    writer: Option<Waker>,
    waiters: Vec<Waker>,
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
            queue: VecDeque::new(),
            queued: 0,
            cap,
            state: State::Open,
            writer: None,
            waiters: Vec::new(),
        })))
    }

    /// Queues a frame regardless of the cap (the caller waits on
    /// [`Outbox::space`] before its next read).
    pub fn push(&self, frame: Bytes) -> Result<(), Gone> {
        let mut g = self.0.borrow_mut();
        if g.state != State::Open {
            return Err(Gone);
        }
        g.queued += frame.len();
        g.queue.push_back(frame);
        if let Some(w) = g.writer.take() {
            w.wake();
        }
        Ok(())
    }

    /// Queues a forwarded frame (one or two pieces, written back to back).
    pub fn push_wire(&self, frame: Wire) -> Result<(), Gone> {
        self.push(frame.head)?;
        match frame.tail {
            Some(t) => self.push(t),
            None => Ok(()),
        }
    }

    /// Queues a frame only if the queue is under its cap.
    pub fn try_push(&self, frame: Bytes) -> Result<bool, Gone> {
        {
            let g = self.0.borrow();
            if g.state != State::Open {
                return Err(Gone);
            }
            if g.queued >= g.cap {
                return Ok(false);
            }
        }
        self.push(frame).map(|_| true)
    }

    /// Queues a close frame; after it nothing is accepted, and the writer
    /// stops once it is on the wire. A second close is ignored.
    pub fn close(&self, frame: Bytes) {
        let mut g = self.0.borrow_mut();
        if g.state != State::Open {
            return;
        }
        g.queued += frame.len();
        g.queue.push_back(frame);
        g.state = State::Closing;
        if let Some(w) = g.writer.take() {
            w.wake();
        }
        for w in g.waiters.drain(..) {
            w.wake();
        }
    }

    pub fn is_open(&self) -> bool {
        self.0.borrow().state == State::Open
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
        g.queue.clear();
        g.queued = 0;
        for w in g.waiters.drain(..) {
            w.wake();
        }
    }

    async fn next(&self) -> Option<(Bytes, bool)> {
        poll_fn(|cx| {
            let mut g = self.0.borrow_mut();
            if let Some(b) = g.queue.pop_front() {
                let last = g.queue.is_empty() && g.state == State::Closing;
                return Poll::Ready(Some((b, last)));
            }
            if g.state != State::Open {
                return Poll::Ready(None);
            }
            g.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn written(&self, n: usize) {
        let mut g = self.0.borrow_mut();
        let before = g.queued;
        g.queued -= n;
        if before >= g.cap && g.queued < g.cap {
            for w in g.waiters.drain(..) {
                w.wake();
            }
        }
    }

    /// Writes queued frames to `io` until the close frame is written, the
    /// peer is gone, or a write makes no progress for `stall`. Returns the
    /// socket half so the caller can shut it down or hand it on.
    pub async fn run_writer<W: AsyncWriteRent>(self, mut io: W, stall: Duration) -> W {
        while let Some((frame, last)) = self.next().await {
            let len = frame.len();
            match monoio::time::timeout(stall, io.write_all(frame)).await {
                Ok((Ok(_), _)) => self.written(len),
                Ok((Err(e), _)) => {
                    tracing::debug!(error = %e, "write failed; peer gone");
                    break;
                }
                Err(_) => {
                    tracing::debug!(
                        stall_ms = stall.as_millis() as u64,
                        "write stalled; dropping peer"
                    );
                    break;
                }
            }
            if last {
                break;
            }
        }
        self.finish();
        io
    }
}
