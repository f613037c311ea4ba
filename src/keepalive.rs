//! Ping/pong keepalive and idle timeout for one connection.
//!
//! A small timer task per connection watches when the peer last sent
//! anything. Past `ping_interval` it sends a ping (straight into the
//! connection's outbox, or by waking the reader when the reader owns the
//! socket); past `idle_timeout` it interrupts the reader, which closes the
//! connection. The reader never runs a read with a timeout, because a
//! timed-out io_uring read could lose bytes it had already received.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::frame::{encode_server_frame, Opcode};
use crate::outbox::Outbox;
use crate::reader::Interrupter;

pub struct Liveness {
    last_rx: Cell<Instant>,
    ping_due: Cell<bool>,
    timed_out: Cell<bool>,
    stopped: Cell<bool>,
    /// The timer task, woken by `stop` so it ends at once instead of at its
    /// next tick (a closed connection must not be kept alive by its timer).
    timer: RefCell<Option<Waker>>,
}

impl Liveness {
    /// The peer sent something.
    pub fn seen(&self) {
        self.last_rx.set(Instant::now());
    }

    /// Whether the reader was woken to send a ping (and clears it).
    pub fn take_ping_due(&self) -> bool {
        self.ping_due.replace(false)
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out.get()
    }

    /// Ends the timer task (the connection closed or moved to another shard).
    pub fn stop(&self) {
        self.stopped.set(true);
        if let Some(w) = self.timer.borrow_mut().take() {
            w.wake();
        }
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resolves once the connection's `Liveness` is stopped or dropped.
async fn stopped(live: &Weak<Liveness>) {
    poll_fn(|cx| match live.upgrade() {
        Some(l) if !l.stopped.get() => {
            *l.timer.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
        _ => Poll::Ready(()),
    })
    .await
}

/// Starts the timer task on the current shard.
///
/// With `outbox`, pings are queued there directly; without one, the reader
/// is interrupted with `take_ping_due() == true` and sends the ping itself.
pub fn watch(
    ping_interval: Duration,
    idle_timeout: Duration,
    interrupter: Interrupter,
    outbox: Option<Outbox>,
) -> Rc<Liveness> {
    let live = Rc::new(Liveness {
        last_rx: Cell::new(Instant::now()),
        ping_due: Cell::new(false),
        timed_out: Cell::new(false),
        stopped: Cell::new(false),
        timer: RefCell::new(None),
    });
    let weak = Rc::downgrade(&live);
    let tick = (ping_interval / 2).max(Duration::from_millis(50));
    monoio::spawn(async move {
        let mut pinged_at: Option<Instant> = None;
        loop {
            monoio::select! {
                _ = monoio::time::sleep(tick) => {}
                _ = stopped(&weak) => break,
            }
            let Some(live) = weak.upgrade() else { break };
            if live.stopped.get() {
                break;
            }
            let last = live.last_rx.get();
            let quiet = last.elapsed();
            if quiet >= idle_timeout {
                live.timed_out.set(true);
                interrupter.interrupt();
                break;
            }
            if quiet >= ping_interval && pinged_at.is_none_or(|p| p < last) {
                pinged_at = Some(Instant::now());
                match &outbox {
                    Some(o) => {
                        let _ = o.push(Bytes::from(encode_server_frame(Opcode::Ping, b"")));
                    }
                    None => {
                        live.ping_due.set(true);
                        interrupter.interrupt();
                    }
                }
            }
        }
    });
    live
}
