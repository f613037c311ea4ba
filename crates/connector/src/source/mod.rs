//! Datasets: one implementation per kind of source (`csv`, `ndjson`,
//! `parquet`, `postgres`, `metrics`) behind [`Source`], and what they share:
//! the dataset's files (one path or a glob), its declared schema, and error
//! messages. Every error names the dataset, the file and, where the format
//! allows, the row — and ends the stream: nothing is truncated silently.
//! Live feeds (`subscribe`) follow the last file of a file dataset
//! ([`tail`]) or generate rows ([`metrics`]).

mod csv;
mod metrics;
mod ndjson;
mod parquet;
mod postgres;
mod tail;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use thiserror::Error;

use crate::config::{ConfigError, DatasetConfig, Format};
use crate::ipc::IpcFramer;

pub use metrics::metrics_schema;

/// A failure reading a dataset; its text is what the browser is sent.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct SourceError(pub String);

pub type Batches = Box<dyn Iterator<Item = Result<RecordBatch, SourceError>> + Send>;

/// Rows to look at when inferring a schema.
const INFER_ROWS: usize = 1000;

/// Encodes a batch and sends its IPC messages; false when the receiver is
/// gone.
pub type Emit<'a> = dyn FnMut(&mut IpcFramer, &RecordBatch) -> Result<bool, String> + 'a;

/// What one kind of source knows how to do. A [`Dataset`] holds one and
/// does the rest (files, declared schema, errors) itself.
trait Source: Send + Sync {
    /// Whether the dataset is files named by `source` (a path or a glob).
    fn reads_files(&self) -> bool {
        true
    }

    /// Streams only live (`subscribe`), never as a finite query.
    fn live_only(&self) -> bool {
        false
    }

    /// The schema when none is declared. File sources get at least one file.
    fn infer_schema(&self, ds: &Dataset, files: &[PathBuf]) -> Result<SchemaRef, SourceError>;

    /// The row count, when known without reading the rows.
    fn rows(&self, _ds: &Dataset, _files: &[PathBuf]) -> Result<Option<u64>, SourceError> {
        Ok(None)
    }

    /// One file's rows.
    fn read_file(
        &self,
        ds: &Arc<Dataset>,
        path: &Path,
        schema: &SchemaRef,
    ) -> Result<Batches, SourceError>;

    /// All rows, for a source that is not files (the default reads the
    /// files one after the other).
    fn open(&self, _ds: &Arc<Dataset>) -> Option<Result<(SchemaRef, Batches), SourceError>> {
        None
    }

    /// Complete lines appended to a followed file, as batches.
    fn parse_lines(
        &self,
        ds: &Dataset,
        _schema: &SchemaRef,
        _lines: &[u8],
        _from_start: bool,
    ) -> Result<Vec<RecordBatch>, String> {
        Err(format!(
            "dataset {}: this format cannot be followed live",
            ds.name()
        ))
    }

    /// Runs the live feed until `cancel`: Ok(true) when stopped, Ok(false)
    /// when the receiver left. The default follows the last file.
    fn live<'a>(&self, ds: &'a Dataset) -> Result<Box<dyn LiveFeed + 'a>, String> {
        tail::Tail::start(ds).map(|t| Box::new(t) as Box<dyn LiveFeed>)
    }
}

/// A live feed once started (see [`Dataset::live`]).
pub trait LiveFeed {
    fn run(
        &mut self,
        cancel: &AtomicBool,
        schema: &SchemaRef,
        framer: &mut IpcFramer,
        send: &mut Emit<'_>,
    ) -> Result<bool, String>;
}

pub struct Dataset {
    pub cfg: DatasetConfig,
    pub format: Format,
    pub batch_rows: usize,
    source: Box<dyn Source>,
}

/// What `get_flight_info` answers.
pub struct Info {
    pub schema: SchemaRef,
    pub rows: Option<u64>,
    pub bytes: u64,
    pub files: usize,
}

impl Dataset {
    pub fn new(cfg: DatasetConfig, batch_rows: usize) -> Result<Dataset, ConfigError> {
        let format = cfg.format()?;
        let source: Box<dyn Source> = match format {
            Format::Csv => Box::new(csv::Csv),
            Format::Ndjson => Box::new(ndjson::Ndjson),
            Format::Parquet => Box::new(parquet::Parquet),
            Format::Postgres => Box::new(postgres::Postgres),
            Format::Metrics => Box::new(metrics::Metrics),
        };
        Ok(Dataset {
            cfg,
            format,
            batch_rows,
            source,
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// An error naming the dataset and, when there is one, the file.
    pub(crate) fn err_at(&self, file: Option<&Path>, msg: impl std::fmt::Display) -> SourceError {
        match file {
            Some(f) => SourceError(format!("dataset {}: {}: {msg}", self.cfg.name, f.display())),
            None => SourceError(format!("dataset {}: {msg}", self.cfg.name)),
        }
    }

    /// The source as one file path, when it is one (a file source without
    /// glob characters).
    fn plain_path(&self) -> Option<PathBuf> {
        let src = &self.cfg.source;
        (self.source.reads_files() && !src.contains(['*', '?', '['])).then(|| PathBuf::from(src))
    }

    /// The files behind the dataset now, in name order.
    pub fn files(&self) -> Result<Vec<PathBuf>, SourceError> {
        if !self.source.reads_files() {
            return Ok(Vec::new());
        }
        let src = &self.cfg.source;
        if let Some(p) = self.plain_path() {
            return if p.is_file() {
                Ok(vec![p])
            } else {
                Err(self.err_at(Some(&p), "no such file"))
            };
        }
        let mut files: Vec<PathBuf> = glob::glob(src)
            .map_err(|e| self.err_at(None, format!("bad glob {src:?}: {e}")))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(self.err_at(None, format!("no file matches {src:?}")));
        }
        Ok(files)
    }

    /// A plain path (no glob) that names no file: almost always a typo,
    /// which would otherwise only surface as "has no dataset" at the
    /// client. The error names the path and the closest file beside it.
    /// Globs may match files that arrive later, so they are not checked.
    pub fn check_plain_path(&self) -> Result<(), SourceError> {
        let Some(p) = self.plain_path().filter(|p| !p.is_file()) else {
            return Ok(());
        };
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let hint = if !dir.is_dir() {
            format!("; its folder {} does not exist either", dir.display())
        } else {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let names: Vec<String> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            sluice_protocol::suggest::closest(&name, names.iter().map(String::as_str), 3)
                .map(|n| format!("; did you mean {}?", dir.join(n).display()))
                .unwrap_or_default()
        };
        Err(self.err_at(
            Some(&p),
            format!(
                "no such file{hint} (a glob such as /data/*.csv may name files that arrive later)"
            ),
        ))
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
                        self.err_at(
                            None,
                            format!("column {}: type {:?}: {e}", c.name, c.data_type),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Arc::new(Schema::new(fields))))
    }

    pub(crate) fn open_file(&self, f: &Path) -> Result<File, SourceError> {
        File::open(f).map_err(|e| self.err_at(Some(f), format!("cannot open: {e}")))
    }

    /// The schema: declared, or the source's own (read from the first
    /// Parquet file, inferred from the first rows of the first CSV / NDJSON
    /// file, asked of PostgreSQL, fixed for metrics).
    pub fn schema(&self, files: &[PathBuf]) -> Result<SchemaRef, SourceError> {
        if let Some(s) = self.declared()? {
            return Ok(s);
        }
        self.source.infer_schema(self, files)
    }

    /// Streams only live (`subscribe`), never as a finite query.
    pub fn live_only(&self) -> bool {
        self.source.live_only()
    }

    pub fn info(&self) -> Result<Info, SourceError> {
        let files = self.files()?;
        let schema = self.schema(&files)?;
        let bytes = files
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum();
        Ok(Info {
            rows: self.source.rows(self, &files)?,
            schema,
            bytes,
            files: files.len(),
        })
    }

    /// All the dataset's rows as record batches, file after file.
    pub fn open(self: &Arc<Self>) -> Result<(SchemaRef, Batches), SourceError> {
        if let Some(opened) = self.source.open(self) {
            return opened;
        }
        let files = self.files()?;
        let schema = self.schema(&files)?;
        let me = self.clone();
        let s = schema.clone();
        let batches = files.into_iter().flat_map(move |f| -> Batches {
            match me.source.read_file(&me, &f, &s) {
                Ok(it) => it,
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        });
        Ok((schema, Box::new(batches)))
    }

    /// Starts the live feed: where a followed file's tail begins is fixed
    /// here, before the viewer hears of the feed.
    pub fn live(&self) -> Result<Box<dyn LiveFeed + '_>, String> {
        self.source.live(self)
    }
}
