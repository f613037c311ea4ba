//! Where the batches go: an Arrow IPC file, a Parquet file or a CSV file,
//! chosen by the output's extension. Written to `FILE.part` and renamed
//! only when the stream ended cleanly, so a failed download never leaves a
//! file that looks complete.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Arrow,
    Parquet,
    Csv,
}

impl Kind {
    pub fn of(path: &Path) -> Result<Kind> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        Ok(match ext.as_str() {
            "arrow" | "feather" | "ipc" => Kind::Arrow,
            "parquet" | "pq" => Kind::Parquet,
            "csv" => Kind::Csv,
            _ => bail!(
                "{}: the output must end in .arrow, .parquet or .csv",
                path.display()
            ),
        })
    }
}

enum Writer {
    Arrow(arrow_ipc::writer::FileWriter<BufWriter<File>>),
    Parquet(ArrowWriter<File>),
    Csv(arrow_csv::Writer<BufWriter<File>>),
}

pub struct Output {
    kind: Kind,
    path: PathBuf,
    part: PathBuf,
    writer: Option<Writer>,
    /// The schema the file stores, when it differs from the stream's
    /// (see [`stored_type`]): decided once, at open.
    stored: Option<SchemaRef>,
}

impl Output {
    pub fn new(path: &Path) -> Result<Output> {
        let kind = Kind::of(path)?;
        let mut part = path.as_os_str().to_owned();
        part.push(".part");
        Ok(Output {
            kind,
            path: path.to_path_buf(),
            part: PathBuf::from(part),
            writer: None,
            stored: None,
        })
    }

    /// Creates the file on the first batch (or at the end of an empty
    /// stream), with the schema the format stores.
    fn open(&mut self, source: &SchemaRef) -> Result<()> {
        if self.writer.is_none() {
            let stored = stored_schema(self.kind, source);
            let schema = &stored;
            let f = File::create(&self.part)
                .with_context(|| format!("creating {}", self.part.display()))?;
            self.writer = Some(match self.kind {
                Kind::Arrow => Writer::Arrow(arrow_ipc::writer::FileWriter::try_new(
                    BufWriter::new(f),
                    schema,
                )?),
                Kind::Parquet => Writer::Parquet(ArrowWriter::try_new(f, schema.clone(), None)?),
                Kind::Csv => Writer::Csv(
                    arrow_csv::WriterBuilder::new()
                        .with_header(true)
                        .build(BufWriter::new(f)),
                ),
            });
            self.stored = (&stored != source).then_some(stored);
        }
        Ok(())
    }

    pub fn write(&mut self, schema: &SchemaRef, b: &RecordBatch) -> Result<()> {
        self.open(schema)?;
        let converted;
        let b = match &self.stored {
            Some(stored) => {
                converted = convert(b, stored)?;
                &converted
            }
            None => b,
        };
        match self.writer.as_mut().expect("opened") {
            Writer::Arrow(w) => w.write(b)?,
            Writer::Parquet(w) => w.write(b)?,
            Writer::Csv(w) => w.write(b)?,
        }
        Ok(())
    }

    /// Completes the file (an empty dataset still gets its schema) and
    /// moves it into place.
    pub fn finish(mut self, schema: &SchemaRef) -> Result<PathBuf> {
        self.open(schema)?;
        match self.writer.take().expect("opened") {
            Writer::Arrow(mut w) => w.finish()?,
            Writer::Parquet(w) => {
                w.close()?;
            }
            Writer::Csv(w) => drop(w.into_inner()),
        }
        std::fs::rename(&self.part, &self.path)
            .with_context(|| format!("moving into {}", self.path.display()))?;
        Ok(self.path.clone())
    }

    /// Removes the partial file.
    pub fn abandon(mut self) {
        self.writer.take();
        let _ = std::fs::remove_file(&self.part);
    }
}

/// The type a column is stored as in `kind`: the source's own, except
/// where the format has no such type and a reader would otherwise get
/// plain numbers back (pyarrow read a `timestamp[s]` column from Parquet
/// as int64). Parquet has neither second-precision timestamps nor
/// millisecond dates: they are stored as `timestamp[ms]` (same zone) and
/// `date32` (whole days, which is what Arrow's `date64` holds), without
/// loss. CSV writes `date64` as a date, not a date and a midnight time.
fn stored_type(kind: Kind, t: &DataType) -> Option<DataType> {
    match (kind, t) {
        (Kind::Parquet, DataType::Timestamp(TimeUnit::Second, tz)) => {
            Some(DataType::Timestamp(TimeUnit::Millisecond, tz.clone()))
        }
        (Kind::Parquet | Kind::Csv, DataType::Date64) => Some(DataType::Date32),
        _ => None,
    }
}

fn stored_schema(kind: Kind, schema: &SchemaRef) -> SchemaRef {
    if !schema
        .fields()
        .iter()
        .any(|f| stored_type(kind, f.data_type()).is_some())
    {
        return schema.clone();
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match stored_type(kind, f.data_type()) {
            Some(t) => f.as_ref().clone().with_data_type(t),
            None => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn convert(b: &RecordBatch, to: &SchemaRef) -> Result<RecordBatch> {
    let cols = b
        .columns()
        .iter()
        .zip(to.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow_cast::cast(c, f.data_type()).with_context(|| {
                    format!(
                        "column {:?}: storing {} as {}",
                        f.name(),
                        c.data_type(),
                        f.data_type()
                    )
                })
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(to.clone(), cols)?)
}

/// Every Arrow type a connector can produce, written in each format and
/// read back by pyarrow: the values and, where the format can carry it,
/// the type must be the source's.
#[cfg(test)]
mod round_trip {
    use std::sync::Arc;

    use arrow_array::types::Int32Type;
    use arrow_array::*;
    use arrow_schema::{Field, Schema};

    use super::*;

    fn batch() -> RecordBatch {
        let ts = 1_735_689_600i64; // 2025-01-01T00:00:00Z
        let cols: Vec<(&str, ArrayRef)> = vec![
            (
                "ts_s",
                Arc::new(TimestampSecondArray::from(vec![
                    Some(ts),
                    None,
                    Some(ts + 86_399),
                ])),
            ),
            (
                "ts_ms_utc",
                Arc::new(
                    TimestampMillisecondArray::from(vec![
                        Some(ts * 1000),
                        Some(ts * 1000 + 1),
                        None,
                    ])
                    .with_timezone("UTC"),
                ),
            ),
            (
                "ts_us_paris",
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(ts * 1_000_000 + 7), None, Some(0)])
                        .with_timezone("Europe/Paris"),
                ),
            ),
            (
                "ts_ns",
                Arc::new(TimestampNanosecondArray::from(vec![
                    Some(ts * 1_000_000_000 + 9),
                    Some(1),
                    None,
                ])),
            ),
            (
                "date32",
                Arc::new(Date32Array::from(vec![Some(20_089), None, Some(-1)])),
            ),
            (
                "date64",
                Arc::new(Date64Array::from(vec![Some(ts * 1000), None, Some(0)])),
            ),
            (
                "dec",
                Arc::new(
                    Decimal128Array::from(vec![Some(12_345), None, Some(-1)])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
            ),
            (
                "dict",
                Arc::new(
                    vec![Some("north"), None, Some("north")]
                        .into_iter()
                        .collect::<DictionaryArray<Int32Type>>(),
                ),
            ),
            (
                "large",
                Arc::new(LargeStringArray::from(vec![
                    Some("a,b \"quoted\""),
                    None,
                    Some(""),
                ])),
            ),
            (
                "i64",
                Arc::new(Int64Array::from(vec![Some(i64::MAX), None, Some(-3)])),
            ),
            (
                "f64",
                Arc::new(Float64Array::from(vec![Some(0.1), None, Some(-2.5e300)])),
            ),
            (
                "flag",
                Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
            ),
        ];
        let schema = Schema::new(
            cols.iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|(_, a)| a).collect()).unwrap()
    }

    fn write(path: &Path) {
        let b = batch();
        let mut out = Output::new(path).unwrap();
        out.write(&b.schema(), &b).unwrap();
        out.finish(&b.schema()).unwrap();
    }

    #[test]
    fn every_type_survives_every_format_as_pyarrow_reads_it() {
        let dir = std::env::temp_dir().join(format!("sluice-fetch-types-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for ext in ["arrow", "parquet", "csv"] {
            write(&dir.join(format!("t.{ext}")));
        }
        let check = std::process::Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/types_round_trip.py"))
            .arg(&dir)
            .output()
            .expect("python3 with pyarrow (tests/python/requirements.txt)");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            check.status.success(),
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
}
