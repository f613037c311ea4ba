//! Ping/pong keepalive and idle timeout for the connections of a shard.
//!
//! One sweeper task per shard walks the connections it watches a few times
//! per ping interval and looks at when each peer last sent anything. Past
//! `ping_interval` it sends a ping (straight into the connection's outbox,
//! or by waking the reader when the reader owns the socket); past
//! `idle_timeout` it interrupts the reader, which closes the connection.
//! One task for all connections, not one each: an idle session costs a few
//! bytes here, not a timer task.
//!
//! The reader never runs a read with a timeout, because a timed-out
//! io_uring read could lose bytes it had already received.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use crate::wire::message;
use crate::wire::outbox::Outbox;
use crate::wire::reader::Interrupter;

pub struct Liveness {
    /// When the sweeper last found the peer had sent something. Whether it
    /// did since the last look is a flag the reader sets in its
    /// interrupter (`Interrupter::mark_progress`), not a clock read per
    /// frame: the sweeper turns it into a time at its next look, and it
    /// looks at tick granularity anyway.
    last_rx: Cell<Instant>,
    pinged_at: Cell<Option<Instant>>,
    ping_due: Cell<bool>,
    timed_out: Cell<bool>,
    stopped: Cell<bool>,
    ping_interval: Duration,
    idle_timeout: Duration,
    interrupter: Interrupter,
    outbox: Option<Outbox>,
}

impl Liveness {
    /// The peer sent something: what the reader records through
    /// `FrameReader::mark_progress` (without loading this watch), for the
    /// tests that play the reader.
    #[cfg(test)]
    fn seen(&self) {
        self.interrupter.mark_progress();
    }

    /// Whether this watch reads its progress from `interrupter`'s reader.
    pub(crate) fn watches(&self, interrupter: &Interrupter) -> bool {
        self.interrupter.same_as(interrupter)
    }

    /// Whether the reader was woken to send a ping (and clears it).
    pub fn take_ping_due(&self) -> bool {
        self.ping_due.replace(false)
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out.get()
    }

    /// Stops watching (the connection closed or moved to another shard).
    pub fn stop(&self) {
        self.stopped.set(true);
    }

    /// One look by the sweeper; false once there is nothing more to watch.
    fn check(&self, now: Instant) -> bool {
        if self.stopped.get() {
            return false;
        }
        if self.interrupter.take_progress() {
            self.last_rx.set(now);
        }
        let last = self.last_rx.get();
        let quiet = now.saturating_duration_since(last);
        if quiet >= self.idle_timeout {
            self.timed_out.set(true);
            self.interrupter.interrupt();
            return false;
        }
        if quiet >= self.ping_interval && self.pinged_at.get().is_none_or(|p| p < last) {
            self.pinged_at.set(Some(now));
            match &self.outbox {
                Some(o) => {
                    let _ = o.push(message::ping());
                }
                None => {
                    self.ping_due.set(true);
                    self.interrupter.interrupt();
                }
            }
        }
        true
    }
}

/// The connections this shard watches, and whether its sweeper runs.
#[derive(Default)]
struct Sweep {
    watched: Vec<Weak<Liveness>>,
    running: bool,
    tick: Option<Duration>,
}

thread_local! {
    static SWEEP: RefCell<Sweep> = RefCell::new(Sweep::default());
}

/// Watches a connection on the current shard.
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
        pinged_at: Cell::new(None),
        ping_due: Cell::new(false),
        timed_out: Cell::new(false),
        stopped: Cell::new(false),
        ping_interval,
        idle_timeout,
        interrupter,
        outbox,
    });
    // A few looks per ping interval keep pings and timeouts within a
    // quarter interval of their due time.
    let tick = (ping_interval / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
    let start = SWEEP.with(|s| {
        let mut s = s.borrow_mut();
        s.watched.push(Rc::downgrade(&live));
        s.tick = Some(s.tick.map_or(tick, |t| t.min(tick)));
        !std::mem::replace(&mut s.running, true)
    });
    if start {
        monoio::spawn(sweeper());
    }
    live
}

async fn sweeper() {
    loop {
        let tick = SWEEP
            .with(|s| s.borrow().tick)
            .unwrap_or(Duration::from_secs(1));
        monoio::time::sleep(tick).await;
        let now = Instant::now();
        let idle = SWEEP.with(|s| {
            let mut s = s.borrow_mut();
            // `check` may interrupt a reader, which only sets a flag,
            // schedules the reader's task (it runs later, not inside this
            // call) and cancels an op: it never re-enters this table.
            s.watched
                .retain(|w| w.upgrade().is_some_and(|l| l.check(now)));
            if s.watched.is_empty() {
                s.running = false;
                s.tick = None;
                true
            } else {
                false
            }
        });
        if idle {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(start: Instant) -> Liveness {
        Liveness {
            last_rx: Cell::new(start),
            pinged_at: Cell::new(None),
            ping_due: Cell::new(false),
            timed_out: Cell::new(false),
            stopped: Cell::new(false),
            ping_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            interrupter: Interrupter::new(),
            outbox: None,
        }
    }

    #[test]
    fn a_quiet_peer_is_pinged_then_timed_out() {
        let t0 = Instant::now();
        let l = live(t0);
        assert!(l.check(t0 + Duration::from_secs(5)));
        assert!(!l.take_ping_due());
        assert!(l.check(t0 + Duration::from_secs(11)));
        assert!(l.take_ping_due(), "quiet past the ping interval");
        assert!(!l.check(t0 + Duration::from_secs(31)));
        assert!(l.timed_out());
    }

    #[test]
    fn traffic_between_looks_counts_from_the_next_look() {
        let t0 = Instant::now();
        let l = live(t0);
        assert!(l.check(t0 + Duration::from_secs(25)));
        assert!(l.take_ping_due());
        // The peer answers; the sweeper's next look dates it.
        l.seen();
        assert!(l.check(t0 + Duration::from_secs(29)));
        assert!(!l.take_ping_due(), "seen at the last look, not quiet");
        // 30 s after the start, but 20 s after that look: still alive.
        assert!(l.check(t0 + Duration::from_secs(49)));
        assert!(!l.timed_out());
        assert!(l.take_ping_due(), "quiet 20 s: pinged again");
        assert!(!l.check(t0 + Duration::from_secs(59)));
        assert!(l.timed_out(), "quiet 30 s since the last look that saw it");
    }
}
