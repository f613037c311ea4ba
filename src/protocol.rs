//! The JSON messages of the public wire protocol (README, "Wire protocol"),
//! and the close codes the gateway sends.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::frame::{close_frame, encode_server_frame, Opcode};

/// Close codes (ARCHITECTURE.md). 1xxx are RFC 6455's own.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_UTF8: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const BAD_REQUEST: u16 = 4400;
    pub const BAD_TOKEN: u16 = 4401;
    pub const FORBIDDEN: u16 = 4403;
    pub const NOT_FOUND: u16 = 4404;
    pub const AUTH_TIMEOUT: u16 = 4408;
    pub const SLOW_CONSUMER: u16 = 4409;
    pub const REVOKED: u16 = 4410;
    pub const TOO_LARGE: u16 = 4413;
    pub const QUOTA: u16 = 4429;
    pub const EDGE_OFFLINE: u16 = 4503;
}

/// connector → gateway, first message on `/ws/connect`.
#[derive(Debug, Deserialize)]
pub struct Register {
    pub action: String,
    pub tenant_id: String,
    #[serde(default)]
    pub edge_id: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub datasets: Vec<String>,
}

/// connector → gateway, anything with a `request_id`.
#[derive(Debug, Deserialize)]
pub struct Reply {
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub total_bytes: Option<u64>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub datasets: Option<Vec<String>>,
}

/// browser → gateway.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub dataset: Option<String>,
    #[serde(default)]
    pub auth: Option<String>,
    /// `query` only: `"stream"` (default) or `"buffered"`.
    #[serde(default)]
    pub mode: Option<String>,
}

pub fn text(v: &Value) -> Bytes {
    Bytes::from(encode_server_frame(Opcode::Text, v.to_string().as_bytes()))
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
pub fn error(code: &str, message: &str) -> Bytes {
    text(&json!({"type": "error", "code": code, "message": message}))
}

/// `{"status":"error","error":…}` for a connector (seed 001's reply shape).
pub fn connector_error(message: &str) -> Bytes {
    text(&json!({"status": "error", "error": message}))
}
