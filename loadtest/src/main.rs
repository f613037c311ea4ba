//! `sluice-loadtest`: drives a Sluice gateway (one it starts, or a running
//! one) with simulated connectors and browser sessions, and replays the same
//! traffic on a direct path and through nginx / haproxy in the same run, so
//! that the figures it reports are ratios on one machine.
//!
//!     sluice-loadtest bulk
//!     sluice-loadtest latency --rate 2000 --frame-size 1024 --duration 10
//!     sluice-loadtest fan-in --sessions 200 --rate 50 --frame-size 4096
//!     sluice-loadtest fan-out --viewers 1000 --rate 64 --frame-size 16384
//!     sluice-loadtest churn --rate 500
//!     sluice-loadtest idle --sessions 10000
//!     sluice-loadtest tls --frames 20000 --rate 2000 --sessions 200

mod counters;
mod report;
mod scenario;
mod sink;
mod targets;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::json;

use report::Report;
use scenario::{Ctx, Driven, Layout};
use targets::{GatewaySpec, Origin, Proc, Route, Target};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Scenario {
    /// One stream of large frames as fast as possible (throughput).
    Bulk,
    /// One stream of small frames at a fixed rate (latency).
    Latency,
    /// Many concurrent streams at a fixed rate each.
    FanIn,
    /// One live feed to many viewers.
    FanOut,
    /// Sessions opened and closed at a fixed rate.
    Churn,
    /// Many idle sessions: memory per session.
    Idle,
    /// Revocation storm through Redis: publish → 4410 at the browser.
    Revoke,
    /// What TLS costs on each leg (browser, connector, both) against
    /// plaintext, on one gateway: bulk, latency, session opens.
    Tls,
    /// The same dataset through the WebSocket fast path and through Arrow
    /// Flight's DoGet, on one gateway with a Flight listener.
    Flight,
    /// Bulk from a connector on the gRPC tunnel (seed 002) against the
    /// WebSocket fast path, on one gateway with a gRPC listener.
    Grpc,
    /// Mixed traffic while faults are injected (connector killed and
    /// stalled, Redis restarted, revocations, gateway SIGTERM + restart);
    /// every stream verified byte for byte or ended with a documented
    /// error. Starts its own gateway and redis-server.
    Chaos,
}

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Load generator for the Sluice gateway, with direct / nginx / haproxy baselines in the same run"
)]
struct Args {
    scenario: Scenario,

    /// Paths to drive, comma separated: direct, gateway (fast path),
    /// gateway-query (seed-001 masked), gateway-relay, nginx, haproxy,
    /// haproxy-tcp (mode tcp with splicing: the ceiling for any proxy),
    /// tcp-floor (`sluice-floor-relay`: read once, write at once, nothing
    /// else; the kernel's per-frame floor), tcp-floor-uring
    /// (`sluice-uring-floor`: the same on io_uring, multishot receives).
    /// Default: direct, gateway, and nginx/haproxy when installed.
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,

    /// Address of a running gateway; without it the loader starts one.
    #[arg(long)]
    gateway: Option<SocketAddr>,
    /// PID of the running gateway, for its CPU and memory figures.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Gateway binary to start (default: `sluice` next to this binary).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Shards of the gateway the loader starts.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Extra KEY=VALUE environment for the gateway the loader starts (repeatable).
    #[arg(long = "gateway-env")]
    gateway_env: Vec<String>,
    /// Gateway config file to read the HS256 secret from ([auth] hs256_secret).
    #[arg(long)]
    config: Option<PathBuf>,
    /// HS256 secret to sign session tokens with.
    #[arg(long, env = "SLUICE_TOKEN_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Edge the simulated connectors register as.
    #[arg(long, default_value = "loadtest")]
    edge: String,
    /// Tenant of the simulated connectors and sessions (default: the edge id).
    #[arg(long)]
    tenant: Option<String>,
    /// Edge key of the simulated connectors.
    #[arg(long, env = "SLUICE_EDGE_KEY", hide_env_values = true)]
    edge_key: Option<String>,

    /// CPUs for the proxy under test (taskset list). Default "0" on a
    /// multi-core host.
    #[arg(long)]
    proxy_cpus: Option<String>,
    /// CPU for the loader's sources and sinks. Default 1 on a multi-core host.
    #[arg(long)]
    load_cpu: Option<usize>,
    /// CPU for the sources alone (default: the load CPU; in timed scenarios
    /// the direct path's source goes to the proxy CPU). On a host with
    /// cores to spare, give source, sink and proxy a core each.
    #[arg(long)]
    source_cpu: Option<usize>,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,

    /// Payload bytes per frame.
    #[arg(long)]
    frame_size: Option<usize>,
    /// Frames per stream (bulk).
    #[arg(long)]
    frames: Option<u64>,
    /// Rounds (bulk; the median is reported).
    #[arg(long)]
    runs: Option<usize>,
    /// Latency and fan-in: cut each target's duration into this many
    /// phases and let the targets take turns, so that all of them see the
    /// same minutes of a host whose speed drifts (a shared VM). The
    /// streams stay open throughout. Default 1: each target once, in order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    slices: u64,
    /// Frames per second per stream (latency, fan-in, fan-out) or sessions per second (churn).
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds of traffic (latency, fan-in, fan-out, churn).
    #[arg(long)]
    duration: Option<u64>,
    /// Concurrent sessions (fan-in, idle); sessions opened per leg setting (tls).
    #[arg(long)]
    sessions: Option<usize>,
    /// Viewers of the live feed (fan-out).
    #[arg(long)]
    viewers: Option<usize>,
    /// Seconds the idle sessions are held before they are checked.
    #[arg(long)]
    hold: Option<u64>,

    /// Redis the gateway takes revocations from (revoke). A gateway the
    /// loader starts is pointed at it.
    #[arg(long, env = "SLUICE_REVOCATION_REDIS_URL")]
    redis: Option<String>,
    /// Revocation channel (the gateway's `revocation.channel`).
    #[arg(long, default_value = "sluice:revocations")]
    revoke_channel: String,

    /// Seconds between faults (chaos).
    #[arg(long)]
    fault_every: Option<u64>,
    /// Relay sessions at once (chaos).
    #[arg(long)]
    relays: Option<usize>,

    /// Directory for report.json, the .hgrm files and latency.svg.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("sluice-loadtest: {e:#}");
        std::process::exit(1);
    }
}

/// Descriptors for this process and the proxies it starts (they inherit
/// the limit). 10,000 idle sessions through nginx or haproxy take two
/// descriptors each here and two in the proxy, past a 20,000 hard limit:
/// raise the hard limit too where allowed (root, or CAP_SYS_RESOURCE) up
/// to the kernel's `fs.nr_open`, else the soft one up to the hard one.
fn raise_nofile_limit() {
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20)
        .min(1 << 20);
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
    if hard < ceiling && rlimit::Resource::NOFILE.set(ceiling, ceiling).is_ok() {
        return;
    }
    if soft < hard {
        let _ = rlimit::increase_nofile_limit(u64::MAX);
    }
}

fn run() -> Result<()> {
    let a = Args::parse();
    raise_nofile_limit();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let pin = !a.no_pin && cores > 1;
    let proxy_cpus = if pin {
        Some(a.proxy_cpus.clone().unwrap_or_else(|| "0".into()))
    } else {
        None
    };
    let layout = Layout {
        load_cpu: if pin {
            Some(a.load_cpu.unwrap_or(1))
        } else {
            None
        },
        proxy_cpu: proxy_cpus
            .as_deref()
            .and_then(|l| l.split([',', '-']).next())
            .and_then(|c| c.parse().ok()),
        source_cpu: if pin { a.source_cpu } else { None },
    };

    if a.scenario == Scenario::Chaos {
        let gw = gateway_spec(&a, &None)?;
        let p = scenario::chaos::Params {
            duration: Duration::from_secs(a.duration.unwrap_or(120)),
            fault_every: Duration::from_secs(a.fault_every.unwrap_or(10).max(1)),
            queries: a.sessions.unwrap_or(6),
            viewers: a.viewers.unwrap_or(3),
            relays: a.relays.unwrap_or(2),
        };
        let dir = a
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("target/loadtest/chaos"));
        std::fs::create_dir_all(&dir)?;
        let report = scenario::chaos::run(&gw, &p);
        if let Ok(r) = &report {
            let file = dir.join("report.json");
            std::fs::write(&file, serde_json::to_string_pretty(r)?)?;
            println!("wrote {}", file.display());
        }
        return report.map(|_| ());
    }
    let targets: Vec<Target> = if matches!(
        a.scenario,
        Scenario::Revoke | Scenario::Tls | Scenario::Flight | Scenario::Grpc
    ) {
        // Revocation and the TLS legs exist only in the gateway: the
        // baseline is the gateway's own plaintext path.
        vec![Target::Gateway]
    } else if a.targets.is_empty() {
        let mut t = vec![Target::Direct, Target::Gateway];
        if targets::has("nginx") {
            t.push(Target::Nginx);
        }
        if targets::has("haproxy") {
            t.push(Target::Haproxy);
            t.push(Target::HaproxyTcp);
        }
        t
    } else {
        a.targets
            .iter()
            .map(|s| Target::parse(s))
            .collect::<Result<_>>()?
    };
    let mut gw = gateway_spec(&a, &proxy_cpus)?;
    if a.scenario == Scenario::Revoke {
        let url = a.redis.clone().context(
            "revoke needs Redis: --redis redis://HOST:PORT/ (or SLUICE_REVOCATION_REDIS_URL)",
        )?;
        gw.env.push(("SLUICE_REVOCATION_REDIS_URL".into(), url));
        gw.env
            .push(("SLUICE_REVOCATION_CHANNEL".into(), a.revoke_channel.clone()));
    }
    if a.scenario == Scenario::Flight {
        if a.gateway.is_some() {
            bail!("flight starts its own gateway with a Flight listener: drop --gateway");
        }
        gw.env
            .push(("SLUICE_FLIGHT_LISTEN".into(), "127.0.0.1:0".into()));
    }
    if a.scenario == Scenario::Grpc {
        if a.gateway.is_some() {
            bail!("grpc starts its own gateway with a gRPC listener: drop --gateway");
        }
        gw.env
            .push(("SLUICE_GRPC_LISTEN".into(), "127.0.0.1:0".into()));
        gw.env
            .push(("SLUICE_GRPC_WORKERS_PER_CONNECTOR".into(), "1".into()));
    }
    let pki = if a.scenario == Scenario::Tls {
        if a.gateway.is_some() {
            bail!("tls makes its own certificates and starts its own gateway: drop --gateway");
        }
        let pki = scenario::tls::Pki::make(&gw.tenant)?;
        gw.env.extend(pki.gateway_env());
        Some(pki)
    } else {
        None
    };
    let _gateway = if targets.iter().any(|t| t.is_gateway()) {
        targets::start_gateway(&mut gw)?
    } else {
        None
    };
    let origin = Origin::start()?;
    let mut procs = vec![];
    let (mut _nginx, mut _haproxy) = (None, None);
    let mut nginx_at = None;
    let mut haproxy_at = None;
    if targets.contains(&Target::Nginx) {
        if !targets::has("nginx") {
            bail!("target nginx asked for, but nginx is not installed (apt-get install nginx)");
        }
        let (s, addr, p) = targets::start_nginx(origin.addr, &proxy_cpus)?;
        _nginx = Some(s);
        nginx_at = Some((addr, p));
    }
    if targets.contains(&Target::Haproxy) {
        if !targets::has("haproxy") {
            bail!(
                "target haproxy asked for, but haproxy is not installed (apt-get install haproxy)"
            );
        }
        let (s, addr, p) = targets::start_haproxy(origin.addr, &proxy_cpus, false)?;
        _haproxy = Some(s);
        haproxy_at = Some((addr, p));
    }
    let (mut _haproxy_tcp, mut haproxy_tcp_at) = (None, None);
    if targets.contains(&Target::HaproxyTcp) {
        if !targets::has("haproxy") {
            bail!("target haproxy-tcp asked for, but haproxy is not installed (apt-get install haproxy)");
        }
        let (s, addr, p) = targets::start_haproxy(origin.addr, &proxy_cpus, true)?;
        _haproxy_tcp = Some(s);
        haproxy_tcp_at = Some((addr, p));
    }
    let mut floors = Vec::new();
    for t in [Target::TcpFloor, Target::TcpFloorUring] {
        if targets.contains(&t) {
            let (s, addr, p) = targets::start_floor(t, origin.addr, &proxy_cpus)?;
            floors.push((t, s, addr, p));
        }
    }
    let floor_at = |t: Target| {
        let (_, _, addr, p) = floors.iter().find(|f| f.0 == t).expect("started above");
        (*addr, Some(*p))
    };
    for t in &targets {
        let (addr, proc) = match t {
            Target::Direct => (origin.addr, None),
            Target::Nginx => (nginx_at.unwrap().0, Some(nginx_at.unwrap().1)),
            Target::Haproxy => (haproxy_at.unwrap().0, Some(haproxy_at.unwrap().1)),
            Target::HaproxyTcp => (haproxy_tcp_at.unwrap().0, Some(haproxy_tcp_at.unwrap().1)),
            Target::TcpFloor | Target::TcpFloorUring => floor_at(*t),
            _ => (gw.addr.expect("gateway address"), gw.pid.map(Proc)),
        };
        procs.push((*t, addr, proc));
    }

    scenario::pin_current(layout.load_cpu);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ctx = Ctx {
        rt: &rt,
        layout: layout.clone(),
        epoch: Instant::now(),
        targets: procs
            .iter()
            .map(|(t, addr, proc)| Driven {
                route: Route {
                    target: *t,
                    addr: *addr,
                    origin: &origin,
                    gw: &gw,
                },
                proc: *proc,
            })
            .collect(),
    };
    let secs = |d: u64| Duration::from_secs(a.duration.unwrap_or(d));
    let (params, outcomes) = match a.scenario {
        Scenario::Bulk => {
            let p = scenario::bulk::Params {
                frames: a.frames.unwrap_or(20_000),
                size: a.frame_size.unwrap_or(64 * 1024),
                runs: a.runs.unwrap_or(3),
            };
            (
                json!({"frames": p.frames, "frame_size": p.size, "runs": p.runs}),
                scenario::bulk::run(&ctx, &p),
            )
        }
        Scenario::Flight | Scenario::Grpc => {
            let p = scenario::bulk::Params {
                frames: a.frames.unwrap_or(8_000),
                size: a.frame_size.unwrap_or(256 * 1024),
                runs: a.runs.unwrap_or(3),
            };
            let outcomes = if a.scenario == Scenario::Flight {
                let at = gw
                    .flight_addr
                    .context("the gateway printed no Flight address")?;
                scenario::flight::run(&ctx, at, &p)?
            } else {
                let at = gw
                    .grpc_addr
                    .context("the gateway printed no gRPC address")?;
                scenario::grpc::run(&ctx, at, &p)?
            };
            (
                json!({"frames": p.frames, "frame_size": p.size, "runs": p.runs}),
                outcomes,
            )
        }
        Scenario::Latency | Scenario::FanIn => {
            let fan_in = a.scenario == Scenario::FanIn;
            let p = scenario::latency::Params {
                streams: if fan_in { a.sessions.unwrap_or(200) } else { 1 },
                size: a.frame_size.unwrap_or(if fan_in { 4096 } else { 1024 }),
                rate: a.rate.unwrap_or(if fan_in { 50 } else { 2000 }),
                duration: secs(10),
                slices: a.slices as usize,
            };
            (
                json!({"streams": p.streams, "frame_size": p.size, "rate_per_stream": p.rate, "duration_s": p.duration.as_secs(), "slices": p.slices}),
                scenario::latency::run(&ctx, &p),
            )
        }
        Scenario::FanOut => {
            let p = scenario::fan_out::Params {
                viewers: a.viewers.unwrap_or(1000),
                size: a.frame_size.unwrap_or(16 * 1024),
                rate: a.rate.unwrap_or(64),
                duration: secs(10),
            };
            (
                json!({"viewers": p.viewers, "frame_size": p.size, "rate": p.rate, "feed_bytes_per_s": p.size as u64 * p.rate, "duration_s": p.duration.as_secs()}),
                scenario::fan_out::run(&ctx, &p),
            )
        }
        Scenario::Churn => {
            let p = scenario::churn::Params {
                rate: a.rate.unwrap_or(500),
                duration: secs(10),
            };
            (
                json!({"sessions_per_s": p.rate, "duration_s": p.duration.as_secs()}),
                scenario::churn::run(&ctx, &p),
            )
        }
        Scenario::Revoke => {
            let p = scenario::revoke::Params {
                sessions: a.sessions.unwrap_or(1000),
                rate: a.rate.unwrap_or(1000),
                redis_url: a.redis.clone().unwrap_or_default(),
                channel: a.revoke_channel.clone(),
            };
            (
                json!({"sessions": p.sessions, "revocations_per_s": p.rate}),
                scenario::revoke::run(&ctx, &p),
            )
        }
        Scenario::Tls => {
            let p = scenario::tls::Params {
                frames: a.frames.unwrap_or(20_000),
                size: a.frame_size.unwrap_or(64 * 1024),
                rate: a.rate.unwrap_or(2000),
                latency_size: 1024,
                duration: secs(5),
                opens: a.sessions.unwrap_or(1000),
                idle: a.sessions.unwrap_or(2000),
            };
            let pki = pki.as_ref().context("tls: certificates were made above")?;
            let dialer = scenario::tls::Dialer::new(&gw, pki)?;
            let rows = scenario::tls::run(&ctx, &dialer, gw.pid.map(Proc), &p)?;
            println!("{}", describe(&layout, &gw, cores));
            print!("{}", scenario::tls::table(&rows));
            let dir = a
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("target/loadtest/tls"));
            std::fs::create_dir_all(&dir)?;
            let file = dir.join("report.json");
            let report = json!({
                "scenario": "tls",
                "params": {"frames": p.frames, "frame_size": p.size, "rate": p.rate,
                           "latency_frame_size": p.latency_size, "duration_s": p.duration.as_secs(),
                           "opens": p.opens, "idle_sessions": p.idle},
                "layout": describe(&layout, &gw, cores),
                "rows": rows,
            });
            std::fs::write(&file, serde_json::to_string_pretty(&report)?)?;
            println!("wrote {}", file.display());
            return Ok(());
        }
        Scenario::Chaos => unreachable!("chaos returned above"),
        Scenario::Idle => {
            let p = scenario::idle::Params {
                sessions: a.sessions.unwrap_or(10_000),
                hold: Duration::from_secs(a.hold.unwrap_or(2)),
            };
            (
                json!({"sessions": p.sessions, "hold_s": p.hold.as_secs()}),
                scenario::idle::run(&ctx, &p),
            )
        }
    };
    let name = format!("{:?}", a.scenario)
        .to_lowercase()
        .replace("fanin", "fan-in")
        .replace("fanout", "fan-out");
    let mut report = Report {
        scenario: name.clone(),
        params,
        layout: describe(&layout, &gw, cores),
        outcomes,
    };
    report.fill_ratios();
    print!("{}", report.table());
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/loadtest").join(&name));
    for f in report.write(&dir)? {
        println!("wrote {f}");
    }
    let errors: u64 = report.outcomes.iter().map(|o| o.errors).sum();
    if errors > 0 {
        bail!("{errors} errors (see above)");
    }
    Ok(())
}

fn describe(l: &Layout, gw: &GatewaySpec, cores: usize) -> String {
    if let (Some(p), Some(c), Some(s)) = (l.proxy_cpu, l.load_cpu, l.source_cpu) {
        return format!(
            "{cores} CPUs; gateway ({} shard(s)) / nginx / haproxy pinned to CPU {p}; sinks on CPU {c}; sources on CPU {s}",
            gw.workers
        );
    }
    match (l.proxy_cpu, l.load_cpu) {
        (Some(p), Some(c)) => format!(
            "{cores} CPUs; gateway ({} shard(s)) / nginx / haproxy pinned to CPU {p}; loader sources and sinks on CPU {c}; \
             in timed scenarios the direct path's source runs on CPU {p} so its ends sit on different cores",
            gw.workers
        ),
        _ => format!("{cores} CPUs; nothing pinned"),
    }
}

fn gateway_spec(a: &Args, proxy_cpus: &Option<String>) -> Result<GatewaySpec> {
    let attached = a.gateway.is_some();
    let from_config = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let v: toml::Value =
                toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
            v.get("auth")
                .and_then(|x| x.get("hs256_secret"))
                .and_then(|x| x.as_str())
                .map(String::from)
        }
        None => None,
    };
    let secret = match a.secret.clone().or(from_config) {
        Some(s) => s,
        None if attached => bail!("attaching to a gateway needs its HS256 secret: --secret, SLUICE_TOKEN_SECRET or --config FILE"),
        None => format!(
            "loadtest-secret-{}-{}-0123456789abcdef",
            std::process::id(),
            sluice::auth::token::now_s()
        ),
    };
    let edge_key = match a.edge_key.clone() {
        Some(k) => k,
        None if attached => bail!(
            "attaching to a gateway needs the edge key of --edge: --edge-key or SLUICE_EDGE_KEY"
        ),
        None => format!("loadtest-edge-key-{:016}", std::process::id()),
    };
    let bin = match &a.gateway_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("sluice"),
    };
    let mut env = vec![];
    for kv in &a.gateway_env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--gateway-env {kv:?} is not KEY=VALUE"))?;
        env.push((k.to_string(), v.to_string()));
    }
    Ok(GatewaySpec {
        addr: a.gateway,
        tls_addr: None,
        flight_addr: None,
        grpc_addr: None,
        pid: a.gateway_pid,
        bin,
        workers: a.workers,
        secret,
        tenant: a.tenant.clone().unwrap_or_else(|| a.edge.clone()),
        edge: a.edge.clone(),
        edge_key,
        cpus: proxy_cpus.clone(),
        env,
    })
}
