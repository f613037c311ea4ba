//! A Flight client's session inside the gateway: one WebSocket session on
//! `/stream/{sid}` over a [`Pair`], the front playing the browser.
//!
//! The front does not re-implement what a session is: the token is
//! checked, the session joined, the dataset allowed, the quota charged, a
//! revocation honoured by the same code as for every browser. What it reads
//! back are the browser protocol's events and the connector's binary
//! messages, unchanged.

use bytes::Bytes;
use sluice_protocol::browser::{BrowserAction, ServerEvent};

use crate::auth::edge_auth::Transport;
use crate::ids::SessionId;
use crate::server::pair::{Message, Pair, PairError, Speaker};
use crate::shard::Shared;
use crate::wire::frame::{CloseStatus, Opcode};
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

/// Why a link cannot go on: what the gateway said (its error event, else
/// its close frame), or the socket pair's own fault.
#[derive(Debug)]
pub enum LinkError {
    Refused(Refusal),
    Pair(PairError),
}

impl From<PairError> for LinkError {
    fn from(e: PairError) -> Self {
        LinkError::Pair(e)
    }
}

pub struct Link {
    pair: Pair,
    /// The error event that came before the close frame, if any.
    said: Option<Refusal>,
}

impl Link {
    /// Opens a session for `token` on the shard that owns `sid`.
    pub async fn open(
        shared: &Shared,
        sid: &SessionId,
        token: &str,
        transport: Transport,
    ) -> Result<Link, LinkError> {
        let target = sid.shard(shared.shard_count());
        let bearer = format!("Bearer {token}");
        let pair = Pair::open(
            shared,
            target,
            transport,
            &format!("/stream/{sid}"),
            &[("Authorization", &bearer)],
            Speaker::FLIGHT,
        )
        .await?;
        Ok(Link { pair, said: None })
    }

    pub fn is_open(&self) -> bool {
        self.pair.open
    }

    /// Sends one action.
    pub async fn send(&mut self, action: &BrowserAction) -> Result<(), LinkError> {
        Ok(self
            .pair
            .send(Opcode::Text, action.to_json().as_bytes())
            .await?)
    }

    /// The next event.
    pub async fn next(&mut self) -> Result<Event, LinkError> {
        match self.pair.next().await? {
            Message::Binary(b) => Ok(Event::Binary(b)),
            Message::Text(t) => {
                let ev: ServerEvent = serde_json::from_slice(&t).map_err(|e| {
                    self.pair.open = false;
                    LinkError::Pair(PairError::Protocol(format!(
                        "unreadable event from the session: {e}"
                    )))
                })?;
                if let ServerEvent::Error { code, message, .. } = &ev {
                    if *code != ErrorCode::QueryFailed {
                        // A close frame follows: its code completes the refusal.
                        self.said = Some(Refusal::new(0, *code, message.clone()));
                    }
                }
                Ok(Event::Json(ev))
            }
            Message::Close(status) => Err(self.closed(status)),
        }
    }

    /// Answers an idle link's pings; `false` once it is closed.
    pub fn tend(&mut self) -> bool {
        self.pair.tend()
    }

    fn closed(&mut self, status: Option<CloseStatus>) -> LinkError {
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
