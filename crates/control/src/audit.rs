//! The audit log: one JSON line per access decision (allowed or denied,
//! with the reason), revocation, and admin change. Appended with
//! `O_APPEND` and one `write` per line, so the server and admin CLI
//! invocations can share a file without interleaving lines. Never holds a
//! secret: tokens and keys are not events' fields.

use sluice_protocol::sync::lock;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Map, Value};

pub struct Audit {
    out: Mutex<Option<File>>,
}

impl Audit {
    /// `path` = `-` writes to standard output.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let f = if path == Path::new("-") {
            None
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            Some(OpenOptions::new().create(true).append(true).open(path)?)
        };
        Ok(Self { out: Mutex::new(f) })
    }

    pub fn record(&self, event: &str, fields: Value) {
        let mut m = Map::new();
        m.insert(
            "ts".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into(),
        );
        m.insert("event".into(), event.into());
        if let Value::Object(f) = fields {
            m.extend(f);
        }
        let mut line = Value::Object(m).to_string();
        line.push('\n');
        let mut out = lock(&self.out);
        let res = match out.as_mut() {
            Some(f) => f.write_all(line.as_bytes()),
            None => std::io::stdout().lock().write_all(line.as_bytes()),
        };
        if let Err(e) = res {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}
