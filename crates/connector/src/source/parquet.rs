//! Parquet files (`.parquet`, `.pq`): the schema and row count come from
//! the files' metadata; every file of a dataset must have the first one's
//! schema.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{Batches, Dataset, Source, SourceError};

pub struct Parquet;

fn builder(
    ds: &Dataset,
    path: &Path,
    file: File,
) -> Result<ParquetRecordBatchReaderBuilder<File>, SourceError> {
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| ds.err_at(Some(path), format!("not a readable Parquet file: {e}")))
}

impl Source for Parquet {
    fn infer_schema(&self, ds: &Dataset, files: &[PathBuf]) -> Result<SchemaRef, SourceError> {
        let first = &files[0];
        Ok(builder(ds, first, ds.open_file(first)?)?.schema().clone())
    }

    fn rows(&self, ds: &Dataset, files: &[PathBuf]) -> Result<Option<u64>, SourceError> {
        let mut rows = 0u64;
        for f in files {
            let b = builder(ds, f, ds.open_file(f)?)?;
            rows += b.metadata().file_metadata().num_rows().max(0) as u64;
        }
        Ok(Some(rows))
    }

    fn read_file(
        &self,
        ds: &Arc<Dataset>,
        f: &Path,
        schema: &SchemaRef,
    ) -> Result<Batches, SourceError> {
        let b = builder(ds, f, ds.open_file(f)?)?;
        if b.schema().fields() != schema.fields() {
            return Err(ds.err_at(
                Some(f),
                "its schema differs from the dataset's first file; a dataset is one schema",
            ));
        }
        let r = b
            .with_batch_size(ds.batch_rows)
            .build()
            .map_err(|e| ds.err_at(Some(f), e))?;
        let (me, path) = (ds.clone(), f.to_path_buf());
        Ok(Box::new(
            r.map(move |b| b.map_err(|e| me.err_at(Some(&path), e))),
        ))
    }
}
