use std::fmt;

use serde::{Deserialize, Serialize};

use crate::close;

/// The `code` of a `{"type":"error",…}` message: what a client's program
/// branches on (the `message` is for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    TokenExpired,
    Forbidden,
    UnknownDataset,
    AuthTimeout,
    SlowConsumer,
    Revoked,
    /// The session ended (its last connection closed, or it was released):
    /// its token cannot open new streams.
    SessionEnded,
    /// The session already holds `limits.max_connections_per_session`.
    TooManyConnections,
    TooLarge,
    QuotaExceeded,
    EdgeOffline,
    EdgeBusy,
    EdgeDisconnected,
    /// The connector reported an error for this query; the session stays
    /// open.
    QueryFailed,
    ProtocolError,
    IdleTimeout,
    ShuttingDown,
    Closed,
    /// A code this version does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnknownDataset => "unknown_dataset",
            ErrorCode::AuthTimeout => "auth_timeout",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::Revoked => "revoked",
            ErrorCode::SessionEnded => "session_ended",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::EdgeOffline => "edge_offline",
            ErrorCode::EdgeBusy => "edge_busy",
            ErrorCode::EdgeDisconnected => "edge_disconnected",
            ErrorCode::QueryFailed => "query_failed",
            ErrorCode::ProtocolError => "protocol_error",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Closed => "closed",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a session (or a connection) is being ended: the close code, the
/// error code of the message sent before it, and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub close: u16,
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(close: u16, code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            close,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Refusal::new(close::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Refusal::new(close::BAD_TOKEN, ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Refusal::new(close::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    pub fn edge_offline(message: impl Into<String>) -> Self {
        Refusal::new(close::EDGE_OFFLINE, ErrorCode::EdgeOffline, message)
    }

    /// The edge connection serving the session failed or broke the
    /// protocol.
    pub fn edge_disconnected(message: impl Into<String>) -> Self {
        Refusal::new(close::EDGE_OFFLINE, ErrorCode::EdgeDisconnected, message)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.close, self.message)
    }
}

impl std::error::Error for Refusal {}
