//! Accept: each shard listens on its own `SO_REUSEPORT` socket and hands
//! every connection to the router on a task of its own; it also starts the
//! shard's mailbox.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpListener;

use crate::auth::edge_auth::Transport;
use crate::server::{mailbox, route};
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
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                monoio::spawn(route::handle_connection(
                    shard.clone(),
                    stream,
                    Transport::Plain,
                ));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(shard = id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
