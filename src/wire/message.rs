//! Protocol messages as ready WebSocket frames: the gateway's text
//! messages (typed in `sluice_protocol`), pings, pongs and close frames.

use bytes::Bytes;
use serde::Serialize;

pub use sluice_protocol::close;
pub use sluice_protocol::{ErrorCode, Refusal};

use crate::wire::frame::{close_frame, encode_server_frame, Opcode};

/// A protocol message as one text frame.
pub fn text<T: Serialize + ?Sized>(msg: &T) -> Bytes {
    let json = serde_json::to_vec(msg).expect("protocol messages always serialize");
    Bytes::from(encode_server_frame(Opcode::Text, &json))
}

/// The answer to a ping: a pong carrying the same payload (RFC 6455 §5.5.3).
pub fn pong(ping_payload: &[u8]) -> Bytes {
    Bytes::from(encode_server_frame(Opcode::Pong, ping_payload))
}

/// A keepalive ping.
pub fn ping() -> Bytes {
    Bytes::from(encode_server_frame(Opcode::Ping, b""))
}

pub fn closing(code: u16, reason: &str) -> Bytes {
    Bytes::from(close_frame(code, reason))
}

/// `{"type":"error","code":…,"message":…}` for a browser.
pub fn error(refusal: &Refusal) -> Bytes {
    text(&sluice_protocol::browser::ServerEvent::Error {
        code: refusal.code,
        dataset: None,
        message: refusal.message.clone(),
    })
}

/// `{"status":"error","error":…}` for a connector (seed 001's reply shape).
pub fn connector_error(message: &str) -> Bytes {
    text(&sluice_protocol::connector::RegisterAnswer::Error {
        error: message.to_owned(),
    })
}
