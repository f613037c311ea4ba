//! RFC 6455 frame headers: parse, validate, encode, unmask.
//!
//! The gateway never decodes Arrow and never re-chunks a message, so this is
//! the only part of WebSocket it needs to understand on the hot path: where a
//! frame starts and ends, whether the peer obeyed the masking rule for its
//! role, and how to turn a masked client frame into a server frame *in place*
//! (the server header is always 4 bytes shorter than the masked client header
//! it replaces, so it fits in front of the payload without moving a byte).

use thiserror::Error;

/// Largest header a frame can have: 2 + 8 (64-bit length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;
/// Largest header of a server (unmasked) frame.
pub const MAX_SERVER_HEADER_LEN: usize = 10;
/// Control frames carry at most 125 payload bytes (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    pub fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Which masking rule the peer must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskRule {
    /// RFC 6455 client → server: every frame masked.
    Required,
    /// Server → client wire format, which the project's own connector sends
    /// on the negotiated fast-path subprotocol: no frame masked.
    Forbidden,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes taken by the header on the wire (2..=14).
    pub header_len: usize,
}

impl FrameHeader {
    pub fn frame_len(&self) -> u64 {
        self.header_len as u64 + self.payload_len
    }
}

/// Why a frame was refused. Each maps to the close code RFC 6455 prescribes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("fragmented control frame")]
    FragmentedControl,
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    #[error("payload length not minimally encoded")]
    NonMinimalLength,
    #[error("64-bit payload length with the most significant bit set")]
    LengthHighBit,
    #[error("client frame is not masked")]
    Unmasked,
    #[error("frame is masked where masking is forbidden")]
    UnexpectedMask,
    #[error("frame of {0} bytes exceeds the configured limit")]
    TooLarge(u64),
    /// A text message's frames together are over the text limit.
    #[error("text message of {size}+ bytes exceeds the limit of {max} bytes")]
    TextTooLarge { size: u64, max: u64 },
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is open")]
    UnfinishedMessage,
    #[error("invalid close payload")]
    BadClosePayload,
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
}

impl FrameError {
    /// Close code to send back (RFC 6455 §7.4.1).
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::TooLarge(_) | FrameError::TextTooLarge { .. } => 1009,
            FrameError::InvalidUtf8 => 1007,
            _ => 1002,
        }
    }
}

/// Parses one frame header at the start of `buf`.
///
/// `Ok(None)` means more bytes are needed. Validation is exactly RFC 6455
/// §5.2 with no extensions negotiated, plus the configured size limit, so a
/// frame accepted here is one a conforming peer may send.
pub fn parse_header(
    buf: &[u8],
    rule: MaskRule,
    max_payload: u64,
) -> Result<Option<FrameHeader>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::UnknownOpcode(b0 & 0x0F))?;
    let masked = b1 & 0x80 != 0;
    match (rule, masked) {
        (MaskRule::Required, false) => return Err(FrameError::Unmasked),
        (MaskRule::Forbidden, true) => return Err(FrameError::UnexpectedMask),
        _ => {}
    }
    let len7 = (b1 & 0x7F) as u64;
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::FragmentedControl);
        }
        if len7 > MAX_CONTROL_PAYLOAD {
            return Err(FrameError::ControlTooLong);
        }
    }
    let (payload_len, mut pos) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let n = u16::from_be_bytes([buf[2], buf[3]]) as u64;
            if n < 126 {
                return Err(FrameError::NonMinimalLength);
            }
            (n, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n & (1 << 63) != 0 {
                return Err(FrameError::LengthHighBit);
            }
            if n <= 0xFFFF {
                return Err(FrameError::NonMinimalLength);
            }
            (n, 10)
        }
        n => (n, 2),
    };
    if payload_len > max_payload {
        return Err(FrameError::TooLarge(payload_len));
    }
    let mask = if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        let key = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(key)
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        payload_len,
        header_len: pos,
    }))
}

/// Length of the unmasked (server → client) header for a payload of `len`.
pub fn server_header_len(len: u64) -> usize {
    if len < 126 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    }
}

/// Writes an unmasked header into `out` and returns its length.
pub fn encode_server_header(fin: bool, opcode: Opcode, len: u64, out: &mut [u8]) -> usize {
    let n = server_header_len(len);
    out[0] = (if fin { 0x80 } else { 0 }) | opcode.bits();
    match n {
        2 => out[1] = len as u8,
        4 => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&len.to_be_bytes());
        }
    }
    n
}

/// Encodes a whole server frame (header + payload) into a fresh buffer.
/// Used only for the gateway's own small messages (JSON, close, pong).
pub fn encode_server_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; MAX_SERVER_HEADER_LEN + payload.len()];
    let n = encode_server_header(true, opcode, payload.len() as u64, &mut out);
    out[n..n + payload.len()].copy_from_slice(payload);
    out.truncate(n + payload.len());
    out
}

/// Encodes a whole masked client frame (used by the gateway's own tests and
/// benchmarks, which play the client role).
pub fn encode_client_frame(opcode: Opcode, fin: bool, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = vec![0u8; MAX_HEADER_LEN + payload.len()];
    let n = encode_server_header(fin, opcode, payload.len() as u64, &mut out);
    out[1] |= 0x80;
    out[n..n + 4].copy_from_slice(&key);
    let start = n + 4;
    out[start..start + payload.len()].copy_from_slice(payload);
    apply_mask(&mut out[start..start + payload.len()], key, 0);
    out.truncate(start + payload.len());
    out
}

/// XORs `buf` with the mask key, starting at key position `offset % 4`.
///
/// Works on 8-byte words with safe code; the compiler vectorises the loop.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let mut k = [0u8; 8];
    for (i, b) in k.iter_mut().enumerate() {
        *b = key[(offset + i) % 4];
    }
    let word = u64::from_ne_bytes(k);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let v = u64::from_ne_bytes(w) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i];
    }
}

/// A close frame's status, parsed and validated (RFC 6455 §5.5.1, §7.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseStatus {
    pub code: u16,
    pub reason: String,
}

/// Close codes a peer may put on the wire.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses a close payload: empty, or a valid code followed by UTF-8.
pub fn parse_close(payload: &[u8]) -> Result<Option<CloseStatus>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::BadClosePayload),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_close_code(code) {
                return Err(FrameError::BadClosePayload);
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Some(CloseStatus {
                code,
                reason: reason.to_owned(),
            }))
        }
    }
}

/// Builds a close frame; the reason is cut at a char boundary to fit 123 bytes.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode_server_frame(Opcode::Close, &payload)
}

/// Tracks the fragmentation state of one direction of a connection so that a
/// continuation without a start, or a new message inside an open one, is
/// refused (RFC 6455 §5.4).
#[derive(Debug, Default, Clone, Copy)]
pub struct Fragmentation {
    open: Option<Opcode>,
}

impl Fragmentation {
    /// Whether a fragmented message is unfinished (only its continuations,
    /// or control frames, may come next).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Checks a data frame and returns the opcode of the message it belongs to.
    pub fn on_frame(&mut self, h: &FrameHeader) -> Result<Opcode, FrameError> {
        if h.opcode.is_control() {
            return Ok(h.opcode);
        }
        let msg = match (h.opcode, self.open) {
            (Opcode::Continuation, None) => return Err(FrameError::UnexpectedContinuation),
            (Opcode::Continuation, Some(op)) => op,
            (_, Some(_)) => return Err(FrameError::UnfinishedMessage),
            (op, None) => op,
        };
        self.open = if h.fin { None } else { Some(msg) };
        Ok(msg)
    }

    /// Reverts `on_frame` (which returned `message`) for a frame that will
    /// be looked at again.
    pub fn undo(&mut self, h: &FrameHeader, message: Opcode) {
        if h.opcode.is_control() {
            return;
        }
        self.open = match h.opcode {
            Opcode::Continuation => Some(message),
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_client_frame() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let f = encode_client_frame(Opcode::Binary, true, &payload, [1, 2, 3, 4]);
            let h = parse_header(&f, MaskRule::Required, u64::MAX >> 1)
                .unwrap()
                .unwrap();
            assert_eq!(h.payload_len as usize, len);
            assert_eq!(h.header_len + len, f.len());
            let mut p = f[h.header_len..].to_vec();
            apply_mask(&mut p, h.mask.unwrap(), 0);
            assert_eq!(p, payload);
        }
    }

    #[test]
    fn mask_offset_matches_bytewise() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        for off in 0..4 {
            let mut a: Vec<u8> = (0..37u8).collect();
            let b = a.clone();
            apply_mask(&mut a, key, off);
            for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                assert_eq!(*x, y ^ key[(off + i) % 4]);
            }
        }
    }

    #[test]
    fn refuses_what_rfc_forbids() {
        let ok = encode_client_frame(Opcode::Ping, true, b"hi", [0; 4]);
        assert!(parse_header(&ok, MaskRule::Required, 1 << 20)
            .unwrap()
            .is_some());
        let mut frag_ping = ok.clone();
        frag_ping[0] &= 0x7F;
        assert_eq!(
            parse_header(&frag_ping, MaskRule::Required, 1 << 20),
            Err(FrameError::FragmentedControl)
        );
        let unmasked = encode_server_frame(Opcode::Text, b"x");
        assert_eq!(
            parse_header(&unmasked, MaskRule::Required, 1 << 20),
            Err(FrameError::Unmasked)
        );
        assert_eq!(
            parse_header(&ok, MaskRule::Forbidden, 1 << 20),
            Err(FrameError::UnexpectedMask)
        );
        let nonmin = [0x82u8, 126 | 0x80, 0, 5, 0, 0, 0, 0];
        assert_eq!(
            parse_header(&nonmin, MaskRule::Required, 1 << 20),
            Err(FrameError::NonMinimalLength)
        );
        let big = encode_client_frame(Opcode::Binary, true, &[0u8; 300], [0; 4]);
        assert_eq!(
            parse_header(&big, MaskRule::Required, 299),
            Err(FrameError::TooLarge(300))
        );
    }

    #[test]
    fn close_payload_rules() {
        assert_eq!(parse_close(&[]), Ok(None));
        assert!(parse_close(&[3]).is_err());
        assert!(parse_close(&1005u16.to_be_bytes()).is_err());
        assert!(parse_close(&999u16.to_be_bytes()).is_err());
        let mut p = 4410u16.to_be_bytes().to_vec();
        p.extend_from_slice("revoked".as_bytes());
        assert_eq!(parse_close(&p).unwrap().unwrap().code, 4410);
        p.push(0xFF);
        assert_eq!(parse_close(&p), Err(FrameError::InvalidUtf8));
    }

    #[test]
    fn fragmentation_state() {
        let mut f = Fragmentation::default();
        let h = |op, fin| FrameHeader {
            fin,
            opcode: op,
            mask: None,
            payload_len: 0,
            header_len: 2,
        };
        assert!(f.on_frame(&h(Opcode::Continuation, true)).is_err());
        assert_eq!(f.on_frame(&h(Opcode::Text, false)), Ok(Opcode::Text));
        assert_eq!(f.on_frame(&h(Opcode::Ping, true)), Ok(Opcode::Ping));
        assert!(f.clone().on_frame(&h(Opcode::Binary, true)).is_err());
        assert_eq!(f.on_frame(&h(Opcode::Continuation, true)), Ok(Opcode::Text));
        assert_eq!(f.on_frame(&h(Opcode::Binary, true)), Ok(Opcode::Binary));
    }
}
