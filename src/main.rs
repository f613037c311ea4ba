//! `sluice`: the gateway binary.

use std::io::Read;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sluice::config::Config;
use sluice::config::KeyHash;
use sluice::Gateway;

/// jemalloc, not glibc malloc. With glibc, the memory a held session costs
/// depended on the order of unrelated allocations: a read path that
/// allocated less made each of 10,000 idle sessions 0.7–1.4 KiB *larger*
/// (fragmentation), and the same build holds 3.42 KiB per session under
/// jemalloc, with no option to tune (docs/benchmarks.md, sixth sitting;
/// docs/dependencies.md says why not mimalloc). Off with
/// `--no-default-features`.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice gateway: edge-to-cloud data plane"
)]
struct Cli {
    /// TOML config file (every key can also be set as SLUICE_<SECTION>_<KEY>).
    #[arg(long, env = "SLUICE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`).
    #[arg(long)]
    listen: Option<String>,
    /// Number of shards (overrides `workers`; 0 = one per core).
    #[arg(long)]
    workers: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Sign a session token with this gateway's HS256 secret
    /// (SLUICE_TOKEN_SECRET or auth.hs256_secret) and print it. For
    /// development and scripts; in production the control plane signs
    /// them. The session id goes to stderr.
    ///
    /// Example: TOKEN=$(sluice token --tenant acme --edge edge-a --dataset orders)
    Token {
        /// Tenant the edge belongs to (the connector's `tenant`).
        #[arg(long)]
        tenant: String,
        /// Edge (connector) the session reads from.
        #[arg(long)]
        edge: String,
        /// Session id (`/stream/{sid}`); default: a random `s-…`.
        #[arg(long)]
        sid: Option<String>,
        /// `query` (datasets as Arrow streams) or `relay` (raw frames, seed 000).
        #[arg(long, value_enum, default_value = "query")]
        mode: TokenMode,
        /// A dataset the session may read (repeat); none = every dataset of the edge.
        #[arg(long = "dataset")]
        datasets: Vec<String>,
        /// Bytes the session may receive (`500MB`, `1GiB`); default: the gateway's.
        #[arg(long)]
        quota: Option<String>,
        /// Life of the token (`900`, `15m`, `2h`; at most `24h`).
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// The user the token speaks for (`sub`).
        #[arg(long, default_value = "dev")]
        sub: String,
    },
    /// Read an edge key on stdin and print the `sha256:…` form for `edge_keys`.
    HashKey,
    /// Load and validate the configuration, print it with secrets redacted, and exit.
    CheckConfig,
    /// Make a development CA, a server certificate and per-tenant client
    /// certificates (CN = tenant id) for TLS and mutual TLS.
    Certs {
        /// Folder to write (seed 002's layout); an existing CA in it is reused.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// A tenant to issue a connector certificate for (repeatable).
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// A DNS name or IP address the server certificate covers (repeatable).
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        hosts: Vec<String>,
        /// Days the server and client certificates stay valid.
        #[arg(long, default_value_t = 397)]
        days: u32,
        /// Reissue the server certificate and the named tenants' certificates.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TokenMode {
    Query,
    Relay,
}

fn main() {
    let cli = Cli::parse();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut cfg = match Config::load(cli.config.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}");
            std::process::exit(2);
        }
    };
    if let Some(l) = cli.listen {
        cfg.listen = l;
    }
    if let Some(w) = cli.workers {
        cfg.workers = w;
    }
    match cli.command {
        Some(Command::Token {
            tenant,
            edge,
            sid,
            mode,
            datasets,
            quota,
            ttl,
            sub,
        }) => {
            use sluice::auth::dev_token;
            use sluice::auth::token::Mode;
            let req = dev_token::Request {
                sid,
                sub,
                tenant,
                edge,
                mode: match mode {
                    TokenMode::Query => Mode::Query,
                    TokenMode::Relay => Mode::Relay,
                },
                datasets,
                quota,
                ttl,
            };
            match dev_token::mint(&req, &cfg.auth.hs256_secret) {
                Ok(m) => {
                    eprintln!(
                        "session id: {} (expires in {} s)",
                        m.claims.sid,
                        m.claims.exp.saturating_sub(sluice::auth::token::now_s())
                    );
                    println!("{}", m.token);
                    return;
                }
                Err(e) => {
                    eprintln!("sluice token: {e}");
                    std::process::exit(2);
                }
            }
        }
        Some(Command::HashKey) => {
            let mut key = String::new();
            if std::io::stdin().read_to_string(&mut key).is_err() || key.trim().is_empty() {
                eprintln!("sluice hash-key: pass the key on standard input");
                std::process::exit(2);
            }
            if key.trim().len() < sluice::config::MIN_EDGE_KEY_CHARS {
                eprintln!(
                    "sluice hash-key: the key is shorter than {} characters (128 bits); use a random key such as the ones `sluice-control edge add` generates",
                    sluice::config::MIN_EDGE_KEY_CHARS
                );
                std::process::exit(2);
            }
            println!("{}", KeyHash::of(key.trim().as_bytes()).to_config_string());
            return;
        }
        Some(Command::Certs {
            out,
            tenants,
            hosts,
            days,
            force,
        }) => {
            let req = sluice::tls::certs::Request {
                out,
                tenants,
                hosts,
                days,
                force,
            };
            match sluice::tls::certs::run(&req) {
                Ok(report) => {
                    for l in report.lines {
                        println!("{l}");
                    }
                    return;
                }
                Err(e) => {
                    eprintln!("sluice certs: {e}");
                    std::process::exit(1);
                }
            }
        }
        Some(Command::CheckConfig) => {
            for (var, near) in sluice::config::unknown_env_vars(&env) {
                let hint = near
                    .map(|n| format!("; did you mean {n}?"))
                    .unwrap_or_default();
                eprintln!("sluice: warning: unknown environment variable {var} is ignored{hint}");
            }
            if let Err(e) = cfg.validate() {
                eprintln!("sluice: {e}");
                std::process::exit(2);
            }
            // The files too: a certificate that does not load should fail
            // here, not at the next restart.
            if cfg.tls.enabled() {
                if let Err(e) = sluice::tls::Material::load(&cfg.tls) {
                    eprintln!("sluice: {e}");
                    std::process::exit(2);
                }
            }
            let mut shown = cfg.clone();
            if !shown.auth.hs256_secret.is_empty() {
                shown.auth.hs256_secret = "<redacted>".into();
            }
            if !shown.admin.token.is_empty() {
                shown.admin.token = "<redacted>".into();
            }
            if shown.revocation.redis_url.contains('@') {
                shown.revocation.redis_url = "<redacted: holds credentials>".into();
            }
            print!("{}", toml::to_string_pretty(&shown).unwrap_or_default());
            return;
        }
        None => {}
    }
    init_logging(&cfg.log_format);
    warn_unknown_env(&env);
    let gw = match Gateway::start(cfg) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::exit(1);
        }
    };
    // One line on stdout that scripts and tests can wait for, then one per
    // extra listener. Written without println!: a reader that stopped
    // listening (closed the pipe) must not take the gateway down.
    let mut lines = vec![format!(
        "sluice listening on {} ({} shards, {})",
        gw.local_addr(),
        gw.shard_count(),
        gw.driver()
    )];
    for (what, at) in [
        ("tls", gw.tls_addr()),
        ("flight", gw.flight_addr()),
        ("grpc", gw.grpc_addr()),
        ("admin", gw.admin_addr()),
    ] {
        if let Some(at) = at {
            lines.push(format!("sluice {what} listening on {at}"));
        }
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
        let _ = out.flush();
    }
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice: cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };
    let mut pending = signals.forever();
    let stop = loop {
        match pending.next() {
            Some(SIGHUP) => gw.reload_tls(),
            other => break other,
        }
    };
    if let Some(sig) = stop {
        tracing::info!(signal = sig, "shutdown requested");
        // A second SIGTERM/SIGINT during the drain exits at once.
        std::thread::spawn(move || {
            if signals.forever().any(|s| s != SIGHUP) {
                std::process::exit(130);
            }
        });
        gw.drain();
    }
    std::process::exit(0);
}

/// A misspelled variable would otherwise be ignored without a word.
fn warn_unknown_env(env: &[(String, String)]) {
    for (var, near) in sluice::config::unknown_env_vars(env) {
        match near {
            Some(n) => {
                tracing::warn!("unknown environment variable {var} is ignored; did you mean {n}?")
            }
            None => tracing::warn!("unknown environment variable {var} is ignored"),
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, not in a log file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
