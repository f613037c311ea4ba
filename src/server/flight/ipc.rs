//! The connector's binary messages as Flight's `FlightData`.
//!
//! A binary message holds whole Arrow IPC stream messages: continuation
//! marker, metadata length, the flatbuffer `Message`, its body. `FlightData`
//! carries the same two parts in its `data_header` and `data_body`, so each
//! is a slice of the bytes the gateway read: nothing is decoded or encoded
//! but the length fields, and the flatbuffer is read only for the body's
//! length. A message cut across two binary messages (RFC 6455 allows it) is
//! put together first.

use arrow_flight::FlightData;
use bytes::{Buf, Bytes, BytesMut};

const CONTINUATION: u32 = 0xFFFF_FFFF;

/// Cuts a stream of binary messages into `FlightData`, one per IPC message.
#[derive(Default)]
pub struct Cutter {
    /// The start of a message whose end is in a later binary message.
    carry: BytesMut,
    /// The end-of-stream marker was seen: anything after it is ignored.
    pub ended: bool,
}

impl Cutter {
    /// The whole IPC messages in `msg` (and in what was carried before it).
    pub fn push(&mut self, msg: Bytes, out: &mut Vec<FlightData>) -> Result<(), String> {
        let mut data = if self.carry.is_empty() {
            msg
        } else {
            self.carry.extend_from_slice(&msg);
            self.carry.split().freeze()
        };
        while !self.ended && !data.is_empty() {
            match cut(&data)? {
                Cut::Message { header, body, len } => {
                    out.push(FlightData {
                        data_header: data.slice(header),
                        data_body: data.slice(body),
                        ..FlightData::default()
                    });
                    data.advance(len);
                }
                Cut::End => self.ended = true,
                Cut::Short => {
                    self.carry.extend_from_slice(&data);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Bytes of an unfinished message; non-zero at the stream's end means
    /// the connector cut a message short.
    pub fn pending(&self) -> usize {
        self.carry.len()
    }
}

enum Cut {
    Message {
        header: std::ops::Range<usize>,
        body: std::ops::Range<usize>,
        len: usize,
    },
    End,
    Short,
}

fn cut(b: &[u8]) -> Result<Cut, String> {
    let word = |at: usize| -> Option<u32> {
        b.get(at..at + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    let Some(first) = word(0) else {
        return Ok(Cut::Short);
    };
    // Streams before Arrow 0.15 have no continuation marker.
    let (meta_len, at) = if first == CONTINUATION {
        match word(4) {
            Some(n) => (n as usize, 8),
            None => return Ok(Cut::Short),
        }
    } else {
        (first as usize, 4)
    };
    if meta_len == 0 {
        return Ok(Cut::End);
    }
    if meta_len > i32::MAX as usize {
        return Err(format!("IPC message metadata length {meta_len} is invalid"));
    }
    let Some(meta) = b.get(at..at + meta_len) else {
        return Ok(Cut::Short);
    };
    let message = arrow_ipc::root_as_message(meta)
        .map_err(|e| format!("connector sent an invalid Arrow IPC message header: {e}"))?;
    let body_len = usize::try_from(message.bodyLength())
        .map_err(|_| "IPC message with a negative body length".to_owned())?;
    let body_at = at + meta_len;
    let len = body_at
        .checked_add(body_len)
        .ok_or_else(|| "IPC message body length overflows".to_owned())?;
    if b.len() < len {
        return Ok(Cut::Short);
    }
    Ok(Cut::Message {
        header: at..body_at,
        body: body_at..len,
        len,
    })
}

/// The first IPC message of `b` (a schema message as the connector sends
/// it, perhaps followed by an end marker), as Flight's `schema` bytes.
pub fn first_message(b: &[u8]) -> Option<&[u8]> {
    match cut(b) {
        Ok(Cut::Message { len, .. }) => Some(&b[..len]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, RecordBatch, StringArray};
    use arrow_flight::utils::flight_data_to_batches;
    use arrow_ipc::writer::StreamWriter;
    use arrow_schema::{DataType, Field, Schema};

    use super::*;

    fn stream(batches: usize) -> (Vec<u8>, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let mut w = StreamWriter::try_new(Vec::new(), &schema).unwrap();
        let mut sent = Vec::new();
        for i in 0..batches as i64 {
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(vec![i, i + 1, i + 2])),
                    Arc::new(StringArray::from(vec![Some("a"), None, Some("ccc")])),
                ],
            )
            .unwrap();
            w.write(&b).unwrap();
            sent.push(b);
        }
        w.finish().unwrap();
        (w.into_inner().unwrap(), sent)
    }

    fn decode(data: Vec<FlightData>) -> Vec<RecordBatch> {
        flight_data_to_batches(&data).unwrap()
    }

    #[test]
    fn whole_messages_become_flight_data_that_decodes_to_the_same_batches() {
        let (bytes, sent) = stream(3);
        let mut c = Cutter::default();
        let mut out = Vec::new();
        c.push(Bytes::from(bytes), &mut out).unwrap();
        assert!(c.ended);
        assert_eq!(c.pending(), 0);
        assert_eq!(out.len(), 4, "a schema and three batches");
        assert_eq!(decode(out), sent);
    }

    #[test]
    fn a_message_cut_anywhere_is_put_together() {
        let (bytes, sent) = stream(2);
        for at in [1, 4, 7, 9, 60, bytes.len() - 9, bytes.len() - 1] {
            let mut c = Cutter::default();
            let mut out = Vec::new();
            c.push(Bytes::copy_from_slice(&bytes[..at]), &mut out)
                .unwrap();
            c.push(Bytes::copy_from_slice(&bytes[at..]), &mut out)
                .unwrap();
            assert!(c.ended, "cut at {at}");
            assert_eq!(decode(out), sent, "cut at {at}");
        }
    }

    #[test]
    fn a_garbled_header_is_an_error_not_a_panic() {
        let mut bad = vec![0xFF, 0xFF, 0xFF, 0xFF, 16, 0, 0, 0];
        bad.extend_from_slice(&[0xAB; 16]);
        let mut c = Cutter::default();
        assert!(c.push(Bytes::from(bad), &mut Vec::new()).is_err());
        // A length past what a message may be.
        let huge = vec![0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(Cutter::default()
            .push(Bytes::from(huge), &mut Vec::new())
            .is_err());
    }

    #[test]
    fn the_schema_is_the_first_message() {
        let (bytes, _) = stream(1);
        let first = first_message(&bytes).unwrap();
        let schema = arrow_ipc::convert::try_schema_from_ipc_buffer(first).unwrap();
        assert_eq!(schema.field(0).name(), "id");
    }
}
