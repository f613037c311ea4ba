//! Seed 001: the messages between a connector and the gateway on
//! `/ws/connect`, as text frames. Binary frames carry whole Arrow IPC
//! messages and are not described here.
//!
//! ```text
//! connector → {"action":"register",…}            ConnectorAction::Register
//! gateway   → {"status":"ok","data":{…}}          RegisterAnswer
//! gateway   → {"action":"get_flight_info",…}      GatewayRequest
//! connector → {"request_id":…,"type":"flight_info",…}   Reply
//! gateway   → {"action":"do_get",…}               GatewayRequest
//! connector → stream_start, binary…, stream_end | error | offload
//! gateway   → {"action":"cancel",…}               GatewayRequest
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// connector → gateway, tagged by `action`. The only action is
/// `register`: the first message on a connection, and again whenever the
/// connector's dataset list changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ConnectorAction {
    Register(Register),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Register {
    pub tenant_id: String,
    /// Absent: the edge id is the tenant id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub datasets: Vec<String>,
}

impl Register {
    /// The edge this connection serves.
    pub fn edge(&self) -> &str {
        self.edge_id.as_deref().unwrap_or(&self.tenant_id)
    }
}

/// gateway → connector: the answer to `register`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RegisterAnswer {
    Ok { data: Registered },
    Error { error: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    /// The gateway's id for this connection (for the connector's logs).
    pub session_id: String,
}

/// gateway → connector, tagged by `action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum GatewayRequest {
    GetFlightInfo {
        request_id: String,
        descriptor: Descriptor,
    },
    DoGet {
        request_id: String,
        ticket: String,
        /// A live feed: run until cancelled.
        #[serde(default, skip_serializing_if = "is_false")]
        live: bool,
        /// Export to the connector's object store and answer `offload`.
        #[serde(default, skip_serializing_if = "is_false")]
        offload: bool,
    },
    Cancel {
        request_id: String,
    },
}

impl GatewayRequest {
    pub fn request_id(&self) -> &str {
        match self {
            GatewayRequest::GetFlightInfo { request_id, .. }
            | GatewayRequest::DoGet { request_id, .. }
            | GatewayRequest::Cancel { request_id } => request_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    pub path: Vec<String>,
}

impl Descriptor {
    pub fn dataset(dataset: &str) -> Self {
        Descriptor {
            path: vec![dataset.to_owned()],
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a connector's reply is, from its `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    FlightInfo,
    StreamStart,
    StreamEnd,
    Offload,
    Error,
    /// Anything else: ignored, so newer connectors can add messages.
    #[serde(other)]
    Other,
}

impl ReplyKind {
    /// `stream_end` and `error` end a request: the worker is free after.
    pub fn ends_request(self) -> bool {
        matches!(self, ReplyKind::StreamEnd | ReplyKind::Error)
    }
}

/// connector → gateway: an answer to request `request_id`. One struct for
/// every kind (the fields a kind does not use are absent), because seed 001
/// puts `request_id` before `type` and the gateway passes unknown fields of
/// `flight_info` through to the browser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default)]
    pub request_id: String,
    #[serde(rename = "type")]
    pub kind: ReplyKind,
    /// `flight_info`: what the browser receives as `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// `stream_start`: the schema's IPC message, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// `offload`: the presigned GET of the exported stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<Value>,
    /// `offload`: the exported stream's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Value>,
    /// `stream_end`: the IPC bytes sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// `stream_end`, `offload`: rows sent or exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// `offload`: when the presigned URL stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Value>,
    /// `error`: what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Reply {
    fn new(request_id: &str, kind: ReplyKind) -> Self {
        Reply {
            request_id: request_id.to_owned(),
            kind,
            data: None,
            schema: None,
            url: None,
            bytes: None,
            total_bytes: None,
            rows: None,
            expires_at: None,
            message: None,
        }
    }

    pub fn flight_info(request_id: &str, data: Value) -> Self {
        Reply {
            data: Some(data),
            ..Reply::new(request_id, ReplyKind::FlightInfo)
        }
    }

    pub fn stream_start(request_id: &str, schema: &str) -> Self {
        Reply {
            schema: Some(Value::from(schema)),
            ..Reply::new(request_id, ReplyKind::StreamStart)
        }
    }

    pub fn stream_end(request_id: &str, total_bytes: u64, rows: Option<u64>) -> Self {
        Reply {
            total_bytes: Some(total_bytes),
            rows,
            ..Reply::new(request_id, ReplyKind::StreamEnd)
        }
    }

    pub fn offload(request_id: &str, url: &str, bytes: u64, rows: u64, expires_at: u64) -> Self {
        Reply {
            url: Some(url.into()),
            bytes: Some(bytes.into()),
            rows: Some(rows),
            expires_at: Some(expires_at.into()),
            ..Reply::new(request_id, ReplyKind::Offload)
        }
    }

    pub fn error(request_id: &str, message: &str) -> Self {
        Reply {
            message: Some(message.to_owned()),
            ..Reply::new(request_id, ReplyKind::Error)
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Reply always serializes")
    }
}

/// Anything a gateway may send a connector: a request, or the answer to a
/// `register`. Connectors parse text frames into this.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum FromGateway {
    Request(GatewayRequest),
    Answer(RegisterAnswer),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_documented_bytes() {
        let r = ConnectorAction::Register(Register {
            tenant_id: "acme".into(),
            edge_id: Some("edge-a".into()),
            version: Some("1.0".into()),
            datasets: vec!["ventas".into()],
        });
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"action":"register","tenant_id":"acme","edge_id":"edge-a","version":"1.0","datasets":["ventas"]}"#
        );
        let g = GatewayRequest::DoGet {
            request_id: "g2".into(),
            ticket: "ventas".into(),
            live: false,
            offload: true,
        };
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            r#"{"action":"do_get","request_id":"g2","ticket":"ventas","offload":true}"#
        );
        let i = GatewayRequest::GetFlightInfo {
            request_id: "i1".into(),
            descriptor: Descriptor::dataset("ventas"),
        };
        assert_eq!(
            serde_json::to_string(&i).unwrap(),
            r#"{"action":"get_flight_info","request_id":"i1","descriptor":{"path":["ventas"]}}"#
        );
        assert_eq!(
            Reply::stream_end("g2", 10, Some(2)).to_json(),
            r#"{"request_id":"g2","type":"stream_end","total_bytes":10,"rows":2}"#
        );
        assert_eq!(
            serde_json::to_string(&RegisterAnswer::Ok {
                data: Registered {
                    session_id: "c1".into()
                }
            })
            .unwrap(),
            r#"{"status":"ok","data":{"session_id":"c1"}}"#
        );
    }

    #[test]
    fn unknown_reply_kinds_parse_as_other() {
        let r: Reply = serde_json::from_str(r#"{"request_id":"x","type":"progress"}"#).unwrap();
        assert_eq!(r.kind, ReplyKind::Other);
        let r: Reply = serde_json::from_str(r#"{"type":"stream_end"}"#).unwrap();
        assert!(r.kind.ends_request() && r.request_id.is_empty());
    }

    #[test]
    fn connectors_read_requests_and_answers() {
        let m: FromGateway =
            serde_json::from_str(r#"{"action":"cancel","request_id":"g2"}"#).unwrap();
        assert_eq!(
            m,
            FromGateway::Request(GatewayRequest::Cancel {
                request_id: "g2".into()
            })
        );
        let m: FromGateway = serde_json::from_str(r#"{"status":"error","error":"no"}"#).unwrap();
        assert_eq!(
            m,
            FromGateway::Answer(RegisterAnswer::Error { error: "no".into() })
        );
    }
}
