//! The HTTP/1.1 request line and headers of the opening handshake, and the
//! few plain responses the gateway gives (RFC 6455 §4.2, RFC 9110).
//!
//! Parsing is httparse (well-kept, zero-copy, fuzzed by its authors); what is
//! ours is the upgrade validation, which accepts exactly what RFC 6455 allows.

use base64::Engine;
use sha1::{Digest, Sha1};
use thiserror::Error;

/// GUID appended to the client's key (RFC 6455 §1.3).
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The subprotocol the project's own connector asks for: its frames arrive
/// already in server → client wire format (unmasked), so the gateway passes
/// them through untouched.
pub const FAST_PATH_PROTOCOL: &str = "sluice.frames.v1";

/// A request refused before any WebSocket exists: answered with this status.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{status} {reason}")]
pub struct HttpError {
    pub status: u16,
    pub reason: &'static str,
    /// Sent as `Retry-After` (seconds): when a 429 or 503 will clear.
    pub retry_after_s: Option<u64>,
}

impl HttpError {
    pub const fn new(status: u16, reason: &'static str) -> Self {
        Self {
            status,
            reason,
            retry_after_s: None,
        }
    }

    pub const fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_s = Some(secs);
        self
    }
}

/// A parsed request head. Header names are kept lower-cased.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    /// Bytes taken by the head, so what follows it can be kept.
    pub head_len: usize,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Values of a header that may repeat or hold a comma-separated list.
    pub fn header_tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a request head from `buf`. `Ok(None)`: incomplete, read more.
///
/// `max_head` bounds the head's size (431 past it) and `max_headers` the
/// number of header fields.
pub fn parse_request(
    buf: &[u8],
    max_head: usize,
    max_headers: usize,
) -> Result<Option<Request>, HttpError> {
    let mut storage = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut storage);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(431, "too many header fields"))
        }
        Err(_) => return Err(HttpError::new(400, "malformed HTTP request")),
    };
    let head_len = match status {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => {
            if buf.len() >= max_head {
                return Err(HttpError::new(431, "request header too large"));
            }
            return Ok(None);
        }
    };
    if head_len > max_head {
        return Err(HttpError::new(431, "request header too large"));
    }
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    if req.version != Some(1) {
        return Err(HttpError::new(505, "HTTP/1.1 required"));
    }
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::new(400, "header value is not valid UTF-8"))?;
        headers.push((h.name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(Some(Request {
        method,
        path,
        query,
        headers,
        head_len,
    }))
}

/// What a valid upgrade request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    pub accept: String,
    pub protocols: Vec<String>,
}

/// Checks the opening handshake exactly as RFC 6455 §4.2.1 requires.
pub fn validate_upgrade(req: &Request) -> Result<Upgrade, HttpError> {
    if req.method != "GET" {
        return Err(HttpError::new(405, "WebSocket upgrade requires GET"));
    }
    if req.header("host").is_none() {
        return Err(HttpError::new(400, "missing Host header"));
    }
    if !req
        .header_tokens("upgrade")
        .any(|t| t.eq_ignore_ascii_case("websocket"))
    {
        return Err(HttpError::new(426, "Upgrade: websocket required"));
    }
    if !req
        .header_tokens("connection")
        .any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return Err(HttpError::new(400, "Connection: Upgrade required"));
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err(HttpError::new(426, "Sec-WebSocket-Version: 13 required"));
    }
    let key = req
        .header("sec-websocket-key")
        .ok_or(HttpError::new(400, "missing Sec-WebSocket-Key"))?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => {
            return Err(HttpError::new(
                400,
                "Sec-WebSocket-Key is not 16 bytes of base64",
            ))
        }
    }
    Ok(Upgrade {
        accept: accept_key(key),
        protocols: req
            .header_tokens("sec-websocket-protocol")
            .map(str::to_owned)
            .collect(),
    })
}

pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

pub fn switching_protocols(accept: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut s = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        s.push_str("Sec-WebSocket-Protocol: ");
        s.push_str(p);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// A dashboard file: cacheable only by revalidation, never sniffed, and
/// allowed to talk to the gateway and a control plane on another origin.
pub fn static_response(content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nContent-Security-Policy: default-src 'self'; connect-src 'self' ws: wss: http: https:; img-src 'self' data:; style-src 'self' 'unsafe-inline'\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A complete response that closes the connection.
pub fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    response_with(status, content_type, body, "")
}

/// [`response`] with `extra` header lines (each ending in CRLF).
fn response_with(status: u16, content_type: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        reason_phrase(status),
        body.len()
    );
    if status == 426 {
        out.push_str("Sec-WebSocket-Version: 13\r\n");
    }
    out.push_str(extra);
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A JSON error response: `{"error": "...", "status": N}`, with
/// `Retry-After` when the error says when to come back.
pub fn error_response(err: &HttpError) -> Vec<u8> {
    let body = serde_json::json!({"error": err.reason, "status": err.status}).to_string();
    let extra = err
        .retry_after_s
        .map(|s| format!("Retry-After: {s}\r\n"))
        .unwrap_or_default();
    response_with(err.status, "application/json", body.as_bytes(), &extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /stream/s1?token=a%2Bb HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nrest";

    #[test]
    fn parses_and_validates_rfc_example() {
        let req = parse_request(GOOD.as_bytes(), 8192, 32).unwrap().unwrap();
        assert_eq!(req.path, "/stream/s1");
        assert_eq!(req.query_param("token").as_deref(), Some("a+b"));
        assert_eq!(&GOOD.as_bytes()[req.head_len..], b"rest");
        let up = validate_upgrade(&req).unwrap();
        // RFC 6455 §1.3 worked example.
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn an_error_that_knows_when_it_clears_says_retry_after() {
        let plain = String::from_utf8(error_response(&HttpError::new(503, "busy"))).unwrap();
        assert!(!plain.contains("Retry-After"), "{plain}");
        let e = HttpError::new(429, "locked out").retry_after(7);
        let text = String::from_utf8(error_response(&e)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 429 "), "{head}");
        assert!(head.ends_with("\r\nRetry-After: 7"), "{head}");
        assert_eq!(body, r#"{"error":"locked out","status":429}"#);
    }

    #[test]
    fn partial_and_oversized() {
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHo", 8192, 32),
            Ok(None)
        ));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(
            parse_request(big.as_bytes(), 8192, 32).unwrap_err().status,
            431
        );
        assert_eq!(
            parse_request(b"\x00\x01garbage\r\n\r\n", 8192, 32)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn refuses_bad_upgrades() {
        for (from, to, status) in [
            ("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8", 426),
            ("Upgrade: websocket", "Upgrade: h2c", 426),
            ("keep-alive, Upgrade", "keep-alive", 400),
            ("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=", 400),
            ("GET", "POST", 405),
            ("Host: x\r\n", "", 400),
        ] {
            let text = GOOD.replacen(from, to, 1);
            let req = parse_request(text.as_bytes(), 8192, 32).unwrap().unwrap();
            assert_eq!(validate_upgrade(&req).unwrap_err().status, status, "{to}");
        }
    }
}
