//! One dataset read end to end as an IPC stream: used by the workers (the
//! pieces go to the gateway) and by `--convert` (they go to a file), so
//! the benchmark measures exactly what is served.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine;

use crate::ipc::{schema_message, IpcFramer};
use crate::source::Dataset;

pub enum Piece {
    /// The schema, base64 of its IPC message, for `stream_start`.
    Start(String),
    /// One binary message of whole IPC messages.
    Data(Vec<u8>),
}

pub enum Outcome {
    Done {
        bytes: u64,
        rows: u64,
    },
    /// The stream must end with this error text.
    Failed(String),
    /// The receiver went away; nothing more can be said.
    Gone,
}

/// The `stream_start` schema (base64 IPC) and the framer for a stream.
pub(crate) fn begin(
    ds: &Dataset,
    schema: &arrow_schema::Schema,
    chunk: usize,
) -> Result<(String, IpcFramer), Outcome> {
    let fail = |e: &dyn std::fmt::Display| Outcome::Failed(format!("dataset {}: {e}", ds.name()));
    let start = schema_message(schema)
        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
        .map_err(|e| fail(&e))?;
    let framer = IpcFramer::new(schema, ds.cfg.compression, chunk).map_err(|e| fail(&e))?;
    Ok((start, framer))
}

/// Streams `ds`; `emit` returns false when the receiver is gone.
pub fn run(
    ds: &Arc<Dataset>,
    chunk: usize,
    cancel: &AtomicBool,
    mut emit: impl FnMut(Piece) -> bool,
) -> Outcome {
    let (schema, batches) = match ds.open() {
        Ok(x) => x,
        Err(e) => return Outcome::Failed(e.0),
    };
    let fail = |e: &dyn std::fmt::Display| Outcome::Failed(format!("dataset {}: {e}", ds.name()));
    let (start, mut framer) = match begin(ds, &schema, chunk) {
        Ok(x) => x,
        Err(o) => return o,
    };
    if !emit(Piece::Start(start)) {
        return Outcome::Gone;
    }
    for b in batches {
        if cancel.load(Ordering::Relaxed) {
            return Outcome::Failed("cancelled by the gateway".into());
        }
        let b = match b {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(e.0),
        };
        match framer.push(&b) {
            Ok(msgs) => {
                for m in msgs {
                    if !emit(Piece::Data(m)) {
                        return Outcome::Gone;
                    }
                }
            }
            Err(e) => return fail(&format!("encoding: {e}")),
        }
    }
    let rows = framer.rows;
    let mut bytes = framer.total;
    match framer.finish() {
        Ok(msgs) => {
            for m in msgs {
                bytes += m.len() as u64;
                if !emit(Piece::Data(m)) {
                    return Outcome::Gone;
                }
            }
            Outcome::Done { bytes, rows }
        }
        Err(e) => fail(&format!("encoding: {e}")),
    }
}
