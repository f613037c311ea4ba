//! The messages between a browser (or any client of `/stream/{sid}`) and
//! the gateway, as text frames. Binary frames carry the connector's Arrow
//! IPC messages unchanged.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ErrorCode;

/// How a `query` is delivered (seed 003's three transfer patterns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryMode {
    /// Frames forwarded as they come.
    #[default]
    Stream,
    /// Collected whole by the gateway and sent as one binary message.
    Buffered,
    /// Exported by the connector to object storage; only a presigned URL
    /// crosses the gateway.
    Offload,
}

/// browser → gateway: what a session asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrowserAction {
    /// `{"auth":"<token>"}`: the token, when the request carried none.
    Auth(String),
    List,
    /// `{"action":"info","dataset":…}`: the connector's `flight_info` for
    /// the dataset (its schema, row and byte counts) without streaming it:
    /// what Arrow Flight's `GetFlightInfo` answers.
    Info {
        dataset: String,
    },
    Query {
        dataset: String,
        mode: QueryMode,
    },
    Subscribe {
        dataset: String,
    },
}

/// The longest dataset name a request may carry.
pub const MAX_DATASET_NAME: usize = 256;

/// The shape on the wire: one object with optional fields, unknown fields
/// refused (a typo should not be silently ignored).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dataset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
}

impl BrowserAction {
    /// Parses one text message; the error is the sentence the gateway sends
    /// back with `bad_request`.
    pub fn parse(text: &str) -> Result<BrowserAction, String> {
        let w: Wire =
            serde_json::from_str(text).map_err(|e| format!("invalid JSON message: {e}"))?;
        let dataset = || match &w.dataset {
            Some(d) if !d.is_empty() && d.len() <= MAX_DATASET_NAME => Ok(d.clone()),
            _ => Err(format!(
                "action {:?} needs a \"dataset\"",
                w.action.as_deref().unwrap_or("")
            )),
        };
        match w.action.as_deref() {
            Some("list") => Ok(BrowserAction::List),
            Some("info") => Ok(BrowserAction::Info {
                dataset: dataset()?,
            }),
            Some("query") => {
                let mode = match w.mode.as_deref() {
                    None | Some("stream") => QueryMode::Stream,
                    Some("buffered") => QueryMode::Buffered,
                    Some("offload") => QueryMode::Offload,
                    Some(m) => {
                        return Err(format!(
                            "unknown query mode {m:?} (stream, buffered or offload)"
                        ))
                    }
                };
                Ok(BrowserAction::Query {
                    dataset: dataset()?,
                    mode,
                })
            }
            Some("subscribe") => Ok(BrowserAction::Subscribe {
                dataset: dataset()?,
            }),
            Some(other) => Err(format!("unknown action {other:?}")),
            None => match w.auth {
                Some(t) => Ok(BrowserAction::Auth(t)),
                None => Err("message has no \"action\"".into()),
            },
        }
    }

    /// The message as a client sends it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an action always serializes")
    }

    fn wire(&self) -> Wire {
        match self {
            BrowserAction::Auth(t) => Wire {
                auth: Some(t.clone()),
                ..Wire::default()
            },
            BrowserAction::List => Wire {
                action: Some("list".into()),
                ..Wire::default()
            },
            BrowserAction::Info { dataset } => Wire {
                action: Some("info".into()),
                dataset: Some(dataset.clone()),
                ..Wire::default()
            },
            BrowserAction::Query { dataset, mode } => Wire {
                action: Some("query".into()),
                dataset: Some(dataset.clone()),
                mode: Some(
                    match mode {
                        QueryMode::Stream => "stream",
                        QueryMode::Buffered => "buffered",
                        QueryMode::Offload => "offload",
                    }
                    .into(),
                ),
                ..Wire::default()
            },
            BrowserAction::Subscribe { dataset } => Wire {
                action: Some("subscribe".into()),
                dataset: Some(dataset.clone()),
                ..Wire::default()
            },
        }
    }
}

impl Serialize for BrowserAction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.wire().serialize(s)
    }
}

/// gateway → browser, tagged by `type`. Events are built, serialized and
/// dropped at once, so the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    /// The answer to `list`: the edge's datasets the token may read.
    Datasets { edge: String, datasets: Vec<String> },
    /// The connector's description of the dataset (`info` as it sent it).
    FlightInfo { dataset: String, info: Value },
    /// The stream begins; binary messages follow.
    StreamStart {
        dataset: String,
        schema: Value,
        #[serde(default, skip_serializing_if = "is_false")]
        live: bool,
    },
    /// The stream is whole. `bytes_forwarded` counts the session's bytes so
    /// far (absent on a live feed's end).
    StreamEnd {
        dataset: String,
        total_bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes_forwarded: Option<u64>,
    },
    /// `mode: offload`: where to download the stream.
    Offload {
        dataset: String,
        url: Value,
        bytes: Value,
        rows: Value,
        expires_at: Value,
    },
    /// `subscribe` accepted; the live feed follows.
    Subscribed { dataset: String },
    /// Something failed. Unless `code` is `query_failed`, a close frame
    /// follows.
    Error {
        code: ErrorCode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dataset: Option<String>,
        message: String,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ServerEvent {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an event always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_their_documented_bytes() {
        let e = ServerEvent::Error {
            code: ErrorCode::EdgeOffline,
            dataset: None,
            message: "edge e is offline".into(),
        };
        assert_eq!(
            e.to_json(),
            r#"{"type":"error","code":"edge_offline","message":"edge e is offline"}"#
        );
        let e = ServerEvent::StreamEnd {
            dataset: "d".into(),
            total_bytes: None,
            bytes_forwarded: Some(3),
        };
        assert_eq!(
            e.to_json(),
            r#"{"type":"stream_end","dataset":"d","total_bytes":null,"bytes_forwarded":3}"#
        );
        let e = ServerEvent::StreamStart {
            dataset: "m".into(),
            schema: "AAAA".into(),
            live: true,
        };
        assert_eq!(
            e.to_json(),
            r#"{"type":"stream_start","dataset":"m","schema":"AAAA","live":true}"#
        );
    }

    #[test]
    fn actions_parse_with_the_gateway_s_sentences() {
        assert_eq!(
            BrowserAction::parse(r#"{"action":"query","dataset":"d"}"#),
            Ok(BrowserAction::Query {
                dataset: "d".into(),
                mode: QueryMode::Stream
            })
        );
        assert_eq!(
            BrowserAction::parse(r#"{"auth":"t"}"#),
            Ok(BrowserAction::Auth("t".into()))
        );
        assert_eq!(
            BrowserAction::parse(r#"{"action":"query"}"#).unwrap_err(),
            "action \"query\" needs a \"dataset\""
        );
        assert!(BrowserAction::parse(r#"{"action":"list","extra":1}"#)
            .unwrap_err()
            .starts_with("invalid JSON message"));
        assert_eq!(
            BrowserAction::parse(r#"{"action":"query","dataset":"d","mode":"x"}"#).unwrap_err(),
            "unknown query mode \"x\" (stream, buffered or offload)"
        );
        let i = BrowserAction::Info {
            dataset: "d".into(),
        };
        assert_eq!(i.to_json(), r#"{"action":"info","dataset":"d"}"#);
        assert_eq!(BrowserAction::parse(&i.to_json()), Ok(i));
        let q = BrowserAction::Query {
            dataset: "d".into(),
            mode: QueryMode::Buffered,
        };
        assert_eq!(BrowserAction::parse(&q.to_json()), Ok(q));
    }
}
