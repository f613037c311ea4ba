//! `sluice-control`: the control-plane service and its admin CLI.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};

use sluice_control::access::Signers;
use sluice_control::admin::{parse_bytes, Admin, TenantSpec};
use sluice_control::audit::Audit;
use sluice_control::catalog::Catalog;
use sluice_control::edges::{GatewayAdmin, Locator};
use sluice_control::etcd::{EtcdOptions, EtcdTenants};
use sluice_control::link::Link;
use sluice_control::secret::MasterKey;
use sluice_control::server::{self, App};
use sluice_control::store::{Keys, Store};
use sluice_control::tenants::{Client, DataDir, Dataset, Plan, TenantError, TenantSlug};
use sluice_control::userauth::UserAuth;

#[derive(Parser)]
#[command(
    name = "sluice-control",
    version,
    about = "Sluice control plane: access decisions, session tokens, revocation, edge registry"
)]
struct Cli {
    /// Directory holding `tenants/<slug>/…`.
    #[arg(
        long,
        global = true,
        env = "SLUICE_CONTROL_DATA_DIR",
        default_value = "control-data"
    )]
    data_dir: PathBuf,
    /// Audit log (JSON lines); `-` = standard output. Default DATA_DIR/audit.jsonl.
    #[arg(long, global = true, env = "SLUICE_CONTROL_AUDIT")]
    audit: Option<PathBuf>,
    /// Keep tenants, keys and settings in etcd instead of DATA_DIR, for
    /// several control-plane nodes: its client URLs, comma separated.
    #[arg(
        long,
        global = true,
        env = "SLUICE_CONTROL_ETCD",
        value_delimiter = ','
    )]
    etcd: Vec<String>,
    /// Key prefix in etcd.
    #[arg(
        long,
        global = true,
        env = "SLUICE_CONTROL_ETCD_PREFIX",
        default_value = "/sluice/"
    )]
    etcd_prefix: String,
    /// etcd user (its password in SLUICE_CONTROL_ETCD_PASSWORD).
    #[arg(long, global = true, env = "SLUICE_CONTROL_ETCD_USER")]
    etcd_user: Option<String>,
    /// CA certificate (PEM) that signed etcd's server certificates.
    #[arg(long, global = true, env = "SLUICE_CONTROL_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's mutual TLS.
    #[arg(
        long,
        global = true,
        env = "SLUICE_CONTROL_ETCD_CERT",
        requires = "etcd_key"
    )]
    etcd_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(
        long,
        global = true,
        env = "SLUICE_CONTROL_ETCD_KEY",
        requires = "etcd_cert"
    )]
    etcd_key: Option<PathBuf>,
    /// Deadline of each etcd request, milliseconds.
    #[arg(
        long,
        global = true,
        env = "SLUICE_CONTROL_ETCD_TIMEOUT_MS",
        default_value_t = 2000
    )]
    etcd_timeout_ms: u64,
    /// How long one etcd operation keeps trying the members while none
    /// can take it (one down, a leader being elected), milliseconds; then
    /// it fails naming the last error.
    #[arg(
        long,
        global = true,
        env = "SLUICE_CONTROL_ETCD_RETRY_MS",
        default_value_t = 6000
    )]
    etcd_retry_ms: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the HTTP service.
    Serve(ServeArgs),
    /// Print a fresh master key (base64 of 32 random bytes) for SLUICE_MASTER_KEY.
    /// Writes nothing.
    MasterKey,
    /// Sign a development user token for a tenant whose users sign in with
    /// HS256 (`tenant add --user-hs256-secret-env`): the bearer token
    /// `/control/access` and `sluice-fetch --user-token` expect. Needs
    /// SLUICE_MASTER_KEY to open the tenant's secret. Writes nothing.
    UserToken {
        #[arg(long)]
        tenant: String,
        /// The user (`sub`).
        #[arg(long)]
        sub: String,
        /// Bind the token to one client (`client_id`).
        #[arg(long)]
        client: Option<String>,
        /// Life of the token (`900`, `15m`, `2h`; at most `24h`).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Tenants: create one, change its settings, list them.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Plans: how many streams and bytes a tenant's clients get.
    #[command(subcommand)]
    Plan(PlanCmd),
    /// Clients: who reads which datasets under which plan.
    #[command(subcommand)]
    Client(ClientCmd),
    /// Datasets: the names clients ask for, and the edge that serves each.
    #[command(subcommand)]
    Dataset(DatasetCmd),
    /// Edges: connector deployments and their pre-shared keys.
    #[command(subcommand)]
    Edge(EdgeCmd),
    /// Session-token signing keys (Ed25519): rotate and list.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Copy every tenant from a data directory into etcd (`--from-dir DIR
    /// --etcd URL`), or from etcd into a data directory (`--etcd URL
    /// --to-dir DIR`). Secrets stay sealed as they are.
    Migrate {
        #[arg(long, conflicts_with = "to_dir", required_unless_present = "to_dir")]
        from_dir: Option<PathBuf>,
        #[arg(long)]
        to_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long, env = "SLUICE_CONTROL_LISTEN", default_value = "127.0.0.1:7070")]
    listen: String,
    /// Redis for revocation, sessions and the multi-gateway edge registry.
    #[arg(long, env = "SLUICE_CONTROL_REDIS_URL")]
    redis: Option<String>,
    /// Without Redis: base URL of the one gateway's HTTP port (admin endpoint).
    #[arg(long, env = "SLUICE_CONTROL_GATEWAY")]
    gateway: Option<String>,
    /// Prefix of the gateways' edge-registry keys.
    #[arg(
        long,
        env = "SLUICE_CONTROL_EDGE_PREFIX",
        default_value = "sluice:edges:"
    )]
    edge_prefix: String,
    #[arg(
        long,
        env = "SLUICE_CONTROL_REVOCATION_CHANNEL",
        default_value = "sluice:revocations"
    )]
    revocation_channel: String,
    #[arg(
        long,
        env = "SLUICE_CONTROL_REVOKED_PREFIX",
        default_value = "sluice:revoked:"
    )]
    revoked_prefix: String,
    /// Log format: text or json.
    #[arg(long, env = "SLUICE_CONTROL_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Origin allowed to call the API from a browser (the dashboard's,
    /// e.g. http://127.0.0.1:8081); repeat or separate with commas.
    #[arg(
        long = "cors-origin",
        env = "SLUICE_CONTROL_CORS_ORIGINS",
        value_delimiter = ','
    )]
    cors_origins: Vec<String>,
    /// A client must send its request head within this, and its whole
    /// body within this of the head (milliseconds).
    #[arg(
        long = "read-timeout-ms",
        env = "SLUICE_CONTROL_READ_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    read_timeout_ms: u64,
    /// Connections served at once; past it the oldest is closed to make
    /// room for the newcomer.
    #[arg(
        long = "max-connections",
        env = "SLUICE_CONTROL_MAX_CONNECTIONS",
        default_value_t = 1024
    )]
    max_connections: usize,
    /// Failed admin or gateway tokens one source address may present per
    /// minute before it is refused (429) until a try refills; 0 = no limit.
    #[arg(
        long,
        env = "SLUICE_CONTROL_ADMIN_FAILURES_PER_MINUTE",
        default_value_t = 10
    )]
    admin_failures_per_minute: u32,
    /// Source addresses tracked for that limit (bounded memory).
    #[arg(
        long,
        env = "SLUICE_CONTROL_ADMIN_FAILURE_SOURCES",
        default_value_t = 4096
    )]
    admin_failure_sources: usize,
    /// Runtime threads (0 = one per core).
    #[arg(long, env = "SLUICE_CONTROL_THREADS", default_value_t = 0)]
    threads: usize,
    /// Serve HTTPS with this PEM certificate chain (reread on SIGHUP).
    #[arg(long, env = "SLUICE_CONTROL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key.
    #[arg(long, env = "SLUICE_CONTROL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Create a tenant, or change its settings.
    Add {
        /// The tenant's id: [a-z0-9_-], up to 64 characters.
        slug: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Life of the session tokens, seconds.
        #[arg(long)]
        session_ttl: Option<u64>,
        /// Environment variable holding the users' HS256 secret, at least
        /// 32 bytes (sealed at rest under SLUICE_MASTER_KEY).
        #[arg(long)]
        user_hs256_secret_env: Option<String>,
        /// The identity provider's JWKS URL (users' tokens signed with its keys).
        #[arg(long)]
        user_jwks_url: Option<String>,
        /// A JWKS file with the users' token keys.
        #[arg(long)]
        user_jwks_file: Option<String>,
        /// Required `iss` of users' tokens.
        #[arg(long)]
        issuer: Option<String>,
        /// Required `aud` of users' tokens.
        #[arg(long)]
        audience: Option<String>,
    },
    /// List the tenants.
    List,
}

#[derive(Subcommand)]
enum PlanCmd {
    /// Create a plan, or change it.
    Add {
        #[arg(long)]
        tenant: String,
        /// The plan's id.
        id: String,
        /// Streams a client may have open at once; 0 = unlimited.
        #[arg(long, default_value_t = 0)]
        max_streams: u32,
        /// Bytes per session (e.g. 500MB); 0 = unlimited.
        #[arg(long, default_value = "0", value_parser = parse_bytes)]
        session_quota: u64,
        /// Bytes granted per client per hour; 0 = unlimited.
        #[arg(long, default_value = "0", value_parser = parse_bytes)]
        hourly_quota: u64,
    },
    /// Remove it (refused while something still uses it).
    Remove {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

#[derive(Subcommand)]
enum ClientCmd {
    /// Create a client, or change it.
    Add {
        #[arg(long)]
        tenant: String,
        /// The client's id (what `sluice-fetch --client` names).
        id: String,
        /// The plan it reads under.
        #[arg(long)]
        plan: String,
        /// Dataset the client may read (repeat; `*` = all).
        #[arg(long = "dataset")]
        datasets: Vec<String>,
        /// User (`sub`) allowed to act for the client (repeat; none = any).
        #[arg(long = "subject")]
        subjects: Vec<String>,
        /// Refuse every access for this client (kept for the record).
        #[arg(long)]
        disabled: bool,
    },
    /// Remove it (refused while something still uses it).
    Remove {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

#[derive(Subcommand)]
enum DatasetCmd {
    /// Publish a dataset of one of the tenant's edges, or change it.
    Add {
        #[arg(long)]
        tenant: String,
        /// The name clients ask for.
        id: String,
        /// The edge whose connector serves it.
        #[arg(long)]
        edge: String,
        /// Name at the connector, when it differs from the id.
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove it (refused while something still uses it).
    Remove {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

#[derive(Subcommand)]
enum EdgeCmd {
    /// Add an edge; prints its pre-shared key once (and its gateway hash).
    Add {
        #[arg(long)]
        tenant: String,
        /// The edge's id (the connector's `edge`).
        id: String,
        /// Environment variable holding the key; default: a random one.
        #[arg(long)]
        key_env: Option<String>,
    },
    /// Print an edge's pre-shared key (for provisioning its connector).
    Key {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Remove it (refused while something still uses it).
    Remove {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Print the gateway's `[edge_keys]` section for every tenant's edges.
    GatewayKeys,
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a new signing key; the previous one stays published until its tokens expire.
    Rotate {
        #[arg(long)]
        tenant: String,
    },
    /// List the keys, the signing one first.
    List {
        #[arg(long)]
        tenant: String,
    },
}

fn slug(s: &str) -> anyhow::Result<TenantSlug> {
    TenantSlug::parse(s)
        .with_context(|| format!("invalid tenant slug {s:?} (use [a-z0-9_-], up to 64)"))
}

fn env_secret(var: &str) -> anyhow::Result<String> {
    std::env::var(var).with_context(|| format!("environment variable {var} is not set"))
}

/// Every `SLUICE_CONTROL_…` variable the command line reads, from clap.
fn control_vars() -> Vec<String> {
    fn walk(c: &clap::Command, out: &mut Vec<String>) {
        for a in c.get_arguments() {
            if let Some(e) = a.get_env().and_then(|e| e.to_str()) {
                out.push(e.to_owned());
            }
        }
        for s in c.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = vec!["SLUICE_CONTROL_ADMIN_TOKEN".to_owned()];
    walk(&<Cli as clap::CommandFactory>::command(), &mut out);
    out
}

/// A misspelled `SLUICE_CONTROL_…` variable would otherwise be ignored.
fn warn_unknown_env() {
    let known = control_vars();
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    for (var, near) in sluice_protocol::suggest::unknown_vars(
        env.iter().map(String::as_str),
        "SLUICE_CONTROL_",
        &known,
    ) {
        let hint = near
            .map(|n| format!("; did you mean {n}?"))
            .unwrap_or_default();
        eprintln!("sluice-control: warning: unknown environment variable {var} is ignored{hint}");
    }
}

/// Where the tenants are: etcd with `--etcd`, else the data directory.
fn catalog(cli: &Cli) -> anyhow::Result<Catalog> {
    if cli.etcd.is_empty() {
        return Ok(Catalog::dir(DataDir::new(&cli.data_dir)));
    }
    let password = std::env::var("SLUICE_CONTROL_ETCD_PASSWORD").unwrap_or_default();
    let opts = EtcdOptions {
        endpoints: cli.etcd.clone(),
        prefix: cli.etcd_prefix.clone(),
        user: cli.etcd_user.clone().map(|u| (u, password.into())),
        ca: cli.etcd_ca.clone(),
        cert: cli.etcd_cert.clone(),
        key: cli.etcd_key.clone(),
        timeout: std::time::Duration::from_millis(cli.etcd_timeout_ms.max(100)),
        retry: std::time::Duration::from_millis(cli.etcd_retry_ms),
    };
    let e = EtcdTenants::connect(&opts)
        .with_context(|| format!("cannot reach etcd at {}", cli.etcd.join(",")))?;
    Ok(Catalog::Etcd(Arc::new(e)))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    warn_unknown_env();
    if let Cmd::Migrate { from_dir, to_dir } = &cli.cmd {
        return migrate(&cli, from_dir.as_deref(), to_dir.as_deref());
    }
    let dir = catalog(&cli)?;
    // Commands that write nothing run before the audit log is opened, so
    // they create no data directory where they run.
    match &cli.cmd {
        Cmd::MasterKey => {
            println!("{}", MasterKey::generate());
            return Ok(());
        }
        Cmd::UserToken {
            tenant,
            sub,
            client,
            ttl,
        } => {
            let t = dir.load(&slug(tenant)?)?;
            let master = MasterKey::from_env()?;
            let ttl = sluice_protocol::units::parse_seconds(ttl)
                .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
            println!(
                "{}",
                sluice_control::userauth::dev_token(&t, &master, sub, client.as_deref(), ttl)?
            );
            return Ok(());
        }
        _ => {}
    }
    let audit_path = cli
        .audit
        .clone()
        .unwrap_or_else(|| cli.data_dir.join("audit.jsonl"));
    let audit = Audit::open(&audit_path)
        .with_context(|| format!("cannot open audit log {}", audit_path.display()))?;
    let admin = Admin {
        store: &dir,
        audit: &audit,
    };
    match cli.cmd {
        Cmd::Serve(args) => serve(args, dir, audit),
        Cmd::MasterKey | Cmd::UserToken { .. } | Cmd::Migrate { .. } => {
            unreachable!("handled before the audit log opens")
        }
        Cmd::Tenant(TenantCmd::List) => {
            for t in dir.tenants()? {
                println!("{t}");
            }
            Ok(())
        }
        Cmd::Tenant(TenantCmd::Add {
            slug: s,
            name,
            session_ttl,
            user_hs256_secret_env,
            user_jwks_url,
            user_jwks_file,
            issuer,
            audience,
        }) => {
            let secret = user_hs256_secret_env
                .as_deref()
                .map(env_secret)
                .transpose()?;
            let master = if secret.is_some() {
                Some(MasterKey::from_env()?)
            } else {
                None
            };
            let spec = TenantSpec {
                name,
                session_ttl_s: session_ttl,
                user_hs256_secret: secret,
                user_jwks_url,
                user_jwks_file,
                issuer,
                audience,
            };
            admin.tenant_add(&slug(&s)?, spec, master.as_ref())?;
            Ok(())
        }
        Cmd::Plan(PlanCmd::Add {
            tenant,
            id,
            max_streams,
            session_quota,
            hourly_quota,
        }) => Ok(admin.plan_add(
            &slug(&tenant)?,
            Plan {
                id,
                max_streams,
                session_quota_bytes: session_quota,
                hourly_quota_bytes: hourly_quota,
            },
        )?),
        Cmd::Plan(PlanCmd::Remove { tenant, id }) => {
            Ok(admin.remove(&slug(&tenant)?, "plan", &id)?)
        }
        Cmd::Client(ClientCmd::Add {
            tenant,
            id,
            plan,
            datasets,
            subjects,
            disabled,
        }) => Ok(admin.client_add(
            &slug(&tenant)?,
            Client {
                id,
                plan,
                datasets,
                subjects,
                disabled,
            },
        )?),
        Cmd::Client(ClientCmd::Remove { tenant, id }) => {
            Ok(admin.remove(&slug(&tenant)?, "client", &id)?)
        }
        Cmd::Dataset(DatasetCmd::Add {
            tenant,
            id,
            edge,
            name,
        }) => Ok(admin.dataset_add(&slug(&tenant)?, Dataset { id, edge, name })?),
        Cmd::Dataset(DatasetCmd::Remove { tenant, id }) => {
            Ok(admin.remove(&slug(&tenant)?, "dataset", &id)?)
        }
        Cmd::Edge(EdgeCmd::Add {
            tenant,
            id,
            key_env,
        }) => {
            let master = MasterKey::from_env()?;
            let given = key_env.as_deref().map(env_secret).transpose()?;
            let shown = given.is_none();
            let key = admin.edge_add(&slug(&tenant)?, &id, given, &master)?;
            if shown {
                println!("edge key (shown once; `edge key` prints it again): {key}");
            }
            println!(
                "gateway edge_keys entry: {id:?} = {:?}",
                sluice_control::admin::key_hash(&key)
            );
            Ok(())
        }
        Cmd::Edge(EdgeCmd::Key { tenant, id }) => {
            let master = MasterKey::from_env()?;
            println!("{}", admin.edge_key(&slug(&tenant)?, &id, &master)?);
            Ok(())
        }
        Cmd::Edge(EdgeCmd::Remove { tenant, id }) => {
            Ok(admin.remove(&slug(&tenant)?, "edge", &id)?)
        }
        Cmd::Edge(EdgeCmd::GatewayKeys) => {
            print!("{}", admin.gateway_edge_keys()?);
            Ok(())
        }
        Cmd::Keys(KeysCmd::Rotate { tenant }) => {
            let master = MasterKey::from_env()?;
            println!("{}", admin.keys_rotate(&slug(&tenant)?, &master)?);
            Ok(())
        }
        Cmd::Keys(KeysCmd::List { tenant }) => {
            let t = dir.load(&slug(&tenant)?)?;
            let active = sluice_control::keys::active(&t).map(|k| k.kid.clone());
            for k in &t.keys {
                let state = if Some(&k.kid) == active.as_ref() {
                    "active".to_owned()
                } else {
                    format!("retired at {}", k.retired_at.unwrap_or_default())
                };
                println!("{}\tcreated {}\t{state}", k.kid, k.created_at);
            }
            Ok(())
        }
    }
}

/// Copies every tenant between the data directory and etcd, then reads
/// both back and compares them.
fn migrate(
    cli: &Cli,
    from_dir: Option<&std::path::Path>,
    to_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if cli.etcd.is_empty() {
        bail!("migrate needs --etcd URL (or SLUICE_CONTROL_ETCD)");
    }
    let etcd = catalog(cli)?;
    let (src, dst) = match (from_dir, to_dir) {
        (Some(d), None) => {
            if !d.join("tenants").is_dir() {
                bail!("{} has no tenants/ folder", d.display());
            }
            (Catalog::dir(DataDir::new(d)), etcd)
        }
        (None, Some(d)) => (etcd, Catalog::dir(DataDir::new(d))),
        _ => bail!("give --from-dir DIR or --to-dir DIR"),
    };
    let mut n = 0;
    for slug in src.tenants()? {
        let t = match src.load(&slug) {
            Ok(t) => t,
            Err(TenantError::NotConfigured(_)) => {
                println!("{slug}: skipped (a folder without tenant.toml)");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let whole = t.clone();
        dst.update(&slug, true, |cur| {
            *cur = whole.clone();
            Ok(())
        })?;
        let back = dst.load(&slug)?;
        if format!("{back:?}") != format!("{t:?}") {
            bail!("tenant {slug} reads back differently after the copy");
        }
        n += 1;
        println!(
            "{slug}: {} plans, {} clients, {} datasets, {} edges, {} keys",
            t.plans.len(),
            t.clients.len(),
            t.datasets.len(),
            t.edges.len(),
            t.keys.len()
        );
    }
    println!("migrated {n} tenant(s)");
    Ok(())
}

fn serve(args: ServeArgs, dir: Catalog, audit: Audit) -> anyhow::Result<()> {
    // Like the gateway and the connector: level from `SLUICE_LOG` (or
    // `RUST_LOG`), logs on stderr, colour only at a terminal. Standard
    // output stays for what a command prints.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        sub.json().init();
    } else {
        sub.init();
    }
    let master = MasterKey::from_env()?;
    match &dir {
        Catalog::Dir(c) if !c.dir().root().join("tenants").is_dir() => bail!(
            "{} has no tenants/ folder: create a tenant first (sluice-control tenant add …)",
            c.dir().root().display()
        ),
        // Decisions come from the copy the watch keeps; it starts now.
        Catalog::Etcd(e) => e.watch(),
        Catalog::Dir(_) => {}
    }
    let admin_token = std::env::var("SLUICE_CONTROL_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if let Some(t) = admin_token.as_deref().filter(|t| t.len() < 16) {
        bail!(
            "SLUICE_CONTROL_ADMIN_TOKEN is {} characters; at least 16 are required (the gateway's admin.token has the same rule)",
            t.len()
        );
    }
    let admin_token = admin_token.map(|t| -> [u8; 32] { Sha256::digest(t.as_bytes()).into() });
    if admin_token.is_none() {
        tracing::warn!(
            "SLUICE_CONTROL_ADMIN_TOKEN not set: validate and revoke endpoints are disabled"
        );
    }
    let gateway_token = std::env::var("SLUICE_GATEWAY_ADMIN_TOKEN").unwrap_or_default();
    let gateway_digest = (!gateway_token.is_empty())
        .then(|| -> [u8; 32] { Sha256::digest(gateway_token.as_bytes()).into() });
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        rt.worker_threads(args.threads);
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let http = reqwest::Client::builder()
            .build()
            .context("cannot build the HTTP client")?;
        let keys = Keys {
            prefix: "sluice:".into(),
            revoked_prefix: args.revoked_prefix.clone(),
            channel: args.revocation_channel.clone(),
        };
        let (store, locator, link) = match (&args.redis, &args.gateway) {
            (Some(url), _) => {
                let store = Store::redis(url, keys.clone()).await?;
                let conn = redis::aio::ConnectionManager::new_lazy_with_config(
                    redis::Client::open(url.as_str())?,
                    redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
                        .set_response_timeout(Some(std::time::Duration::from_secs(2))),
                )?;
                let link = Arc::new(Link::default());
                tokio::spawn(link.clone().run(url.clone(), keys));
                (
                    store,
                    Locator::Redis {
                        conn,
                        prefix: args.edge_prefix.clone(),
                    },
                    Some(link),
                )
            }
            (None, Some(gw)) => (
                Store::memory(),
                Locator::Gateway(GatewayAdmin::new(gw, gateway_token, http.clone())),
                None,
            ),
            (None, None) => bail!(
                "set --redis (several gateways) or --gateway (one gateway's admin endpoint): \
                 the control plane must know where edges are online"
            ),
        };
        let app = Arc::new(App {
            tenants: dir,
            master,
            users: UserAuth::new(http),
            store,
            locator,
            link,
            audit,
            admin_token,
            gateway_token: gateway_digest,
            signers: Signers::default(),
            cors: server::cors(&args.cors_origins).context("--cors-origin")?,
            read_timeout: std::time::Duration::from_millis(args.read_timeout_ms.max(1)),
            token_lockout: sluice_protocol::lockout::Lockout::new(
                "admin",
                args.admin_failures_per_minute,
                args.admin_failure_sources,
            ),
            conns: server::Conns::new(args.max_connections),
        });
        // Read before binding: a bad file is a clear error, not a port
        // that accepts and then fails every handshake.
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => Some(sluice_control::tls::Files::load(c, k)?),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        match tls {
            Some(files) => sluice_control::tls::serve(app, listener, files).await?,
            None => {
                // SIGHUP (`systemctl reload`) must not kill a plain-HTTP
                // control plane: there is nothing to reread.
                let mut hup =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP: no TLS files to reload");
                    }
                });
                server::serve(app, listener).await?
            }
        }
        Ok(())
    })
}
