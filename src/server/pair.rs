//! A WebSocket connection into a shard over a Unix socket pair, spoken by a
//! front on behalf of someone who is not a WebSocket peer: the Flight front
//! plays a browser, the gRPC front a connector's workers.
//!
//! The shard receives the other end exactly as it receives a TLS front's
//! connection ([`ShardMsg::AdoptFronted`]), with what the front's own
//! handshake proved beside it ([`Transport`]). So a session or a connector
//! worker behind a front is checked, limited, counted and closed by the
//! same code as one on the WebSocket listener.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::Duration;

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::auth::edge_auth::Transport;
use crate::server::front;
use crate::shard::metrics::Front;
use crate::shard::{ShardMsg, Shared};
use crate::wire::egress::{self, Ingress};
use crate::wire::frame::{self, CloseStatus, FrameHeader, MaskRule, Opcode};
use crate::wire::handoff::Detached;

/// How the front frames what it sends: masked as a browser must, or in
/// server wire format as the fast-path connector does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Browser,
    FastConnector,
}

/// Which front speaks on a pair, as whom, and whether the session's
/// frames come back in process ([`crate::wire::egress`]) or on the socket.
#[derive(Debug, Clone, Copy)]
pub struct Speaker {
    pub role: Role,
    pub front: Front,
    pub in_process: bool,
}

impl Speaker {
    /// The Flight front, playing a browser; a `DoGet`'s bytes come back in
    /// process.
    pub const FLIGHT: Speaker = Speaker {
        role: Role::Browser,
        front: Front::Flight,
        in_process: true,
    };
    /// The gRPC tunnel, playing a connector's worker (its bytes flow
    /// towards the shard, on the socket).
    pub const TUNNEL: Speaker = Speaker {
        role: Role::FastConnector,
        front: Front::Grpc,
        in_process: false,
    };
}

#[derive(Debug)]
pub enum PairError {
    /// The shard refused the upgrade with an HTTP status.
    Http(u16, String),
    Io(std::io::Error),
    Protocol(String),
}

impl From<std::io::Error> for PairError {
    fn from(e: std::io::Error) -> Self {
        PairError::Io(e)
    }
}

impl std::fmt::Display for PairError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PairError::Http(s, body) => write!(f, "gateway answered {s}: {body}"),
            PairError::Io(e) => write!(f, "gateway connection failed: {e}"),
            PairError::Protocol(why) => f.write_str(why),
        }
    }
}

/// One whole message, or the close that ended the connection.
#[derive(Debug)]
pub enum Message {
    Text(Bytes),
    Binary(Bytes),
    Close(Option<CloseStatus>),
}

pub struct Pair {
    sock: UnixStream,
    /// With an egress, the session's frames as its outbox gathered them
    /// (`wire::egress`); the socket then carries only the upgrade's answer.
    ingress: Option<Ingress>,
    /// Batches taken from `ingress` and not yet parsed.
    chunks: VecDeque<Bytes>,
    buf: BytesMut,
    max_frame: u64,
    role: Role,
    /// A fragmented message being put together (RFC 6455 lets any message
    /// be split; the shards forward a connector's fragments as they come).
    partial: Option<(Opcode, BytesMut)>,
    pub open: bool,
}

impl Pair {
    /// Hands one end to shard `target` and upgrades `path` on the other,
    /// with `headers` (name, value) in the request.
    pub async fn open(
        shared: &Shared,
        target: usize,
        transport: Transport,
        path: &str,
        headers: &[(&str, &str)],
        who: Speaker,
    ) -> Result<Pair, PairError> {
        let Speaker {
            role,
            front,
            in_process,
        } = who;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let sock = UnixStream::from_std(ours)?;
        let (egress, ingress) = match in_process {
            true => {
                let (e, i) = egress::channel();
                (Some(e), Some(i))
            }
            false => (None, None),
        };
        let msg = ShardMsg::AdoptFronted {
            sock: Detached {
                fd: OwnedFd::from(theirs),
                buffered: BytesMut::new(),
            },
            transport,
            egress,
        };
        if front::hand_off(shared, target, msg, front).is_err() {
            return Err(PairError::Http(503, "gateway busy; retry".into()));
        }
        let mut pair = Pair {
            sock,
            ingress,
            chunks: VecDeque::new(),
            buf: BytesMut::with_capacity(4096),
            max_frame: shared.cfg.limits.max_frame_bytes as u64,
            role,
            partial: None,
            open: true,
        };
        let wait = Duration::from_millis(shared.cfg.timeouts.handshake_ms);
        match tokio::time::timeout(wait, pair.upgrade(path, headers)).await {
            Ok(r) => r?,
            Err(_) => return Err(PairError::Http(504, "handshake timed out".into())),
        }
        Ok(pair)
    }

    async fn upgrade(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<(), PairError> {
        // The key proves nothing on a local socket pair; any 16 bytes do.
        let key = base64::engine::general_purpose::STANDARD.encode(*b"sluice-front-key");
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: front\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.sock.write_all(head.as_bytes()).await?;
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if self.buf.len() > 16 * 1024 {
                return Err(PairError::Protocol("response head too large".into()));
            }
            if !self.read_head().await? {
                return Err(PairError::Protocol(
                    "gateway closed the connection during the upgrade".into(),
                ));
            }
        };
        let head = self.buf.split_to(end);
        let text = String::from_utf8_lossy(&head);
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status == 101 {
            return Ok(());
        }
        // An HTTP refusal carries its reason as the body.
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            while self.sock.read_buf(&mut self.buf).await.unwrap_or(0) > 0 {}
        })
        .await;
        let body = String::from_utf8_lossy(&self.buf).trim().to_owned();
        Err(PairError::Http(status, body))
    }

    /// More of the upgrade's answer: a refusal comes on the socket, the
    /// 101 (with an egress) as the first piece of the session's frames.
    /// `false`: both ended.
    async fn read_head(&mut self) -> std::io::Result<bool> {
        let Pair {
            sock,
            buf,
            ingress,
            chunks,
            ..
        } = self;
        let Some(rx) = ingress else {
            return Ok(sock.read_buf(buf).await? > 0);
        };
        let batch = tokio::select! {
            biased;
            batch = rx.recv_async() => batch,
            n = sock.read_buf(buf) => {
                if n? > 0 {
                    return Ok(true);
                }
                // The socket ended: a session that ended at once (refused
                // after its upgrade) left everything in the ingress.
                rx.recv_async().await
            }
        };
        match batch {
            Ok(b) => chunks.extend(b),
            // Refused before the upgrade: its answer is on the socket.
            Err(_) => {
                *ingress = None;
                return Ok(sock.read_buf(buf).await? > 0);
            }
        }
        if let Some(c) = chunks.pop_front() {
            buf.extend_from_slice(&c);
        }
        Ok(true)
    }

    fn header(&self, opcode: Opcode, len: usize) -> ([u8; 14], usize) {
        let mut h = [0u8; 14];
        let n = frame::encode_server_header(true, opcode, len as u64, &mut h);
        if self.role == Role::FastConnector {
            return (h, n);
        }
        // Masking guards browsers' intermediaries against cache poisoning;
        // on a local socket pair a zero key does, and leaves the payload
        // as it is (XOR with zero), so nothing is copied to mask it.
        h[1] |= 0x80;
        (h, n + 4)
    }

    /// Sends one whole message: header and payload in one write, the
    /// payload not copied.
    pub async fn send(&mut self, opcode: Opcode, payload: &[u8]) -> Result<(), PairError> {
        let (h, n) = self.header(opcode, payload.len());
        let mut parts = [
            std::io::IoSlice::new(&h[..n]),
            std::io::IoSlice::new(payload),
        ];
        let mut slices: &mut [std::io::IoSlice<'_>] = &mut parts;
        while !slices.is_empty() {
            let wrote = self.sock.write_vectored(slices).await?;
            if wrote == 0 {
                return Err(PairError::Io(std::io::ErrorKind::WriteZero.into()));
            }
            std::io::IoSlice::advance_slices(&mut slices, wrote);
        }
        Ok(())
    }

    /// The next whole message; pings are answered on the way.
    pub async fn next(&mut self) -> Result<Message, PairError> {
        loop {
            if let Some(m) = self.parse()? {
                return Ok(m);
            }
            let more = match &self.ingress {
                Some(rx) => match rx.recv_async().await {
                    Ok(batch) => {
                        self.chunks.extend(batch);
                        true
                    }
                    Err(_) => false,
                },
                None => self.sock.read_buf(&mut self.buf).await? > 0,
            };
            if !more {
                self.open = false;
                return Ok(Message::Close(None));
            }
        }
    }

    /// Reads what already arrived without waiting: answers the pings an
    /// idle connection gets and notices a close. `false`: it is done.
    pub fn tend(&mut self) -> bool {
        if let Some(rx) = &self.ingress {
            loop {
                match rx.try_recv() {
                    Ok(batch) => self.chunks.extend(batch),
                    Err(flume::TryRecvError::Empty) => break,
                    Err(flume::TryRecvError::Disconnected) => {
                        self.open = false;
                        break;
                    }
                }
            }
        }
        loop {
            self.buf.reserve(1024);
            match self.sock.try_read_buf(&mut self.buf) {
                Ok(0) => {
                    self.open = false;
                    break;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.open = false;
                    break;
                }
            }
        }
        // Between calls nothing but control frames is expected; anything
        // else means the other side moved on without us.
        while self.open {
            match self.parse() {
                Ok(None) => break,
                Ok(Some(_)) | Err(_) => self.open = false,
            }
        }
        self.open
    }

    /// One message from the buffer, if a whole one is there.
    fn parse(&mut self) -> Result<Option<Message>, PairError> {
        loop {
            let Some((h, payload)) = self.next_frame()? else {
                return Ok(None);
            };
            let (op, whole) = match h.opcode {
                Opcode::Ping => {
                    let (hd, n) = self.header(Opcode::Pong, payload.len());
                    let mut pong = hd[..n].to_vec();
                    pong.extend_from_slice(&payload);
                    // A pong is a few bytes on a local socket: it fits.
                    let _ = self.sock.try_write(&pong);
                    continue;
                }
                Opcode::Pong => continue,
                Opcode::Close => {
                    self.open = false;
                    return Ok(Some(Message::Close(
                        frame::parse_close(&payload).ok().flatten(),
                    )));
                }
                Opcode::Continuation => {
                    let Some((op, mut held)) = self.partial.take() else {
                        return Err(self.broken("continuation without a message".into()));
                    };
                    held.extend_from_slice(&payload);
                    if !h.fin {
                        self.partial = Some((op, held));
                        continue;
                    }
                    (op, held.freeze())
                }
                op if !h.fin => {
                    self.partial = Some((op, BytesMut::from(&payload[..])));
                    continue;
                }
                op => (op, payload),
            };
            return Ok(Some(match op {
                Opcode::Text => Message::Text(whole),
                _ => Message::Binary(whole),
            }));
        }
    }

    /// The next whole frame's header and payload: from the socket's
    /// buffer, or from the egress batches — without a copy when a frame
    /// lies whole in one of them, which is every frame but one a reader
    /// split across two read buffers.
    fn next_frame(&mut self) -> Result<Option<(FrameHeader, Bytes)>, PairError> {
        if self.buf.is_empty() {
            if let Some(first) = self.chunks.front_mut() {
                let parsed = frame::parse_header(first, MaskRule::Forbidden, self.max_frame);
                if let Ok(Some(h)) = parsed {
                    let total = h.frame_len() as usize;
                    if first.len() >= total {
                        let mut whole = first.split_to(total);
                        if first.is_empty() {
                            self.chunks.pop_front();
                        }
                        let payload = whole.split_off(h.header_len);
                        return Ok(Some((h, payload)));
                    }
                }
            }
        }
        loop {
            let h = match frame::parse_header(&self.buf, MaskRule::Forbidden, self.max_frame) {
                Ok(Some(h)) => h,
                Ok(None) if self.take_chunk() => continue,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.broken(format!("invalid frame from the gateway: {e}"))),
            };
            let total = h.frame_len() as usize;
            if self.buf.len() < total {
                if self.take_chunk() {
                    continue;
                }
                self.buf.reserve(total - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(h.header_len);
            let payload = self.buf.split_to(h.payload_len as usize).freeze();
            return Ok(Some((h, payload)));
        }
    }

    /// Moves the next egress batch's first piece into the buffer (a frame
    /// that spans pieces is put together there); `false`: none left.
    fn take_chunk(&mut self) -> bool {
        match self.chunks.pop_front() {
            Some(c) => {
                self.buf.extend_from_slice(&c);
                true
            }
            None => false,
        }
    }

    fn broken(&mut self, why: String) -> PairError {
        self.open = false;
        PairError::Protocol(why)
    }
}
