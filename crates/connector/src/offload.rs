//! The offload pattern (seed 003): the connector writes the dataset's IPC
//! stream to S3-compatible object storage and answers with a presigned URL;
//! the gateway passes the URL on and the client downloads from the store.
//! Large exports never cross the tunnel.

use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::OffloadConfig;
use crate::source::Dataset;
use crate::stream::{self, Outcome, Piece};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::signer::{Method, Signer};
use object_store::{ObjectStoreExt, WriteMultipart};

/// What the connector answers instead of streaming.
pub struct Offloaded {
    pub url: String,
    pub bytes: u64,
    pub rows: u64,
    pub expires_at: u64,
}

fn store(cfg: &OffloadConfig) -> Result<AmazonS3, String> {
    let key = std::env::var(&cfg.access_key_env)
        .map_err(|_| format!("offload: ${} is not set", cfg.access_key_env))?;
    let secret = std::env::var(&cfg.secret_key_env)
        .map_err(|_| format!("offload: ${} is not set", cfg.secret_key_env))?;
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&cfg.bucket)
        .with_region(&cfg.region)
        .with_access_key_id(key)
        .with_secret_access_key(secret);
    if !cfg.endpoint.is_empty() {
        b = b
            .with_endpoint(&cfg.endpoint)
            .with_allow_http(cfg.endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    b.build().map_err(|e| format!("offload: object store: {e}"))
}

/// Exports `ds` to the store and presigns a GET for it.
pub async fn run(
    ds: Arc<Dataset>,
    chunk: usize,
    cfg: &OffloadConfig,
    rid: &str,
) -> Result<Offloaded, String> {
    if cfg.bucket.is_empty() {
        return Err("offload is not configured on this connector ([offload] bucket)".into());
    }
    let s3 = store(cfg)?;
    // The IPC stream goes to a temporary file first: bounded memory, and
    // nothing is uploaded for a dataset that fails half way.
    let (file, outcome) = tokio::task::spawn_blocking(move || {
        let mut tmp = tempfile::tempfile().map_err(|e| format!("offload: temporary file: {e}"))?;
        let mut io_error = None;
        let never = AtomicBool::new(false);
        let outcome = stream::run(&ds, chunk, &never, |p| match p {
            Piece::Start(_) => true,
            Piece::Data(m) => match std::io::Write::write_all(&mut tmp, &m) {
                Ok(()) => true,
                Err(e) => {
                    io_error = Some(e);
                    false
                }
            },
        });
        if let Some(e) = io_error {
            return Err(format!("offload: temporary file: {e}"));
        }
        Ok((tmp, outcome))
    })
    .await
    .map_err(|e| e.to_string())??;
    let (bytes, rows) = match outcome {
        Outcome::Done { bytes, rows } => (bytes, rows),
        Outcome::Failed(e) => return Err(e),
        Outcome::Gone => return Err("offload interrupted".into()),
    };
    let key = ObjectPath::from(format!("{}{rid}.arrows", cfg.prefix));
    let upload = s3
        .put_multipart(&key)
        .await
        .map_err(|e| format!("offload: upload to bucket {}: {e}", cfg.bucket))?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
    let mut file = file;
    std::io::Seek::rewind(&mut file).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("offload: temporary file: {e}"))?;
        if n == 0 {
            break;
        }
        w.wait_for_capacity(4)
            .await
            .map_err(|e| format!("offload: upload: {e}"))?;
        w.write(&buf[..n]);
    }
    w.finish()
        .await
        .map_err(|e| format!("offload: upload: {e}"))?;
    let ttl = Duration::from_secs(cfg.url_ttl_s.max(1));
    let url = s3
        .signed_url(Method::GET, &key, ttl)
        .await
        .map_err(|e| format!("offload: presigning: {e}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Ok(Offloaded {
        url: url.to_string(),
        bytes,
        rows,
        expires_at: now + ttl.as_secs(),
    })
}
