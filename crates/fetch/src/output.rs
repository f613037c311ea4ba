//! Where the batches go: an Arrow IPC file, a Parquet file or a CSV file,
//! chosen by the output's extension. Written to `FILE.part` and renamed
//! only when the stream ended cleanly, so a failed download never leaves a
//! file that looks complete.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
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
        })
    }

    fn open(&mut self, schema: &SchemaRef) -> Result<&mut Writer> {
        if self.writer.is_none() {
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
        }
        Ok(self.writer.as_mut().expect("just opened"))
    }

    pub fn write(&mut self, schema: &SchemaRef, b: &RecordBatch) -> Result<()> {
        match self.open(schema)? {
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
