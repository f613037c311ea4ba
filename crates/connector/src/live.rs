//! Live feeds, streamed to `subscribe` until the gateway cancels them: a
//! synthetic machine-metrics generator (for demos and load tests) and the
//! tail of an appending CSV / NDJSON file. Each batch goes out as soon as
//! it exists (no waiting to fill a message), after a first message that
//! holds only the schema, which the gateway replays to late joiners.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_array::{Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::config::Format;
use crate::ipc::IpcFramer;
use crate::source::Dataset;
use crate::stream::{Outcome, Piece};

/// How often a tailed file is looked at.
const TAIL_POLL: Duration = Duration::from_millis(50);

pub fn metrics_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("machine", DataType::Utf8, false),
        Field::new("temp_c", DataType::Float64, false),
        Field::new("rpm", DataType::Float64, false),
        Field::new("vibration_mm_s", DataType::Float64, false),
    ]))
}

/// Streams a live dataset until `cancel`; ends with `Done` (the feed was
/// stopped) or `Failed`.
pub fn run(
    ds: &Arc<Dataset>,
    chunk: usize,
    cancel: &AtomicBool,
    mut emit: impl FnMut(Piece) -> bool,
) -> Outcome {
    let schema = match ds.format {
        Format::Metrics => metrics_schema(),
        _ => match ds.files().and_then(|f| ds.schema(&f)) {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(e.0),
        },
    };
    // Where the tail starts is fixed before the viewer hears of the feed:
    // a line appended once it has the schema is a new line.
    let from = match ds.format {
        Format::Metrics => None,
        _ => match tail_start(ds) {
            Ok(f) => Some(f),
            Err(e) => return Outcome::Failed(e),
        },
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
    let result = match ds.format {
        Format::Metrics => metrics(ds, cancel, &schema, &mut framer, &mut send),
        _ => tail(
            ds,
            from.expect("set for files"),
            cancel,
            &schema,
            &mut framer,
            &mut send,
        ),
    };
    match result {
        Ok(true) => Outcome::Done {
            bytes: framer.total,
            rows: framer.rows,
        },
        Ok(false) => Outcome::Gone,
        Err(e) => Outcome::Failed(e),
    }
}

type Send<'a> = dyn FnMut(&mut IpcFramer, &RecordBatch) -> Result<bool, String> + 'a;

fn metrics(
    ds: &Dataset,
    cancel: &AtomicBool,
    schema: &SchemaRef,
    framer: &mut IpcFramer,
    send: &mut Send<'_>,
) -> Result<bool, String> {
    let period = Duration::from_secs_f64(1.0 / ds.cfg.rate_hz);
    let n = ds.cfg.machines;
    let names: Vec<String> = (0..n).map(|i| format!("machine-{i:02}")).collect();
    // A random walk per machine, so charts move like real sensors.
    let mut temp: Vec<f64> = (0..n).map(|i| 60.0 + i as f64).collect();
    let mut rpm: Vec<f64> = (0..n).map(|i| 1500.0 + 50.0 * i as f64).collect();
    let mut next = Instant::now();
    while !cancel.load(Ordering::Relaxed) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        for i in 0..n {
            temp[i] = (temp[i] + (rand::random::<f64>() - 0.5) * 0.8).clamp(20.0, 120.0);
            rpm[i] = (rpm[i] + (rand::random::<f64>() - 0.5) * 40.0).clamp(0.0, 6000.0);
        }
        let vib: Vec<f64> = rpm
            .iter()
            .map(|r| r / 1000.0 + rand::random::<f64>() * 0.5)
            .collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![now_ms; n])),
                Arc::new(StringArray::from(names.clone())),
                Arc::new(Float64Array::from(temp.clone())),
                Arc::new(Float64Array::from(rpm.clone())),
                Arc::new(Float64Array::from(vib)),
            ],
        )
        .map_err(|e| format!("dataset {}: {e}", ds.name()))?;
        if !send(framer, &batch)? {
            return Ok(false);
        }
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    Ok(true)
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
    send: &mut Send<'_>,
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
        for batch in parse_lines(ds, schema, lines, pos == 0)
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

fn parse_lines(
    ds: &Dataset,
    schema: &SchemaRef,
    lines: &[u8],
    from_start: bool,
) -> Result<Vec<RecordBatch>, String> {
    match ds.format {
        Format::Csv => {
            let header = from_start && ds.cfg.header;
            let r = ds
                .csv_reader_builder(schema, header)
                .build(std::io::Cursor::new(lines))
                .map_err(|e| e.to_string())?;
            r.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
        }
        _ => {
            let mut d = arrow_json::ReaderBuilder::new(schema.clone())
                .build_decoder()
                .map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for line in lines
                .split(|&b| b == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            {
                d.decode(line).map_err(|e| e.to_string())?;
            }
            if let Some(b) = d.flush().map_err(|e| e.to_string())? {
                out.push(b);
            }
            Ok(out)
        }
    }
}
