//! The fetch client's WebSocket to the gateway: fastwebsockets (the
//! workspace's client-side implementation, as in the connector), plaintext
//! or TLS, the session token in the upgrade's `Authorization` header, and
//! whole messages handed out (pings answered, fragments joined).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// One whole message from the gateway.
pub enum Message {
    Binary(Vec<u8>),
    Text(String),
    /// The gateway's close frame: code and reason, when it gave them.
    Close(Option<(u16, String)>),
}

pub struct Gateway {
    ws: FragmentCollector<TokioIo<Upgraded>>,
}

/// Runs hyper's connection task (it carries the upgrade) on tokio.
struct Spawn;

impl<F> hyper::rt::Executor<F> for Spawn
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

impl Gateway {
    /// Opens `url` (`ws://` or `wss://`, trusting `tls` for the latter).
    pub async fn connect(
        url: &str,
        token: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Gateway> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("bad gateway URL {url}"))?;
        let secure = uri.scheme_str() == Some("wss");
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("no host in {url}"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let io: Pin<Box<dyn Io>> = match (secure, tls) {
            (true, Some(config)) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| anyhow!("{host:?} is not a valid TLS server name"))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .context("TLS with the gateway failed (check --ca-cert)")?;
                Box::pin(tls)
            }
            (true, None) => return Err(anyhow!("wss:// needs a TLS configuration")),
            (false, _) => Box::pin(tcp),
        };
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| host.clone());
        let req = Request::builder()
            .method("GET")
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(HOST, authority)
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::<Bytes>::new())?;
        let (mut ws, _) = fastwebsockets::handshake::client(&Spawn, req, io)
            .await
            .map_err(|e| match e {
                WebSocketError::InvalidStatusCode(s) => {
                    anyhow!("the gateway refused the session with HTTP {s}")
                }
                other => anyhow!("WebSocket handshake failed: {other}"),
            })?;
        // One buffered answer can be as large as the gateway allows.
        ws.set_max_message_size(usize::MAX);
        ws.set_auto_pong(true);
        ws.set_auto_close(true);
        Ok(Gateway {
            ws: FragmentCollector::new(ws),
        })
    }

    pub async fn send_text(&mut self, text: String) -> Result<()> {
        let frame = Frame::text(Payload::Owned(text.into_bytes()));
        Ok(self.ws.write_frame(frame).await?)
    }

    /// The next whole message; `None` when the connection ended without a
    /// close frame.
    pub async fn next(&mut self) -> Result<Option<Message>> {
        loop {
            let frame = match self.ws.read_frame().await {
                Ok(f) => f,
                Err(WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed) => {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            };
            return Ok(Some(match frame.opcode {
                OpCode::Binary => Message::Binary(frame.payload.to_vec()),
                OpCode::Text => Message::Text(
                    String::from_utf8(frame.payload.to_vec())
                        .map_err(|_| anyhow!("the gateway sent invalid UTF-8"))?,
                ),
                OpCode::Close => {
                    let p = &frame.payload[..];
                    let status = (p.len() >= 2).then(|| {
                        let code = u16::from_be_bytes([p[0], p[1]]);
                        (code, String::from_utf8_lossy(&p[2..]).into_owned())
                    });
                    Message::Close(status)
                }
                _ => continue,
            }));
        }
    }

    pub async fn close(&mut self) {
        let _ = self.ws.write_frame(Frame::close(1000, b"")).await;
    }
}
