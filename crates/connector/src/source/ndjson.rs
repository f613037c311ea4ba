//! Newline-delimited JSON (`.ndjson`, `.jsonl`, `.json`): read line by line
//! so that an error names its line; the inferred schema keeps the file's key
//! order.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};

use super::{Batches, Dataset, Source, SourceError, INFER_ROWS};

pub struct Ndjson;

impl Source for Ndjson {
    fn infer_schema(&self, ds: &Dataset, files: &[PathBuf]) -> Result<SchemaRef, SourceError> {
        let first = &files[0];
        let mut file = ds.open_file(first)?;
        let order = json_key_order(&mut file);
        let (s, _) =
            arrow_json::reader::infer_json_schema(BufReader::new(&mut file), Some(INFER_ROWS))
                .map_err(|e| ds.err_at(Some(first), format!("cannot infer a schema: {e}")))?;
        let mut fields: Vec<_> = s.fields().iter().cloned().collect();
        fields.sort_by_key(|f| {
            order
                .iter()
                .position(|k| k == f.name())
                .unwrap_or(usize::MAX)
        });
        Ok(Arc::new(Schema::new(fields)))
    }

    fn read_file(
        &self,
        ds: &Arc<Dataset>,
        f: &Path,
        schema: &SchemaRef,
    ) -> Result<Batches, SourceError> {
        let file = ds.open_file(f)?;
        Ok(Box::new(NdjsonRows::new(
            ds.clone(),
            f.to_path_buf(),
            file,
            schema.clone(),
        )?))
    }

    fn parse_lines(
        &self,
        _ds: &Dataset,
        schema: &SchemaRef,
        lines: &[u8],
        _from_start: bool,
    ) -> Result<Vec<RecordBatch>, String> {
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
            .map_err(|e| ds.err_at(Some(&path), e))?;
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
            .err_at(Some(&self.path), format!("line {line}: {e}"))))
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
