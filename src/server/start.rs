//! Starting the shards, and stopping them gracefully.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::lockout::Lockout;
use crate::auth::revocations::Revocations;
use crate::auth::token::Verifier;
use crate::cluster::revocation_link;
use crate::config::Config;
use crate::config::EdgeKeys;
use crate::registry::Registry;
use crate::registry::{EndReports, Feeds, Spends};
use crate::server::{accept, flight, tls_front, tunnel};
use crate::shard::metrics::{FlightStats, Metrics, TunnelStats};
use crate::shard::{ShardMsg, Shared};
use crate::wire::read_pool;

/// A running gateway. The shard threads live until the process exits.
pub struct Gateway {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    flight_addr: Option<SocketAddr>,
    grpc_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    driver: &'static str,
}

/// The shards share their port through `SO_REUSEPORT`, which would also let
/// a second gateway (same user) bind it and take half of the new
/// connections. A socket bound without `SO_REUSEPORT` cannot share the port
/// with a listener, so binding one first tells whether the port is taken.
/// (Two gateways starting at the same instant can still both pass.)
fn refuse_taken_port(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                e.kind(),
                format!(
                    "port {} is already in use (is another gateway running?)",
                    addr.port()
                ),
            )
        } else {
            e
        }
    })
}

fn bind(addr: SocketAddr, socket_buffer: usize) -> std::io::Result<std::net::TcpListener> {
    bind_as(addr, socket_buffer, true)
}

fn bind_as(
    addr: SocketAddr,
    socket_buffer: usize,
    reuse_port: bool,
) -> std::io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    // One listener per shard on the same port: the kernel spreads accepts.
    sock.set_reuse_port(reuse_port)?;
    sock.set_nonblocking(true)?;
    if socket_buffer > 0 {
        // Accepted sockets inherit these (`limits.socket_buffer_bytes`;
        // 0 leaves the kernel's autotuning). Against autotuning, fan-in
        // measured no difference within the spread (docs/benchmarks.md,
        // "Socket buffers"); the kernel caps them at net.core.[rw]mem_max.
        sock.set_recv_buffer_size(socket_buffer)?;
        sock.set_send_buffer_size(socket_buffer)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

/// The admin listener, bound when an admin token is set.
fn bind_admin(cfg: &Config) -> anyhow::Result<Option<std::net::TcpListener>> {
    if cfg.admin.token.is_empty() {
        return Ok(None);
    }
    let at: SocketAddr = cfg.admin.listen.parse().context("admin.listen")?;
    let listener = bind_as(at, 0, false)
        .with_context(|| format!("cannot listen on {} (admin.listen)", cfg.admin.listen))?;
    Ok(Some(listener))
}

impl Gateway {
    pub fn start(cfg: Config) -> anyhow::Result<Gateway> {
        cfg.validate()?;
        let verifier = Verifier::from_config(&cfg.auth)?;
        if !verifier.has_keys() {
            tracing::warn!("no token keys configured (auth.hs256_secret / ed25519_keys / jwks_file): every browser session will be refused");
        }
        let edge_keys = EdgeKeys::from_config(&cfg.edge_keys)?;
        let web = crate::static_files::StaticFiles::load(&cfg.web.dir, cfg.web.max_bytes)?;
        match web.missing() {
            None => tracing::info!(files = web.len(), dir = %cfg.web.dir, "dashboard loaded"),
            Some(why) if !cfg.web.dir.is_empty() => tracing::warn!("{why}"),
            Some(_) => {}
        }
        if edge_keys.is_empty() {
            tracing::warn!("no edge keys configured (edge_keys / SLUICE_EDGE_KEYS): every connector will be refused");
        }
        let n = cfg.shard_count();
        let sockbuf = cfg.limits.socket_buffer_bytes;
        refuse_taken_port(cfg.listen_addr())
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let first = bind(cfg.listen_addr(), sockbuf)
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..n {
            listeners
                .push(bind(addr, sockbuf).with_context(|| format!("cannot listen on {addr}"))?);
        }
        // One certificate for every TLS listener (wss/https, Flight, the
        // gRPC tunnel), reloaded together.
        let fronts =
            cfg.tls.enabled() || !cfg.flight.listen.is_empty() || !cfg.grpc.listen.is_empty();
        let material = if fronts && !cfg.tls.cert_file.is_empty() {
            Some(Arc::new(crate::tls::Material::load(&cfg.tls)?))
        } else {
            None
        };
        let tls = match &material {
            Some(m) if cfg.tls.enabled() => {
                let at: SocketAddr = cfg.tls.listen.parse().context("tls.listen")?;
                let listener = bind_as(at, sockbuf, false)
                    .with_context(|| format!("cannot listen on {} (tls.listen)", cfg.tls.listen))?;
                Some((m.clone(), listener))
            }
            _ => None,
        };
        let tls_addr = match &tls {
            Some((_, l)) => Some(l.local_addr()?),
            None => None,
        };
        let flight = if cfg.flight.listen.is_empty() {
            None
        } else {
            let at: SocketAddr = cfg.flight.listen.parse().context("flight.listen")?;
            let listener = bind_as(at, sockbuf, false).with_context(|| {
                format!("cannot listen on {} (flight.listen)", cfg.flight.listen)
            })?;
            let material = material.clone();
            let bound = listener.local_addr()?;
            let url = if !cfg.flight.public_url.is_empty() {
                cfg.flight.public_url.trim_end_matches('/').to_owned()
            } else if material.is_some() {
                format!("grpc+tls://{bound}")
            } else {
                format!("grpc://{bound}")
            };
            Some((listener, material, url, Arc::new(FlightStats::default())))
        };
        let admin = bind_admin(&cfg)?;
        let grpc = if cfg.grpc.listen.is_empty() {
            None
        } else {
            let at: SocketAddr = cfg.grpc.listen.parse().context("grpc.listen")?;
            let listener = bind_as(at, sockbuf, false)
                .with_context(|| format!("cannot listen on {} (grpc.listen)", cfg.grpc.listen))?;
            Some((listener, material.clone(), Arc::new(TunnelStats::default())))
        };
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| flume::bounded::<ShardMsg>(cfg.limits.shard_mailbox_messages.max(1)))
            .unzip();
        let want = match cfg.driver.as_str() {
            "epoll" => false,
            "io_uring" => true,
            _ => monoio::utils::detect_uring(),
        };
        if cfg.driver == "io_uring" && !monoio::utils::detect_uring() {
            bail!("driver = \"io_uring\" but io_uring is not available on this kernel");
        }
        let driver = if want { "io_uring" } else { "epoll" };
        let pin = cfg.pin_cores;
        let public_url = if !cfg.registry.public_url.is_empty() {
            cfg.registry.public_url.trim_end_matches('/').to_owned()
        } else if let Some(at) = tls_addr {
            format!("wss://{at}")
        } else {
            format!("ws://{addr}")
        };
        let revocation_on = !cfg.revocation.redis_url.is_empty();
        let ends = crate::cluster::session_end::queue(&cfg);
        let spend_link = crate::cluster::spend_link::start(&cfg)
            .context("cannot start the session-spend thread")?;
        let edge_lockout = Lockout::new(
            "edge",
            cfg.auth.edge_failures_per_minute,
            cfg.auth.edge_failure_sources,
        );
        let admin_lockout = Lockout::new(
            "admin",
            cfg.auth.admin_failures_per_minute,
            cfg.auth.admin_failure_sources,
        );
        let spent_cap = cfg.limits.max_spent_sessions;
        let registry = Registry::with_worker_share(cfg.limits.worker_share);
        let shared = Arc::new(Shared {
            cfg,
            verifier,
            edge_keys,
            registry,
            feeds: Feeds::default(),
            metrics: Metrics::new(n),
            mailboxes: txs,
            draining: AtomicBool::new(false),
            sessions: AtomicUsize::new(0),
            pending_handshakes: AtomicUsize::new(0),
            unauthenticated: AtomicUsize::new(0),
            revocations: Revocations::new(revocation_on, spent_cap),
            edge_lockout,
            admin_lockout,
            spends: Spends::new(spent_cap),
            spend_link,
            end_reports: EndReports::new(ends.as_ref().map(|(tx, _)| tx.clone())),
            public_url,
            web,
            tls: material.clone(),
            flight: flight
                .as_ref()
                .map(|(_, _, url, s)| (s.clone(), url.clone())),
            grpc: grpc.as_ref().map(|(_, _, s)| s.clone()),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let cpus = std::thread::available_parallelism()
            .map(|c| c.get())
            .unwrap_or(1);
        for (id, (listener, rx)) in listeners.into_iter().zip(rxs).enumerate() {
            let shared = shared.clone();
            let ready = ready_tx.clone();
            let taskrun = shared.cfg.uring_taskrun.clone();
            std::thread::Builder::new()
                .name(format!("sluice-shard-{id}"))
                .spawn(move || {
                    if pin {
                        if let Err(e) = monoio::utils::bind_to_cpu_set([id % cpus]) {
                            tracing::warn!(shard = id, error = %e, "cannot pin shard to its core");
                        }
                    }
                    read_pool::keep_at_most(shared.cfg.limits.read_pool_buffers);
                    let fut = accept::run(id, shared, listener, rx);
                    if want {
                        match uring_runtime(&taskrun, id) {
                            Ok(mut rt) => {
                                let _ = ready.send(Ok(()));
                                rt.block_on(fut)
                            }
                            Err(e) => {
                                let _ =
                                    ready.send(Err(format!("shard {id}: io_uring runtime: {e}")));
                            }
                        }
                    } else {
                        match RuntimeBuilder::<LegacyDriver>::new().enable_timer().build() {
                            Ok(mut rt) => {
                                let _ = ready.send(Ok(()));
                                rt.block_on(fut)
                            }
                            Err(e) => {
                                let _ = ready.send(Err(format!("shard {id}: epoll runtime: {e}")));
                            }
                        }
                    }
                })
                .context("cannot spawn shard thread")?;
        }
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!(e),
                Err(_) => bail!("a shard thread died while starting"),
            }
        }
        if let Some(m) = &material {
            tls_front::watch_files(m.clone())?;
        }
        if let Some((material, listener)) = tls {
            tls_front::start(shared.clone(), material, listener)?;
            tracing::info!(addr = %tls_addr.expect("bound"), mutual = shared.cfg.tls.mutual(), "tls listening");
        }
        let flight_addr = match flight {
            Some((listener, material, url, stats)) => {
                let at = flight::start(shared.clone(), material, listener, stats)?;
                tracing::info!(addr = %at, %url, "flight listening");
                Some(at)
            }
            None => None,
        };
        let grpc_addr = match grpc {
            Some((listener, material, stats)) => {
                let tls = material.is_some();
                let at = tunnel::start(shared.clone(), material, listener, stats)?;
                tracing::info!(addr = %at, tls, "grpc connector tunnel listening");
                Some(at)
            }
            None => None,
        };
        let admin_addr = admin
            .map(|l| crate::server::admin::start(shared.clone(), l))
            .transpose()?;
        revocation_link::start(shared.clone()).context("cannot start the revocation thread")?;
        if let Some((_, rx)) = ends {
            crate::cluster::session_end::start(shared.clone(), rx)
                .context("cannot start the session-end thread")?;
        }
        crate::cluster::announce::start(shared.clone())
            .context("cannot start the edge announcer")?;
        tracing::info!(%addr, shards = n, driver, "gateway listening");
        Ok(Gateway {
            shared,
            addr,
            tls_addr,
            flight_addr,
            grpc_addr,
            admin_addr,
            driver,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The gRPC connector listener's address, when `grpc.listen` is set.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The Flight listener's address, when `flight.listen` is set.
    pub fn flight_addr(&self) -> Option<SocketAddr> {
        self.flight_addr
    }

    /// The admin listener's address, when `admin.token` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The TLS listener's address, when `tls.listen` is set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Rereads the TLS certificate, key and client CA (SIGHUP). Live
    /// connections keep the session they have; new ones get the new files.
    pub fn reload_tls(&self) {
        match &self.shared.tls {
            Some(m) => {
                let _ = m.reload();
            }
            None => tracing::info!("reload requested; no TLS listener configured"),
        }
    }

    pub fn driver(&self) -> &'static str {
        self.driver
    }

    pub fn shard_count(&self) -> usize {
        self.shared.shard_count()
    }

    /// Graceful drain: readiness turns 503 and new sessions are refused at
    /// once; running sessions get `drain_grace_ms` to finish, then every
    /// session and connector connection is closed with 1001; returns once
    /// all sessions are gone or `shutdown_ms` more has passed.
    pub fn drain(&self) {
        let t = &self.shared.cfg.timeouts;
        self.shared.draining.store(true, Ordering::SeqCst);
        let active = || self.shared.sessions.load(Ordering::SeqCst);
        tracing::info!(sessions = active(), grace_ms = t.drain_grace_ms, "draining");
        let grace_end = Instant::now() + Duration::from_millis(t.drain_grace_ms);
        while active() > 0 && Instant::now() < grace_end {
            std::thread::sleep(Duration::from_millis(20));
        }
        for mb in &self.shared.mailboxes {
            let _ = mb.send(ShardMsg::CloseAll);
        }
        let end = Instant::now() + Duration::from_millis(t.shutdown_ms);
        while active() > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the close frames reach the wire.
        std::thread::sleep(Duration::from_millis(100));
        tracing::info!(sessions_left = active(), "drained");
        // Within the same bound: the process exits `shutdown_ms` after the
        // grace at the latest, as documented.
        self.flush_session_ends(end);
    }

    /// Waits until the ends of the sessions the drain closed have reached
    /// Redis or the control plane, or `until`: a report lost at exit
    /// would keep a stream slot and the unused part of a quota grant taken
    /// until the token expires.
    fn flush_session_ends(&self, until: Instant) {
        let reports = &self.shared.end_reports;
        while reports.pending() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        match reports.pending() {
            0 => {}
            left => tracing::warn!(
                left,
                "session-end reports not delivered before exit; their slots free when their tokens expire"
            ),
        }
    }
}

/// An io_uring shard runtime with the completion-work mode asked for, or
/// the next one down where the kernel refuses it.
///
/// `defer` (single issuer + deferred task running) and `coop` stop the
/// kernel from interrupting a running shard to post a completion: the
/// work waits until the shard next waits for events, and no
/// inter-processor interrupt is sent to a busy core.
fn uring_runtime(
    taskrun: &str,
    shard: usize,
) -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<IoUringDriver>>> {
    let modes = ["defer", "coop", "plain"];
    let from = modes.iter().position(|m| *m == taskrun).unwrap_or(0);
    let mut last = None;
    for mode in &modes[from..] {
        let mut urb = io_uring::IoUring::builder();
        match *mode {
            "defer" => {
                urb.setup_single_issuer().setup_defer_taskrun();
            }
            "coop" => {
                urb.setup_coop_taskrun().setup_taskrun_flag();
            }
            _ => {}
        }
        match RuntimeBuilder::<IoUringDriver>::new()
            .uring_builder(urb)
            .with_entries(4096)
            .enable_timer()
            .build()
        {
            Ok(rt) => {
                if *mode != taskrun {
                    tracing::warn!(shard, asked = taskrun, using = *mode, error = ?last.as_ref().map(ToString::to_string), "io_uring task-run mode refused by the kernel; using the next one down");
                }
                return Ok(rt);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no io_uring mode")))
}
