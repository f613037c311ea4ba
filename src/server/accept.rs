//! Accept: each shard listens on its own `SO_REUSEPORT` socket and hands
//! every connection to the router on a task of its own; it also starts the
//! shard's mailbox.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpListener;

use crate::auth::edge_auth::Transport;
use crate::server::{mailbox, route};
use crate::shard::metrics::{Front, Refused, ShardMetrics};
use crate::shard::{Shard, ShardMsg, Shared};

/// Runs shard `id` until the process exits.
pub async fn run(
    id: usize,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    mailbox: flume::Receiver<ShardMsg>,
) {
    let shard = Rc::new(Shard::new(id, shared));
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(shard = id, error = %e, "cannot register listener");
            return;
        }
    };
    monoio::spawn(mailbox::run(shard.clone(), mailbox));
    // One descriptor held in reserve for when the process runs out.
    let mut spare = std::fs::File::open("/dev/null").ok();
    let mut out_of_fds: u64 = 0;
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                monoio::spawn(route::handle_connection(
                    shard.clone(),
                    stream,
                    Transport::Plain,
                    None,
                ));
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                // Out of descriptors. The waiting connection would sit in
                // the backlog until its client gives up; instead free the
                // spare, accept it and close it at once (its client sees a
                // refusal it can retry), take the spare back, and pause
                // briefly so established sessions keep the shard.
                drop(spare.take());
                // A connection is waiting (that is what failed): no timeout,
                // whose cancellation could leave an accept in flight.
                if let Ok((s, _)) = listener.accept().await {
                    drop(s);
                }
                out_of_fds += 1;
                if out_of_fds.is_power_of_two() {
                    tracing::warn!(shard = id, times = out_of_fds, "out of file descriptors: refusing new connections (raise the descriptor limit, or lower limits.max_pending_handshakes)");
                }
                ShardMetrics::inc(&shard.metrics().http_rejections);
                let fronts = &shard.shared.metrics.fronts;
                fronts.count(Front::Ws, Refused::OutOfDescriptors);
                // Under io_uring a dropped socket is closed by an operation
                // of the ring: give it time to complete before the spare
                // takes the descriptor back.
                monoio::time::sleep(Duration::from_millis(10)).await;
                spare = std::fs::File::open("/dev/null").ok();
            }
            Err(e) => {
                // Other failures: back off instead of spinning.
                tracing::warn!(shard = id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
