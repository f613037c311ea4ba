//! The command line: one subcommand per scenario, each with its own options
//! and defaults, over the options every scenario shares ([`Common`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Load generator for the Sluice gateway, with direct / nginx / haproxy baselines in the same run"
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// One stream of large frames as fast as possible (throughput).
    Bulk(BulkArgs),
    /// One stream of small frames at a fixed rate (latency).
    Latency(LatencyArgs),
    /// Many concurrent streams at a fixed rate each.
    FanIn(FanInArgs),
    /// One live feed to many viewers.
    FanOut(FanOutArgs),
    /// Sessions opened and closed at a fixed rate.
    Churn(ChurnArgs),
    /// Many idle sessions: memory per session.
    Idle(IdleArgs),
    /// Revocation storm through Redis: publish → 4410 at the browser.
    Revoke(RevokeArgs),
    /// What TLS costs on each leg (browser, connector, both) against
    /// plaintext, on one gateway: bulk, latency, session opens.
    Tls(TlsArgs),
    /// The same dataset through the WebSocket fast path and through Arrow
    /// Flight's DoGet, on one gateway with a Flight listener.
    Flight(FlightArgs),
    /// Bulk from a connector on the gRPC tunnel against the WebSocket fast
    /// path, on one gateway with a gRPC listener.
    Grpc(FrontArgs),
    /// Mixed traffic while faults are injected (connector killed and
    /// stalled, Redis restarted, revocations, gateway SIGTERM + restart);
    /// every stream verified byte for byte or ended with a documented
    /// error. Starts its own gateway and redis-server.
    Chaos(ChaosArgs),
    /// The attacks of issue 34 (unauthenticated floods on every listener,
    /// clients that never read, wrong admin tokens) while a healthy
    /// client fetches: peak memory above rest and the healthy client's
    /// p99, against the same with no attack. Starts its own gateway.
    Abuse(AbuseArgs),
}

/// What every scenario takes: the gateway (started here, or a running
/// one), the paths to drive, where things run, where the report goes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Paths to drive, comma separated: direct, gateway (fast path),
    /// gateway-query (seed-001 masked), gateway-relay, nginx, haproxy,
    /// haproxy-tcp (mode tcp with splicing: the ceiling for any proxy),
    /// tcp-floor (`sluice-floor-relay`: read once, write at once, nothing
    /// else; the kernel's per-frame floor), tcp-floor-uring
    /// (`sluice-uring-floor`: the same on io_uring, multishot receives).
    /// Default: direct, gateway, and nginx/haproxy when installed.
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,

    /// Address of a running gateway; without it the loader starts one.
    #[arg(long)]
    pub gateway: Option<SocketAddr>,
    /// PID of the running gateway, for its CPU and memory figures.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// Gateway binary to start (default: `sluice` next to this binary).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Shards of the gateway the loader starts.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Extra KEY=VALUE environment for the gateway the loader starts (repeatable).
    #[arg(long = "gateway-env")]
    pub gateway_env: Vec<String>,
    /// Gateway config file to read the HS256 secret from ([auth] hs256_secret).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// HS256 secret to sign session tokens with.
    #[arg(long, env = "SLUICE_TOKEN_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Edge the simulated connectors register as.
    #[arg(long, default_value = "loadtest")]
    pub edge: String,
    /// Tenant of the simulated connectors and sessions (default: the edge id).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Edge key of the simulated connectors.
    #[arg(long, env = "SLUICE_EDGE_KEY", hide_env_values = true)]
    pub edge_key: Option<String>,

    /// CPUs for the proxy under test (taskset list). Default "0" on a
    /// multi-core host.
    #[arg(long)]
    pub proxy_cpus: Option<String>,
    /// CPU for the loader's sources and sinks. Default 1 on a multi-core host.
    #[arg(long)]
    pub load_cpu: Option<usize>,
    /// CPU for the sources alone (default: the load CPU; in timed scenarios
    /// the direct path's source goes to the proxy CPU). On a host with
    /// cores to spare, give source, sink and proxy a core each.
    #[arg(long)]
    pub source_cpu: Option<usize>,
    /// Do not pin anything.
    #[arg(long)]
    pub no_pin: bool,

    /// Directory for report.json, the .hgrm files and latency.svg
    /// (default: target/loadtest/SCENARIO).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BulkArgs {
    #[command(flatten)]
    pub common: Common,
    /// Frames per stream.
    #[arg(long, default_value_t = 20_000)]
    pub frames: u64,
    /// Payload bytes per frame.
    #[arg(long, default_value_t = 64 * 1024)]
    pub frame_size: usize,
    /// Rounds; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// `flight` and `grpc`: bulk through another way in.
#[derive(Args, Debug)]
pub struct FrontArgs {
    #[command(flatten)]
    pub common: Common,
    /// Frames per stream.
    #[arg(long, default_value_t = 8_000)]
    pub frames: u64,
    /// Payload bytes per frame.
    #[arg(long, default_value_t = 256 * 1024)]
    pub frame_size: usize,
    /// Rounds; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// `flight`: bulk through Flight's `DoGet`.
#[derive(Args, Debug)]
pub struct FlightArgs {
    #[command(flatten)]
    pub front: FrontArgs,
    /// Also time Arrow's own Flight server (pyarrow.flight, C++) serving
    /// the same batches directly, no gateway, pinned to the gateway's CPU:
    /// what an analyst gets without Sluice (needs python3 with pyarrow).
    #[arg(long)]
    pub pyarrow: bool,
}

/// How the timed scenarios share the host: see `--slices`.
#[derive(Args, Debug, Clone, Copy)]
pub struct Timing {
    /// Seconds of traffic.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Cut each target's duration into this many phases and let the
    /// targets take turns, so that all of them see the same minutes of a
    /// host whose speed drifts (a shared VM). The streams stay open
    /// throughout. Default 1: each target once, in order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub slices: u64,
}

#[derive(Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub timing: Timing,
    /// Frames per second.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Payload bytes per frame.
    #[arg(long, default_value_t = 1024)]
    pub frame_size: usize,
}

#[derive(Args, Debug)]
pub struct FanInArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub timing: Timing,
    /// Concurrent streams.
    #[arg(long, default_value_t = 200)]
    pub sessions: usize,
    /// Frames per second per stream.
    #[arg(long, default_value_t = 50)]
    pub rate: u64,
    /// Payload bytes per frame.
    #[arg(long, default_value_t = 4096)]
    pub frame_size: usize,
}

#[derive(Args, Debug)]
pub struct FanOutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Viewers of the live feed.
    #[arg(long, default_value_t = 1000)]
    pub viewers: usize,
    /// Frames per second of the feed.
    #[arg(long, default_value_t = 64)]
    pub rate: u64,
    /// Payload bytes per frame.
    #[arg(long, default_value_t = 16 * 1024)]
    pub frame_size: usize,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
}

#[derive(Args, Debug)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,
    /// Sessions opened (and closed) per second.
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
}

#[derive(Args, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Idle sessions held at once.
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    /// Seconds the idle sessions are held before they are checked.
    #[arg(long, default_value_t = 2)]
    pub hold: u64,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Redis the gateway takes revocations from. A gateway the loader
    /// starts is pointed at it.
    #[arg(long, env = "SLUICE_REVOCATION_REDIS_URL")]
    pub redis: String,
    /// Revocation channel (the gateway's `revocation.channel`).
    #[arg(long, default_value = "sluice:revocations")]
    pub revoke_channel: String,
    /// Live sessions, all revoked.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Revocations per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Frames per second of a live feed (1 KiB frames) every session
    /// watches while the storm revokes it, so the shard is forwarding when
    /// each revocation arrives; 0: the sessions are idle.
    #[arg(long, default_value_t = 50)]
    pub feed_rate: u64,
}

#[derive(Args, Debug)]
pub struct TlsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Frames of the bulk round.
    #[arg(long, default_value_t = 20_000)]
    pub frames: u64,
    /// Payload bytes per bulk frame.
    #[arg(long, default_value_t = 64 * 1024)]
    pub frame_size: usize,
    /// Frames per second of the latency round (1 KiB frames).
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Seconds of the latency round.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Sessions opened, and held idle, per leg setting.
    #[arg(long)]
    pub sessions: Option<usize>,
}

#[derive(Args, Debug)]
pub struct ChaosArgs {
    #[command(flatten)]
    pub common: Common,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 120)]
    pub duration: u64,
    /// Seconds between faults.
    #[arg(long, default_value_t = 10)]
    pub fault_every: u64,
    /// Query sessions at once.
    #[arg(long, default_value_t = 6)]
    pub sessions: usize,
    /// Live-feed viewers at once.
    #[arg(long, default_value_t = 3)]
    pub viewers: usize,
    /// Relay sessions at once.
    #[arg(long, default_value_t = 2)]
    pub relays: usize,
}

#[derive(Args, Debug)]
pub struct AbuseArgs {
    #[command(flatten)]
    pub common: Common,
    /// Attacks to run, comma separated (default: all): grpc-serve,
    /// grpc-connect, flight-doget, ws-pings, admin-tokens, zero-window.
    #[arg(long, value_delimiter = ',')]
    pub attacks: Vec<String>,
    /// Seconds each attack (and the quiet round) runs while the healthy
    /// client fetches.
    #[arg(long, default_value_t = 8)]
    pub duration: u64,
    /// How hard each attack pushes: connections (gRPC, Flight), sockets
    /// (WebSocket), stalled sessions (zero-window), scaled from this.
    #[arg(long, default_value_t = 1)]
    pub scale: usize,
}
