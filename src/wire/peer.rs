//! The one read primitive for frames from a peer (a browser, a connector
//! worker, a relay edge): it answers pings, counts liveness, sends the
//! keepalive pings a reader owes, assembles text messages, and yields only
//! what the caller acts on — data, text, a close, or an interruption whose
//! reason the caller knows.
//!
//! Every loop that reads a peer uses it, so control frames are handled in
//! one place (as fastwebsockets does in its reader) and a fix to them is a
//! fix everywhere.

use std::io;
use std::rc::Rc;

use bytes::Bytes;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use thiserror::Error;

use crate::wire::frame::{parse_close, FrameError, Opcode};
use crate::wire::keepalive::Liveness;
use crate::wire::message::{self, close};
use crate::wire::outbox::Outbox;
use crate::wire::reader::{FrameReader, InFrame, ReadError, Source, TextAssembler};

/// What a read yields once control frames are dealt with.
#[derive(Debug)]
pub enum Incoming {
    /// A data frame as read: binary (or its continuation), or — for a peer
    /// read raw — a frame of a text message.
    Data(InFrame),
    /// A whole text message, UTF-8 checked and within the text limit.
    Text(String),
    /// The peer's close frame; [`close_code`] reads its status.
    Close(InFrame),
    /// The read was interrupted for a reason of the caller's (the session
    /// left, the connection is being taken, shutdown): check it, then read
    /// again. A keepalive interruption surfaces too, once the ping it was
    /// for has been sent: the caller's check finds nothing and it reads
    /// again. (One interrupt flag serves both, so swallowing it here could
    /// swallow the caller's reason with it.)
    Interrupted,
}

#[derive(Debug, Error)]
pub enum PeerError {
    /// Nothing from the peer for the idle timeout.
    #[error("no traffic from the peer within the idle timeout")]
    TimedOut,
    /// The peer broke RFC 6455; the error names the close code to send.
    #[error("{0}")]
    Protocol(#[from] FrameError),
    /// A control answer (pong, ping) could not be sent.
    #[error("write failed: {0}")]
    Write(io::Error),
    /// The connection ended or failed (EOF, reset).
    #[error("{0}")]
    Gone(ReadError),
}

/// Where a peer's control answers go: its outbox when one writes to it
/// (browsers, relayed sockets), or straight to its socket while the
/// reading task is the socket's only user (an edge connection idle or
/// serving a query).
// A shard is one thread: these futures are never sent, so the missing
// `Send` bound the lint warns about is the point.
#[allow(async_fn_in_trait)]
pub trait Answer<R> {
    async fn send(&mut self, reader: &mut FrameReader<R>, frame: Bytes) -> io::Result<()>;
}

/// Answers through the peer's outbox. An answer waits for room in it, so
/// a peer that sends pings but does not read its pongs is not read either:
/// what it makes the gateway queue stays within the outbox's cap.
pub struct ViaOutbox(pub Outbox);

impl<R> Answer<R> for ViaOutbox {
    async fn send(&mut self, _reader: &mut FrameReader<R>, frame: Bytes) -> io::Result<()> {
        let closed = |_| io::Error::other("the peer's outbox is closed");
        self.0.space().await.map_err(closed)?;
        self.0.push(frame).map_err(closed)
    }
}

/// Answers through the outbox of a peer that has not authenticated yet:
/// an answer that does not fit under the outbox's small pre-authentication
/// cap is dropped, never waited for. A peer that floods pings and never
/// reads is thus still read, its auth deadline still ends it, and what it
/// makes the gateway hold stays within that cap. Past
/// [`PreAuth::MAX_CONTROL`] control frames the peer is refused: a client
/// has nothing to ping about before it has sent its token, and a flood
/// whose frames are always ready would otherwise keep its shard busy.
pub struct PreAuth {
    outbox: Outbox,
    answered: u32,
}

impl PreAuth {
    pub const MAX_CONTROL: u32 = 32;

    pub fn new(outbox: Outbox) -> Self {
        PreAuth {
            outbox,
            answered: 0,
        }
    }

    /// Whether an error from [`Answer::send`] is the control-frame bound.
    pub fn is_flood(e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::InvalidData
    }
}

impl<R> Answer<R> for PreAuth {
    async fn send(&mut self, _reader: &mut FrameReader<R>, frame: Bytes) -> io::Result<()> {
        self.answered += 1;
        if self.answered > Self::MAX_CONTROL {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many control frames before authentication",
            ));
        }
        let closed = |_| io::Error::other("the peer's outbox is closed");
        self.outbox.push_if_room(frame).map(|_| ()).map_err(closed)
    }
}

/// Answers on the socket the reader reads.
pub struct Direct;

impl Answer<TcpStream> for Direct {
    async fn send(&mut self, reader: &mut FrameReader<TcpStream>, frame: Bytes) -> io::Result<()> {
        reader.io_mut().write_all(frame).await.0.map(|_| ())
    }
}

/// A peer being read: the frame reader, where answers go, its liveness
/// watch (if any), and whether text is assembled or passed on raw.
pub struct Peer<'r, R, A> {
    reader: &'r mut FrameReader<R>,
    answer: A,
    live: Option<Rc<Liveness>>,
    text: Option<TextAssembler>,
    /// Whether pings and pongs count as the peer being alive.
    control_counts: bool,
}

impl<'r, R: Source, A: Answer<R>> Peer<'r, R, A> {
    /// Text messages are assembled (up to `max_text` bytes) and yielded
    /// whole.
    pub fn new(reader: &'r mut FrameReader<R>, answer: A, max_text: usize) -> Self {
        Peer {
            reader,
            answer,
            live: None,
            text: Some(TextAssembler::new(max_text)),
            control_counts: true,
        }
    }

    /// Every data frame, text included, is yielded as read (relay mode).
    pub fn raw(reader: &'r mut FrameReader<R>, answer: A) -> Self {
        Peer {
            reader,
            answer,
            live: None,
            text: None,
            control_counts: true,
        }
    }

    /// Applies a liveness watch: traffic refreshes it, a due ping is sent,
    /// an idle timeout ends the read with [`PeerError::TimedOut`]. The
    /// watch stops when the peer is dropped.
    ///
    /// The watch must be on this reader's interrupter (every caller makes
    /// it from `reader.interrupter()`): the reader marks progress there.
    pub fn watched(mut self, live: Rc<Liveness>) -> Self {
        debug_assert!(
            live.watches(&self.reader.interrupter()),
            "a liveness watch on another reader's interrupter would never see progress"
        );
        self.live = Some(live);
        self
    }

    /// Only data, text and close frames refresh the liveness watch: a peer
    /// that answers pings but sends nothing else times out (a connector
    /// stuck mid-request whose WebSocket library still answers pings).
    pub fn progress_only(mut self) -> Self {
        self.control_counts = false;
        self
    }

    /// The reader, for what the caller does between reads (writing a
    /// request on the same socket, taking it apart).
    pub fn reader(&mut self) -> &mut FrameReader<R> {
        self.reader
    }

    /// Sends a frame the way answers go (for the caller's own requests on a
    /// directly answered socket).
    pub async fn send(&mut self, frame: Bytes) -> io::Result<()> {
        self.answer.send(self.reader, frame).await
    }

    /// See [`FrameReader::next_is_whole_binary`]: the next call to
    /// [`next`](Self::next) returns that frame as data, at once.
    pub fn next_is_whole_binary(&self) -> bool {
        self.reader.next_is_whole_binary()
    }

    /// The next thing the caller must act on.
    pub async fn next(&mut self) -> Result<Incoming, PeerError> {
        loop {
            let f = match self.reader.next().await {
                Ok(f) => f,
                Err(ReadError::Interrupted) => {
                    if let Some(live) = &self.live {
                        if live.timed_out() {
                            return Err(PeerError::TimedOut);
                        }
                        if live.take_ping_due() {
                            // Boxed: see the pong below.
                            Box::pin(self.send(message::ping()))
                                .await
                                .map_err(PeerError::Write)?;
                        }
                    }
                    return Ok(Incoming::Interrupted);
                }
                Err(ReadError::Protocol(e)) => return Err(PeerError::Protocol(e)),
                Err(e) => return Err(PeerError::Gone(e)),
            };
            let control = matches!(f.message, Opcode::Ping | Opcode::Pong);
            if self.live.is_some() && (self.control_counts || !control) {
                // In the reader's interrupter, a line this frame's read
                // already loaded, not in the watch's own allocation.
                self.reader.mark_progress();
            }
            match f.message {
                Opcode::Ping => {
                    let pong = message::pong(f.payload());
                    // Neither the frame nor the answer's future is kept in
                    // this future across the wait: a ping is rare, and
                    // this future is inside every reading task's cell.
                    drop(f);
                    Box::pin(self.send(pong)).await.map_err(PeerError::Write)?;
                }
                Opcode::Pong => {}
                Opcode::Close => return Ok(Incoming::Close(f)),
                Opcode::Text => match &mut self.text {
                    Some(text) => {
                        if let Some(t) = text.push(&f)? {
                            return Ok(Incoming::Text(t));
                        }
                    }
                    None => return Ok(Incoming::Data(f)),
                },
                _ => return Ok(Incoming::Data(f)),
            }
        }
    }
}

impl<R, A> Drop for Peer<'_, R, A> {
    fn drop(&mut self) {
        if let Some(live) = &self.live {
            live.stop();
        }
    }
}

/// The status of a close frame: its code, 1000 when it carries none, 1002
/// when it is malformed.
pub fn close_code(f: &InFrame) -> u16 {
    match parse_close(f.payload()) {
        Ok(s) => s.map_or(close::NORMAL, |s| s.code),
        Err(_) => close::PROTOCOL,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::BytesMut;
    use monoio::io::{AsyncReadRent, Splitable};

    use super::*;
    use crate::wire::frame::{encode_client_frame, MaskRule};
    use crate::wire::keepalive;
    use crate::wire::test_io::{runtime, socket_pair};

    async fn script(peer: &mut TcpStream, frames: &[(Opcode, bool, &[u8])]) {
        let mut out = Vec::new();
        for (op, fin, payload) in frames {
            out.extend(encode_client_frame(*op, *fin, payload, [1, 2, 3, 4]));
        }
        peer.write_all(out).await.0.unwrap();
    }

    async fn read_some(peer: &mut TcpStream) -> Vec<u8> {
        let (r, buf) = peer.read(Vec::with_capacity(256)).await;
        r.unwrap();
        buf
    }

    #[test]
    fn control_frames_are_answered_and_text_assembled() {
        runtime().block_on(async {
            let (gw, mut far) = socket_pair().await;
            script(
                &mut far,
                &[
                    (Opcode::Ping, true, b"hi"),
                    (Opcode::Text, false, b"{\"a\":"),
                    (Opcode::Pong, true, b""),
                    (Opcode::Continuation, true, b"1}"),
                    (Opcode::Binary, true, b"\x00\x01"),
                    (Opcode::Close, true, &[0x03, 0xE8]),
                ],
            )
            .await;
            let mut reader = FrameReader::new(gw, BytesMut::new(), MaskRule::Required, 1 << 20);
            let mut peer = Peer::new(&mut reader, Direct, 1024);
            match peer.next().await.unwrap() {
                Incoming::Text(t) => assert_eq!(t, "{\"a\":1}"),
                other => panic!("expected text, got {other:?}"),
            }
            // The ping was answered with a pong carrying its payload.
            assert_eq!(read_some(&mut far).await, b"\x8a\x02hi");
            match peer.next().await.unwrap() {
                Incoming::Data(f) => assert_eq!(f.payload(), b"\x00\x01"),
                other => panic!("expected data, got {other:?}"),
            }
            match peer.next().await.unwrap() {
                Incoming::Close(f) => assert_eq!(close_code(&f), 1000),
                other => panic!("expected close, got {other:?}"),
            }
        });
    }

    #[test]
    fn a_peer_that_keeps_sending_data_outlives_the_idle_timeout() {
        runtime().block_on(async {
            let (gw, mut far) = socket_pair().await;
            let mut reader = FrameReader::new(gw, BytesMut::new(), MaskRule::Required, 1 << 20);
            let live = keepalive::watch(
                Duration::from_millis(50),
                Duration::from_millis(200),
                reader.interrupter(),
                None,
            );
            // 30 frames 15 ms apart: 450 ms of traffic, over twice the idle
            // timeout, with no gap near it. Only the progress the reader
            // marks keeps the watch from timing the peer out.
            const FRAMES: usize = 30;
            let sender = monoio::spawn(async move {
                for _ in 0..FRAMES {
                    monoio::time::sleep(Duration::from_millis(15)).await;
                    script(&mut far, &[(Opcode::Binary, true, b"x")]).await;
                }
                far
            });
            let mut peer = Peer::new(&mut reader, Direct, 1024)
                .watched(live)
                .progress_only();
            let mut frames = 0;
            while frames < FRAMES {
                match peer.next().await {
                    Ok(Incoming::Data(f)) => {
                        assert_eq!(f.payload(), b"x");
                        frames += 1;
                    }
                    // A ping sent on a slow machine: not what is tested.
                    Ok(Incoming::Interrupted) => {}
                    other => panic!("after {frames} frames: {other:?}"),
                }
            }
            drop(peer);
            drop(sender.await);
        });
    }

    #[test]
    fn raw_peers_pass_text_frames_on_and_outbox_answers_queue() {
        runtime().block_on(async {
            let (gw, mut far) = socket_pair().await;
            let (rd, _wr) = gw.into_split();
            script(
                &mut far,
                &[(Opcode::Ping, true, b"p"), (Opcode::Text, false, b"ab")],
            )
            .await;
            let out = Outbox::new(1 << 16);
            let mut reader = FrameReader::new(rd, BytesMut::new(), MaskRule::Required, 1 << 20);
            let mut peer = Peer::raw(&mut reader, ViaOutbox(out.clone()));
            match peer.next().await.unwrap() {
                Incoming::Data(f) => {
                    assert_eq!(f.message, Opcode::Text);
                    assert!(!f.header.fin);
                }
                other => panic!("expected a raw text frame, got {other:?}"),
            }
            assert_eq!(out.queued_bytes(), 3, "the pong waits in the outbox");
        });
    }

    #[test]
    fn oversized_text_and_timeouts_are_errors_interruptions_are_not() {
        runtime().block_on(async {
            let (gw, mut far) = socket_pair().await;
            // A fragmented text message over the limit is reported with
            // its size so far, not the size of its last frame.
            script(
                &mut far,
                &[
                    (Opcode::Text, false, &[b'x'; 10]),
                    (Opcode::Continuation, true, &[b'x'; 10]),
                ],
            )
            .await;
            let mut reader = FrameReader::new(gw, BytesMut::new(), MaskRule::Required, 1 << 20);
            let interrupter = reader.interrupter();
            {
                let mut peer = Peer::new(&mut reader, Direct, 16);
                match peer.next().await {
                    Err(PeerError::Protocol(e @ FrameError::TextTooLarge { .. })) => {
                        assert_eq!(
                            e.to_string(),
                            "text message of 20+ bytes exceeds the limit of 16 bytes"
                        );
                        assert_eq!(e.close_code(), 1009);
                    }
                    other => panic!("expected an oversized text, got {other:?}"),
                }
            }
            interrupter.interrupt();
            let live = keepalive::watch(
                Duration::from_millis(20),
                Duration::from_millis(60),
                reader.interrupter(),
                None,
            );
            let mut peer = Peer::new(&mut reader, Direct, 1024).watched(live.clone());
            assert!(matches!(peer.next().await, Ok(Incoming::Interrupted)));
            // Silent far end: a keepalive ping goes out, then the timeout.
            let mut pinged = false;
            let end = loop {
                match peer.next().await {
                    Ok(Incoming::Interrupted) => pinged = true,
                    other => break other,
                }
            };
            assert!(matches!(end, Err(PeerError::TimedOut)), "{end:?}");
            assert!(pinged);
            assert_eq!(read_some(&mut far).await[..2], [0x89, 0x00]);
            drop(peer);
        });
    }
}
