//! Blocking WebSocket plumbing for the setup phase and for the sources.
//!
//! Sessions are set up one after another on blocking sockets (clear errors,
//! no ordering puzzles); once a session is streaming, its sink side moves to
//! the async runtime (`sink`) and its source side stays a blocking socket
//! written on a precise schedule. Frames are encoded with the gateway's own
//! `sluice::wire::frame` helpers; the measured sinks decode with a different
//! implementation (fastwebsockets), so a codec bug cannot hide itself.

use serde::Serialize;
use sluice_protocol::browser::ServerEvent;
use sluice_protocol::connector::{ConnectorAction, GatewayRequest, Register, Reply};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sluice::wire::frame::{
    apply_mask, encode_client_frame, encode_server_frame, parse_header, MaskRule, Opcode,
};

/// How a source puts frames on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Client role (RFC 6455 requires a mask): relay edges, seed-001 workers.
    Masked,
    /// Server wire format: origins, proxies' upstreams, the fast path.
    Plain,
}

impl Encoding {
    pub fn frame(self, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        match self {
            Encoding::Masked => {
                encode_client_frame(opcode, true, payload, [0x5a, 0x17, 0xc3, 0x09])
            }
            Encoding::Plain => encode_server_frame(opcode, payload),
        }
    }
}

/// A client connection during setup: handshake done, control messages read
/// with a deadline. Bytes read past the last frame are kept for the sink.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    /// Frames from the peer: unmasked from a server, masked from a client.
    rule: MaskRule,
}

/// The client's opening handshake (RFC 6455 §4.1) with extra headers.
pub fn upgrade_request(addr: SocketAddr, path: &str, headers: &[(&str, String)]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// A connector's `stream_end` for request `rid`, ready to write.
pub fn stream_end(enc: Encoding, rid: &str) -> Vec<u8> {
    enc.frame(
        Opcode::Text,
        Reply::stream_end(rid, 0, None).to_json().as_bytes(),
    )
}

/// A connector's `register` for the loader's edge.
pub fn register(tenant: &str, edge: &str, datasets: &[&str]) -> ConnectorAction {
    ConnectorAction::Register(Register {
        tenant_id: tenant.to_owned(),
        edge_id: Some(edge.to_owned()),
        version: Some("loadtest".into()),
        datasets: datasets.iter().map(|d| d.to_string()).collect(),
    })
}

/// Opens `path` on `addr` as a WebSocket client.
pub fn connect(addr: SocketAddr, path: &str, headers: &[(&str, String)]) -> Result<Conn> {
    let stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let req = upgrade_request(addr, path, headers);
    let mut c = Conn {
        stream,
        buf: Vec::with_capacity(4096),
        start: 0,
        rule: MaskRule::Forbidden,
    };
    c.stream.write_all(req.as_bytes())?;
    c.stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut chunk = [0u8; 4096];
    loop {
        let n = c
            .stream
            .read(&mut chunk)
            .with_context(|| format!("handshake {path}"))?;
        if n == 0 {
            bail!("{path}: connection closed during the handshake");
        }
        c.buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !c.buf.starts_with(b"HTTP/1.1 101") {
                let line = String::from_utf8_lossy(&c.buf[..at]);
                bail!(
                    "{path}: upgrade refused: {}",
                    line.lines().next().unwrap_or("")
                );
            }
            c.start = at + 4;
            return Ok(c);
        }
        if c.buf.len() > 16 * 1024 {
            bail!("{path}: response head too large");
        }
    }
}

impl Conn {
    /// Wraps an accepted server-side socket (the origin's), reading masked frames.
    pub fn accepted(stream: TcpStream, pending: Vec<u8>) -> Conn {
        Conn {
            stream,
            buf: pending,
            start: 0,
            rule: MaskRule::Required,
        }
    }

    /// Next data frame (pings are answered, pongs skipped) within `within`.
    pub fn next_frame(&mut self, within: Duration) -> Result<(Opcode, Vec<u8>)> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(h) = parse_header(&self.buf[self.start..], self.rule, 1 << 30)
                .map_err(|e| anyhow::anyhow!("bad frame from peer: {e:?}"))?
            {
                let total = h.frame_len() as usize;
                if self.buf.len() - self.start >= total {
                    let at = self.start + h.header_len;
                    let mut payload = self.buf[at..self.start + total].to_vec();
                    self.start += total;
                    if let Some(k) = h.mask {
                        apply_mask(&mut payload, k, 0);
                    }
                    match h.opcode {
                        Opcode::Ping => {
                            let enc = if self.rule == MaskRule::Forbidden {
                                Encoding::Masked
                            } else {
                                Encoding::Plain
                            };
                            self.stream.write_all(&enc.frame(Opcode::Pong, &payload))?;
                            continue;
                        }
                        Opcode::Pong => continue,
                        op => return Ok((op, payload)),
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no message from the peer within {within:?}");
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 16 * 1024];
            let n = self
                .stream
                .read(&mut chunk)
                .context("waiting for a message")?;
            if n == 0 {
                bail!("peer closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Next text message as JSON; a close frame is an error naming its code.
    pub fn next_json(&mut self, within: Duration) -> Result<Value> {
        loop {
            match self.next_frame(within)? {
                (Opcode::Text, p) => return Ok(serde_json::from_slice(&p)?),
                (Opcode::Close, p) => {
                    let code = p.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    bail!(
                        "closed by peer: {:?} {}",
                        code,
                        String::from_utf8_lossy(p.get(2..).unwrap_or(&[]))
                    )
                }
                _ => continue,
            }
        }
    }

    /// Waits for a text message whose `key` equals `value`.
    pub fn wait_for(&mut self, key: &str, value: &str, within: Duration) -> Result<Value> {
        loop {
            let v = self.next_json(within)?;
            if v[key] == value {
                return Ok(v);
            }
            if v["type"] == "error" || v["status"] == "error" {
                bail!("peer answered an error while waiting for {key}={value}: {v}");
            }
        }
    }

    pub fn send_json<T: Serialize + ?Sized>(&mut self, enc: Encoding, msg: &T) -> Result<()> {
        let text = serde_json::to_vec(msg)?;
        self.stream.write_all(&enc.frame(Opcode::Text, &text))?;
        Ok(())
    }

    /// Waits for the gateway's `do_get` on this connector connection;
    /// returns its request id.
    pub fn wait_do_get(&mut self, within: Duration) -> Result<String> {
        loop {
            let v = self.next_json(within)?;
            if let Ok(GatewayRequest::DoGet { request_id, .. }) = serde_json::from_value(v) {
                return Ok(request_id);
            }
        }
    }

    /// Waits for the `stream_start` of a query or feed on a browser.
    pub fn wait_stream_start(&mut self, within: Duration) -> Result<()> {
        loop {
            let v = self.next_json(within)?;
            match serde_json::from_value::<ServerEvent>(v.clone()) {
                Ok(ServerEvent::StreamStart { .. }) => return Ok(()),
                Ok(ServerEvent::Error { .. }) => bail!("the gateway answered an error: {v}"),
                _ => {}
            }
        }
    }

    /// The socket and the bytes read past the last frame handed out.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        let _ = self.stream.set_read_timeout(None);
        (self.stream, self.buf[self.start..].to_vec())
    }
}

/// The sending end of one stream, on a blocking socket.
pub struct Source {
    pub stream: TcpStream,
    pub enc: Encoding,
    /// Frame that ends the stream cleanly (a connector's `stream_end`).
    pub finish: Option<Vec<u8>>,
}

impl Source {
    pub fn send(&mut self, opcode: Opcode, payload: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(&self.enc.frame(opcode, payload))
    }

    pub fn end(&mut self) {
        if let Some(f) = self.finish.take() {
            let _ = self.stream.write_all(&f);
        }
    }
}

/// Payload of a timed frame: scheduled send time (ns since the run's epoch)
/// and sequence number in the first 16 bytes, so the sink measures latency
/// from the schedule (coordinated-omission correction) without a side channel.
pub fn stamped(size: usize, sched_ns: u64, seq: u64) -> Vec<u8> {
    let mut p = vec![0x5au8; size.max(16)];
    p[..8].copy_from_slice(&sched_ns.to_le_bytes());
    p[8..16].copy_from_slice(&seq.to_le_bytes());
    p
}

pub fn stamp_of(payload: &[u8]) -> Option<(u64, u64)> {
    let s = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let q = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((s, q))
}

impl Conn {
    /// Rebuilds a client connection from `into_parts`.
    pub fn from_client_parts(stream: TcpStream, pending: Vec<u8>) -> Conn {
        Conn {
            stream,
            buf: pending,
            start: 0,
            rule: MaskRule::Forbidden,
        }
    }
}
