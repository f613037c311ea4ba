//! Synthetic machine metrics, generated live (for demos and load tests):
//! one row per machine per tick, each value a random walk so that charts
//! move like real sensors.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_array::{Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::{Batches, Dataset, Emit, LiveFeed, Source, SourceError};
use crate::ipc::IpcFramer;

pub struct Metrics;

impl Source for Metrics {
    fn reads_files(&self) -> bool {
        false
    }

    fn live_only(&self) -> bool {
        true
    }

    fn infer_schema(&self, _ds: &Dataset, _files: &[PathBuf]) -> Result<SchemaRef, SourceError> {
        Ok(metrics_schema())
    }

    fn read_file(
        &self,
        ds: &Arc<Dataset>,
        _path: &Path,
        _schema: &SchemaRef,
    ) -> Result<Batches, SourceError> {
        Err(ds.err_at(None, "a live feed: subscribe to it"))
    }

    fn live<'a>(&self, ds: &'a Dataset) -> Result<Box<dyn LiveFeed + 'a>, String> {
        Ok(Box::new(Generator {
            period: Duration::from_secs_f64(1.0 / ds.cfg.rate_hz),
            machines: ds.cfg.machines,
            name: ds.name().to_owned(),
        }))
    }
}

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

struct Generator {
    period: Duration,
    machines: usize,
    name: String,
}

impl LiveFeed for Generator {
    fn run(
        &mut self,
        cancel: &AtomicBool,
        schema: &SchemaRef,
        framer: &mut IpcFramer,
        send: &mut Emit<'_>,
    ) -> Result<bool, String> {
        let period = self.period;
        let n = self.machines;
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
            .map_err(|e| format!("dataset {}: {e}", self.name))?;
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
}
