//! CSV files (`.csv`, `.tsv`): schema inferred from the first rows unless
//! declared; errors name the file's line, counted from 1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use super::{Batches, Dataset, Source, SourceError, INFER_ROWS};

pub struct Csv;

impl Source for Csv {
    fn infer_schema(&self, ds: &Dataset, files: &[PathBuf]) -> Result<SchemaRef, SourceError> {
        let first = &files[0];
        let mut file = ds.open_file(first)?;
        let (s, _) = format(ds)
            .infer_schema(&mut file, Some(INFER_ROWS))
            .map_err(|e| ds.err_at(Some(first), format!("cannot infer a schema: {e}")))?;
        Ok(Arc::new(s))
    }

    fn read_file(
        &self,
        ds: &Arc<Dataset>,
        f: &Path,
        schema: &SchemaRef,
    ) -> Result<Batches, SourceError> {
        let file = ds.open_file(f)?;
        let path = f.to_path_buf();
        let me = ds.clone();
        let r = reader_builder(ds, schema, ds.cfg.header)
            .build(file)
            .map_err(|e| ds.err_at(Some(f), e))?;
        let schema = schema.clone();
        Ok(Box::new(r.map(move |b| {
            b.map_err(|e| {
                let msg = explain(
                    &csv_line_numbers(&e.to_string()),
                    &schema,
                    me.cfg.schema.is_none(),
                );
                me.err_at(Some(&path), msg)
            })
        })))
    }

    fn parse_lines(
        &self,
        ds: &Dataset,
        schema: &SchemaRef,
        lines: &[u8],
        from_start: bool,
    ) -> Result<Vec<RecordBatch>, String> {
        let header = from_start && ds.cfg.header;
        let r = reader_builder(ds, schema, header)
            .build(std::io::Cursor::new(lines))
            .map_err(|e| e.to_string())?;
        r.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
    }
}

fn format(ds: &Dataset) -> arrow_csv::reader::Format {
    arrow_csv::reader::Format::default()
        .with_header(ds.cfg.header)
        .with_delimiter(ds.cfg.delimiter as u8)
}

fn reader_builder(ds: &Dataset, schema: &SchemaRef, header: bool) -> arrow_csv::ReaderBuilder {
    arrow_csv::ReaderBuilder::new(schema.clone())
        .with_format(format(ds).with_header(header))
        .with_batch_size(ds.batch_rows)
}

/// arrow-csv names a column by its index ("for column 3"); people know
/// it by its name. When the types were guessed, a value that does not fit
/// is most often a guess gone wrong: say so, and how to declare them.
fn explain(msg: &str, schema: &SchemaRef, inferred: bool) -> String {
    const AT: &str = "for column ";
    let mut out = msg.to_string();
    if let Some(i) = msg.find(AT) {
        let start = i + AT.len();
        let digits = msg[start..].bytes().take_while(u8::is_ascii_digit).count();
        if let Some(f) = msg[start..start + digits]
            .parse::<usize>()
            .ok()
            .and_then(|n| schema.fields().get(n))
        {
            out = format!(
                "{}{:?} (column {}){}",
                &msg[..start - "column ".len()],
                f.name(),
                &msg[start..start + digits]
                    .parse::<usize>()
                    .map_or(0, |n| n + 1),
                &msg[start + digits..]
            );
            if inferred {
                out.push_str(&format!(
                    "; the type {} of {:?} was guessed from the first {INFER_ROWS} rows: declare the columns with `schema = [{{ name = {:?}, type = \"Utf8\" }}, …]` in the dataset's configuration",
                    f.data_type(),
                    f.name(),
                    f.name()
                ));
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::{csv_line_numbers, explain};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn errors_name_the_column_and_the_guess() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("price", DataType::Float64, true),
        ]));
        let msg = "Parser error: Error while parsing value 'x' as type 'Float64' for column 1 at line 12. Row data: '[1,x]'";
        let got = explain(msg, &schema, true);
        assert!(
            got.contains(r#"for "price" (column 2) at line 12"#),
            "{got}"
        );
        assert!(
            got.contains("was guessed from the first 1000 rows"),
            "{got}"
        );
        let declared = explain(msg, &schema, false);
        assert!(
            declared.contains(r#""price" (column 2)"#) && !declared.contains("guessed"),
            "{declared}"
        );
    }

    #[test]
    fn csv_errors_count_lines_from_one() {
        assert_eq!(
            csv_line_numbers("bad value for column 1 at line 1501. Row data: x"),
            "bad value for column 1 at line 1502. Row data: x"
        );
        assert_eq!(csv_line_numbers("no line here"), "no line here");
    }
}
