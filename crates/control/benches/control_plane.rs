//! The control plane's two budgets, measured against real processes:
//!
//! 1. **Revocation latency**: live browser sessions on a gateway, each
//!    granted by the control plane, revoked at a fixed rate through
//!    `POST /control/revoke/{sid}`; latency = the revocation's scheduled
//!    send time → the session's 4410 close frame at the browser (a late
//!    sender counts against us, so there is no coordinated omission). In
//!    the same run as many sessions are revoked by writing to Redis
//!    directly (what the control plane does), so the table shows what the
//!    HTTP hop adds.
//!
//! 2. **Access decisions per second** on one core (`--threads 1`, pinned):
//!    concurrent clients loop on `POST /control/access`; with Redis (the
//!    multi-node store) and without it (single node, memory store), the
//!    tenants in the data directory and in etcd; then the time from a key
//!    rotation written through etcd to the node serving it.
//!
//! Run:
//!
//! ```text
//! cargo build --release -p sluice -p sluice-control
//! cargo bench -p sluice-control --bench control_plane -- [--sessions N] [--rate R] [--secs S] [--conns C]
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use sluice_control::admin::{Admin, TenantSpec};
use sluice_control::audit::Audit;
use sluice_control::catalog::Catalog;
use sluice_control::secret::MasterKey;
use sluice_control::tenants::{Client, DataDir, Dataset, Plan, TenantSlug};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const ADMIN: &str = "bench-admin-token-0123456789";
const GW_ADMIN: &str = "bench-gateway-admin-0123456789";
const USERS: &str = "bench-user-secret-0123456789-abcdefgh";
const EDGE_KEY: &str = "bench-edge-key-0123456789";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn release_bin(name: &str) -> Result<PathBuf> {
    // target/release/deps/control_plane-… → target/release/<name>
    let dir = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .context("bench binary location")?
        .to_path_buf();
    let b = dir.join(name);
    if !b.exists() {
        bail!(
            "{} missing: run `cargo build --release -p sluice -p sluice-control` first",
            b.display()
        );
    }
    Ok(b)
}

/// `taskset -c CPU` when there are spare cores, so each side has its own.
fn pinned(bin: &Path, cpu: usize) -> Command {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if cores > 1 && Command::new("taskset").arg("-V").output().is_ok() {
        let mut c = Command::new("taskset");
        c.arg("-c").arg((cpu % cores).to_string()).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn wait_listening(addr: SocketAddr, what: &str) -> Result<()> {
    for _ in 0..400 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("{what} did not listen on {addr}")
}

fn provision(dir: &Path) -> Result<()> {
    let master = MasterKey::from_base64(MASTER)?;
    let data = Catalog::dir(DataDir::new(dir));
    let audit = Audit::open(&dir.join("audit.jsonl"))?;
    let admin = Admin {
        store: &data,
        audit: &audit,
    };
    let t = TenantSlug::parse("bench").expect("valid slug");
    admin.tenant_add(
        &t,
        TenantSpec {
            user_hs256_secret: Some(USERS.into()),
            ..Default::default()
        },
        Some(&master),
    )?;
    admin.edge_add(&t, "edge-a", Some(EDGE_KEY.into()), &master)?;
    admin.plan_add(
        &t,
        Plan {
            id: "open".into(),
            max_streams: 0,
            session_quota_bytes: 1 << 30,
            hourly_quota_bytes: 0,
        },
    )?;
    admin.dataset_add(
        &t,
        Dataset {
            id: "d".into(),
            edge: "edge-a".into(),
            name: None,
        },
    )?;
    admin.client_add(
        &t,
        Client {
            id: "c".into(),
            plan: "open".into(),
            datasets: vec!["*".into()],
            subjects: vec![],
            disabled: false,
        },
    )?;
    admin.keys_rotate(&t, &master)?;
    Ok(())
}

fn user_token() -> String {
    let exp = sluice_control::keys::now_s() + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "bench", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(USERS.as_bytes()),
    )
    .expect("HS256 signing")
}

/// One etcd member (Debian's etcd-server) in `dir/etcd`; its client URL.
fn start_etcd(dir: &Path) -> Result<(Killed, String)> {
    let (client, peer) = (free_addr(), free_addr());
    let child = Command::new("etcd")
        .args(["--name", "bench"])
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &format!("http://{client}")])
        .args(["--advertise-client-urls", &format!("http://{client}")])
        .args(["--listen-peer-urls", &format!("http://{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
        .args(["--initial-cluster", &format!("bench=http://{peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("etcd (apt-get install etcd-server)")?;
    let k = Killed(child);
    wait_listening(client, "etcd")?;
    Ok((k, format!("http://{client}")))
}

fn start_control(dir: &Path, store: &[&str]) -> Result<(Killed, SocketAddr)> {
    let addr = free_addr();
    let child = pinned(&release_bin("sluice-control")?, 0)
        .arg("--data-dir")
        .arg(dir)
        .arg("--audit")
        .arg(dir.join(format!("audit-{}.jsonl", addr.port())))
        .args(["serve", "--listen", &addr.to_string(), "--threads", "1"])
        .args(store)
        .env("SLUICE_MASTER_KEY", MASTER)
        .env("SLUICE_CONTROL_ADMIN_TOKEN", ADMIN)
        .env("SLUICE_GATEWAY_ADMIN_TOKEN", GW_ADMIN)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()?;
    let k = Killed(child);
    wait_listening(addr, "sluice-control")?;
    Ok((k, addr))
}

/// CPU seconds a process has used (utime + stime, in clock ticks of 1/100 s).
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / 100.0
}

struct Args {
    sessions: usize,
    rate: u64,
    secs: u64,
    conns: usize,
}

fn args() -> Args {
    let mut a = Args {
        sessions: 1000,
        rate: 1000,
        secs: 5,
        conns: 32,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let next = v.get(i + 1).and_then(|x| x.parse::<u64>().ok());
        match (v[i].as_str(), next) {
            ("--sessions", Some(n)) => a.sessions = n as usize,
            ("--rate", Some(n)) => a.rate = n,
            ("--secs", Some(n)) => a.secs = n,
            ("--conns", Some(n)) => a.conns = n as usize,
            _ => {
                // cargo bench passes `--bench`; ignore what is not ours.
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// Raises the soft open-file limit to the hard one (thousands of sockets),
/// with util-linux's `prlimit` so no unsafe is needed.
fn raise_nofile() {
    let text = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let hard = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .unwrap_or("1024")
        .to_owned();
    let _ = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={hard}:{hard}"))
        .status();
}

fn main() -> Result<()> {
    let a = args();
    raise_nofile();
    let tmp = std::env::temp_dir().join(format!("sluice-control-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    provision(&tmp)?;

    let redis_addr = free_addr();
    let _redis = Killed(
        Command::new("redis-server")
            .args([
                "--port",
                &redis_addr.port().to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("redis-server (apt-get install redis-server)")?,
    );
    wait_listening(redis_addr, "redis-server")?;
    let redis_url = format!("redis://{redis_addr}/");

    let (ctl_proc, ctl) = start_control(&tmp, &["--redis", &redis_url])?;
    let gw_addr = free_addr();
    let gw_admin = free_addr();
    let gw = Killed(
        pinned(&release_bin("sluice")?, 1)
            .env("SLUICE_LISTEN", gw_addr.to_string())
            .env("SLUICE_WORKERS", "1")
            .env("SLUICE_REVOCATION_REDIS_URL", &redis_url)
            .env(
                "SLUICE_AUTH_JWKS_URL",
                format!("http://{ctl}/.well-known/jwks.json"),
            )
            .env("SLUICE_EDGE_KEYS", format!("edge-a={EDGE_KEY}"))
            .env("SLUICE_ADMIN_TOKEN", GW_ADMIN)
            .env("SLUICE_ADMIN_LISTEN", gw_admin.to_string())
            .env("SLUICE_REGISTRY_HEARTBEAT_MS", "200")
            .env("SLUICE_LOG", "error")
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_listening(gw_addr, "sluice")?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let res = rt.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?;
        let _conn = fake_connector(gw_addr).await?;
        wait_access(&http, ctl).await?;

        println!(
            "revocation: {} live sessions revoked at {}/s",
            a.sessions, a.rate
        );
        let via_control = revocations(&http, ctl, &a, None).await?;
        let direct = revocations(&http, ctl, &a, Some(redis_url.clone())).await?;
        println!("| path | p50 µs | p90 µs | p99 µs | max µs | closed |");
        println!("|---|---|---|---|---|---|");
        for (name, (h, n)) in [
            ("POST /control/revoke", &via_control),
            ("Redis directly", &direct),
        ] {
            println!(
                "| {name} | {} | {} | {} | {} | {n}/{} |",
                h.value_at_quantile(0.5) / 1000,
                h.value_at_quantile(0.9) / 1000,
                h.value_at_quantile(0.99) / 1000,
                h.max() / 1000,
                a.sessions
            );
        }

        println!(
            "\naccess decisions: {} clients for {} s against one control-plane thread",
            a.conns, a.secs
        );
        println!("| store | decisions/s | control CPU s | decisions per CPU-s | p50 ms | p99 ms |");
        println!("|---|---|---|---|---|---|");
        let r = access_rate(&http, ctl, ctl_proc.0.id(), &a).await?;
        println!(
            "| Redis (multi-node) | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} |",
            r.0, r.1, r.2, r.3, r.4
        );
        drop(ctl_proc);
        // Single node: the control plane asks the gateway's admin listener.
        let gw_url = format!("http://{gw_admin}");
        let (mem_proc, mem) = start_control(&tmp, &["--gateway", &gw_url])?;
        wait_access(&http, mem).await?;
        let r = access_rate(&http, mem, mem_proc.0.id(), &a).await?;
        println!(
            "| memory (single node), tenants in the data directory | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} |",
            r.0, r.1, r.2, r.3, r.4
        );
        drop(mem_proc);
        // The same node with its tenants in etcd: decisions come from the
        // watch-fed copy, so they should cost what the directory's do.
        let etcd = start_etcd(&tmp)?;
        let migrated = Command::new(release_bin("sluice-control")?)
            .args(["--etcd", &etcd.1, "migrate", "--from-dir"])
            .arg(&tmp)
            .stdout(Stdio::null())
            .status()?;
        if !migrated.success() {
            bail!("migrate into etcd failed");
        }
        let (etcd_proc, on_etcd) =
            start_control(&tmp, &["--gateway", &gw_url, "--etcd", &etcd.1])?;
        wait_access(&http, on_etcd).await?;
        let r = access_rate(&http, on_etcd, etcd_proc.0.id(), &a).await?;
        println!(
            "| memory (single node), tenants in etcd | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} |",
            r.0, r.1, r.2, r.3, r.4
        );
        // From a write (a key rotation by the CLI, after it exits) to the
        // node serving it.
        let mut took = vec![];
        for _ in 0..5 {
            let out = Command::new(release_bin("sluice-control")?)
                .args(["--etcd", &etcd.1, "--audit"])
                .arg(tmp.join("cli-audit.jsonl"))
                .args(["keys", "rotate", "--tenant", "bench"])
                .env("SLUICE_MASTER_KEY", MASTER)
                .output()?;
            let kid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let t0 = Instant::now();
            loop {
                let body = http
                    .get(format!("http://{on_etcd}/.well-known/jwks.json"))
                    .header("X-Tenant-Slug", "bench")
                    .send()
                    .await?
                    .text()
                    .await?;
                if body.contains(&kid) {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(5) {
                    bail!("key {kid} not served after 5 s");
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            took.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        took.sort_by(f64::total_cmp);
        println!(
            "\nwrite → served (key rotation through etcd to the node's JWKS), 5 rotations: median {:.2} ms, max {:.2} ms",
            took[2], took[4]
        );
        Ok::<_, anyhow::Error>(())
    });
    drop(gw);
    let _ = std::fs::remove_dir_all(&tmp);
    res
}

async fn fake_connector(gw: SocketAddr) -> Result<impl Sized> {
    let mut req = format!("ws://{gw}/ws/connect").into_client_request()?;
    req.headers_mut()
        .insert("Edge-Key", HeaderValue::from_static(EDGE_KEY));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    ws.send(Message::Text(
        json!({"action":"register","tenant_id":"bench","edge_id":"edge-a","version":"bench","datasets":["d"]})
            .to_string(),
    ))
    .await?;
    let _ = ws.next().await;
    Ok(ws)
}

async fn access(http: &reqwest::Client, ctl: SocketAddr, user: &str) -> Result<(u16, Value)> {
    let r = http
        .post(format!("http://{ctl}/control/access"))
        .header("X-Tenant-Slug", "bench")
        .bearer_auth(user)
        .json(&json!({"client_id": "c", "dataset_id": "d"}))
        .send()
        .await?;
    let st = r.status().as_u16();
    Ok((st, r.json().await.unwrap_or(Value::Null)))
}

async fn wait_access(http: &reqwest::Client, ctl: SocketAddr) -> Result<()> {
    let user = user_token();
    for _ in 0..250 {
        if let Ok((200, _)) = access(http, ctl, &user).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the control plane never granted access (edge not seen online?)")
}

/// Opens `a.sessions` granted sessions and revokes them on schedule,
/// through the control plane (`redis: None`) or straight into Redis.
async fn revocations(
    http: &reqwest::Client,
    ctl: SocketAddr,
    a: &Args,
    redis: Option<String>,
) -> Result<(Histogram<u64>, usize)> {
    let user = user_token();
    let mut sessions = Vec::with_capacity(a.sessions);
    for _ in 0..a.sessions {
        let (st, g) = access(http, ctl, &user).await?;
        if st != 200 {
            bail!("access refused: {g}");
        }
        let mut req = g["data_plane_url"]
            .as_str()
            .context("data_plane_url")?
            .into_client_request()?;
        let bearer = format!("Bearer {}", g["session_token"].as_str().context("token")?);
        req.headers_mut()
            .insert("Authorization", HeaderValue::from_str(&bearer)?);
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        let sid = g["session_id"].as_str().context("sid")?.to_owned();
        let exp = g["expires_at_unix"].as_u64().context("exp")?;
        sessions.push((sid, exp, ws));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let period = Duration::from_nanos(1_000_000_000 / a.rate.max(1));
    let start = Instant::now() + Duration::from_millis(100);
    let mut readers = vec![];
    let mut plan = vec![];
    for (k, (sid, exp, mut ws)) in sessions.into_iter().enumerate() {
        let due = start + period * k as u32;
        plan.push((due, sid, exp));
        readers.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Close(Some(f)) = m {
                    return (u16::from(f.code) == 4410)
                        .then(|| Instant::now().saturating_duration_since(due));
                }
            }
            None
        }));
    }
    let http = http.clone();
    let sender = tokio::spawn(async move {
        let mut conn = match &redis {
            Some(url) => Some(
                redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?,
            ),
            None => None,
        };
        let mut inflight = vec![];
        for (due, sid, exp) in plan {
            tokio::time::sleep_until(due.into()).await;
            match conn.as_mut() {
                None => {
                    let http = http.clone();
                    inflight.push(tokio::spawn(async move {
                        http.post(format!("http://{ctl}/control/revoke/{sid}"))
                            .bearer_auth(ADMIN)
                            .send()
                            .await
                            .map(|r| r.status().as_u16())
                    }));
                }
                Some(c) => {
                    let ttl = exp.saturating_sub(sluice_control::keys::now_s()).max(60);
                    let msg = json!({"sid": sid, "exp": exp}).to_string();
                    let _: () = redis::pipe()
                        .set_ex(format!("sluice:revoked:{sid}"), "1", ttl)
                        .ignore()
                        .publish("sluice:revocations", msg)
                        .ignore()
                        .query_async(c)
                        .await?;
                }
            }
        }
        for f in inflight {
            let st = f.await??;
            if st != 200 {
                bail!("revoke answered {st}");
            }
        }
        Ok::<_, anyhow::Error>(())
    });
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut closed = 0;
    for r in readers {
        if let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(30), r).await? {
            h.record(d.as_nanos().max(1) as u64)?;
            closed += 1;
        }
    }
    sender.await??;
    Ok((h, closed))
}

/// (decisions/s, control CPU s, decisions per CPU-s, p50 ms, p99 ms)
async fn access_rate(
    http: &reqwest::Client,
    ctl: SocketAddr,
    pid: u32,
    a: &Args,
) -> Result<(f64, f64, f64, f64, f64)> {
    let user = Arc::new(user_token());
    let ok = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(a.secs);
    let cpu0 = cpu_s(pid);
    let t0 = Instant::now();
    let mut tasks = vec![];
    for _ in 0..a.conns {
        let (http, user, ok) = (http.clone(), user.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
            let mut errors: HashMap<String, u64> = HashMap::new();
            while Instant::now() < end {
                let t = Instant::now();
                match access(&http, ctl, &user).await {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let _ = h.record(t.elapsed().as_nanos() as u64);
                    }
                    Ok((st, v)) => *errors.entry(format!("{st} {}", v["error"])).or_default() += 1,
                    Err(e) => *errors.entry(e.to_string()).or_default() += 1,
                }
            }
            (h, errors)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut failures: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        let (h, errors) = t.await?;
        all.add(h)?;
        for (k, v) in errors {
            *failures.entry(k).or_default() += v;
        }
    }
    if !failures.is_empty() {
        bail!("access decisions failed: {failures:?}");
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_s(pid) - cpu0;
    let n = ok.load(Ordering::Relaxed) as f64;
    Ok((
        n / secs,
        cpu,
        n / cpu.max(1e-9),
        all.value_at_quantile(0.5) as f64 / 1e6,
        all.value_at_quantile(0.99) as f64 / 1e6,
    ))
}
