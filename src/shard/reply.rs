//! Plain HTTP answers on a shard's sockets (health, metrics, refusals
//! before an upgrade), counted when they refuse.

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::shard::metrics::ShardMetrics;
use crate::shard::Shard;
use crate::wire::http::{self, HttpError};

pub async fn respond(mut stream: TcpStream, status: u16, ctype: &str, body: Vec<u8>) {
    let _ = stream.write_all(http::response(status, ctype, &body)).await;
    let _ = monoio::io::AsyncWriteRent::shutdown(&mut stream).await;
}

pub async fn reject(shard: &Shard, mut stream: TcpStream, e: &HttpError) {
    ShardMetrics::inc(&shard.metrics().http_rejections);
    tracing::debug!(status = e.status, reason = e.reason, "request rejected");
    let _ = stream.write_all(http::error_response(e)).await;
    let _ = monoio::io::AsyncWriteRent::shutdown(&mut stream).await;
}
