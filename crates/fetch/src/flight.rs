//! Reading through the gateway's Arrow Flight endpoint (`--flight`): the
//! same session token as `authorization: Bearer`, the dataset name as the
//! ticket. What the gateway refuses arrives as a gRPC status, reported with
//! its code.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use arrow_flight::decode::DecodedPayload;
use arrow_flight::error::FlightError;
use arrow_flight::{Criteria, FlightClient, Ticket};
use futures_util::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::output::Output;

/// What a download moved.
pub struct Moved {
    pub rows: u64,
    pub bytes: u64,
    pub messages: u64,
    pub schema: Option<arrow_schema::SchemaRef>,
}

/// `grpc://`, `grpc+tcp://` or `grpc+tls://` (Flight's URL schemes).
async fn connect(url: &str, token: &str, ca: Option<&Path>) -> Result<FlightClient> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        anyhow!("--flight {url}: expected grpc://HOST:PORT or grpc+tls://HOST:PORT")
    })?;
    let tls = match scheme {
        "grpc" | "grpc+tcp" => false,
        "grpc+tls" => true,
        other => {
            bail!("--flight {url}: unknown scheme {other:?} (grpc://, grpc+tcp:// or grpc+tls://)")
        }
    };
    let http = format!(
        "{}://{}",
        if tls { "https" } else { "http" },
        rest.trim_end_matches('/')
    );
    let mut endpoint = Endpoint::from_shared(http).with_context(|| format!("--flight {url}"))?;
    if tls {
        let mut config = ClientTlsConfig::new().with_webpki_roots();
        if let Some(p) = ca {
            let pem = std::fs::read(p).with_context(|| format!("--ca-cert {}", p.display()))?;
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(config)?;
    }
    let channel: Channel = endpoint
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| anyhow!("cannot connect to {url}: {}", crate::root_cause(&e)))?;
    let mut client = FlightClient::new(channel);
    client
        .add_header("authorization", &format!("Bearer {token}"))
        .map_err(|e| anyhow!("the token cannot go in a header: {e}"))?;
    Ok(client)
}

/// A Flight error as the gateway meant it: the status code and its message.
fn said(e: FlightError) -> anyhow::Error {
    match e {
        FlightError::Tonic(s) => anyhow!("{} ({:?})", s.message(), s.code()),
        other => anyhow!("{other}"),
    }
}

/// `--list`: the datasets the token may read.
pub async fn list(url: &str, token: &str, ca: Option<&Path>) -> Result<Vec<String>> {
    let mut client = connect(url, token, ca).await?;
    let mut infos = client
        .list_flights(Criteria::default().expression)
        .await
        .map_err(said)?;
    let mut names = Vec::new();
    while let Some(info) = infos.next().await {
        let info = info.map_err(said)?;
        if let Some(path) = info
            .flight_descriptor
            .and_then(|d| d.path.into_iter().next())
        {
            names.push(path);
        }
    }
    Ok(names)
}

/// Reads `dataset` with `DoGet` into `out`, batch by batch.
pub async fn download(
    url: &str,
    token: &str,
    ca: Option<&Path>,
    dataset: &str,
    idle: Duration,
    out: &mut Output,
    mut progress: impl FnMut(u64, u64, Instant),
) -> Result<Moved> {
    let mut client = connect(url, token, ca).await?;
    let stream = client
        .do_get(Ticket::new(dataset.to_owned()))
        .await
        .map_err(said)?;
    let mut data = stream.into_inner();
    let t0 = Instant::now();
    let mut moved = Moved {
        rows: 0,
        bytes: 0,
        messages: 0,
        schema: None,
    };
    loop {
        let next = tokio::time::timeout(idle, data.next())
            .await
            .map_err(|_| anyhow!("nothing from the gateway for {} s", idle.as_secs()))?;
        let Some(d) = next else { break };
        let d = d.map_err(said)?;
        moved.messages += 1;
        moved.bytes += (d.inner.data_header.len() + d.inner.data_body.len()) as u64;
        match d.payload {
            DecodedPayload::Schema(s) => moved.schema = Some(s),
            DecodedPayload::RecordBatch(b) => {
                moved.rows += b.num_rows() as u64;
                out.write(&b.schema(), &b)?;
            }
            DecodedPayload::None => {}
        }
        progress(moved.rows, moved.bytes, t0);
    }
    Ok(moved)
}
