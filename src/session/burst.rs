//! Frames that arrive together leave together.
//!
//! A forwarder that finds the edge's next frame already whole in its read
//! buffer holds the one in hand and sends both (up to one direct send's
//! worth) with one gathered `send` ([`Outbox::push_wires`]). Sent one by
//! one, a backlog after a stall leaves as a train of small sends, each a
//! system call and a segment of its own, and the last frame of the burst
//! waits for all of them: that train was the tail of the small-frame p99.
//! A steady stream, whose next frame is not there yet, takes the single
//! path: no batch is touched. Its users call [`Burst::flush_unless_data`]
//! with everything the peer yields and [`Burst::flush`] before a refusal
//! of their own.

use crate::shard::metrics::ShardMetrics;
use crate::wire::outbox::{Gone, Outbox, GATHER_BYTES, GATHER_FRAMES};
use crate::wire::peer::{Incoming, PeerError};
use crate::wire::reader::{freeze, InFrame, Wire};

/// What [`Burst::forward`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Held: the next frame is already here; read it before sending.
    Held,
    /// Queued, with any held before it: wait for the outbox's space.
    Queued,
}

/// The frames a forwarder holds back, admitted (quota counted) but not
/// yet queued. Bounded by [`GATHER_FRAMES`] and [`GATHER_BYTES`]; whoever
/// ends the stream for any reason calls [`Burst::flush`] first, so no
/// admitted frame is lost.
#[derive(Default)]
pub struct Burst {
    frames: Vec<Wire>,
    bytes: u64,
}

impl Burst {
    /// Forwards `f` to `to`, counting it in `metrics` once queued. `more`
    /// says the reader already holds the next frame whole.
    pub fn forward(
        &mut self,
        f: InFrame,
        more: bool,
        to: &Outbox,
        metrics: &ShardMetrics,
    ) -> Result<Step, Gone> {
        let len = f.payload_len();
        if self.frames.is_empty() && !more {
            // A frame alone, nearly every frame of a steady stream.
            to.push_wire(freeze(f))?;
            metrics.forwarded(len, 1);
            return Ok(Step::Queued);
        }
        self.frames.push(freeze(f));
        self.bytes += len;
        if more && self.frames.len() < GATHER_FRAMES && self.bytes < GATHER_BYTES as u64 {
            return Ok(Step::Held);
        }
        self.flush(to, metrics)?;
        Ok(Step::Queued)
    }

    /// Called with whatever the peer yielded, before acting on it: held
    /// frames leave before anything that is not a data frame (a reply, a
    /// wait, a close, an error), so none is lost or overtaken.
    #[inline]
    pub fn flush_unless_data(
        &mut self,
        next: &Result<Incoming, PeerError>,
        to: &Outbox,
        metrics: &ShardMetrics,
    ) -> Result<(), Gone> {
        if matches!(next, Ok(Incoming::Data(_))) {
            return Ok(());
        }
        self.flush(to, metrics)
    }

    /// Queues what is held, in order, and counts it.
    pub fn flush(&mut self, to: &Outbox, metrics: &ShardMetrics) -> Result<(), Gone> {
        if self.frames.is_empty() {
            return Ok(());
        }
        let frames = self.frames.len() as u64;
        to.push_wires(&mut self.frames)?;
        metrics.forwarded(std::mem::take(&mut self.bytes), frames);
        Ok(())
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.frames.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use bytes::BytesMut;

    use super::*;
    use crate::wire::frame::{encode_server_frame, parse_header, MaskRule, Opcode};

    fn encoded(n: usize, fill: u8) -> Vec<u8> {
        encode_server_frame(Opcode::Binary, &vec![fill; n]).to_vec()
    }

    /// A frame as the reader hands it over.
    fn frame(n: usize, fill: u8) -> InFrame {
        let wire = BytesMut::from(&encoded(n, fill)[..]);
        let header = parse_header(&wire, MaskRule::Forbidden, u64::MAX)
            .expect("valid")
            .expect("whole");
        InFrame {
            message: header.opcode,
            payload_at: wire.len() - n,
            header,
            wire,
            tail: None,
        }
    }

    fn forwarded(m: &ShardMetrics) -> (u64, u64) {
        (
            m.frames_forwarded.load(Relaxed),
            m.bytes_forwarded.load(Relaxed),
        )
    }

    #[test]
    fn a_frame_alone_is_queued_at_once() {
        let (o, m) = (Outbox::new(1 << 20), ShardMetrics::default());
        let mut b = Burst::default();
        assert_eq!(b.forward(frame(10, 1), false, &o, &m), Ok(Step::Queued));
        assert_eq!(b.held(), 0);
        assert_eq!(forwarded(&m), (1, 10));
        assert_eq!(o.queued_bytes(), 12);
    }

    #[test]
    fn frames_that_arrive_together_are_held_then_queued_together() {
        let (o, m) = (Outbox::new(1 << 20), ShardMetrics::default());
        let mut b = Burst::default();
        assert_eq!(b.forward(frame(3, 1), true, &o, &m), Ok(Step::Held));
        assert_eq!(b.forward(frame(3, 2), true, &o, &m), Ok(Step::Held));
        assert_eq!(o.queued_bytes(), 0, "held frames are not queued yet");
        assert_eq!(forwarded(&m), (0, 0), "nor counted");
        // The last of the burst: nothing more is buffered.
        assert_eq!(b.forward(frame(3, 3), false, &o, &m), Ok(Step::Queued));
        assert_eq!(b.held(), 0);
        assert_eq!(forwarded(&m), (3, 9));
        assert_eq!(o.queued_bytes(), 15);
    }

    #[test]
    fn a_burst_never_exceeds_one_direct_send() {
        let (o, m) = (Outbox::new(1 << 20), ShardMetrics::default());
        let mut b = Burst::default();
        for i in 1..GATHER_FRAMES {
            assert_eq!(
                b.forward(frame(1, 0), true, &o, &m),
                Ok(Step::Held),
                "frame {i}"
            );
        }
        assert_eq!(b.forward(frame(1, 0), true, &o, &m), Ok(Step::Queued));
        assert_eq!(forwarded(&m).0, GATHER_FRAMES as u64);

        let half = GATHER_BYTES / 2;
        assert_eq!(b.forward(frame(half, 0), true, &o, &m), Ok(Step::Held));
        assert_eq!(
            b.forward(frame(half, 0), true, &o, &m),
            Ok(Step::Queued),
            "the bytes' bound"
        );
    }

    /// On a real socket: what was held arrives whole and in order, after
    /// what was queued before it.
    #[test]
    fn a_burst_arrives_in_order() {
        use crate::wire::test_io::{runtime, socket_pair};
        use monoio::io::{AsyncReadRent, Splitable};
        runtime().block_on(async {
            let (gw, mut far) = socket_pair().await;
            let (_rd, wr) = gw.into_split();
            let (o, m) = (Outbox::new(1 << 20), ShardMetrics::default());
            o.attach(wr, Duration::from_secs(5));
            let mut b = Burst::default();
            let mut expect = Vec::new();
            for (i, more) in [false, true, true, false, true].into_iter().enumerate() {
                let n = 100 + i * 50;
                expect.extend_from_slice(&encoded(n, i as u8));
                b.forward(frame(n, i as u8), more, &o, &m).unwrap();
            }
            b.flush(&o, &m).unwrap();
            assert_eq!(forwarded(&m).0, 5);
            let mut got = Vec::new();
            while got.len() < expect.len() {
                let (r, buf) = far.read(Vec::with_capacity(1 << 16)).await;
                assert!(r.unwrap() > 0);
                got.extend_from_slice(&buf);
            }
            assert_eq!(got, expect);
        });
    }

    #[test]
    fn held_frames_leave_before_anything_but_data() {
        let (o, m) = (Outbox::new(1 << 20), ShardMetrics::default());
        let mut b = Burst::default();
        b.forward(frame(4, 1), true, &o, &m).unwrap();
        let data = Ok(Incoming::Data(frame(4, 2)));
        assert_eq!(b.flush_unless_data(&data, &o, &m), Ok(()));
        assert_eq!(b.held(), 1, "the next frame joins the burst");
        let end = Err(PeerError::TimedOut);
        assert_eq!(b.flush_unless_data(&end, &o, &m), Ok(()));
        assert_eq!(b.held(), 0);
        assert_eq!(forwarded(&m), (1, 4));
    }

    #[test]
    fn flush_queues_what_is_held_and_a_closed_outbox_says_gone() {
        let (o, m) = (Outbox::new(1 << 20), ShardMetrics::default());
        let mut b = Burst::default();
        assert_eq!(b.flush(&o, &m), Ok(()), "nothing held, nothing to do");
        b.forward(frame(4, 7), true, &o, &m).unwrap();
        b.flush(&o, &m).unwrap();
        assert_eq!(forwarded(&m), (1, 4));
        assert_eq!(o.queued_bytes(), 6);

        b.forward(frame(4, 8), true, &o, &m).unwrap();
        o.close(crate::wire::message::closing(1000, ""));
        assert_eq!(b.flush(&o, &m), Err(Gone));
        assert_eq!(b.forward(frame(4, 9), false, &o, &m), Err(Gone));
    }
}
