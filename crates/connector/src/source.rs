//! Datasets: files (one path or a glob) read into Arrow record batches.
//! Every error names the dataset, the file and, where the format allows,
//! the row — and ends the stream: nothing is truncated silently.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use thiserror::Error;

use crate::config::{DatasetConfig, Format};

/// A failure reading a dataset; its text is what the browser is sent.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct SourceError(pub String);

pub type Batches = Box<dyn Iterator<Item = Result<RecordBatch, SourceError>> + Send>;

/// Rows to look at when inferring a schema.
const INFER_ROWS: usize = 1000;

pub struct Dataset {
    pub cfg: DatasetConfig,
    pub format: Format,
    pub batch_rows: usize,
}

/// What `get_flight_info` answers.
pub struct Info {
    pub schema: SchemaRef,
    pub rows: Option<u64>,
    pub bytes: u64,
    pub files: usize,
}

impl Dataset {
    pub fn new(
        cfg: DatasetConfig,
        batch_rows: usize,
    ) -> Result<Dataset, crate::config::ConfigError> {
        let format = cfg.format()?;
        Ok(Dataset {
            cfg,
            format,
            batch_rows,
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    fn err(&self, file: Option<&Path>, msg: impl std::fmt::Display) -> SourceError {
        match file {
            Some(f) => SourceError(format!("dataset {}: {}: {msg}", self.cfg.name, f.display())),
            None => SourceError(format!("dataset {}: {msg}", self.cfg.name)),
        }
    }

    /// The files behind the dataset now, in name order.
    pub fn files(&self) -> Result<Vec<PathBuf>, SourceError> {
        if matches!(self.format, Format::Metrics | Format::Postgres) {
            return Ok(Vec::new());
        }
        let src = &self.cfg.source;
        if !src.contains(['*', '?', '[']) {
            let p = PathBuf::from(src);
            return if p.is_file() {
                Ok(vec![p])
            } else {
                Err(self.err(Some(&p), "no such file"))
            };
        }
        let mut files: Vec<PathBuf> = glob::glob(src)
            .map_err(|e| self.err(None, format!("bad glob {src:?}: {e}")))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(self.err(None, format!("no file matches {src:?}")));
        }
        Ok(files)
    }

    /// Advertised only while its files exist.
    pub fn available(&self) -> bool {
        self.files().is_ok()
    }

    fn declared(&self) -> Result<Option<SchemaRef>, SourceError> {
        let Some(cols) = &self.cfg.schema else {
            return Ok(None);
        };
        let fields = cols
            .iter()
            .map(|c| {
                DataType::from_str(&c.data_type)
                    .map(|t| Field::new(&c.name, t, c.nullable))
                    .map_err(|e| {
                        self.err(
                            None,
                            format!("column {}: type {:?}: {e}", c.name, c.data_type),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Arc::new(Schema::new(fields))))
    }

    fn open_file(&self, f: &Path) -> Result<File, SourceError> {
        File::open(f).map_err(|e| self.err(Some(f), format!("cannot open: {e}")))
    }

    /// The schema: declared, read from the first Parquet file, or inferred
    /// from the first rows of the first CSV / NDJSON file.
    pub fn schema(&self, files: &[PathBuf]) -> Result<SchemaRef, SourceError> {
        if let Some(s) = self.declared()? {
            return Ok(s);
        }
        if self.format == Format::Metrics {
            return Ok(crate::live::metrics_schema());
        }
        if self.format == Format::Postgres {
            return self.pg_schema();
        }
        let first = &files[0];
        let mut file = self.open_file(first)?;
        match self.format {
            Format::Csv => {
                let (s, _) = self
                    .csv_format()
                    .infer_schema(&mut file, Some(INFER_ROWS))
                    .map_err(|e| self.err(Some(first), format!("cannot infer a schema: {e}")))?;
                Ok(Arc::new(s))
            }
            Format::Ndjson => {
                let order = json_key_order(&mut file);
                let (s, _) = arrow_json::reader::infer_json_schema(
                    BufReader::new(&mut file),
                    Some(INFER_ROWS),
                )
                .map_err(|e| self.err(Some(first), format!("cannot infer a schema: {e}")))?;
                let mut fields: Vec<_> = s.fields().iter().cloned().collect();
                fields.sort_by_key(|f| {
                    order
                        .iter()
                        .position(|k| k == f.name())
                        .unwrap_or(usize::MAX)
                });
                Ok(Arc::new(Schema::new(fields)))
            }
            Format::Parquet => Ok(self.parquet(first, file)?.schema().clone()),
            Format::Metrics => Ok(crate::live::metrics_schema()),
            Format::Postgres => self.pg_schema(),
        }
    }

    /// Streams only live (`subscribe`), never as a finite query.
    pub fn live_only(&self) -> bool {
        self.format == Format::Metrics
    }

    pub(crate) fn err_at(&self, file: Option<&Path>, msg: impl std::fmt::Display) -> SourceError {
        self.err(file, msg)
    }

    pub(crate) fn csv_reader_builder(
        &self,
        schema: &SchemaRef,
        header: bool,
    ) -> arrow_csv::ReaderBuilder {
        arrow_csv::ReaderBuilder::new(schema.clone())
            .with_format(self.csv_format().with_header(header))
            .with_batch_size(self.batch_rows)
    }

    fn csv_format(&self) -> arrow_csv::reader::Format {
        arrow_csv::reader::Format::default()
            .with_header(self.cfg.header)
            .with_delimiter(self.cfg.delimiter as u8)
    }

    fn parquet(
        &self,
        path: &Path,
        file: File,
    ) -> Result<ParquetRecordBatchReaderBuilder<File>, SourceError> {
        ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| self.err(Some(path), format!("not a readable Parquet file: {e}")))
    }

    pub fn info(&self) -> Result<Info, SourceError> {
        let files = self.files()?;
        let schema = self.schema(&files)?;
        let mut bytes = 0;
        // Only Parquet knows its row count without reading the rows.
        let mut rows = (self.format == Format::Parquet).then_some(0u64);
        for f in &files {
            bytes += std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            rows = match (rows, self.format) {
                (Some(r), Format::Parquet) => {
                    let b = self.parquet(f, self.open_file(f)?)?;
                    Some(r + b.metadata().file_metadata().num_rows().max(0) as u64)
                }
                _ => None,
            };
        }
        Ok(Info {
            schema,
            rows,
            bytes,
            files: files.len(),
        })
    }

    /// All the dataset's rows as record batches, file after file.
    pub fn open(self: &Arc<Self>) -> Result<(SchemaRef, Batches), SourceError> {
        if self.format == Format::Postgres {
            return self.pg_open();
        }
        let files = self.files()?;
        let schema = self.schema(&files)?;
        let me = self.clone();
        let s = schema.clone();
        let batches = files.into_iter().flat_map(move |f| -> Batches {
            match me.read_file(&f, &s) {
                Ok(it) => it,
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        });
        Ok((schema, Box::new(batches)))
    }

    fn read_file(self: &Arc<Self>, f: &Path, schema: &SchemaRef) -> Result<Batches, SourceError> {
        let file = self.open_file(f)?;
        let path = f.to_path_buf();
        let me = self.clone();
        match self.format {
            Format::Csv => {
                let r = arrow_csv::ReaderBuilder::new(schema.clone())
                    .with_format(self.csv_format())
                    .with_batch_size(self.batch_rows)
                    .build(file)
                    .map_err(|e| self.err(Some(f), e))?;
                Ok(Box::new(r.map(move |b| {
                    b.map_err(|e| me.err(Some(&path), csv_line_numbers(&e.to_string())))
                })))
            }
            Format::Parquet => {
                let b = self.parquet(f, file)?;
                if b.schema().fields() != schema.fields() {
                    return Err(self.err(
                        Some(f),
                        "its schema differs from the dataset's first file; a dataset is one schema",
                    ));
                }
                let r = b
                    .with_batch_size(self.batch_rows)
                    .build()
                    .map_err(|e| self.err(Some(f), e))?;
                Ok(Box::new(
                    r.map(move |b| b.map_err(|e| me.err(Some(&path), e))),
                ))
            }
            Format::Ndjson => Ok(Box::new(NdjsonRows::new(me, path, file, schema.clone())?)),
            Format::Metrics => Err(self.err(None, "a live feed: subscribe to it")),
            Format::Postgres => Err(self.err(None, "a query, not a file")),
        }
    }
}

/// arrow-csv counts records from 0 (the header is record 0); people count
/// lines of the file from 1. Rewrites "at line N" to the file's line.
fn csv_line_numbers(msg: &str) -> String {
    const AT: &str = "at line ";
    let Some(i) = msg.find(AT) else {
        return msg.to_string();
    };
    let start = i + AT.len();
    let digits = msg[start..].bytes().take_while(u8::is_ascii_digit).count();
    match msg[start..start + digits].parse::<u64>() {
        Ok(n) => format!("{}{}{}", &msg[..start], n + 1, &msg[start + digits..]),
        Err(_) => msg.to_string(),
    }
}

/// The order keys first appear in the file's first object: arrow-json's
/// inference sorts them, readers expect the file's order.
fn json_key_order(file: &mut File) -> Vec<String> {
    let _ = file.rewind();
    let mut first = String::new();
    for line in BufReader::new(&mut *file).lines().map_while(Result::ok) {
        if !line.trim().is_empty() {
            first = line;
            break;
        }
    }
    let _ = file.rewind();
    match serde_json::from_str::<serde_json::Value>(&first) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// NDJSON read line by line, so that an error names its line.
struct NdjsonRows {
    ds: Arc<Dataset>,
    path: PathBuf,
    lines: BufReader<File>,
    schema: SchemaRef,
    decoder: arrow_json::reader::Decoder,
    /// The current batch's lines and their numbers, to find a bad one.
    pending: Vec<(usize, String)>,
    line_no: usize,
    done: bool,
}

impl NdjsonRows {
    fn new(
        ds: Arc<Dataset>,
        path: PathBuf,
        mut file: File,
        schema: SchemaRef,
    ) -> Result<Self, SourceError> {
        let _ = file.rewind();
        let decoder = arrow_json::ReaderBuilder::new(schema.clone())
            .with_batch_size(ds.batch_rows)
            .build_decoder()
            .map_err(|e| ds.err(Some(&path), e))?;
        Ok(NdjsonRows {
            ds,
            path,
            lines: BufReader::new(file),
            schema,
            decoder,
            pending: Vec::new(),
            line_no: 0,
            done: false,
        })
    }

    fn fail(
        &mut self,
        line: usize,
        e: impl std::fmt::Display,
    ) -> Option<Result<RecordBatch, SourceError>> {
        self.done = true;
        Some(Err(self
            .ds
            .err(Some(&self.path), format!("line {line}: {e}"))))
    }

    /// Flushes the decoder; on a conversion error, finds the line at fault.
    fn flush(&mut self) -> Option<Result<RecordBatch, SourceError>> {
        match self.decoder.flush() {
            Ok(Some(b)) => {
                self.pending.clear();
                Some(Ok(b))
            }
            Ok(None) => None,
            Err(e) => {
                let culprit = self.pending.iter().find(|(_, l)| {
                    let mut d =
                        match arrow_json::ReaderBuilder::new(self.schema.clone()).build_decoder() {
                            Ok(d) => d,
                            Err(_) => return false,
                        };
                    d.decode(l.as_bytes()).is_err() || d.flush().is_err()
                });
                let line = culprit.map(|(n, _)| *n).unwrap_or(self.line_no);
                self.fail(line, e)
            }
        }
    }
}

impl Iterator for NdjsonRows {
    type Item = Result<RecordBatch, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            let mut line = String::new();
            match self.lines.read_line(&mut line) {
                Ok(0) => {
                    self.done = true;
                    return self.flush();
                }
                Ok(_) => {}
                Err(e) => {
                    let n = self.line_no + 1;
                    return self.fail(n, format!("cannot read: {e}"));
                }
            }
            self.line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            if let Err(e) = self.decoder.decode(line.as_bytes()) {
                let n = self.line_no;
                return self.fail(n, e);
            }
            self.pending.push((self.line_no, line));
            if self.decoder.len() >= self.ds.batch_rows {
                return self.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_errors_count_lines_from_one() {
        assert_eq!(
            super::csv_line_numbers("bad value for column 1 at line 1501. Row data: x"),
            "bad value for column 1 at line 1502. Row data: x"
        );
        assert_eq!(super::csv_line_numbers("no line here"), "no line here");
    }
}
