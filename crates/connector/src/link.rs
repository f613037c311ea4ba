//! The outbound WebSocket to the gateway: handshake with the edge key,
//! fast-path negotiation, and the split read/write halves.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use fastwebsockets::{after_handshake_split, Role, WebSocketRead, WebSocketWrite};
use sha1::{Digest, Sha1};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::config::Config;

/// The gateway's fast-path subprotocol: frames in server → client format.
pub const FAST_PATH_PROTOCOL: &str = "sluice.frames.v1";

#[derive(Debug, Error)]
pub enum LinkError {
    #[error("cannot reach the gateway at {addr}")]
    Connect { addr: String, source: io::Error },
    #[error("gateway refused the edge key (HTTP 401): check the key and the edge id")]
    Unauthorized,
    /// Any other refusal, with the gateway's reason and, for a 429 or 503
    /// that knows when it clears, its `Retry-After`.
    #[error("gateway answered HTTP {status} to the upgrade{}{}",
        reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default(),
        retry_after.map(|d| format!(" (retry after {} s)", d.as_secs())).unwrap_or_default())]
    Refused {
        status: u16,
        reason: Option<String>,
        retry_after: Option<Duration>,
    },
    #[error("bad handshake answer from the gateway: {0}")]
    Handshake(String),
    #[error("connection to the gateway failed: {0}")]
    Io(#[from] io::Error),
    #[error("handshake timed out")]
    Timeout,
    #[error("TLS with the gateway failed: {0} (check mtls.ca_cert, and that the gateway trusts this site's certificate)")]
    Tls(io::Error),
    #[error("gateway host {0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// The read half of the link: plaintext TCP or TLS.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of the link.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Bytes the handshake read past the response head, served first.
pub struct Prefixed {
    pending: Vec<u8>,
    at: usize,
    inner: ReadHalf,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.pending.len() {
            let n = buf.remaining().min(self.pending.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.pending[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

pub struct Link {
    /// Frames go out unmasked (the gateway accepted the fast path).
    pub fast: bool,
    pub read: WebSocketRead<Prefixed>,
    pub write: WebSocketWrite<WriteHalf>,
}

pub async fn connect(cfg: &Config) -> Result<Link, LinkError> {
    tokio::time::timeout(Duration::from_secs(10), handshake(cfg))
        .await
        .map_err(|_| LinkError::Timeout)?
}

async fn handshake(cfg: &Config) -> Result<Link, LinkError> {
    let (host, path) = cfg.endpoint();
    let tcp = TcpStream::connect(&host)
        .await
        .map_err(|source| LinkError::Connect {
            addr: host.clone(),
            source,
        })?;
    tcp.set_nodelay(true)?;
    match &cfg.tls {
        // Plain TCP splits without a lock between the halves.
        None => {
            upgrade(cfg, tcp, &host, &path, |s| {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            })
            .await
        }
        Some(tls) => {
            let name = host
                .rsplit_once(':')
                .map_or(host.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let server = rustls::pki_types::ServerName::try_from(name.to_owned())
                .map_err(|_| LinkError::ServerName(name.to_owned()))?;
            let s = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(server, tcp)
                .await
                .map_err(LinkError::Tls)?;
            upgrade(cfg, s, &host, &path, |s| {
                let (r, w) = tokio::io::split(s);
                (Box::new(r), Box::new(w))
            })
            .await
        }
    }
}

/// The WebSocket upgrade over `s` (TCP or TLS).
async fn upgrade<S>(
    cfg: &Config,
    mut s: S,
    host: &str,
    path: &str,
    split: impl FnOnce(S) -> (ReadHalf, WriteHalf),
) -> Result<Link, LinkError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    // With a client certificate alone the certificate is the credential.
    if !cfg.edge_key.expose().is_empty() {
        req.push_str(&format!("Edge-Key: {}\r\n", cfg.edge_key.expose()));
    }
    if cfg.fast_path {
        req.push_str(&format!("Sec-WebSocket-Protocol: {FAST_PATH_PROTOCOL}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(LinkError::Handshake("connection closed".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err(LinkError::Handshake("response head too large".into()));
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&buf[..end])
        .map_err(|e| LinkError::Handshake(e.to_string()))?;
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    match resp.code {
        Some(101) => {}
        Some(401) => return Err(LinkError::Unauthorized),
        Some(status) => {
            // The gateway's error body `{"error": "…"}`, when it came with
            // the head (it is written in one piece).
            let reason = serde_json::from_slice::<serde_json::Value>(&buf[end..])
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned));
            let retry_after = header("retry-after")
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(LinkError::Refused {
                status,
                reason,
                retry_after,
            });
        }
        None => return Err(LinkError::Handshake("no status".into())),
    }
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    if header("sec-websocket-accept").as_deref() != Some(accept.as_str()) {
        return Err(LinkError::Handshake("wrong Sec-WebSocket-Accept".into()));
    }
    let fast =
        cfg.fast_path && header("sec-websocket-protocol").as_deref() == Some(FAST_PATH_PROTOCOL);
    let pending = buf[end..].to_vec();
    let (r, w) = split(s);
    // On the fast path the connector writes server-format (unmasked)
    // frames, which is fastwebsockets' server role; otherwise it is a
    // plain RFC 6455 client and masks.
    let role = if fast { Role::Server } else { Role::Client };
    let (mut read, mut write) = after_handshake_split(
        Prefixed {
            pending,
            at: 0,
            inner: r,
        },
        w,
        role,
    );
    read.set_auto_close(true);
    read.set_auto_pong(true);
    read.set_max_message_size(1 << 20);
    write.set_writev(true);
    Ok(Link { fast, read, write })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway that refuses with 429, its reason and `Retry-After`: the
    /// error says all three, and the backoff waits at least that long.
    #[tokio::test]
    async fn a_refusal_carries_the_gateways_reason_and_retry_after() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 2048];
            let _ = s.read(&mut head).await;
            let body = r#"{"error":"too many failed authentications from this address; retry later","status":429}"#;
            let answer = format!(
                "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 17\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).await.unwrap();
        });
        let cfg = Config {
            gateway: format!("ws://{addr}"),
            tenant: "t".into(),
            ..Default::default()
        };
        let Err(e) = connect(&cfg).await else {
            panic!("the upgrade was refused")
        };
        assert!(
            matches!(e, LinkError::Refused { status: 429, retry_after: Some(d), .. } if d == Duration::from_secs(17)),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "gateway answered HTTP 429 to the upgrade: too many failed authentications from this address; retry later (retry after 17 s)"
        );
        let mut b = crate::redial::Backoff::new(&cfg);
        b.failed("worker", false, &anyhow::Error::new(e));
        assert!(b.next_delay() >= Duration::from_secs(17));
        assert!(
            b.next_delay() < Duration::from_secs(17),
            "only the next wait"
        );
    }
}
