//! Harness for the control plane: a provisioned data directory (written by
//! the real `sluice-control` admin CLI) and the real service on an
//! ephemeral port, spoken to over plain HTTP/1.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::raw_http;

pub const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub const ADMIN_TOKEN: &str = "control-admin-token-0123456789";
pub const GW_ADMIN_TOKEN: &str = "gateway-admin-token-0123456789";
pub const ACME_USERS: &str = "acme-user-secret-0123456789-abcdefgh";
pub const OTHER_USERS: &str = "other-user-secret-0123456789-abcdefg";
pub const EDGE_A_KEY: &str = "edge-a-key-0123456789abcdef";
pub const EDGE_B_KEY: &str = "edge-b-key-0123456789abcdef";
pub const EDGE_C_KEY: &str = "edge-c-key-0123456789abcdef";

/// Gateway environment so its edge keys are the ones the control plane
/// provisioned.
pub fn gateway_edge_keys() -> String {
    format!("edge-a={EDGE_A_KEY},edge-b={EDGE_B_KEY},edge-c={EDGE_C_KEY}")
}

/// A binary of another workspace member, next to this test's own.
pub fn sibling_bin(name: &str) -> PathBuf {
    let b = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join(name);
    assert!(
        b.exists(),
        "{} missing: run `cargo test --workspace` (it builds every member's binaries)",
        b.display()
    );
    b
}

pub fn control_bin() -> PathBuf {
    sibling_bin("sluice-control")
}

/// A child process (connector, …) killed and reaped on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A data directory removed on drop.
pub struct DataDir(pub PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs an admin subcommand; panics with its stderr when it fails.
pub fn admin(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(control_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("SLUICE_MASTER_KEY", MASTER_KEY)
        .env("ACME_USERS", ACME_USERS)
        .env("OTHER_USERS", OTHER_USERS)
        .env("EDGE_A_KEY", EDGE_A_KEY)
        .env("EDGE_B_KEY", EDGE_B_KEY)
        .env("EDGE_C_KEY", EDGE_C_KEY)
        .output()
        .expect("run sluice-control");
    assert!(
        out.status.success(),
        "sluice-control {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The README's scenario tenants:
/// - `acme`: edge `edge-a` serving `d` and `secret`; plan `pro` (2
///   streams, 1 MB per session), plan `tiny` (1,000 B per session, 2,500 B
///   an hour); clients `dash` (pro, reads `d`), `metered` (tiny, reads
///   all), `bulk` (no limits, reads all), `alice-only` (pro, only user
///   alice), `single` (plan `one`: 1 stream), `hourly` (plan `hour`: 100
///   streams, 10,000 B an hour, no per-session quota); signing key
///   rotated in.
/// - `other`: edge `edge-b` serving `od`, client `ocl`; its own key.
/// - `nokeys`: complete but never rotated a key.
/// - `bare`: a folder without settings.
pub fn provision() -> DataDir {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-control-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.as_path();
    let a = |args: &[&str]| admin(d, args);
    a(&[
        "tenant",
        "add",
        "acme",
        "--name",
        "Acme",
        "--user-hs256-secret-env",
        "ACME_USERS",
    ]);
    a(&[
        "edge",
        "add",
        "--tenant",
        "acme",
        "edge-a",
        "--key-env",
        "EDGE_A_KEY",
    ]);
    a(&[
        "plan",
        "add",
        "--tenant",
        "acme",
        "pro",
        "--max-streams",
        "2",
        "--session-quota",
        "1MB",
    ]);
    a(&[
        "plan",
        "add",
        "--tenant",
        "acme",
        "tiny",
        "--max-streams",
        "10",
        "--session-quota",
        "1000",
        "--hourly-quota",
        "2500",
    ]);
    a(&[
        "dataset", "add", "--tenant", "acme", "d", "--edge", "edge-a",
    ]);
    a(&[
        "dataset", "add", "--tenant", "acme", "secret", "--edge", "edge-a",
    ]);
    a(&[
        "client",
        "add",
        "--tenant",
        "acme",
        "dash",
        "--plan",
        "pro",
        "--dataset",
        "d",
    ]);
    a(&[
        "client",
        "add",
        "--tenant",
        "acme",
        "metered",
        "--plan",
        "tiny",
        "--dataset",
        "*",
    ]);
    a(&["plan", "add", "--tenant", "acme", "open"]);
    a(&[
        "plan",
        "add",
        "--tenant",
        "acme",
        "one",
        "--max-streams",
        "1",
    ]);
    a(&[
        "plan",
        "add",
        "--tenant",
        "acme",
        "hour",
        "--max-streams",
        "100",
        "--hourly-quota",
        "10000",
    ]);
    for (client, plan) in [("single", "one"), ("hourly", "hour")] {
        a(&[
            "client",
            "add",
            "--tenant",
            "acme",
            client,
            "--plan",
            plan,
            "--dataset",
            "d",
        ]);
    }
    a(&[
        "client",
        "add",
        "--tenant",
        "acme",
        "bulk",
        "--plan",
        "open",
        "--dataset",
        "*",
    ]);
    a(&[
        "client",
        "add",
        "--tenant",
        "acme",
        "alice-only",
        "--plan",
        "pro",
        "--dataset",
        "d",
        "--subject",
        "alice",
    ]);
    a(&["keys", "rotate", "--tenant", "acme"]);
    a(&[
        "tenant",
        "add",
        "other",
        "--user-hs256-secret-env",
        "OTHER_USERS",
    ]);
    a(&[
        "edge",
        "add",
        "--tenant",
        "other",
        "edge-b",
        "--key-env",
        "EDGE_B_KEY",
    ]);
    a(&[
        "plan",
        "add",
        "--tenant",
        "other",
        "basic",
        "--max-streams",
        "5",
    ]);
    a(&[
        "dataset", "add", "--tenant", "other", "od", "--edge", "edge-b",
    ]);
    a(&[
        "client",
        "add",
        "--tenant",
        "other",
        "ocl",
        "--plan",
        "basic",
        "--dataset",
        "*",
    ]);
    a(&["keys", "rotate", "--tenant", "other"]);
    a(&[
        "tenant",
        "add",
        "nokeys",
        "--user-hs256-secret-env",
        "ACME_USERS",
    ]);
    a(&[
        "edge",
        "add",
        "--tenant",
        "nokeys",
        "edge-c",
        "--key-env",
        "EDGE_C_KEY",
    ]);
    a(&["plan", "add", "--tenant", "nokeys", "p"]);
    a(&[
        "dataset", "add", "--tenant", "nokeys", "x", "--edge", "edge-c",
    ]);
    a(&[
        "client",
        "add",
        "--tenant",
        "nokeys",
        "c",
        "--plan",
        "p",
        "--dataset",
        "x",
    ]);
    std::fs::create_dir_all(d.join("tenants/bare")).unwrap();
    DataDir(dir)
}

/// A user JWT as the tenant's identity provider would sign it.
pub fn user_token(secret: &str, sub: &str, tenant: Option<&str>, ttl: i64) -> String {
    let exp = sluice::auth::token::now_s() as i64 + ttl;
    let mut claims = serde_json::json!({"sub": sub, "exp": exp});
    if let Some(t) = tenant {
        claims["tenant"] = t.into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn alice() -> String {
    user_token(ACME_USERS, "alice", Some("acme"), 300)
}

/// The control plane, killed on drop.
pub struct Control {
    pub addr: SocketAddr,
    child: Child,
    pub audit: PathBuf,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Control {
    /// `sluice-control serve` on an ephemeral port with `args` (`--redis …`
    /// or `--gateway …`).
    pub fn start(dir: &DataDir, args: &[&str]) -> Control {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let audit = dir.0.join("audit.jsonl");
        let child = Command::new(control_bin())
            .arg("--data-dir")
            .arg(&dir.0)
            .args(["serve", "--listen", &addr.to_string()])
            .args(args)
            .env("SLUICE_MASTER_KEY", MASTER_KEY)
            .env("SLUICE_CONTROL_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SLUICE_GATEWAY_ADMIN_TOKEN", GW_ADMIN_TOKEN)
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sluice-control");
        // Killed and reaped by Drop, also when it never comes up.
        let ctl = Control { addr, child, audit };
        for _ in 0..400 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return ctl;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("sluice-control did not listen on {addr}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    /// One HTTP/1.1 request; returns status and body parsed as JSON (or
    /// as a JSON string when it is not JSON).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: control\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        let (status, text) = raw_http(self.addr, &req).await;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub async fn access(
        &self,
        tenant: &str,
        user: &str,
        client: &str,
        dataset: &str,
    ) -> (u16, Value) {
        let bearer = format!("Bearer {user}");
        let body = serde_json::json!({"client_id": client, "dataset_id": dataset, "requested_ops": ["read"]});
        self.request(
            "POST",
            "/control/access",
            &[("X-Tenant-Slug", tenant), ("Authorization", &bearer)],
            &body.to_string(),
        )
        .await
    }

    /// Access for alice/dash/d, retried while the edge is not yet seen
    /// online (the registry is written asynchronously).
    pub async fn access_when_online(&self, client: &str, dataset: &str) -> Value {
        let mut last = (0, Value::Null);
        for _ in 0..250 {
            last = self.access("acme", &alice(), client, dataset).await;
            if last.0 != 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(last.0, 200, "access: {}", last.1);
        last.1
    }

    pub async fn admin_call(&self, method: &str, path: &str) -> (u16, Value) {
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        self.request(method, path, &[("Authorization", &bearer)], "")
            .await
    }

    pub async fn ready(&self) -> u16 {
        self.request("GET", "/readyz", &[], "").await.0
    }

    /// Audit lines so far, parsed.
    pub fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }
}

/// One gateway and a control plane without Redis, each knowing the other:
/// the control plane asks the gateway's admin endpoint where edges are,
/// and the gateway fetches the control plane's JWKS.
pub fn single_node(dir: &DataDir, shards: usize) -> (Control, super::Gateway) {
    single_node_with(dir, shards, &[])
}

/// [`single_node`] with extra gateway environment.
pub fn single_node_with(
    dir: &DataDir,
    shards: usize,
    extra: &[(&str, &str)],
) -> (Control, super::Gateway) {
    let gw_addr = format!("127.0.0.1:{}", free_port());
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let origin = format!("http://{gw_addr}");
    let admin = format!("http://{admin_addr}");
    let ctl = Control::start(dir, &["--gateway", &admin, "--cors-origin", &origin]);
    let keys = gateway_edge_keys();
    let jwks = ctl.jwks_url();
    let ctl_url = format!("http://{}", ctl.addr);
    let mut env = vec![
        ("SLUICE_LISTEN", gw_addr.as_str()),
        ("SLUICE_CONTROL_URL", ctl_url.as_str()),
        ("SLUICE_ADMIN_TOKEN", GW_ADMIN_TOKEN),
        ("SLUICE_ADMIN_LISTEN", admin_addr.as_str()),
        ("SLUICE_EDGE_KEYS", keys.as_str()),
        ("SLUICE_AUTH_JWKS_URL", jwks.as_str()),
    ];
    env.extend_from_slice(extra);
    let gw = super::Gateway::start(shards, &env);
    (ctl, gw)
}

/// A loopback port free now (bound, then let go), for a process to take.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
