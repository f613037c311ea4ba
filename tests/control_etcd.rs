//! README section "Several control-plane nodes: etcd": a three-member etcd
//! cluster (Debian's etcd-server, on loopback ports) holds the tenants; two
//! control-plane nodes and the admin CLI use it. A change through the CLI
//! is live on both nodes within a second; concurrent writers lose nothing;
//! one member down changes nothing; etcd down leaves decisions running from
//! each node's copy and writes failing clearly, and the nodes catch up when
//! it returns; migration to etcd and back gives the same tenants.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::control::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three etcd members on loopback, each in its own folder.
struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<(String, u16, u16)>,
    procs: Vec<Option<Child>>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Etcd {
    fn start() -> Etcd {
        let probe = Command::new("etcd").arg("--version").output();
        assert!(
            probe.is_ok_and(|o| o.status.success()),
            "this test needs etcd (apt-get install etcd-server; .ci/run installs it)"
        );
        let members: Vec<_> = (0..3)
            .map(|i| (format!("m{i}"), free_port(), free_port()))
            .collect();
        let mut e = Etcd {
            dir: tempfile::tempdir().unwrap(),
            members,
            procs: vec![],
        };
        for i in 0..3 {
            let p = e.spawn(i, "new");
            e.procs.push(Some(p));
        }
        e.wait_healthy();
        e
    }

    fn spawn(&self, i: usize, state: &str) -> Child {
        let (name, client, peer) = &self.members[i];
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|(n, _, p)| format!("{n}=http://127.0.0.1:{p}"))
            .collect();
        Command::new("etcd")
            .args(["--name", name])
            .arg("--data-dir")
            .arg(self.dir.path().join(name))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "sluice-test"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd")
    }

    fn urls(&self) -> String {
        self.members
            .iter()
            .map(|(_, c, _)| format!("http://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn wait_healthy(&self) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.urls(), "endpoint", "health"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            assert!(Instant::now() < until, "etcd cluster never became healthy");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Which member leads now.
    fn leader(&self) -> usize {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.urls(),
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .output()
            .expect("run etcdctl");
        let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let client_port = |v: &serde_json::Value| -> u16 {
            let e = v["Endpoint"].as_str().unwrap();
            e.rsplit(':').next().unwrap().parse().unwrap()
        };
        let led = all
            .iter()
            .find(|v| v["Status"]["header"]["member_id"] == v["Status"]["leader"])
            .expect("a leader");
        let port = client_port(led);
        self.members.iter().position(|m| m.1 == port).unwrap()
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    fn restart(&mut self, i: usize) {
        let p = self.spawn(i, "existing");
        self.procs[i] = Some(p);
    }
}

/// An admin command against etcd; `Err(stderr)` when it fails.
fn etcd_admin(etcd: &Etcd, audit: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(control_bin());
    cmd.args(["--etcd", &etcd.urls(), "--etcd-timeout-ms", "1000"]);
    run_admin(cmd, audit, args)
}

/// Runs `sluice-control` set up as `cmd` (its etcd flags) with `args`,
/// auditing to `audit`: standard output when it succeeded, else stderr.
fn run_admin(mut cmd: Command, audit: &Path, args: &[&str]) -> Result<String, String> {
    let out = cmd
        .arg("--audit")
        .arg(audit)
        .args(args)
        .env("SLUICE_MASTER_KEY", MASTER_KEY)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run sluice-control");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A control-plane node on etcd (the data directory holds only its audit
/// log); the gateway it names is never started: access answers are read up
/// to the point where the edge is looked up.
fn node(etcd: &Etcd, dir: &DataDir) -> Control {
    let gw = format!("http://127.0.0.1:{}", free_port());
    Control::start(dir, &["--gateway", &gw, "--etcd", &etcd.urls()])
}

async fn kids(ctl: &Control) -> Vec<String> {
    let (s, v) = ctl
        .request(
            "GET",
            "/.well-known/jwks.json",
            &[("X-Tenant-Slug", "acme")],
            "",
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls `f` until it holds; returns how long that took.
async fn within(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        if f().await {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_tree(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = vec![];
    let mut stack = vec![root.join("tenants")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".toml") {
                out.push((
                    p.strip_prefix(root).unwrap().to_owned(),
                    std::fs::read_to_string(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_tenants_through_a_three_member_etcd_cluster() {
    let mut etcd = Etcd::start();
    // A one-node setup moves to etcd, and back to an equal directory.
    let dir = provision();
    let out = Command::new(control_bin())
        .args(["--etcd", &etcd.urls(), "migrate", "--from-dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("migrated 3 tenant(s)") && said.contains("bare: skipped"),
        "{said}"
    );
    let back = tempfile::tempdir().unwrap();
    let out = Command::new(control_bin())
        .args(["--etcd", &etcd.urls(), "migrate", "--to-dir"])
        .arg(back.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (read_tree(&dir.0), read_tree(back.path()));
    assert!(!a.is_empty());
    assert_eq!(
        a, b,
        "the tenants read back from etcd equal the directory's"
    );

    let d1 = DataDir(tempfile::tempdir().unwrap().keep());
    let d2 = DataDir(tempfile::tempdir().unwrap().keep());
    let (n1, n2) = (node(&etcd, &d1), node(&etcd, &d2));
    let audit = d1.0.join("cli-audit.jsonl");
    let before = kids(&n1).await;
    assert_eq!(before, kids(&n2).await);

    // Key rotation through the CLI: every node's JWKS shows it within 1 s.
    let kid = etcd_admin(&etcd, &audit, &["keys", "rotate", "--tenant", "acme"]).unwrap();
    let kid = kid.trim().to_owned();
    for n in [&n1, &n2] {
        let took = within(
            Duration::from_secs(1),
            "the new key on a node",
            async || kids(n).await.contains(&kid),
        )
        .await;
        eprintln!("new key live on a node after {took:?}");
    }
    // Same audit lines as with a directory.
    let lines = std::fs::read_to_string(&audit).unwrap();
    assert!(
        lines.contains("keys.rotate") && lines.contains(&kid),
        "{lines}"
    );

    // A client added through the CLI is known to both nodes at once (its
    // access goes on to find the edge: the gateway named is not running).
    let (s, v) = n2.access("acme", &alice(), "newcl", "d").await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("unknown_client")),
        "{v}"
    );
    etcd_admin(
        &etcd,
        &audit,
        &[
            "client",
            "add",
            "--tenant",
            "acme",
            "newcl",
            "--plan",
            "pro",
            "--dataset",
            "d",
        ],
    )
    .unwrap();
    for n in [&n1, &n2] {
        within(
            Duration::from_secs(1),
            "the new client on a node",
            async || n.access("acme", &alice(), "newcl", "d").await.1["error"] != "unknown_client",
        )
        .await;
    }

    // Concurrent writers: twelve plans from twelve processes at once, all kept.
    let urls = etcd.urls();
    let writers: Vec<_> = (0..12)
        .map(|i| {
            Command::new(control_bin())
                .args(["--etcd", &urls])
                .arg("--audit")
                .arg(&audit)
                .args([
                    "plan",
                    "add",
                    "--tenant",
                    "acme",
                    &format!("p{i}"),
                    "--max-streams",
                    "1",
                ])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for w in writers {
        let o = w.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let t = tempfile::tempdir().unwrap();
    let out = Command::new(control_bin())
        .args(["--etcd", &etcd.urls(), "migrate", "--to-dir"])
        .arg(t.path())
        .output()
        .unwrap();
    let plans = std::fs::read_to_string(t.path().join("tenants/acme/plans.toml")).unwrap();
    for i in 0..12 {
        assert!(
            plans.contains(&format!("id = \"p{i}\"")),
            "plan p{i} lost: {plans} {out:?}"
        );
    }
    // Two tenants claiming one new edge id at once: exactly one gets it.
    let claims: Vec<_> = ["acme", "other"]
        .iter()
        .map(|t| {
            Command::new(control_bin())
                .args(["--etcd", &urls])
                .arg("--audit")
                .arg(&audit)
                .args(["edge", "add", "--tenant", t, "edge-shared"])
                .env("SLUICE_MASTER_KEY", MASTER_KEY)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let won = claims
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .filter(|o| o.status.success())
        .count();
    assert_eq!(won, 1, "one edge id, one tenant");
    // Consistency rules hold in etcd too: an unknown plan is refused.
    let e = etcd_admin(
        &etcd,
        &audit,
        &["client", "add", "--tenant", "acme", "x", "--plan", "nope"],
    )
    .unwrap_err();
    assert!(e.contains("plan \"nope\" is not defined"), "{e}");

    // The leader dies (SIGKILL: no leadership handed over): writes wait
    // out the election (up to --etcd-retry-ms, 6 s by default; etcd elects
    // in 1-2 s, longer on a busy disk) and go on with two members of three.
    let leader = etcd.leader();
    etcd.kill(leader);
    etcd_admin(
        &etcd,
        &audit,
        &["plan", "add", "--tenant", "acme", "while-m2-down"],
    )
    .unwrap();
    let kid2 = etcd_admin(&etcd, &audit, &["keys", "rotate", "--tenant", "acme"]).unwrap();
    within(
        Duration::from_secs(2),
        "a write with a member down",
        async || kids(&n2).await.contains(&kid2.trim().to_owned()),
    )
    .await;
    etcd.restart(leader);
    etcd.wait_healthy();

    // etcd down: decisions go on from each node's copy, writes fail with
    // a clear error, /readyz says so, and the nodes catch up afterwards.
    // Under load: a decision loop runs through the stop and the start, and
    // every answer must be the same decision (the client known, allowed,
    // stopping only at the edge lookup: the named gateway is not running).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, addr) = (stop.clone(), n2.addr);
        tokio::spawn(async move {
            let mut answers = std::collections::HashMap::<String, u32>::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = r#"{"client_id":"newcl","dataset_id":"d","requested_ops":["read"]}"#;
                let req = format!(
                    "POST /control/access HTTP/1.1\r\nHost: c\r\nConnection: close\r\nX-Tenant-Slug: acme\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    alice(),
                    body.len()
                );
                let (status, text) = common::raw_http(addr, &req).await;
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                *answers
                    .entry(format!("{status} {}", v["error"].as_str().unwrap_or("")))
                    .or_default() += 1;
            }
            answers
        })
    };
    for i in 0..3 {
        etcd.kill(i);
    }
    // (503 here only because the gateway these nodes name is not running.)
    within(
        Duration::from_secs(15),
        "readyz to say etcd is unreachable",
        async || {
            let (_, v) = n1.request("GET", "/readyz", &[], "").await;
            v.as_str().unwrap_or("").contains("etcd unreachable")
        },
    )
    .await;
    for _ in 0..20 {
        assert!(kids(&n1).await.contains(&kid2.trim().to_owned()));
        let (_, v) = n2.access("acme", &alice(), "newcl", "d").await;
        assert_ne!(v["error"], "unknown_client", "{v}");
    }
    let e = etcd_admin(
        &etcd,
        &audit,
        &[
            "--etcd-retry-ms",
            "1500",
            "plan",
            "add",
            "--tenant",
            "acme",
            "while-down",
        ],
    )
    .unwrap_err();
    assert!(
        e.contains("etcd: no member took the request within 1500 ms"),
        "a clear error: {e}"
    );
    for i in 0..3 {
        etcd.restart(i);
    }
    etcd.wait_healthy();
    // Written and compacted at once, before the nodes' watches resume:
    // the revision they would resume from is gone, so they reload.
    let kid3 = etcd_admin(&etcd, &audit, &["keys", "rotate", "--tenant", "acme"]).unwrap();
    let rev = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.urls(),
            "get",
            "--prefix",
            "/sluice/",
            "-w",
            "json",
        ])
        .output()
        .unwrap();
    let rev: serde_json::Value = serde_json::from_slice(&rev.stdout).unwrap();
    let rev = rev["header"]["revision"].as_i64().unwrap();
    let compacted = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.urls(), "compact", &rev.to_string()])
        .output()
        .unwrap();
    assert!(
        compacted.status.success(),
        "{}",
        String::from_utf8_lossy(&compacted.stderr)
    );
    for n in [&n1, &n2] {
        within(
            Duration::from_secs(10),
            "a node catching up after etcd returned",
            async || kids(n).await.contains(&kid3.trim().to_owned()),
        )
        .await;
        within(
            Duration::from_secs(5),
            "readyz to stop mentioning etcd",
            async || {
                let (_, v) = n.request("GET", "/readyz", &[], "").await;
                !v.as_str().unwrap_or("").contains("etcd")
            },
        )
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = load.await.unwrap();
    let total: u32 = answers.values().sum();
    assert!(total >= 50, "the decision loop ran: {answers:?}");
    assert_eq!(
        answers.keys().collect::<Vec<_>>(),
        vec!["503 gateway_unreachable"],
        "every decision through the outage was the same: {answers:?}"
    );
}

/// One etcd member that takes clients over TLS only and asks each for a
/// certificate from the development CA (`sluice certs`).
struct TlsEtcd {
    dir: tempfile::TempDir,
    client: u16,
    proc: Child,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

impl TlsEtcd {
    fn start() -> TlsEtcd {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        common::sluice_certs(&certs, &["control"], &[]);
        let (client, peer) = (free_port(), free_port());
        let proc = Command::new("etcd")
            .args(["--name", "tls"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &format!("https://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("https://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &format!("tls=http://127.0.0.1:{peer}")])
            .arg("--cert-file")
            .arg(certs.join("server.crt"))
            .arg("--key-file")
            .arg(certs.join("server.key"))
            .arg("--trusted-ca-file")
            .arg(certs.join("ca.crt"))
            .arg("--client-cert-auth")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let e = TlsEtcd { dir, client, proc };
        let until = Instant::now() + Duration::from_secs(30);
        while !e.etcdctl(&["endpoint", "health"]).status.success() {
            assert!(Instant::now() < until, "etcd over TLS never became healthy");
            std::thread::sleep(Duration::from_millis(200));
        }
        e
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client)
    }

    fn cert(&self, name: &str) -> PathBuf {
        let certs = self.dir.path().join("certs");
        match name {
            "ca" => certs.join("ca.crt"),
            "cert" => certs.join("clients/control/client.crt"),
            _ => certs.join("clients/control/client.key"),
        }
    }

    /// etcdctl as the `root` user where auth is on, else by certificate.
    fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url()])
            .arg(format!("--cacert={}", self.cert("ca").display()))
            .arg(format!("--cert={}", self.cert("cert").display()))
            .arg(format!("--key={}", self.cert("key").display()))
            .args(args)
            .output()
            .expect("run etcdctl")
    }

    /// An admin command over TLS; `client_cert` adds the client certificate, and
    /// `password` logs in as `root`.
    fn admin(
        &self,
        client_cert: bool,
        password: Option<&str>,
        args: &[&str],
    ) -> Result<String, String> {
        let mut cmd = Command::new(control_bin());
        cmd.args(["--etcd", &self.url(), "--etcd-timeout-ms", "2000"])
            .arg("--etcd-ca")
            .arg(self.cert("ca"));
        if client_cert {
            cmd.arg("--etcd-cert")
                .arg(self.cert("cert"))
                .arg("--etcd-key")
                .arg(self.cert("key"));
        }
        if let Some(p) = password {
            cmd.args(["--etcd-user", "root"])
                .env("SLUICE_CONTROL_ETCD_PASSWORD", p);
        }
        run_admin(cmd, &self.dir.path().join("audit.jsonl"), args)
    }
}

/// README, "Several control-plane nodes: etcd": an etcd that takes clients
/// only over mutual TLS, then also only with a user and password. The CLI
/// and a serving node work with the CA, the client certificate and the
/// password; without the certificate a command fails saying no member took
/// it and that it presented no certificate; with a wrong password it fails
/// naming etcd.
#[tokio::test]
async fn etcd_over_mutual_tls_and_with_a_user_and_password() {
    let etcd = TlsEtcd::start();
    etcd.admin(true, None, &["tenant", "add", "acme"]).unwrap();
    etcd.admin(true, None, &["keys", "rotate", "--tenant", "acme"])
        .unwrap();
    assert!(etcd
        .admin(true, None, &["tenant", "list"])
        .unwrap()
        .contains("acme"));
    let refused = etcd
        .admin(false, None, &["--etcd-retry-ms", "1000", "tenant", "list"])
        .unwrap_err();
    assert!(
        refused.contains("etcd: no member took the request")
            && refused.contains("this client presents no certificate"),
        "{refused}"
    );

    // A serving node over TLS: it loads the tenant and its key from etcd.
    let dir = provision();
    let gw = format!("http://127.0.0.1:{}", free_port());
    let (ca, cert, key) = (etcd.cert("ca"), etcd.cert("cert"), etcd.cert("key"));
    let url = etcd.url();
    let tls_args = [
        "--gateway",
        gw.as_str(),
        "--etcd",
        url.as_str(),
        "--etcd-ca",
        ca.to_str().unwrap(),
        "--etcd-cert",
        cert.to_str().unwrap(),
        "--etcd-key",
        key.to_str().unwrap(),
    ];
    let ctl = Control::start(&dir, &tls_args);
    within(
        Duration::from_secs(10),
        "the node serves acme's key",
        async || {
            ctl.request(
                "GET",
                "/.well-known/jwks.json",
                &[("X-Tenant-Slug", "acme")],
                "",
            )
            .await
            .0 == 200
        },
    )
    .await;
    assert_eq!(kids(&ctl).await.len(), 1);
    drop(ctl);

    // Users and passwords on top of the certificates.
    for step in [
        &[
            "user",
            "add",
            "root",
            "--new-user-password",
            "root-secret-1",
        ][..],
        &["auth", "enable"][..],
    ] {
        let out = etcd.etcdctl(step);
        assert!(out.status.success(), "etcdctl {step:?}: {out:?}");
    }
    let listed = etcd
        .admin(true, Some("root-secret-1"), &["tenant", "list"])
        .unwrap();
    assert!(listed.contains("acme"), "{listed}");
    etcd.admin(true, Some("root-secret-1"), &["tenant", "add", "beta"])
        .unwrap();
    let wrong = etcd
        .admin(true, Some("not-the-password"), &["tenant", "list"])
        .unwrap_err();
    assert!(wrong.contains("etcd"), "{wrong}");
}
