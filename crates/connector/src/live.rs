//! Live feeds, streamed to `subscribe` until the gateway cancels them (the
//! sources are in `source::metrics` and `source::tail`). Each batch goes out
//! as soon as it exists (no waiting to fill a message), after a first
//! message that holds only the schema, which the gateway replays to late
//! joiners.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arrow_array::RecordBatch;

use crate::ipc::IpcFramer;
use crate::source::Dataset;
use crate::stream::{Outcome, Piece};

/// Streams a live dataset until `cancel`; ends with `Done` (the feed was
/// stopped) or `Failed`.
pub fn run(
    ds: &Arc<Dataset>,
    chunk: usize,
    cancel: &AtomicBool,
    mut emit: impl FnMut(Piece) -> bool,
) -> Outcome {
    let schema = match ds.files().and_then(|f| ds.schema(&f)) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e.0),
    };
    // Where a tail starts is fixed before the viewer hears of the feed:
    // a line appended once it has the schema is a new line.
    let mut feed = match ds.live() {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(e),
    };
    let (start, mut framer) = match crate::stream::begin(ds, &schema, chunk) {
        Ok(x) => x,
        Err(o) => return o,
    };
    if !emit(Piece::Start(start)) {
        return Outcome::Gone;
    }
    for m in framer.flush() {
        if !emit(Piece::Data(m)) {
            return Outcome::Gone;
        }
    }
    let mut send = |framer: &mut IpcFramer, b: &RecordBatch| -> Result<bool, String> {
        let mut msgs = framer
            .push(b)
            .map_err(|e| format!("dataset {}: encoding: {e}", ds.name()))?;
        msgs.extend(framer.flush());
        Ok(msgs.into_iter().all(|m| emit(Piece::Data(m))))
    };
    let result = feed.run(cancel, &schema, &mut framer, &mut send);
    match result {
        Ok(true) => Outcome::Done {
            bytes: framer.total,
            rows: framer.rows,
        },
        Ok(false) => Outcome::Gone,
        Err(e) => Outcome::Failed(e),
    }
}
