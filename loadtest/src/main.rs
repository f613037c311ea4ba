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
//!     sluice-loadtest abuse --duration 8
//!
//! Each scenario is a subcommand with its own options (`sluice-loadtest
//! SCENARIO --help`); [`run`] sets up what every measured scenario shares
//! (the paths, the gateway, the baselines) and each `*_params` function
//! turns a subcommand's options into its scenario's parameters.

mod cli;
mod counters;
mod report;
mod scenario;
mod sink;
mod targets;
mod wire;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

use cli::{Cli, Common, Scenario};
use report::{Outcome, Report};
use scenario::{Ctx, Driven, Layout};
use targets::{GatewaySpec, Origin, Proc, Route, Target};

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
    let cli = Cli::parse();
    raise_nofile_limit();
    match cli.scenario {
        Scenario::Chaos(a) => chaos(&a),
        Scenario::Abuse(a) => {
            // The gateway on the proxy CPU, the attackers and the healthy
            // pair on the loader's.
            let (layout, proxy_cpus) = layout_of(&a.common);
            scenario::pin_current(layout.load_cpu);
            scenario::abuse::main(&a, gateway_spec(&a.common, &proxy_cpus)?)
        }
        Scenario::Tls(a) => measured(&a.common, Kind::Tls, |ctx, gw, pki| tls(ctx, gw, pki, &a)),
        Scenario::Bulk(a) => measured(&a.common, Kind::Proxies, |ctx, _, _| {
            let p = scenario::bulk::Params {
                frames: a.frames,
                size: a.frame_size,
                runs: a.runs,
            };
            let params = json!({"frames": p.frames, "frame_size": p.size, "runs": p.runs});
            Ok(Some(("bulk", params, scenario::bulk::run(ctx, &p))))
        }),
        Scenario::Flight(a) => measured(&a.front.common, Kind::Flight, |ctx, gw, _| {
            let at = gw
                .flight_addr
                .context("the gateway printed no Flight address")?;
            let p = front_params(&a.front);
            Ok(Some((
                "flight",
                front_json(&p),
                scenario::flight::run(ctx, at, &p, a.pyarrow)?,
            )))
        }),
        Scenario::Grpc(a) => measured(&a.common, Kind::Grpc, |ctx, gw, _| {
            let at = gw
                .grpc_addr
                .context("the gateway printed no gRPC address")?;
            let p = front_params(&a);
            Ok(Some((
                "grpc",
                front_json(&p),
                scenario::grpc::run(ctx, at, &p)?,
            )))
        }),
        Scenario::Latency(a) => {
            let p = timed(1, a.frame_size, a.rate, a.timing);
            measured(&a.common, Kind::Proxies, |ctx, _, _| {
                let outcomes = scenario::latency::run(ctx, &p);
                Ok(Some(("latency", latency_json(&p), outcomes)))
            })
        }
        Scenario::FanIn(a) => {
            let p = timed(a.sessions, a.frame_size, a.rate, a.timing);
            measured(&a.common, Kind::Proxies, |ctx, _, _| {
                let outcomes = scenario::latency::run(ctx, &p);
                Ok(Some(("fan-in", latency_json(&p), outcomes)))
            })
        }
        Scenario::FanOut(a) => measured(&a.common, Kind::Proxies, |ctx, _, _| {
            let p = scenario::fan_out::Params {
                viewers: a.viewers,
                size: a.frame_size,
                rate: a.rate,
                duration: Duration::from_secs(a.duration),
            };
            let params = json!({"viewers": p.viewers, "frame_size": p.size, "rate": p.rate, "feed_bytes_per_s": p.size as u64 * p.rate, "duration_s": p.duration.as_secs()});
            Ok(Some(("fan-out", params, scenario::fan_out::run(ctx, &p))))
        }),
        Scenario::Churn(a) => measured(&a.common, Kind::Proxies, |ctx, _, _| {
            let p = scenario::churn::Params {
                rate: a.rate,
                duration: Duration::from_secs(a.duration),
            };
            let params = json!({"sessions_per_s": p.rate, "duration_s": p.duration.as_secs()});
            Ok(Some(("churn", params, scenario::churn::run(ctx, &p))))
        }),
        Scenario::Idle(a) => measured(&a.common, Kind::Proxies, |ctx, _, _| {
            let p = scenario::idle::Params {
                sessions: a.sessions,
                hold: Duration::from_secs(a.hold),
            };
            let params = json!({"sessions": p.sessions, "hold_s": p.hold.as_secs()});
            Ok(Some(("idle", params, scenario::idle::run(ctx, &p))))
        }),
        Scenario::Revoke(a) => measured(&a.common, Kind::Revoke(&a), |ctx, _, _| {
            let p = scenario::revoke::Params {
                sessions: a.sessions,
                rate: a.rate,
                redis_url: a.redis.clone(),
                channel: a.revoke_channel.clone(),
                feed_rate: a.feed_rate,
            };
            let params = json!({"sessions": p.sessions, "revocations_per_s": p.rate,
                                "feed_frames_per_s": p.feed_rate});
            Ok(Some(("revoke", params, scenario::revoke::run(ctx, &p))))
        }),
    }
}

/// What a measured scenario needs of the gateway and its baselines.
#[derive(Clone, Copy)]
enum Kind<'a> {
    /// The gateway against direct, nginx and haproxy.
    Proxies,
    /// The gateway alone, subscribed to this Redis.
    Revoke(&'a cli::RevokeArgs),
    /// The gateway alone, with a TLS listener and certificates made here.
    Tls,
    /// The gateway alone, with a Flight listener.
    Flight,
    /// The gateway alone, with a gRPC connector listener.
    Grpc,
}

/// A scenario's name, parameters and outcomes, for its report; `None`
/// when it wrote its own.
type Measured = Option<(&'static str, Value, Vec<Outcome>)>;

fn front_params(a: &cli::FrontArgs) -> scenario::bulk::Params {
    scenario::bulk::Params {
        frames: a.frames,
        size: a.frame_size,
        runs: a.runs,
    }
}

fn front_json(p: &scenario::bulk::Params) -> Value {
    json!({"frames": p.frames, "frame_size": p.size, "runs": p.runs})
}

/// `latency` and `fan-in`: `streams` open-loop streams of `size`-byte
/// frames at `rate` each.
fn timed(streams: usize, size: usize, rate: u64, t: cli::Timing) -> scenario::latency::Params {
    scenario::latency::Params {
        streams,
        size,
        rate,
        duration: Duration::from_secs(t.duration),
        slices: t.slices as usize,
    }
}

fn latency_json(p: &scenario::latency::Params) -> Value {
    json!({"streams": p.streams, "frame_size": p.size, "rate_per_stream": p.rate, "duration_s": p.duration.as_secs(), "slices": p.slices})
}

fn chaos(a: &cli::ChaosArgs) -> Result<()> {
    let gw = gateway_spec(&a.common, &None)?;
    let p = scenario::chaos::Params {
        duration: Duration::from_secs(a.duration),
        fault_every: Duration::from_secs(a.fault_every.max(1)),
        queries: a.sessions,
        viewers: a.viewers,
        relays: a.relays,
    };
    let dir = out_dir(&a.common, "chaos");
    std::fs::create_dir_all(&dir)?;
    let report = scenario::chaos::run(&gw, &p);
    if let Ok(r) = &report {
        let file = dir.join("report.json");
        std::fs::write(&file, serde_json::to_string_pretty(r)?)?;
        println!("wrote {}", file.display());
    }
    report.map(|_| ())
}

fn out_dir(c: &Common, scenario: &str) -> PathBuf {
    c.out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/loadtest").join(scenario))
}

fn tls(
    ctx: &Ctx,
    gw: &GatewaySpec,
    pki: Option<&scenario::tls::Pki>,
    a: &cli::TlsArgs,
) -> Result<Measured> {
    let p = scenario::tls::Params {
        frames: a.frames,
        size: a.frame_size,
        rate: a.rate,
        latency_size: 1024,
        duration: Duration::from_secs(a.duration),
        opens: a.sessions.unwrap_or(1000),
        idle: a.sessions.unwrap_or(2000),
    };
    let pki = pki.context("tls: certificates were made above")?;
    let dialer = scenario::tls::Dialer::new(gw, pki)?;
    let rows = scenario::tls::run(ctx, &dialer, gw.pid.map(Proc), &p)?;
    let layout = describe(&ctx.layout, gw, cores());
    println!("{layout}");
    print!("{}", scenario::tls::table(&rows));
    let dir = out_dir(&a.common, "tls");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("report.json");
    let report = json!({
        "scenario": "tls",
        "params": {"frames": p.frames, "frame_size": p.size, "rate": p.rate,
                   "latency_frame_size": p.latency_size, "duration_s": p.duration.as_secs(),
                   "opens": p.opens, "idle_sessions": p.idle},
        "layout": layout,
        "rows": rows,
    });
    std::fs::write(&file, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", file.display());
    Ok(None)
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Where the loader's threads and the proxies run.
fn layout_of(c: &Common) -> (Layout, Option<String>) {
    let pin = !c.no_pin && cores() > 1;
    let proxy_cpus = pin.then(|| c.proxy_cpus.clone().unwrap_or_else(|| "0".into()));
    let layout = Layout {
        load_cpu: pin.then(|| c.load_cpu.unwrap_or(1)),
        proxy_cpu: proxy_cpus
            .as_deref()
            .and_then(|l| l.split([',', '-']).next())
            .and_then(|c| c.parse().ok()),
        source_cpu: if pin { c.source_cpu } else { None },
    };
    (layout, proxy_cpus)
}

/// The paths to drive: what `--targets` names, or the gateway and the
/// baselines installed here; the gateway alone where only it has the
/// feature measured.
fn targets_of(c: &Common, kind: Kind) -> Result<Vec<Target>> {
    if !matches!(kind, Kind::Proxies) {
        return Ok(vec![Target::Gateway]);
    }
    if !c.targets.is_empty() {
        return c.targets.iter().map(|s| Target::parse(s)).collect();
    }
    let mut t = vec![Target::Direct, Target::Gateway];
    if targets::has("nginx") {
        t.push(Target::Nginx);
    }
    if targets::has("haproxy") {
        t.push(Target::Haproxy);
        t.push(Target::HaproxyTcp);
    }
    Ok(t)
}

/// What the gateway the loader starts needs for `kind`; the certificates
/// of the `tls` scenario.
fn prepare_gateway(
    c: &Common,
    kind: Kind,
    gw: &mut GatewaySpec,
) -> Result<Option<scenario::tls::Pki>> {
    let own = |what: &str| {
        if c.gateway.is_some() {
            bail!("{what}: drop --gateway");
        }
        Ok(())
    };
    match kind {
        Kind::Proxies => {}
        Kind::Revoke(r) => {
            gw.env
                .push(("SLUICE_REVOCATION_REDIS_URL".into(), r.redis.clone()));
            // Its /metrics: the shard's own share of each revocation. The
            // admin listener opens only with a token; nothing here uses it.
            gw.env
                .push(("SLUICE_ADMIN_LISTEN".into(), "127.0.0.1:0".into()));
            let token = format!("loadtest-admin-{}-{}", std::process::id(), "0".repeat(24));
            gw.env.push(("SLUICE_ADMIN_TOKEN".into(), token));
            gw.env
                .push(("SLUICE_REVOCATION_CHANNEL".into(), r.revoke_channel.clone()));
        }
        Kind::Flight => {
            own("flight starts its own gateway with a Flight listener")?;
            gw.env
                .push(("SLUICE_FLIGHT_LISTEN".into(), "127.0.0.1:0".into()));
        }
        Kind::Grpc => {
            own("grpc starts its own gateway with a gRPC listener")?;
            gw.env
                .push(("SLUICE_GRPC_LISTEN".into(), "127.0.0.1:0".into()));
            gw.env
                .push(("SLUICE_GRPC_WORKERS_PER_CONNECTOR".into(), "1".into()));
        }
        Kind::Tls => {
            own("tls makes its own certificates and starts its own gateway")?;
            let pki = scenario::tls::Pki::make(&gw.tenant)?;
            gw.env.extend(pki.gateway_env());
            return Ok(Some(pki));
        }
    }
    Ok(None)
}

/// The baselines (nginx, haproxy, the floors) in front of `origin`, each
/// with its address and process.
struct Baselines {
    _servers: Vec<Box<dyn std::any::Any>>,
    at: Vec<(Target, std::net::SocketAddr, Proc)>,
}

fn start_baselines(
    targets: &[Target],
    origin: &Origin,
    proxy_cpus: &Option<String>,
) -> Result<Baselines> {
    let mut b = Baselines {
        _servers: Vec::new(),
        at: Vec::new(),
    };
    for &t in targets {
        let started = match t {
            Target::Nginx => {
                if !targets::has("nginx") {
                    bail!("target nginx asked for, but nginx is not installed (apt-get install nginx)");
                }
                let (s, addr, p) = targets::start_nginx(origin.addr, proxy_cpus)?;
                (Box::new(s) as Box<dyn std::any::Any>, addr, p)
            }
            Target::Haproxy | Target::HaproxyTcp => {
                if !targets::has("haproxy") {
                    bail!("target {} asked for, but haproxy is not installed (apt-get install haproxy)", t.name());
                }
                let tcp = t == Target::HaproxyTcp;
                let (s, addr, p) = targets::start_haproxy(origin.addr, proxy_cpus, tcp)?;
                (Box::new(s) as Box<dyn std::any::Any>, addr, p)
            }
            Target::TcpFloor | Target::TcpFloorUring => {
                let (s, addr, p) = targets::start_floor(t, origin.addr, proxy_cpus)?;
                (Box::new(s) as Box<dyn std::any::Any>, addr, p)
            }
            _ => continue,
        };
        b._servers.push(started.0);
        b.at.push((t, started.1, started.2));
    }
    Ok(b)
}

/// Sets up what every measured scenario shares — the gateway (with what
/// `kind` needs), the origin, the baselines, the loader's runtime — runs
/// `body`, and writes its report.
fn measured<'k>(
    c: &Common,
    kind: Kind<'k>,
    body: impl FnOnce(&Ctx, &GatewaySpec, Option<&scenario::tls::Pki>) -> Result<Measured>,
) -> Result<()> {
    let (layout, proxy_cpus) = layout_of(c);
    let targets = targets_of(c, kind)?;
    let mut gw = gateway_spec(c, &proxy_cpus)?;
    let pki = prepare_gateway(c, kind, &mut gw)?;
    let _gateway = if targets.iter().any(|t| t.is_gateway()) {
        targets::start_gateway(&mut gw)?
    } else {
        None
    };
    let origin = Origin::start()?;
    let baselines = start_baselines(&targets, &origin, &proxy_cpus)?;
    let procs: Vec<_> = targets
        .iter()
        .map(|&t| match baselines.at.iter().find(|b| b.0 == t) {
            Some(&(_, addr, p)) => (t, addr, Some(p)),
            None if t == Target::Direct => (t, origin.addr, None),
            None => (t, gw.addr.expect("gateway address"), gw.pid.map(Proc)),
        })
        .collect();
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
    let Some((name, params, outcomes)) = body(&ctx, &gw, pki.as_ref())? else {
        return Ok(());
    };
    let mut report = Report {
        scenario: name.to_owned(),
        params,
        layout: describe(&layout, &gw, cores()),
        outcomes,
    };
    report.fill_ratios();
    print!("{}", report.table());
    for f in report.write(&out_dir(c, name))? {
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

fn gateway_spec(a: &Common, proxy_cpus: &Option<String>) -> Result<GatewaySpec> {
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
        admin_addr: None,
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
