//! `sluice-demo`: the whole system on one machine with embedded defaults and
//! no Redis — a control plane, a gateway serving the dashboard, and a
//! connector serving bundled sample data (CSV, Parquet, live machine
//! metrics) — then prints a dashboard link with a ready session and a
//! `sluice-fetch` example. Ctrl-C stops everything cleanly: the connector
//! finishes its streams, the gateway drains, the control plane stops.
//!
//! Every secret (master key, edge key, users' secret, admin token) is made
//! fresh for the run and lives only in this process.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use clap::Parser;
use serde_json::{json, Value};
use sluice::config::KeyHash;
use sluice::Gateway;
use sluice_control::access::Signers;
use sluice_control::admin::{Admin, TenantSpec};
use sluice_control::audit::Audit;
use sluice_control::catalog::Catalog;
use sluice_control::edges::{GatewayAdmin, Locator};
use sluice_control::secret::MasterKey;
use sluice_control::server::{self, App};
use sluice_control::store::Store;
use sluice_control::tenants::{Client, DataDir, Dataset, Plan, TenantSlug};
use sluice_control::userauth::UserAuth;

#[derive(Parser)]
#[command(
    name = "sluice-demo",
    about = "Run the control plane, a gateway with the dashboard and a connector with sample data"
)]
struct Args {
    /// Where the gateway (and dashboard) listens.
    #[arg(long, default_value = "127.0.0.1:8081")]
    gateway: SocketAddr,
    /// Where the control plane listens.
    #[arg(long, default_value = "127.0.0.1:7070")]
    control: SocketAddr,
    /// Working directory for the sample files and the control plane's data
    /// (default: a fresh directory under the system's temp dir).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The built dashboard.
    #[arg(long, default_value = "web/dist")]
    web: PathBuf,
}

const TENANT: &str = "demo";
const EDGE: &str = "demo-edge";
const CLIENT: &str = "dashboard";

fn random_secret() -> String {
    // 32 random bytes, base64: the same generator as the master key.
    MasterKey::generate()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    let work = args.data.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("sluice-demo-{}", std::process::id()))
    });
    let control_dir = work.join("control");
    let _ = std::fs::remove_dir_all(&control_dir);
    std::fs::create_dir_all(work.join("samples"))
        .with_context(|| format!("creating {}", work.display()))?;
    ensure_dashboard(&args.web);
    let (csv, parquet) = write_samples(&work.join("samples"))?;

    let master = MasterKey::from_base64(&MasterKey::generate())?;
    let user_secret = random_secret();
    let edge_key = random_secret();
    let admin_token = random_secret();
    let control_admin = random_secret();
    provision(&control_dir, &master, &user_secret, &edge_key)?;

    let gw_url = format!("http://{}", args.gateway);
    let ctl_url = format!("http://{}", args.control);
    let mut cfg = sluice::config::Config {
        listen: args.gateway.to_string(),
        workers: 2,
        ..Default::default()
    };
    cfg.web.dir = args.web.to_string_lossy().into_owned();
    cfg.admin.token = admin_token.clone().into();
    // The admin endpoints (which this control plane calls) on a loopback
    // port of their own, chosen by the kernel.
    cfg.admin.listen = "127.0.0.1:0".into();
    cfg.auth.jwks_url = format!("{ctl_url}/.well-known/jwks.json");
    // Session ends go back to the control plane, which frees their slots.
    cfg.control.url = ctl_url.clone();
    cfg.edge_keys.insert(
        EDGE.into(),
        KeyHash::of(edge_key.as_bytes()).to_config_string(),
    );
    let gateway = Gateway::start(cfg).context("starting the gateway")?;
    let gw_admin = format!(
        "http://{}",
        gateway
            .admin_addr()
            .context("the gateway opened no admin listener")?
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let http = reqwest::Client::new();
        let app = Arc::new(App {
            tenants: Catalog::dir(DataDir::new(&control_dir)),
            master,
            users: UserAuth::new(http.clone()),
            store: Store::memory(),
            locator: Locator::Gateway(GatewayAdmin::new(
                &gw_admin,
                admin_token.clone(),
                http.clone(),
            )),
            link: None,
            audit: Audit::open(&control_dir.join("audit.jsonl"))?,
            admin_token: Some(sha256(&control_admin)),
            gateway_token: Some(sha256(&admin_token)),
            signers: Signers::default(),
            cors: server::cors(std::slice::from_ref(&gw_url))?,
            read_timeout: server::DEFAULT_READ_TIMEOUT,
            token_lockout: sluice::protocol::lockout::Lockout::new("admin", 10, 4096),
            conns: server::Conns::new(1024),
        });
        let listener = tokio::net::TcpListener::bind(args.control)
            .await
            .with_context(|| format!("the control plane cannot listen on {}", args.control))?;
        // Stops on Ctrl-C by itself (graceful shutdown).
        let control = tokio::spawn(server::serve(app, listener));

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let connector_cfg = connector_config(&args.gateway, &edge_key, &csv, &parquet)?;
        let connector = tokio::spawn(sluice_connector::run(connector_cfg, stop_rx));

        let user = user_token(&user_secret)?;
        let grant = first_grant(&http, &ctl_url, &user).await?;
        print_welcome(&gw_url, &ctl_url, &user, &control_admin, &grant);

        tokio::signal::ctrl_c().await?;
        println!("\nstopping: connector, gateway, control plane…");
        let _ = stop_tx.send(true);
        match tokio::time::timeout(Duration::from_secs(12), connector).await {
            Ok(Ok(Err(e))) => eprintln!("connector: {e:#}"),
            Err(_) => eprintln!("connector did not stop within 12 s"),
            _ => {}
        }
        tokio::task::spawn_blocking(move || gateway.drain()).await?;
        let _ = tokio::time::timeout(Duration::from_secs(5), control).await;
        println!("stopped.");
        Ok::<_, anyhow::Error>(())
    })?;
    // A directory we made up is ours to remove; one the user named keeps
    // its samples.
    if args.data.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        let _ = std::fs::remove_dir_all(&control_dir);
    }
    Ok(())
}

/// Builds the dashboard when it is missing and npm is there; otherwise
/// says how (the gateway's `/` says so too).
fn ensure_dashboard(dist: &Path) {
    if dist.join("index.html").is_file() {
        return;
    }
    let Some(web) = dist.parent().filter(|w| w.join("package.json").is_file()) else {
        eprintln!(
            "dashboard: {} not found; the gateway will answer / with how to build it",
            dist.display()
        );
        return;
    };
    println!(
        "building the dashboard (npm ci && npm run build in {})…",
        web.display()
    );
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg("npm ci --no-audit --no-fund --loglevel=error && npm run build --silent")
        .current_dir(web)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("dashboard: the build failed (is Node.js installed?); the gateway still runs");
    }
}

/// 20,000 rows of sales as CSV and Parquet.
fn write_samples(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let n = 20_000i64;
    let regions = ["north", "south", "east", "west"];
    let products = ["valve", "pump", "sensor", "controller", "cable"];
    let start = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "order_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("order_id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("product", DataType::Utf8, false),
        Field::new("units", DataType::Int64, false),
        Field::new("revenue", DataType::Float64, false),
    ]));
    let units: Vec<i64> = (0..n).map(|i| 1 + (i * 7919) % 40).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(TimestampMillisecondArray::from_iter_values(
                (0..n).map(|i| start + i * 1_577_000),
            )),
            Arc::new(Int64Array::from_iter_values(0..n)),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| regions[(i % 4) as usize]),
            )),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| products[((i / 3) % 5) as usize]),
            )),
            Arc::new(Int64Array::from(units.clone())),
            Arc::new(Float64Array::from_iter_values(
                units
                    .iter()
                    .enumerate()
                    .map(|(i, u)| *u as f64 * (19.5 + (i as f64 / 900.0).sin() * 6.0)),
            )),
        ],
    )?;
    let csv = dir.join("sales.csv");
    let mut w = arrow_csv::Writer::new(std::fs::File::create(&csv)?);
    w.write(&batch)?;
    drop(w);
    let parquet = dir.join("sales.parquet");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&parquet)?, schema, None)?;
    w.write(&batch)?;
    w.close()?;
    Ok((csv, parquet))
}

fn provision(dir: &Path, master: &MasterKey, user_secret: &str, edge_key: &str) -> Result<()> {
    let data = Catalog::dir(DataDir::new(dir));
    let audit = Audit::open(&dir.join("audit.jsonl"))?;
    let admin = Admin {
        store: &data,
        audit: &audit,
    };
    let t = TenantSlug::parse(TENANT).expect("valid slug");
    admin.tenant_add(
        &t,
        TenantSpec {
            name: Some("Sluice demo".into()),
            session_ttl_s: Some(3600),
            user_hs256_secret: Some(user_secret.into()),
            ..Default::default()
        },
        Some(master),
    )?;
    admin.edge_add(&t, EDGE, Some(edge_key.into()), master)?;
    admin.plan_add(
        &t,
        Plan {
            id: "demo".into(),
            max_streams: 50,
            session_quota_bytes: 1 << 30,
            hourly_quota_bytes: 0,
        },
    )?;
    for ds in ["sales", "sales_parquet", "metrics"] {
        admin.dataset_add(
            &t,
            Dataset {
                id: ds.into(),
                edge: EDGE.into(),
                name: None,
            },
        )?;
    }
    admin.client_add(
        &t,
        Client {
            id: CLIENT.into(),
            plan: "demo".into(),
            datasets: vec!["*".into()],
            subjects: vec![],
            disabled: false,
        },
    )?;
    admin.keys_rotate(&t, master)?;
    Ok(())
}

fn connector_config(
    gateway: &SocketAddr,
    edge_key: &str,
    csv: &Path,
    parquet: &Path,
) -> Result<sluice_connector::config::Config> {
    let mut c = sluice_connector::config::Config {
        gateway: format!("ws://{gateway}"),
        tenant: TENANT.into(),
        edge: EDGE.into(),
        workers: 3,
        ..Default::default()
    };
    use sluice_connector::config::DatasetConfig;
    c.datasets = vec![
        DatasetConfig::new("sales", csv.to_string_lossy()),
        DatasetConfig::new("sales_parquet", parquet.to_string_lossy()),
        DatasetConfig::new("metrics", "metrics"),
    ];
    Ok(c.finish(Some(edge_key.into()))?)
}

/// The demo user's JWT, as the tenant's identity provider would sign it.
fn user_token(secret: &str) -> Result<String> {
    let exp = sluice_control::keys::now_s() + 12 * 3600;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "demo-user", "tenant": TENANT, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Asks for a session on `sales` once the connector is online.
async fn first_grant(http: &reqwest::Client, ctl: &str, user: &str) -> Result<Value> {
    let mut last = String::new();
    for _ in 0..150 {
        let r = http
            .post(format!("{ctl}/control/access"))
            .header("X-Tenant-Slug", TENANT)
            .bearer_auth(user)
            .json(&json!({"client_id": CLIENT, "dataset_id": "sales", "requested_ops": ["read"]}))
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => return Ok(r.json().await?),
            Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the connector never came online: {last}")
}

fn sha256(s: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes()).into()
}

/// The fetch client to suggest: the binary the workspace build made beside
/// this one (a `cargo run -p sluice-fetch` would rebuild ~100 crates in
/// another profile), or how to build it.
fn fetch_command() -> String {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("sluice-fetch")))
        .filter(|p| p.is_file());
    match beside {
        Some(p) => p.display().to_string(),
        None => "cargo run --release -p sluice-fetch --".to_string(),
    }
}

fn print_welcome(gw: &str, ctl: &str, user: &str, admin: &str, grant: &Value) {
    let fetch = fetch_command();
    let token = grant["session_token"].as_str().unwrap_or_default();
    let sid = grant["session_id"].as_str().unwrap_or_default();
    println!(
        "
Sluice demo is running (Ctrl-C stops it).

  control plane  {ctl}
  gateway        {gw}  (connector edge {EDGE} of tenant {TENANT}: sales, sales_parquet, metrics)

Open the dashboard with a ready session on `sales` (one session: once its
tab has been closed for half a second the session has ended and its token
is spent; the sign-in link below makes a new one each time):

  {gw}/#token={token}

or sign in through the control plane for any dataset (pick `metrics` for the live view):

  {gw}/#control={ctl}&tenant={TENANT}&client={CLIENT}&dataset=metrics&user={user}

Fetch a dataset into a file:

  {fetch} --control {ctl} --tenant {TENANT} --client {CLIENT} \\
      --user-token {user} --dataset sales_parquet -o sales.parquet

Revoke the ready session (the dashboard shows it at once):

  curl -X POST -H 'Authorization: Bearer {admin}' {ctl}/control/revoke/{sid}

The ready session's token is for `sales` alone (the control plane grants one
dataset per session). Other ports, folders: sluice-demo --gateway ADDR
--control ADDR --data DIR --web DIR (sluice-demo --help).
"
    );
}
