//! README section "TLS and mutual TLS": `sluice certs` makes a CA, the
//! gateway's certificate and one client certificate per tenant; browsers
//! read over `wss://`; a connector's certificate (CN = tenant id) replaces
//! its edge key and binds its `register` to that tenant; a wrong CA, an
//! expired certificate or another tenant's certificate is refused; new
//! certificate files are served after a reload (file change or SIGHUP)
//! while sessions already open carry on.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::control::{
    alice, gateway_edge_keys, provision, sibling_bin, Control, Killed, EDGE_A_KEY, GW_ADMIN_TOKEN,
};
use common::*;
use futures_util::SinkExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream};

/// A folder made by the real `sluice certs`.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(tenants: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir };
        pki.certs(tenants, false);
        pki
    }

    /// Runs `sluice certs` in this folder again.
    fn certs(&self, tenants: &[&str], force: bool) {
        let extra: &[&str] = if force { &["--force"] } else { &[] };
        sluice_certs(self.dir.path(), tenants, extra);
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }

    fn client(&self, tenant: &str) -> (PathBuf, PathBuf) {
        (
            self.path(&format!("clients/{tenant}/client.crt")),
            self.path(&format!("clients/{tenant}/client.key")),
        )
    }

    fn server_cert_der(&self) -> Vec<u8> {
        CertificateDer::from_pem_file(self.path("server.crt"))
            .unwrap()
            .to_vec()
    }

    /// The gateway's environment for a TLS listener using these files.
    fn gateway(&self, shards: usize, extra: &[(&str, &str)]) -> Gateway {
        let (cert, key, ca) = (self.s("server.crt"), self.s("server.key"), self.s("ca.crt"));
        let mut env = vec![
            ("SLUICE_TLS_LISTEN", "127.0.0.1:0"),
            ("SLUICE_TLS_CERT_FILE", cert.as_str()),
            ("SLUICE_TLS_KEY_FILE", key.as_str()),
            ("SLUICE_TLS_CLIENT_CA_FILE", ca.as_str()),
        ];
        env.extend_from_slice(extra);
        Gateway::start(shards, &env)
    }
}

fn tls_config(ca: &Path, client: Option<&(PathBuf, PathBuf)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let cfg = match client {
        Some((cert, key)) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    Arc::new(cfg)
}

async fn wss(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
    cfg: Arc<rustls::ClientConfig>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let at = gw.tls_addr.expect("gateway has a TLS listener");
    let mut req = format!("wss://localhost:{}{path}", at.port())
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    tokio_tungstenite::connect_async_tls_with_config(req, None, true, Some(Connector::Rustls(cfg)))
        .await
        .map(|(ws, _)| ws)
}

/// The certificate the gateway presented on this connection.
fn served_cert(ws: &Ws) -> Vec<u8> {
    match ws.get_ref() {
        MaybeTlsStream::Rustls(s) => s.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
        _ => panic!("not a TLS connection"),
    }
}

/// A worker registering `tenant`/`edge` over `wss://`; returns the first answer.
async fn register(
    gw: &Gateway,
    cfg: Arc<rustls::ClientConfig>,
    key: Option<&str>,
    tenant: &str,
    edge: &str,
) -> Ws {
    let headers: Vec<(&str, &str)> = key.map(|k| ("Edge-Key", k)).into_iter().collect();
    let mut ws = wss(gw, "/ws/connect", &headers, cfg)
        .await
        .expect("connector upgrade");
    send_json(
        &mut ws,
        json!({"action": "register", "tenant_id": tenant, "edge_id": edge, "version": "t", "datasets": ["d"]}),
    )
    .await;
    ws
}

fn browser_claims(sid: &str, edge: &str) -> sluice::auth::token::Claims {
    let mut c = claims(sid);
    c.edge = edge.into();
    c
}

async fn browser_wss(gw: &Gateway, pki: &Pki, c: &sluice::auth::token::Claims) -> Ws {
    let bearer = format!("Bearer {}", token(c));
    wss(
        gw,
        &format!("/stream/{}", c.sid),
        &[("Authorization", &bearer)],
        tls_config(&pki.path("ca.crt"), None),
    )
    .await
    .expect("browser over wss")
}

/// A refusal during the TLS handshake: no HTTP answer at all.
fn is_tls_refusal(r: &Result<Ws, tokio_tungstenite::tungstenite::Error>) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    match r {
        Ok(_) | Err(Error::Http(_)) => false,
        Err(_) => true,
    }
}

#[tokio::test]
async fn a_connector_with_its_tenants_certificate_serves_a_browser_over_wss() {
    let pki = Pki::new(&["acme", "globex"]);
    let gw = pki.gateway(2, &[]);
    let acme = tls_config(&pki.path("ca.crt"), Some(&pki.client("acme")));
    // No Edge-Key: the certificate is the credential.
    let mut conn = register(&gw, acme, None, "acme", "acme").await;
    let ok = next_json(&mut conn).await;
    assert_eq!(ok["status"], "ok", "{ok}");
    let sent = frames(40, 100_000);
    tokio::spawn(serve_frames(conn, sent.clone()));

    for shard in 0..2 {
        let c = browser_claims(&sid_on_shard("wss", shard, 2), "acme");
        let mut b = browser_wss(&gw, &pki, &c).await;
        assert_eq!(served_cert(&b), pki.server_cert_der());
        let (got, end) = query_all(&mut b, "d").await;
        assert_eq!(got, sent, "frames through TLS on both legs, shard {shard}");
        assert_eq!(end["type"], "stream_end");
        close_with(&mut b, 1000, "done").await;
    }
    assert!(gw.metric("sluice_tls_handshakes_total").await >= 3);
    assert_eq!(gw.metric("sluice_tls_handshake_failures_total").await, 0);
    // The plaintext listener still answers (health checks, local connectors).
    assert_eq!(gw.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn wrong_ca_expired_or_another_tenants_certificate_is_refused() {
    let pki = Pki::new(&["acme", "globex"]);
    let gw = pki.gateway(1, &[]);
    let ca = pki.path("ca.crt");

    // Signed by another CA: the handshake fails, nothing reaches HTTP.
    let stranger = Pki::new(&["acme"]);
    let r = wss(
        &gw,
        "/ws/connect",
        &[],
        tls_config(&ca, Some(&stranger.client("acme"))),
    )
    .await;
    assert!(is_tls_refusal(&r), "wrong CA accepted: {:?}", r.map(|_| ()));

    // Expired (same CA, CN acme, validity over a day ago).
    let old = tempfile::tempdir().unwrap();
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(pki.path(f), old.path().join(f)).unwrap();
    }
    let now = time::OffsetDateTime::now_utc();
    sluice::tls::certs::issue_client(
        old.path(),
        "acme",
        sluice::tls::certs::Validity {
            not_before: now - time::Duration::days(30),
            not_after: now - time::Duration::days(1),
        },
    )
    .unwrap();
    let expired = (
        old.path().join("clients/acme/client.crt"),
        old.path().join("clients/acme/client.key"),
    );
    let r = wss(&gw, "/ws/connect", &[], tls_config(&ca, Some(&expired))).await;
    assert!(is_tls_refusal(&r), "expired certificate accepted");
    assert_eq!(
        gw.metric_settles("sluice_tls_handshake_failures_total", 2)
            .await,
        2
    );

    // Globex's certificate registering as acme: refused after the upgrade
    // with an error message and 4403.
    let globex = tls_config(&ca, Some(&pki.client("globex")));
    let mut ws = register(&gw, globex.clone(), None, "acme", "acme").await;
    let why = expect_connector_refusal(&mut ws, 4403).await;
    assert!(why.contains("another tenant"), "{why}");
    // Its own tenant but an edge not its own.
    let mut ws = register(&gw, globex.clone(), None, "globex", "acme").await;
    let why = expect_connector_refusal(&mut ws, 4403).await;
    assert!(why.contains("does not cover this edge"), "{why}");
    // No certificate and no key over TLS: 401 at the upgrade.
    let r = wss(&gw, "/ws/connect", &[], tls_config(&ca, None)).await;
    match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    // A certificate that is right still works after all that, and an
    // Edge-Key over TLS is still accepted (connector_auth = either).
    let mut ok = register(&gw, globex, None, "globex", "globex").await;
    assert_eq!(next_json(&mut ok).await["status"], "ok");
    let mut keyed = register(&gw, tls_config(&ca, None), Some(EDGE_KEY), "acme", EDGE).await;
    assert_eq!(next_json(&mut keyed).await["status"], "ok");
    assert!(gw.metric("sluice_edge_auth_failures_total").await >= 3);
}

/// The refusal a connector gets after `register`: an error line, then a close.
async fn expect_connector_refusal(ws: &mut Ws, code: u16) -> String {
    let v = next_json(ws).await;
    assert_eq!(v["status"], "error", "{v}");
    let (c, reason) = close_of(ws).await;
    assert_eq!(c, code, "{v}");
    reason
}

#[tokio::test]
async fn connector_auth_certificate_refuses_edge_keys_alone() {
    let pki = Pki::new(&["acme"]);
    let gw = pki.gateway(1, &[("SLUICE_TLS_CONNECTOR_AUTH", "certificate")]);
    // Plaintext listener, right key: refused (no certificate possible there).
    assert_eq!(
        refused_status(&gw.url("/ws/connect"), &[("Edge-Key", EDGE_KEY)]).await,
        401
    );
    // TLS, right key, no certificate: refused.
    let r = wss(
        &gw,
        "/ws/connect",
        &[("Edge-Key", EDGE_KEY)],
        tls_config(&pki.path("ca.crt"), None),
    )
    .await;
    assert!(
        matches!(&r, Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status() == 401),
        "{:?}",
        r.map(|_| ())
    );
    // Relay edges too.
    assert_eq!(
        refused_status(&gw.url(&format!("/edge/{EDGE}")), &[("Edge-Key", EDGE_KEY)]).await,
        401
    );
    let acme = tls_config(&pki.path("ca.crt"), Some(&pki.client("acme")));
    let mut ok = register(&gw, acme, None, "acme", "acme").await;
    assert_eq!(next_json(&mut ok).await["status"], "ok");
}

#[tokio::test]
async fn a_renewed_certificate_is_served_while_open_sessions_carry_on() {
    let pki = Pki::new(&["acme"]);
    let gw = pki.gateway(2, &[("SLUICE_TLS_RELOAD_CHECK_MS", "100")]);
    let ca = pki.path("ca.crt");
    let first = pki.server_cert_der();
    let mut conn = register(
        &gw,
        tls_config(&ca, Some(&pki.client("acme"))),
        None,
        "acme",
        "acme",
    )
    .await;
    assert_eq!(next_json(&mut conn).await["status"], "ok");
    let c = browser_claims("renewal", "acme");
    let mut b = browser_wss(&gw, &pki, &c).await;
    send_json(&mut b, json!({"action": "query", "dataset": "d"})).await;
    let rid = start_stream(&mut conn).await;
    let sent = frames(20, 50_000);
    for f in &sent[..10] {
        conn.send(Message::Binary(f.clone())).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 10 {
        if let Message::Binary(x) = next_msg(&mut b).await {
            got.push(x);
        }
    }

    // Renew the server certificate in place: picked up by the file check.
    pki.certs(&[], true);
    let second = pki.server_cert_der();
    assert_ne!(first, second);
    assert_eq!(gw.metric_settles("sluice_tls_reloads_total", 1).await, 1);
    let fresh = browser_wss(&gw, &pki, &browser_claims("after", "acme")).await;
    assert_eq!(
        served_cert(&fresh),
        second,
        "new handshakes get the new certificate"
    );

    // The session opened before the reload is untouched: the rest arrives.
    assert_eq!(served_cert(&b), first);
    for f in &sent[10..] {
        conn.send(Message::Binary(f.clone())).await.unwrap();
    }
    send_json(
        &mut conn,
        json!({"request_id": rid, "type": "stream_end", "total_bytes": 0}),
    )
    .await;
    loop {
        match next_msg(&mut b).await {
            Message::Binary(x) => got.push(x),
            Message::Text(t) if t.contains("stream_end") => break,
            _ => {}
        }
    }
    assert_eq!(got, sent);

    // A broken key is refused; the renewed certificate stays in service.
    std::fs::write(pki.path("server.key"), "not a key\n").unwrap();
    assert_eq!(
        gw.metric_settles("sluice_tls_reload_failures_total", 1)
            .await,
        1
    );
    let still = browser_wss(&gw, &pki, &browser_claims("still", "acme")).await;
    assert_eq!(served_cert(&still), second);
}

#[tokio::test]
async fn sighup_reloads_the_certificate_when_file_checks_are_off() {
    let pki = Pki::new(&["acme"]);
    let gw = pki.gateway(1, &[("SLUICE_TLS_RELOAD_CHECK_MS", "0")]);
    let first = pki.server_cert_der();
    pki.certs(&[], true);
    let second = pki.server_cert_der();
    let c = browser_claims("hup-before", "acme");
    assert_eq!(served_cert(&browser_wss(&gw, &pki, &c).await), first);
    let kill = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(gw.metric_settles("sluice_tls_reloads_total", 1).await, 1);
    let c = browser_claims("hup-after", "acme");
    assert_eq!(served_cert(&browser_wss(&gw, &pki, &c).await), second);
    // SIGHUP is not a shutdown.
    assert_eq!(gw.get("/readyz").await.0, 200);
}

/// The real `sluice-connector` of tenant acme dialing the TLS listener with
/// acme's certificate, serving `csv` as dataset `d`: as edge `acme` on
/// the certificate alone, or as `edge` with its key too.
fn mtls_connector(
    pki: &Pki,
    at: std::net::SocketAddr,
    csv: &Path,
    edge: Option<(&str, &str)>,
) -> Killed {
    let (cert, key) = pki.client("acme");
    let mut cmd = Command::new(sibling_bin("sluice-connector"));
    cmd.args(["--gateway", &format!("wss://localhost:{}", at.port())])
        .args(["--tenant", "acme"])
        .arg("--ca-cert")
        .arg(pki.path("clients/acme/ca.crt"))
        .arg("--client-cert")
        .arg(&cert)
        .arg("--client-key")
        .arg(&key)
        .arg("--dataset")
        .arg(format!("d={}", csv.display()))
        .env_remove("SLUICE_EDGE_KEY")
        .env("SLUICE_LOG", "warn")
        .stdout(std::process::Stdio::null());
    if let Some((id, key)) = edge {
        cmd.args(["--edge", id]).env("SLUICE_EDGE_KEY", key);
    }
    Killed(cmd.spawn().unwrap())
}

/// The real connector and `sluice-fetch` over TLS on both legs: the
/// connector authenticates with its certificate only, the fetch trusts the
/// development CA, and pyarrow reads back what the CSV held.
#[tokio::test]
async fn sluice_connector_with_mtls_and_sluice_fetch_over_wss() {
    let pki = Pki::new(&["acme"]);
    let gw = pki.gateway(2, &[]);
    let at = gw.tls_addr.unwrap();
    let work = tempfile::tempdir().unwrap();
    let csv = work.path().join("d.csv");
    let mut text = String::from("id,name\n");
    for i in 0..3000 {
        text.push_str(&format!("{i},row-{i}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let _connector = mtls_connector(&pki, at, &csv, None);
    eventually("the connector registered over mTLS", || {
        std::process::Command::new("curl")
            .args(["-s", &format!("http://{}/metrics", gw.addr)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("sluice_edges_online 1"))
            .unwrap_or(false)
    })
    .await;
    let c = browser_claims("fetch-wss", "acme");
    let out = work.path().join("out.arrow");
    let o = Command::new(sibling_bin("sluice-fetch"))
        .args(["--gateway", &format!("wss://localhost:{}", at.port())])
        .args(["--session", &c.sid, "--token", &token(&c), "--dataset", "d"])
        .arg("--ca-cert")
        .arg(pki.path("ca.crt"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "sluice-fetch over wss: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_same_rows(&out, &csv);
    // Python's ssl (OpenSSL) + websockets as a connector: the same rules.
    let py = |tenant: &str| {
        let (cert, key) = pki.client("acme");
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/mtls_register.py"))
            .arg(format!("wss://localhost:{}/ws/connect", at.port()))
            .arg(pki.path("ca.crt"))
            .arg(cert)
            .arg(key)
            .arg(tenant)
            .output()
            .expect("python3")
    };
    let ok = py("acme");
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = py("globex");
    let said = String::from_utf8_lossy(&refused.stdout);
    assert!(
        said.starts_with("closed 4403"),
        "{said} {}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// Every hop encrypted: `sluice-fetch` asks an `https://` control plane for
/// access, the gateway fetches the tenant's keys from it over TLS (trusting
/// the development CA through `auth.jwks_ca_file`), the control plane names
/// the gateway's `wss://` URL, and the real connector dials in with its
/// certificate and edge key.
#[tokio::test]
async fn control_plane_gateway_connector_and_fetch_all_over_tls() {
    let pki = Pki::new(&["acme"]);
    let dir = provision();
    let gw_http = format!("127.0.0.1:{}", common::control::free_port());
    let gw_admin = format!("127.0.0.1:{}", common::control::free_port());
    let ctl = Control::start(
        &dir,
        &[
            "--gateway",
            &format!("http://{gw_admin}"),
            "--tls-cert",
            &pki.s("server.crt"),
            "--tls-key",
            &pki.s("server.key"),
        ],
    );
    let ctl_url = format!("https://localhost:{}", ctl.addr.port());
    let jwks = format!("{ctl_url}/.well-known/jwks.json");
    let keys = gateway_edge_keys();
    let ca = pki.s("ca.crt");
    let gw = pki.gateway(
        2,
        &[
            ("SLUICE_LISTEN", gw_http.as_str()),
            ("SLUICE_ADMIN_TOKEN", GW_ADMIN_TOKEN),
            ("SLUICE_ADMIN_LISTEN", gw_admin.as_str()),
            ("SLUICE_EDGE_KEYS", keys.as_str()),
            ("SLUICE_AUTH_JWKS_URL", jwks.as_str()),
            ("SLUICE_AUTH_JWKS_CA_FILE", ca.as_str()),
        ],
    );
    let at = gw.tls_addr.unwrap();
    let work = tempfile::tempdir().unwrap();
    let csv = work.path().join("d.csv");
    let mut text = String::from("id,city\n");
    for i in 0..2000 {
        text.push_str(&format!("{i},city-{}\n", i % 13));
    }
    std::fs::write(&csv, text).unwrap();
    let _connector = mtls_connector(&pki, at, &csv, Some(("edge-a", EDGE_A_KEY)));
    let out = work.path().join("out.parquet");
    let fetch = || {
        Command::new(sibling_bin("sluice-fetch"))
            .args(["--control", &ctl_url])
            .args(["--tenant", "acme", "--client", "dash", "--dataset", "d"])
            .arg("--ca-cert")
            .arg(&ca)
            .arg("-o")
            .arg(&out)
            .env("SLUICE_USER_TOKEN", alice())
            .output()
            .unwrap()
    };
    // Until the connector is online the control plane answers 503.
    let mut last = fetch();
    for _ in 0..100 {
        if last.status.success() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        last = fetch();
    }
    assert!(
        last.status.success(),
        "fetch over https + wss: {}",
        String::from_utf8_lossy(&last.stderr)
    );
    assert_same_rows(&out, &csv);
    // The gateway told the control plane its TLS address, and a client
    // that does not trust the CA gets no further than the handshake.
    let (_, edges) = gw.admin_get("/admin/edges", GW_ADMIN_TOKEN).await;
    assert!(edges.contains(&format!("wss://{at}")), "{edges}");
    let untrusting = Command::new(sibling_bin("sluice-fetch"))
        .args(["--control", &ctl_url])
        .args(["--tenant", "acme", "--client", "dash", "--dataset", "d"])
        .arg("-o")
        .arg(work.path().join("no.parquet"))
        .env("SLUICE_USER_TOKEN", alice())
        .output()
        .unwrap();
    assert!(!untrusting.status.success());
    assert!(!work.path().join("no.parquet").exists());
}

/// A certificate that does not load is caught by `check-config`, and the
/// gateway refuses to start on it, naming the files.
#[test]
fn check_config_and_start_refuse_a_key_that_is_not_the_certificates() {
    let pki = Pki::new(&["acme"]);
    let run = |key: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .env("SLUICE_LISTEN", "127.0.0.1:0")
            .env("SLUICE_TLS_LISTEN", "127.0.0.1:0")
            .env("SLUICE_TLS_CERT_FILE", pki.s("server.crt"))
            .env("SLUICE_TLS_KEY_FILE", key)
            .output()
            .unwrap()
    };
    let ok = run(&pki.s("server.key"), &["check-config"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for args in [&["check-config"][..], &[][..]] {
        let bad = run(&pki.s("ca.key"), args);
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success(), "{args:?} accepted the CA's key");
        assert!(
            err.contains("server.crt")
                && err.contains("ca.key")
                && err.contains("do not go together"),
            "{err}"
        );
    }
}

/// Issue 34 on the TLS listener: browsers that complete the TLS handshake,
/// upgrade `/stream` without a token, flood pings and never read (receive
/// buffer 4 KiB) are closed like plaintext ones — the same pre-auth rules
/// apply on the shard behind the TLS front — and the gateway's memory stays
/// within 100 MB of rest while a healthy session is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sockets_that_flood_pings_before_auth_are_closed() {
    use tokio::io::AsyncWriteExt;
    let pki = Pki::new(&["acme"]);
    let gw = pki.gateway(2, &[("SLUICE_TIMEOUTS_AUTH_MS", "2000")]);
    let at = gw.tls_addr.unwrap();
    let mut healthy = Healthy::new(&gw).await;
    let rest = fds_and_rss(gw.pid()).1;
    let cfg = tls_config(&pki.path("ca.crt"), None);
    let mut floods = Vec::new();
    for i in 0..100 {
        let cfg = cfg.clone();
        floods.push(tokio::spawn(async move {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            let tcp = sock.connect(at).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let connector = tokio_rustls::TlsConnector::from(cfg);
            let mut s = connector.connect(name, tcp).await.unwrap();
            let head = format!(
                "GET /stream/tls-flood-{i} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            let ping = [0x89u8, 0x84, 1, 2, 3, 4, b'p' ^ 1, b'i' ^ 2, b'n' ^ 3, b'g' ^ 4];
            let burst: Vec<u8> = std::iter::repeat_n(ping, 100).flatten().collect();
            for _ in 0..3000 {
                let wrote =
                    tokio::time::timeout(std::time::Duration::from_secs(10), s.write_all(&burst))
                        .await;
                match wrote {
                    Ok(Ok(())) => {
                        let _ = s.flush().await;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await
                    }
                    Ok(Err(_)) => return true,
                    Err(_) => return false,
                }
            }
            false
        }));
    }
    let mut closed = 0;
    let mut peak = rest;
    for f in floods {
        while !f.is_finished() {
            healthy.check().await;
            peak = peak.max(fds_and_rss(gw.pid()).1);
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        closed += usize::from(f.await.unwrap());
    }
    healthy.check().await;
    assert_eq!(closed, 100, "every flooding TLS socket was closed");
    assert!(
        peak < rest + 100 * 1024,
        "RSS {rest} KiB at rest, {peak} KiB under attack"
    );
}

/// Issue 35: every front turns a connection past its `max_connections`
/// away the same way and counts it in the same series — the TLS listener,
/// Flight and the gRPC tunnel alike (only the TLS front counted before).
/// The connections within the bound keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_front_counts_connections_past_its_limit_in_one_series() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new(&["acme"]);
    let gw = pki.gateway(
        1,
        &[
            ("SLUICE_TLS_MAX_CONNECTIONS", "2"),
            ("SLUICE_FLIGHT_LISTEN", "127.0.0.1:0"),
            ("SLUICE_FLIGHT_MAX_CONNECTIONS", "2"),
            ("SLUICE_GRPC_LISTEN", "127.0.0.1:0"),
            ("SLUICE_GRPC_MAX_CONNECTIONS", "2"),
        ],
    );
    let fronts = [
        ("wss", gw.tls_addr.unwrap()),
        ("flight", gw.flight_addr.unwrap()),
        ("grpc", gw.grpc_addr.unwrap()),
    ];
    for (front, at) in fronts {
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(tokio::net::TcpStream::connect(at).await.unwrap());
        }
        // Accepted in order: the third finds both places taken.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut third = tokio::net::TcpStream::connect(at).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), third.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{front}: the connection past the limit is closed"));
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "{front}: closed without an answer"
        );
        let series =
            format!("sluice_front_refusals_total{{front=\"{front}\",reason=\"max_connections\"}}");
        assert_eq!(gw.metric_settles(&series, 1).await, 1, "{series}");
        drop(held);
    }
    // Places are given back: a browser reads over wss again.
    let cfg = tls_config(&pki.path("ca.crt"), None);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let hello = wss(&gw, "/healthz", &[], cfg).await;
    assert!(!is_tls_refusal(&hello), "the TLS front serves again");
}

/// Issue 35: a `wss://` browser's frames reach the TLS thread in process
/// (`wire::egress`), not through the socket pair, and the bounds hold the
/// same: browsers over wss that query 24 MiB and never read again are
/// ended as slow consumers (4409) and give their connector workers back,
/// while another browser's fetches over wss arrive whole, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_browsers_that_stop_reading_are_ended_and_others_fetch_whole() {
    let pki = Pki::new(&["acme"]);
    let gw = pki.gateway(1, &STALLED_READER_SETTINGS);
    // 24 MiB a stream: more than the outbox, the egress and the sockets'
    // buffers hold while the client reads nothing (the streams stall at
    // about 11 MiB).
    let data = frames(96, 256 * 1024);
    let _workers = idle_serving_connectors(&gw, 4, data.clone()).await;
    let mut stalled = Vec::new();
    for i in 0..3 {
        let mut ws = browser_wss(&gw, &pki, &mallory(&format!("mallory-wss-{i}"))).await;
        send_json(&mut ws, json!({"action": "query", "dataset": "d"})).await;
        stalled.push(ws);
        // Each stream reaches its stall before the next starts. (Opened
        // back to back, the first of three 48 MiB streams was forwarded
        // whole with no reader: not explained yet, and the same before the
        // egress; see the note of 2026-12-08.)
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
    for i in 0..3 {
        let mut ws = browser_wss(&gw, &pki, &claims(&format!("alice-wss-{i}"))).await;
        let (got, end) = query_all(&mut ws, "d").await;
        assert_eq!(got.len(), data.len(), "{end}");
        assert!(got == data, "alice's fetch {i} over wss arrived whole");
    }
    for mut ws in stalled {
        let (code, reason) = close_of(&mut ws).await;
        assert_eq!(code, 4409, "{reason}");
        assert!(reason.contains("reader_stall_ms"), "{reason}");
    }
    assert_eq!(
        gw.metric_settles("sluice_connector_workers_idle", 4).await,
        4
    );
}
