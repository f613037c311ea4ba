//! A Flight client's session inside the gateway: one WebSocket session on
//! `/stream/{sid}`, spoken by the Flight front on behalf of the client.
//!
//! The front does not re-implement what a session is. It hands a shard one
//! end of a Unix socket pair exactly as the TLS front does, and plays the
//! browser on the other: the token is checked, the session joined, the
//! dataset allowed, the quota charged, a revocation honoured by the same
//! code as for every browser. What it reads back are the browser protocol's
//! events and the connector's binary messages, unchanged.

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use sluice_protocol::browser::{BrowserAction, ServerEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::auth::edge_auth::Transport;
use crate::ids::SessionId;
use crate::shard::{ShardMsg, Shared};
use crate::wire::frame::{self, MaskRule, Opcode};
use crate::wire::handoff::Detached;
use crate::wire::message::{close, ErrorCode, Refusal};

/// What the session says next. Built and taken apart at once, so the
/// size of the event variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    Json(ServerEvent),
    /// One binary message: whole Arrow IPC messages from the connector.
    Binary(Bytes),
}

/// Why a link cannot go on. `Refused` carries what the gateway said (its
/// error event, else its close frame); the rest are the link's own faults.
#[derive(Debug)]
pub enum LinkError {
    Refused(Refusal),
    /// The shard refused the upgrade with an HTTP status.
    Http(u16, String),
    Io(std::io::Error),
    Protocol(String),
}

impl From<std::io::Error> for LinkError {
    fn from(e: std::io::Error) -> Self {
        LinkError::Io(e)
    }
}

pub struct Link {
    sock: UnixStream,
    buf: BytesMut,
    max_frame: u64,
    /// The error event that came before the close frame, if any.
    said: Option<Refusal>,
    /// A fragmented message being put together (rare: connectors send
    /// whole messages, but RFC 6455 lets any message be split).
    partial: Option<(Opcode, BytesMut)>,
    pub open: bool,
}

impl Link {
    /// Opens a session for `token` on the shard that owns `sid`.
    pub async fn open(
        shared: &Shared,
        sid: &SessionId,
        token: &str,
        peer: Option<IpAddr>,
        tls: bool,
    ) -> Result<Link, LinkError> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let sock = UnixStream::from_std(ours)?;
        let transport = if tls {
            Transport::Tls { client: None, peer }
        } else {
            Transport::Plain
        };
        let target = sid.shard(shared.shard_count());
        let msg = ShardMsg::AdoptFronted {
            sock: Detached {
                fd: OwnedFd::from(theirs),
                buffered: BytesMut::new(),
            },
            transport,
        };
        if shared.mailboxes[target].try_send(msg).is_err() {
            return Err(LinkError::Http(503, "gateway busy; retry".into()));
        }
        let mut link = Link {
            sock,
            buf: BytesMut::with_capacity(4096),
            max_frame: shared.cfg.limits.max_frame_bytes as u64,
            said: None,
            partial: None,
            open: true,
        };
        let wait = Duration::from_millis(shared.cfg.timeouts.handshake_ms);
        match tokio::time::timeout(wait, link.upgrade(sid, token)).await {
            Ok(r) => r?,
            Err(_) => return Err(LinkError::Http(504, "session handshake timed out".into())),
        }
        Ok(link)
    }

    async fn upgrade(&mut self, sid: &SessionId, token: &str) -> Result<(), LinkError> {
        // The key proves nothing on a local socket pair; any 16 bytes do.
        let key = base64::engine::general_purpose::STANDARD.encode(*b"sluice-flight-01");
        let head = format!(
            "GET /stream/{sid} HTTP/1.1\r\nHost: flight\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        self.sock.write_all(head.as_bytes()).await?;
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if self.buf.len() > 16 * 1024 {
                return Err(LinkError::Protocol("response head too large".into()));
            }
            if self.sock.read_buf(&mut self.buf).await? == 0 {
                return Err(LinkError::Protocol(
                    "session closed during the upgrade".into(),
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
        Err(LinkError::Http(status, body))
    }

    /// Sends one action as a masked text frame.
    pub async fn send(&mut self, action: &BrowserAction) -> Result<(), LinkError> {
        let json = action.to_json();
        let f = frame::encode_client_frame(Opcode::Text, true, json.as_bytes(), mask_key());
        self.sock.write_all(&f).await?;
        Ok(())
    }

    /// The next event; pings are answered on the way.
    pub async fn next(&mut self) -> Result<Event, LinkError> {
        loop {
            if let Some(ev) = self.parse()? {
                return Ok(ev);
            }
            if self.sock.read_buf(&mut self.buf).await? == 0 {
                self.open = false;
                return Err(self.closed(None));
            }
        }
    }

    /// Reads what already arrived without waiting: answers the pings an
    /// idle link gets and notices a close. `false`: the link is done.
    pub fn tend(&mut self) -> bool {
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
        // else means the session moved on without us.
        while self.open {
            match self.parse() {
                Ok(None) => break,
                Ok(Some(_)) | Err(_) => self.open = false,
            }
        }
        self.open
    }

    /// One event from the buffer, if a whole one is there.
    fn parse(&mut self) -> Result<Option<Event>, LinkError> {
        loop {
            let h = match frame::parse_header(&self.buf, MaskRule::Forbidden, self.max_frame) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.broken(format!("invalid frame from the session: {e}"))),
            };
            let total = h.frame_len() as usize;
            if self.buf.len() < total {
                self.buf.reserve(total - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(h.header_len);
            let payload = self.buf.split_to(h.payload_len as usize);
            match h.opcode {
                Opcode::Ping => {
                    let pong = frame::encode_client_frame(Opcode::Pong, true, &payload, mask_key());
                    // A pong is a few bytes on a local socket: it fits.
                    let _ = self.sock.try_write(&pong);
                }
                Opcode::Pong => {}
                Opcode::Close => {
                    self.open = false;
                    let status = frame::parse_close(&payload).ok().flatten();
                    return Err(self.closed(status));
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
                    return self.message(op, held.freeze()).map(Some);
                }
                op if !h.fin => self.partial = Some((op, payload)),
                op => return self.message(op, payload.freeze()).map(Some),
            }
        }
    }

    fn message(&mut self, op: Opcode, payload: Bytes) -> Result<Event, LinkError> {
        if op == Opcode::Binary {
            return Ok(Event::Binary(payload));
        }
        let ev: ServerEvent = serde_json::from_slice(&payload)
            .map_err(|e| self.broken(format!("unreadable event from the session: {e}")))?;
        if let ServerEvent::Error { code, message, .. } = &ev {
            if *code != ErrorCode::QueryFailed {
                // A close frame follows: its code completes the refusal.
                self.said = Some(Refusal::new(0, *code, message.clone()));
            }
        }
        Ok(Event::Json(ev))
    }

    fn closed(&mut self, status: Option<frame::CloseStatus>) -> LinkError {
        let code = status.as_ref().map_or(close::GOING_AWAY, |s| s.code);
        match self.said.take() {
            Some(mut r) => {
                r.close = code;
                LinkError::Refused(r)
            }
            None => {
                let reason = status
                    .map(|s| s.reason)
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| "session closed".into());
                LinkError::Refused(Refusal::new(code, by_close(code), reason))
            }
        }
    }

    fn broken(&mut self, why: String) -> LinkError {
        self.open = false;
        LinkError::Protocol(why)
    }
}

/// The error code a close frame stands for, when no error event came first.
fn by_close(code: u16) -> ErrorCode {
    match code {
        close::BAD_TOKEN => ErrorCode::Unauthorized,
        close::FORBIDDEN => ErrorCode::Forbidden,
        close::NOT_FOUND => ErrorCode::UnknownDataset,
        close::REVOKED => ErrorCode::Revoked,
        close::QUOTA => ErrorCode::QuotaExceeded,
        close::EDGE_OFFLINE => ErrorCode::EdgeOffline,
        close::GOING_AWAY => ErrorCode::ShuttingDown,
        close::NORMAL => ErrorCode::Closed,
        _ => ErrorCode::Unknown,
    }
}

fn mask_key() -> [u8; 4] {
    // Masking guards browsers' intermediaries against cache poisoning; on a
    // local socket pair any key does, so it need not be random.
    [0x5a, 0x1c, 0xe0, 0x07]
}
