//! A PostgreSQL query as a dataset: the schema from the prepared statement
//! (no rows read), the rows streamed from the server (never all in memory)
//! into record batches on a thread that owns the connection.

use std::str::FromStr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int16Builder,
    Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use fallible_iterator::FallibleIterator;
use postgres::types::{FromSql, Type};
use postgres::{Client, NoTls, Row};

use std::path::{Path, PathBuf};

use super::{Batches, Dataset, Source, SourceError};

/// Days and microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The rows of a PostgreSQL query (`query`, `connection`).
pub struct Postgres;

impl Source for Postgres {
    fn reads_files(&self) -> bool {
        false
    }

    fn infer_schema(&self, ds: &Dataset, _files: &[PathBuf]) -> Result<SchemaRef, SourceError> {
        ds.pg_schema()
    }

    fn read_file(
        &self,
        ds: &Arc<Dataset>,
        _path: &Path,
        _schema: &SchemaRef,
    ) -> Result<Batches, SourceError> {
        Err(ds.err_at(None, "a query, not a file"))
    }

    fn open(&self, ds: &Arc<Dataset>) -> Option<Result<(SchemaRef, Batches), SourceError>> {
        Some(ds.pg_open())
    }
}

impl Dataset {
    fn pg_url(&self) -> Result<String, SourceError> {
        if let Some(u) = &self.cfg.connection {
            return Ok(u.expose().to_owned());
        }
        let var = self
            .cfg
            .connection_env
            .as_deref()
            .unwrap_or("SLUICE_POSTGRES_URL");
        std::env::var(var).map_err(|_| {
            self.err_at(
                None,
                format!("no connection string: set connection or ${var}"),
            )
        })
    }

    /// Where we connect, for messages: never the password.
    fn pg_where(cfg: &postgres::Config) -> String {
        let host = match cfg.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        format!(
            "PostgreSQL at {host}:{port}/{}",
            cfg.get_dbname().unwrap_or("")
        )
    }

    fn pg_connect(&self) -> Result<(Client, String), SourceError> {
        let url = self.pg_url()?;
        let mut cfg = postgres::Config::from_str(&url)
            .map_err(|e| self.err_at(None, format!("bad PostgreSQL connection string: {e}")))?;
        cfg.connect_timeout(Duration::from_secs(10));
        let at = Self::pg_where(&cfg);
        let client = cfg
            .connect(NoTls)
            .map_err(|e| self.err_at(None, format!("{at}: cannot connect: {e}")))?;
        Ok((client, at))
    }

    fn pg_query(&self) -> &str {
        self.cfg.query.as_deref().unwrap_or_default()
    }

    fn pg_schema(&self) -> Result<SchemaRef, SourceError> {
        let (mut client, at) = self.pg_connect()?;
        let stmt = client
            .prepare(self.pg_query())
            .map_err(|e| self.err_at(None, format!("{at}: query failed: {}", db_error(&e))))?;
        self.schema_of(stmt.columns())
    }

    fn schema_of(&self, cols: &[postgres::Column]) -> Result<SchemaRef, SourceError> {
        let fields = cols
            .iter()
            .map(|c| {
                arrow_type(c.type_())
                    .map(|t| Field::new(c.name(), t, true))
                    .ok_or_else(|| {
                        self.err_at(
                            None,
                            format!(
                                "column {}: type {} is not supported; cast it in the query (e.g. {}::text)",
                                c.name(),
                                c.type_(),
                                c.name()
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }

    /// Rows streamed by a thread that owns the connection; it stops when
    /// the batches are dropped (a cancelled stream).
    fn pg_open(self: &Arc<Self>) -> Result<(SchemaRef, Batches), SourceError> {
        let (mut client, at) = self.pg_connect()?;
        let stmt = client
            .prepare(self.pg_query())
            .map_err(|e| self.err_at(None, format!("{at}: query failed: {}", db_error(&e))))?;
        let schema = self.schema_of(stmt.columns())?;
        let (tx, rx) = mpsc::sync_channel::<Result<RecordBatch, SourceError>>(2);
        let me = self.clone();
        let s = schema.clone();
        std::thread::Builder::new()
            .name(format!("pg-{}", self.name()))
            .spawn(move || {
                let fail = |msg: String| me.err_at(None, format!("{at}: {msg}"));
                let mut rows = match client.query_raw(&stmt, std::iter::empty::<i32>()) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(fail(format!("query failed: {}", db_error(&e)))));
                        return;
                    }
                };
                let mut buf: Vec<Row> = Vec::with_capacity(me.batch_rows);
                let mut seen = 0u64;
                loop {
                    let next = rows.next();
                    let row = match next {
                        Ok(r) => r,
                        Err(e) => {
                            let _ =
                                tx.send(Err(fail(format!("after row {seen}: {}", db_error(&e)))));
                            return;
                        }
                    };
                    let end = row.is_none();
                    if let Some(r) = row {
                        buf.push(r);
                    }
                    if buf.len() == me.batch_rows || (end && !buf.is_empty()) {
                        let first = seen + 1;
                        seen += buf.len() as u64;
                        let b = to_batch(&s, &buf, first).map_err(fail);
                        buf.clear();
                        let failed = b.is_err();
                        if tx.send(b).is_err() || failed {
                            return;
                        }
                    }
                    if end {
                        return;
                    }
                }
            })
            .map_err(|e| self.err_at(None, format!("cannot start the query thread: {e}")))?;
        Ok((schema, Box::new(rx.into_iter())))
    }
}

fn db_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => match d.position() {
            Some(postgres::error::ErrorPosition::Original(p)) => {
                format!("{} (at character {p})", d.message())
            }
            _ => d.message().to_string(),
        },
        None => e.to_string(),
    }
}

fn arrow_type(t: &Type) -> Option<DataType> {
    Some(match *t {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        // Exact decimals keep every digit as text rather than round.
        Type::NUMERIC => DataType::Utf8,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::BYTEA => DataType::Binary,
        Type::DATE => DataType::Date32,
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        _ => return None,
    })
}

/// A value PostgreSQL sends in binary that we decode ourselves.
struct Raw<T>(T);

impl<'a> FromSql<'a> for Raw<i32> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(i32::from_be_bytes(raw.try_into()?)))
    }
    fn accepts(t: &Type) -> bool {
        *t == Type::DATE
    }
}

impl<'a> FromSql<'a> for Raw<i64> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(i64::from_be_bytes(raw.try_into()?)))
    }
    fn accepts(t: &Type) -> bool {
        *t == Type::TIMESTAMP || *t == Type::TIMESTAMPTZ
    }
}

/// NUMERIC's binary form (base-10000 digits) as exact decimal text.
struct Numeric(String);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let u16_at = |i: usize| -> Result<u16, Box<dyn std::error::Error + Sync + Send>> {
            Ok(u16::from_be_bytes(
                raw.get(i..i + 2).ok_or("short numeric")?.try_into()?,
            ))
        };
        let ndigits = u16_at(0)? as usize;
        let weight = u16_at(2)? as i16 as i32;
        let sign = u16_at(4)?;
        let dscale = u16_at(6)? as usize;
        match sign {
            0xC000 => return Ok(Numeric("NaN".into())),
            0xD000 => return Ok(Numeric("Infinity".into())),
            0xF000 => return Ok(Numeric("-Infinity".into())),
            _ => {}
        }
        let digits = (0..ndigits)
            .map(|i| u16_at(8 + 2 * i))
            .collect::<Result<Vec<_>, _>>()?;
        let mut int = String::new();
        for w in 0..=weight.max(-1) {
            let d = digits.get(w as usize).copied().unwrap_or(0);
            if int.is_empty() {
                int = d.to_string();
            } else {
                int.push_str(&format!("{d:04}"));
            }
        }
        if int.is_empty() {
            int.push('0');
        }
        let mut frac = String::new();
        let mut w = weight + 1;
        while frac.len() < dscale {
            let d = if w < 0 {
                0
            } else {
                digits.get(w as usize).copied().unwrap_or(0)
            };
            frac.push_str(&format!("{d:04}"));
            w += 1;
        }
        frac.truncate(dscale);
        let neg = if sign == 0x4000 { "-" } else { "" };
        Ok(Numeric(if dscale > 0 {
            format!("{neg}{int}.{frac}")
        } else {
            format!("{neg}{int}")
        }))
    }
    fn accepts(t: &Type) -> bool {
        *t == Type::NUMERIC
    }
}

fn to_batch(schema: &SchemaRef, rows: &[Row], first_row: u64) -> Result<RecordBatch, String> {
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, f) in schema.fields().iter().enumerate() {
        let at = |r: usize, e: &dyn std::fmt::Display| {
            format!("row {}: column {}: {e}", first_row + r as u64, f.name())
        };
        macro_rules! column {
            ($builder:expr, $t:ty, $conv:expr) => {{
                let mut b = $builder;
                for (r, row) in rows.iter().enumerate() {
                    let v: Option<$t> = row.try_get(i).map_err(|e| at(r, &e))?;
                    b.append_option(v.map($conv));
                }
                Arc::new(b.finish()) as ArrayRef
            }};
        }
        cols.push(match f.data_type() {
            DataType::Boolean => column!(BooleanBuilder::new(), bool, |v| v),
            DataType::Int16 => column!(Int16Builder::new(), i16, |v| v),
            DataType::Int32 => column!(Int32Builder::new(), i32, |v| v),
            DataType::Int64 => column!(Int64Builder::new(), i64, |v| v),
            DataType::Float32 => column!(Float32Builder::new(), f32, |v| v),
            DataType::Float64 => column!(Float64Builder::new(), f64, |v| v),
            DataType::Binary => column!(BinaryBuilder::new(), Vec<u8>, |v| v),
            DataType::Date32 => column!(Date32Builder::new(), Raw<i32>, |v: Raw<i32>| v.0 + PG_EPOCH_DAYS),
            DataType::Timestamp(_, tz) => {
                let mut b = TimestampMicrosecondBuilder::new().with_timezone_opt(tz.clone());
                for (r, row) in rows.iter().enumerate() {
                    let v: Option<Raw<i64>> = row.try_get(i).map_err(|e| at(r, &e))?;
                    match v {
                        Some(Raw(us)) if us == i64::MAX || us == i64::MIN => {
                            return Err(at(r, &"infinite timestamp has no Arrow value; filter or cast it in the query"))
                        }
                        Some(Raw(us)) => b.append_value(us + PG_EPOCH_MICROS),
                        None => b.append_null(),
                    }
                }
                Arc::new(b.finish()) as ArrayRef
            }
            DataType::Utf8 if rows.first().is_some_and(|r| *r.columns()[i].type_() == Type::NUMERIC) => {
                column!(StringBuilder::new(), Numeric, |v: Numeric| v.0)
            }
            DataType::Utf8 => column!(StringBuilder::new(), String, |v| v),
            other => return Err(format!("column {}: no conversion for {other}", f.name())),
        });
    }
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| e.to_string())
}
