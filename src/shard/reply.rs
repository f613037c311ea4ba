//! Plain HTTP answers on a shard's sockets (health, metrics, refusals
//! before an upgrade), counted when they refuse.

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::shard::metrics::ShardMetrics;
use crate::shard::Shard;
use crate::wire::http::{self, HttpError};

pub async fn respond(stream: TcpStream, status: u16, ctype: &str, body: Vec<u8>) {
    answer(stream, "GET", status, ctype, body).await
}

/// Answers a request of `method`: a `HEAD` gets the same head (its
/// `Content-Length` included) and no body (RFC 9110 §9.3.2).
pub async fn answer(mut stream: TcpStream, method: &str, status: u16, ctype: &str, body: Vec<u8>) {
    let mut bytes = http::response(status, ctype, &body);
    if method == "HEAD" {
        bytes.truncate(bytes.len() - body.len());
    }
    let _ = stream.write_all(bytes).await;
    let _ = monoio::io::AsyncWriteRent::shutdown(&mut stream).await;
}

pub async fn reject(shard: &Shard, mut stream: TcpStream, e: &HttpError) {
    ShardMetrics::inc(&shard.metrics().http_rejections);
    tracing::debug!(status = e.status, reason = e.reason, "request rejected");
    let _ = stream.write_all(http::error_response(e)).await;
    let _ = monoio::io::AsyncWriteRent::shutdown(&mut stream).await;
}
