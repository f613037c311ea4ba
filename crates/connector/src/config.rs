//! Connector configuration: a TOML file (the seed's `config.yml` keys have
//! equivalents), or the quick-start flags; the edge key comes from a file or
//! `SLUICE_EDGE_KEY` and is never printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
pub use sluice_protocol::secret::Secret;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// File formats a dataset can be read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Ndjson,
    Parquet,
    /// Synthetic machine metrics, generated live (for demos and load tests).
    Metrics,
    /// The rows of a PostgreSQL query (`query`, `connection`).
    Postgres,
}

impl Format {
    /// From a path's extension (`.csv`, `.ndjson`/`.jsonl`/`.json`, `.parquet`/`.pq`).
    pub fn from_path(p: &str) -> Option<Format> {
        if p == "metrics" || p.starts_with("metrics:") {
            return Some(Format::Metrics);
        }
        if p == "postgres" || p.starts_with("postgres://") || p.starts_with("postgresql://") {
            return Some(Format::Postgres);
        }
        let lower = p.to_ascii_lowercase();
        let ext = lower.rsplit('.').next()?;
        match ext {
            "csv" | "tsv" => Some(Format::Csv),
            "ndjson" | "jsonl" | "json" => Some(Format::Ndjson),
            "parquet" | "pq" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// IPC body compression for a dataset's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

/// A declared column (`type` in Arrow's own notation: `Int64`, `Utf8`,
/// `Float64`, `Timestamp(Millisecond, None)`, …).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub name: String,
    /// A file path or a glob (`/data/sales/*.parquet`).
    pub source: String,
    /// Default: from the extension.
    #[serde(default)]
    pub format: Option<Format>,
    #[serde(default)]
    pub compression: Compression,
    /// Declared schema; default: inferred from the first rows (CSV, NDJSON)
    /// or read from the file (Parquet).
    #[serde(default)]
    pub schema: Option<Vec<Column>>,
    /// CSV: the first line names the columns.
    #[serde(default = "yes")]
    pub header: bool,
    /// CSV field delimiter.
    #[serde(default = "comma")]
    pub delimiter: char,
    /// CSV / NDJSON: a `subscribe` follows the file, streaming lines as they
    /// are appended (a `query` still returns the file as it is).
    #[serde(default)]
    pub tail: bool,
    /// Metrics: batches per second.
    #[serde(default = "ten")]
    pub rate_hz: f64,
    /// Metrics: machines (rows per batch).
    #[serde(default = "eight")]
    pub machines: usize,
    /// PostgreSQL: the query whose rows are the dataset.
    #[serde(default)]
    pub query: Option<String>,
    /// PostgreSQL: connection string (`postgres://user:pass@host:port/db`);
    /// better kept out of the file with `connection_env` (never shown by
    /// `Debug`).
    #[serde(default)]
    pub connection: Option<Secret>,
    /// PostgreSQL: environment variable holding the connection string
    /// (default `SLUICE_POSTGRES_URL`).
    #[serde(default)]
    pub connection_env: Option<String>,
}

fn ten() -> f64 {
    10.0
}

fn eight() -> usize {
    8
}

fn comma() -> char {
    ','
}

impl DatasetConfig {
    /// A dataset with every optional setting at the config file's default
    /// (format from the path, no compression, a header row, commas, a
    /// metrics feed of 8 machines at 10 Hz).
    pub fn new(name: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            source: source.into(),
            format: None,
            compression: Compression::None,
            schema: None,
            header: yes(),
            delimiter: comma(),
            tail: false,
            rate_hz: ten(),
            machines: eight(),
            query: None,
            connection: None,
            connection_env: None,
        }
    }

    pub fn format(&self) -> Result<Format, ConfigError> {
        self.format.or_else(|| Format::from_path(&self.source)).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "dataset {}: cannot tell the format of {:?} from its extension; set format = \"csv\" | \"ndjson\" | \"parquet\"",
                self.name, self.source
            ))
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `ws://host:port` or `wss://host:port` (the `/ws/connect` path is
    /// added when missing); with `transport = "grpc"`, `https://host:port`
    /// (TLS, seed 002's mutual TLS with `[mtls]`) or `http://host:port`.
    pub gateway: String,
    /// `websocket` (seed 001) or `grpc` (seed 002's tunnel).
    pub transport: Transport,
    pub tenant: String,
    /// Default: the tenant id.
    pub edge: String,
    /// File holding the edge key (else `SLUICE_EDGE_KEY`).
    pub edge_key_file: Option<PathBuf>,
    /// Parallel worker connections (the seed's `parallel_connections`).
    pub workers: usize,
    /// Bytes per binary message: 64 KiB to 1 MiB (the seed's `max_chunk_size`).
    pub chunk_bytes: usize,
    /// Rows per record batch read from a source.
    pub batch_rows: usize,
    /// First reconnect delay (the seed's `reconnect_delay`), doubled per failure.
    pub reconnect_delay_ms: u64,
    pub max_reconnect_delay_ms: u64,
    /// How often globs are re-read so that files appearing or vanishing
    /// change the advertised dataset list.
    pub rescan_ms: u64,
    /// Use the gateway's fast path when it offers it.
    pub fast_path: bool,
    pub datasets: Vec<DatasetConfig>,
    /// Where `offload` requests put their exports (S3-compatible).
    pub offload: OffloadConfig,
    /// TLS client settings for a `wss://` gateway (seed 002's names).
    pub mtls: Mtls,
    #[serde(skip)]
    /// The pre-shared edge key (never shown by `Debug`).
    pub edge_key: Secret,
    /// Built from `mtls` by `finish` when the gateway is `wss://`.
    #[serde(skip)]
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            gateway: String::new(),
            transport: Transport::Websocket,
            tenant: String::new(),
            edge: String::new(),
            edge_key_file: None,
            workers: 3,
            chunk_bytes: 256 * 1024,
            batch_rows: 64 * 1024,
            reconnect_delay_ms: 500,
            max_reconnect_delay_ms: 30_000,
            rescan_ms: 5_000,
            fast_path: true,
            datasets: Vec::new(),
            offload: OffloadConfig::default(),
            mtls: Mtls::default(),
            edge_key: Secret::default(),
            tls: None,
        }
    }
}

/// How the connector reaches the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Seed 001: worker WebSocket connections (`/ws/connect`).
    Websocket,
    /// Seed 002: one gRPC `Connect` call, one `Serve` call per request.
    Grpc,
}

pub const MIN_CHUNK: usize = 64 * 1024;
pub const MAX_CHUNK: usize = 1024 * 1024;

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Fills the key (file, else `env_key`) and defaults, then validates.
    pub fn finish(mut self, env_key: Option<String>) -> Result<Config, ConfigError> {
        let key = match &self.edge_key_file {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?
                .trim()
                .to_string(),
            None => env_key.unwrap_or_default(),
        };
        if key.is_empty() && !self.mtls.has_client_cert() {
            return Err(ConfigError::Invalid(
                if std::env::var_os("SLUICE_EDGE_KEYS").is_some() {
                    "no edge key: set edge_key_file or SLUICE_EDGE_KEY (SLUICE_EDGE_KEYS is the gateway's list of every edge's key; the connector reads its own key from SLUICE_EDGE_KEY)".into()
                } else {
                    "no edge key: set edge_key_file or SLUICE_EDGE_KEY (or a client certificate, mtls.client_cert, for a wss:// gateway)".into()
                },
            ));
        }
        self.edge_key = Secret::from(key);
        if self.edge.is_empty() {
            self.edge = self.tenant.clone();
        }
        if self.transport == Transport::Grpc {
            if self.gateway.starts_with("https://") || self.gateway.starts_with("grpcs://") {
                self.tls = Some(self.mtls.client_config()?);
            } else if !(self.gateway.starts_with("http://") || self.gateway.starts_with("grpc://"))
            {
                return Err(ConfigError::Invalid(format!(
                    "with transport = \"grpc\" the gateway is https://HOST:PORT (TLS) or http://HOST:PORT, its grpc.listen; got {:?}",
                    self.gateway
                )));
            } else if self.mtls.has_client_cert() || self.mtls.ca_cert.is_some() {
                return Err(ConfigError::Invalid(
                    "mtls settings need an https:// gateway (they would be ignored on http://)"
                        .into(),
                ));
            }
        } else if self.gateway.starts_with("wss://") {
            self.tls = Some(self.mtls.client_config()?);
        } else if !self.gateway.starts_with("ws://") {
            return Err(ConfigError::Invalid(format!(
                "gateway must be ws://HOST:PORT or wss://HOST:PORT, got {:?}",
                self.gateway
            )));
        } else if self.mtls.has_client_cert() || self.mtls.ca_cert.is_some() {
            return Err(ConfigError::Invalid(
                "mtls settings need a wss:// gateway (they would be ignored on ws://)".into(),
            ));
        }
        if self.tenant.is_empty() {
            return Err(ConfigError::Invalid("tenant is required".into()));
        }
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&self.chunk_bytes) {
            return Err(ConfigError::Invalid(format!(
                "chunk_bytes must be between {MIN_CHUNK} and {MAX_CHUNK}"
            )));
        }
        if self.workers == 0 || self.batch_rows == 0 {
            return Err(ConfigError::Invalid(
                "workers and batch_rows must be > 0".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.datasets {
            d.format()?;
            if !seen.insert(d.name.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "dataset {} is listed twice",
                    d.name
                )));
            }
            if d.tail && d.format()? == Format::Parquet {
                return Err(ConfigError::Invalid(format!(
                    "dataset {}: tail follows appended lines; Parquet files cannot be tailed",
                    d.name
                )));
            }
            if d.format()? == Format::Metrics
                && !(d.rate_hz > 0.0 && d.rate_hz <= 1000.0 && d.machines > 0)
            {
                return Err(ConfigError::Invalid(format!(
                    "dataset {}: metrics need 0 < rate_hz <= 1000 and machines > 0",
                    d.name
                )));
            }
            if d.format()? == Format::Postgres && d.query.as_deref().unwrap_or("").trim().is_empty()
            {
                return Err(ConfigError::Invalid(format!(
                    "dataset {}: a PostgreSQL dataset needs query = \"SELECT …\"",
                    d.name
                )));
            }
            if d.name.is_empty() || d.name.contains(char::is_whitespace) {
                return Err(ConfigError::Invalid(format!(
                    "dataset name {:?} is not valid",
                    d.name
                )));
            }
        }
        Ok(self)
    }

    /// `host:port` and path of the gateway's connector endpoint.
    pub fn endpoint(&self) -> (String, String) {
        let rest = self
            .gateway
            .strip_prefix("wss://")
            .unwrap_or_else(|| self.gateway.trim_start_matches("ws://"));
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = if path.is_empty() || path == "/" {
            "/ws/connect"
        } else {
            path
        };
        (host.to_string(), path.to_string())
    }

    pub fn reconnect(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.reconnect_delay_ms.max(10)),
            Duration::from_millis(self.max_reconnect_delay_ms.max(self.reconnect_delay_ms)),
        )
    }
}

/// `[offload]` in the connector's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OffloadConfig {
    /// `http(s)://host:port` of an S3-compatible store; empty = AWS S3.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// Key prefix for exports.
    pub prefix: String,
    /// Environment variables holding the credentials (never in the file).
    pub access_key_env: String,
    pub secret_key_env: String,
    /// Lifetime of the presigned URL.
    pub url_ttl_s: u64,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            bucket: String::new(),
            region: "us-east-1".into(),
            prefix: "sluice-exports/".into(),
            access_key_env: "AWS_ACCESS_KEY_ID".into(),
            secret_key_env: "AWS_SECRET_ACCESS_KEY".into(),
            url_ttl_s: 900,
        }
    }
}

/// `[mtls]` (seed 002): TLS to the gateway and this site's client
/// certificate; loaded by `crate::tls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mtls {
    /// CA that signed the gateway's certificate (default: the public web
    /// PKI roots).
    pub ca_cert: Option<PathBuf>,
    /// This site's certificate (CN = tenant id) and its key.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotated_example_is_a_valid_config() {
        let c: Config = toml::from_str(include_str!("../connector.example.toml")).unwrap();
        let c = c.finish(Some("k".into())).unwrap();
        assert!(c.datasets.len() >= 4);
        assert_eq!(c.offload.url_ttl_s, 900);
    }

    #[test]
    fn key_is_never_shown() {
        let k = Secret::from("s3cret");
        assert!(!format!("{k:?}").contains("s3cret"));
    }

    #[test]
    fn a_connection_string_is_never_shown() {
        let d: DatasetConfig = toml::from_str(
            "name = \"orders\"\nsource = \"postgres\"\nquery = \"select 1\"\nconnection = \"postgres://u:pw-s3cret@db/x\"",
        )
        .unwrap();
        assert_eq!(
            d.connection.as_ref().map(|c| c.expose()),
            Some("postgres://u:pw-s3cret@db/x")
        );
        assert!(!format!("{d:?}").contains("s3cret"));
    }

    #[test]
    fn endpoint_defaults_to_ws_connect() {
        let mut c = Config {
            gateway: "ws://gw:8081".into(),
            tenant: "t".into(),
            ..Default::default()
        };
        assert_eq!(c.endpoint(), ("gw:8081".into(), "/ws/connect".into()));
        c.gateway = "ws://gw:8081/custom/connect".into();
        assert_eq!(c.endpoint().1, "/custom/connect");
        let c = c.finish(Some("k".into())).unwrap();
        assert_eq!(c.edge, "t");
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let base = || Config {
            gateway: "ws://gw:1".into(),
            tenant: "t".into(),
            ..Default::default()
        };
        assert!(base()
            .finish(None)
            .unwrap_err()
            .to_string()
            .contains("edge key"));
        let mut c = base();
        c.chunk_bytes = 1024;
        assert!(c
            .finish(Some("k".into()))
            .unwrap_err()
            .to_string()
            .contains("chunk_bytes"));
        // wss:// is fine (public roots by default); TLS files must exist,
        // come in pairs, and need a wss:// gateway.
        let mut c = base();
        c.gateway = "wss://gw".into();
        assert!(c.finish(Some("k".into())).unwrap().tls.is_some());
        let mut c = base();
        c.gateway = "wss://gw".into();
        c.mtls.ca_cert = Some("/nonexistent/ca.crt".into());
        assert!(c
            .finish(Some("k".into()))
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/ca.crt"));
        let mut c = base();
        c.gateway = "wss://gw".into();
        c.mtls.client_cert = Some("/x/client.crt".into());
        assert!(c
            .finish(None)
            .unwrap_err()
            .to_string()
            .contains("go together"));
        let mut c = base();
        c.mtls.ca_cert = Some("/x/ca.crt".into());
        assert!(c
            .finish(Some("k".into()))
            .unwrap_err()
            .to_string()
            .contains("wss://"));
        let mut c = base();
        c.datasets.push(DatasetConfig::new("x", "/data/x.xlsx"));
        assert!(c
            .finish(Some("k".into()))
            .unwrap_err()
            .to_string()
            .contains("format"));
    }
}
