//! An edge connection (a `/ws/connect` connector worker or a `/edge/{id}`
//! relay connection) as the shard that holds it sees it, and how it is
//! rebuilt on the shard it was moved to.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::registry::ConnKind;
use crate::shard::{ConnMeta, MovedConn, Shard};
use crate::wire::frame::MaskRule;
use crate::wire::handoff;
use crate::wire::message;
use crate::wire::reader::FrameReader;

/// A connector or relay-edge connection owned by the current shard.
pub struct EdgeConn {
    pub meta: ConnMeta,
    pub kind: ConnKind,
    pub reader: FrameReader<TcpStream>,
}

impl EdgeConn {
    /// Writes a frame directly. Only for a connection with no outbox, i.e.
    /// while one task owns it (idle, or a query worker between reads).
    pub async fn send(&mut self, frame: Bytes) -> std::io::Result<()> {
        let (r, _) = self.reader.io_mut().write_all(frame).await;
        r.map(|_| ())
    }

    /// The connector is about to stream towards the gateway: acknowledge
    /// its frames in pairs, not one by one (see `wire::acks`).
    pub fn expect_stream(&mut self) {
        let fd = self.reader.io().as_raw_fd();
        self.reader.pace_acks(fd);
    }

    pub async fn send_json<T: serde::Serialize>(&mut self, msg: &T) -> std::io::Result<()> {
        self.send(message::text(msg)).await
    }
}

pub(crate) fn gauge(shard: &Shard, kind: ConnKind) -> &std::sync::atomic::AtomicI64 {
    match kind {
        ConnKind::Worker => &shard.metrics().connector_conns_active,
        ConnKind::Relay => &shard.metrics().relay_conns_active,
    }
}

/// Wraps a moved connection in this shard's runtime.
pub(crate) fn adopt(shard: &Shard, moved: MovedConn, kind: ConnKind) -> Option<EdgeConn> {
    let rule = if moved.meta.fast_path {
        MaskRule::Forbidden
    } else {
        MaskRule::Required
    };
    match handoff::attach(moved.sock) {
        Ok((stream, buffered)) => {
            gauge(shard, kind).fetch_add(1, Relaxed);
            Some(EdgeConn {
                reader: FrameReader::new(
                    stream,
                    buffered,
                    rule,
                    shard.cfg().limits.max_frame_bytes,
                )
                .with_chunk(shard.cfg().limits.read_chunk_bytes),
                meta: moved.meta,
                kind,
            })
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot adopt moved connection");
            shard
                .shared
                .registry
                .remove(&moved.meta.edge, moved.meta.conn);
            None
        }
    }
}
