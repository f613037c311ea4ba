//! The Arrow Flight front (`[flight] listen`): analytics clients (pyarrow,
//! pandas, Polars, DuckDB, ADBC) read a dataset with
//! `FlightClient(…).do_get(ticket)`, authenticated by the session token in
//! `authorization: Bearer …`.
//!
//! Like the TLS front it runs on tokio threads of its own beside the
//! shards, and like it, it reaches a shard only through a socket pair
//! carrying an ordinary session ([`link`]): every rule of `/stream` holds
//! for Flight because it is the same code. The cost is one local hop per
//! byte; `sluice-loadtest flight` measures it against the WebSocket path.

mod ipc;
mod link;
mod service;
mod sessions;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arrow_flight::flight_service_server::FlightServiceServer;

use crate::server::{front, h2_front, h2_gate};
use crate::shard::metrics::{FlightStats, Front};
use crate::shard::Shared;
use crate::tls::Material;

/// Bytes a Flight client may have in flight towards the front, per
/// connection and per call.
const FLIGHT_CONNECTION_WINDOW: u32 = 256 * 1024;
const FLIGHT_STREAM_WINDOW: u32 = 80 * 1024;

/// Binds nothing (the caller bound `listener`); starts the Flight threads.
pub fn start(
    shared: Arc<Shared>,
    tls: Option<Arc<Material>>,
    listener: std::net::TcpListener,
    stats: Arc<FlightStats>,
) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let threads = match shared.cfg.flight.threads {
        0 => shared.shard_count(),
        n => n,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("sluice-flight")
        .enable_all()
        .build()
        .context("cannot start the Flight threads")?;
    std::thread::Builder::new()
        .name("sluice-flight-accept".into())
        .spawn(move || rt.block_on(serve(shared, tls, listener, stats)))
        .context("cannot spawn the Flight accept thread")?;
    Ok(addr)
}

async fn serve(
    shared: Arc<Shared>,
    tls: Option<Arc<Material>>,
    listener: std::net::TcpListener,
    stats: Arc<FlightStats>,
) {
    let Some(listener) = front::listen(listener, Front::Flight) else {
        return;
    };
    let sessions = sessions::Sessions::new(shared.clone(), stats.clone());
    tokio::spawn(sessions.clone().tend());
    let cfg = &shared.cfg.flight;
    let timeouts = &shared.cfg.timeouts;
    let preauth = h2_front::PreAuth {
        max: cfg.max_unauthenticated,
        deadline: Duration::from_millis(timeouts.auth_ms),
        stats: stats.preauth.clone(),
    };
    let gate = sessions::Bearer {
        shared: shared.clone(),
        stats: stats.clone(),
    };
    let front = service::Front { sessions, stats };
    let incoming = h2_front::incoming(
        shared.clone(),
        listener,
        tls,
        cfg.max_connections,
        preauth,
        Front::Flight,
    );
    let limits = h2_gate::Limits {
        max_concurrent_streams: cfg.max_streams_per_connection,
        max_local_error_reset_streams: cfg.max_local_error_reset_streams,
        max_pending_accept_reset_streams: cfg.max_pending_accept_reset_streams,
        max_header_list_bytes: cfg.max_header_list_bytes,
        keepalive: Duration::from_millis(timeouts.ping_interval_ms),
        max_connection_age: Duration::from_millis(cfg.max_connection_age_ms),
    };
    // A ticket or descriptor is a name: 64 KiB is far more than any needs.
    let service = FlightServiceServer::new(front).max_decoding_message_size(64 * 1024);
    let served = limits
        .apply(tonic::transport::Server::builder())
        // What a client sends here is small (tickets, descriptors): small
        // receive windows bound what any connection, authenticated or not,
        // can make the front buffer (hyper's defaults are 1 MiB each).
        // DoGet's data flows the other way, under the client's windows.
        .initial_connection_window_size(Some(FLIGHT_CONNECTION_WINDOW))
        .initial_stream_window_size(Some(FLIGHT_STREAM_WINDOW))
        .add_service(h2_gate::Gate::new(service, gate))
        .serve_with_incoming(incoming)
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "Flight server stopped");
    }
}
