//! Relay mode (seed 000): the one message the gateway itself sends a relay
//! edge; every other frame is the browser's and the edge's own.

use serde::{Deserialize, Serialize};

/// gateway → relay edge, once, when a browser session takes the
/// connection; data frames flow both ways unchanged after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RelayEvent {
    Paired { session_id: String, sub: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_keeps_its_documented_bytes() {
        let p = RelayEvent::Paired {
            session_id: "s-1".into(),
            sub: "alice".into(),
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"type":"paired","session_id":"s-1","sub":"alice"}"#
        );
    }
}
