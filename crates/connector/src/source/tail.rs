//! Following the last file of a CSV / NDJSON dataset as a live feed: the
//! lines appended after the feed started become batches as soon as they
//! are complete.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow_schema::SchemaRef;

use super::{Dataset, Emit, LiveFeed};
use crate::ipc::IpcFramer;

/// How often a tailed file is looked at.
const TAIL_POLL: Duration = Duration::from_millis(50);

/// A followed file: where its tail began, and the format that parses it.
pub(super) struct Tail<'a> {
    ds: &'a Dataset,
    from: (PathBuf, u64, u64),
}

impl<'a> Tail<'a> {
    pub(super) fn start(ds: &'a Dataset) -> Result<Self, String> {
        Ok(Tail {
            ds,
            from: tail_start(ds)?,
        })
    }
}

impl LiveFeed for Tail<'_> {
    fn run(
        &mut self,
        cancel: &AtomicBool,
        schema: &SchemaRef,
        framer: &mut IpcFramer,
        send: &mut Emit<'_>,
    ) -> Result<bool, String> {
        tail(self.ds, self.from.clone(), cancel, schema, framer, send)
    }
}

/// The followed file (the dataset's last), its length and its line count now.
fn tail_start(ds: &Dataset) -> Result<(PathBuf, u64, u64), String> {
    let path: PathBuf = ds
        .files()
        .map_err(|e| e.0)?
        .pop()
        .ok_or_else(|| format!("dataset {}: no file to follow", ds.name()))?;
    let at = |e: &dyn std::fmt::Display| ds.err_at(Some(&path), e).0;
    let pos = std::fs::metadata(&path).map_err(|e| at(&e))?.len();
    let lines = count_lines(&path).map_err(|e| at(&e))?;
    Ok((path, pos, lines))
}

/// Follows the file from where `tail_start` found its end: complete new
/// lines become a batch; a file that shrank was rotated or truncated and is
/// read again from its start.
fn tail(
    ds: &Dataset,
    (path, mut pos, mut line_no): (PathBuf, u64, u64),
    cancel: &AtomicBool,
    schema: &SchemaRef,
    framer: &mut IpcFramer,
    send: &mut Emit<'_>,
) -> Result<bool, String> {
    let at = |e: &dyn std::fmt::Display| ds.err_at(Some(&path), e).0;
    while !cancel.load(Ordering::Relaxed) {
        std::thread::sleep(TAIL_POLL);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(_) => continue, // being rotated
        };
        if len < pos {
            pos = 0;
            line_no = 0;
        }
        if len == pos {
            continue;
        }
        let mut f = File::open(&path).map_err(|e| at(&e))?;
        f.seek(SeekFrom::Start(pos)).map_err(|e| at(&e))?;
        let mut buf = Vec::with_capacity((len - pos) as usize);
        f.take(len - pos)
            .read_to_end(&mut buf)
            .map_err(|e| at(&e))?;
        // Only complete lines; a half-written last line waits.
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let lines = &buf[..=end];
        let first_line = line_no + 1;
        for batch in ds
            .source
            .parse_lines(ds, schema, lines, pos == 0)
            .map_err(|e| at(&format!("lines from {first_line}: {e}")))?
        {
            if !send(framer, &batch)? {
                return Ok(false);
            }
        }
        line_no += lines.iter().filter(|&&b| b == b'\n').count() as u64;
        pos += lines.len() as u64;
    }
    Ok(true)
}

fn count_lines(path: &PathBuf) -> std::io::Result<u64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok(n);
        }
        n += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}
