//! The end of a WebSocket connection, as RFC 6455 §7.1.1 asks: the close
//! frame is written, the write side is shut (the outbox does both), and
//! then the gateway keeps reading until the peer closes its side or a
//! bounded time passes. Closing a socket whose receive queue still holds
//! unread bytes (a browser's `auth` and `list` sent just before a refusal)
//! makes the kernel send a reset, and a reset can overtake the close frame
//! the peer has not read yet: the browser then reports 1006 instead of the
//! code the gateway sent.

use std::time::Duration;

use monoio::io::AsyncReadRent;

/// Bytes read per call while lingering: what the peer still sends is
/// discarded, so a small buffer serves and bounds the memory.
const DISCARD_CHUNK: usize = 1024;

/// At most this much is read while lingering: enough for whatever a
/// client had in flight when it was refused, and no more for one that
/// keeps sending after the close (a flood), whose socket is then closed
/// with what it sent still unread.
pub const LINGER_BYTES: usize = 1 << 20;

/// Reads and discards until end of stream, an error, [`LINGER_BYTES`], or
/// `max` has passed.
pub async fn linger<R: AsyncReadRent>(mut io: R, max: Duration) {
    let drain = async {
        let mut buf = Vec::with_capacity(DISCARD_CHUNK);
        let mut read = 0;
        while read < LINGER_BYTES {
            let (res, b) = io.read(buf).await;
            match res {
                Ok(n) if n > 0 => read += n,
                _ => return,
            }
            buf = b;
            buf.clear();
        }
    };
    let _ = monoio::time::timeout(max, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_io::{runtime, socket_pair};
    use monoio::io::{AsyncWriteRentExt, Splitable};
    use std::time::Instant;

    #[test]
    fn lingering_ends_at_the_peers_close_or_the_bound() {
        runtime().block_on(async {
            // The peer closes: the linger ends at once.
            let (gw, mut far) = socket_pair().await;
            far.write_all(vec![1u8; 5000]).await.0.unwrap();
            drop(far);
            let t = Instant::now();
            linger(gw, Duration::from_secs(5)).await;
            assert!(t.elapsed() < Duration::from_secs(2));
            // A peer that keeps its side open: bounded.
            let (gw, far) = socket_pair().await;
            let (rd, _wr) = gw.into_split();
            let t = Instant::now();
            linger(rd, Duration::from_millis(100)).await;
            assert!(t.elapsed() >= Duration::from_millis(100));
            drop(far);
        });
    }
}
