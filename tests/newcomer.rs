//! A new user's first steps: a token from `sluice token`, used as the
//! README says, and the refusals that point at what to fix.

mod common;

use std::process::Command;

use common::control::{self as ctl, provision, Control, MASTER_KEY};
use common::*;
use serde_json::json;

fn sluice_token(secret: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("token")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SLUICE_TOKEN_SECRET", secret)
        .output()
        .expect("run sluice token")
}

#[tokio::test]
async fn sluice_token_opens_a_session_limited_to_its_datasets() {
    let gw = Gateway::start(2, &[]);
    let _conn = connector(&gw, EDGE, EDGE_KEY, &["orders", "stock", "prices"]).await;
    let out = sluice_token(
        SECRET,
        &[
            "--tenant",
            "acme",
            "--edge",
            EDGE,
            "--sid",
            "s-newcomer-1",
            "--dataset",
            "orders",
            "--dataset",
            "stock",
            "--ttl",
            "5m",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("session id: s-newcomer-1"), "{stderr}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "one JWT on stdout: {token}");

    let bearer = format!("Bearer {token}");
    let mut b = connect(
        &gw.url("/stream/s-newcomer-1"),
        &[("Authorization", &bearer)],
    )
    .await
    .expect("the gateway accepts the token");
    send_json(&mut b, json!({"action": "list"})).await;
    let v = next_json(&mut b).await;
    assert_eq!(v["type"], "datasets", "{v}");
    assert_eq!(
        v["datasets"],
        json!(["orders", "stock"]),
        "only the token's datasets"
    );

    // The same token for another session id is refused.
    let mut other = connect(&gw.url("/stream/s-other"), &[("Authorization", &bearer)])
        .await
        .unwrap();
    expect_error_close(&mut other, "unauthorized", 4401).await;
}

fn fetch(args: &[&str]) -> std::process::Output {
    Command::new(ctl::sibling_bin("sluice-fetch"))
        .args(args)
        .output()
        .expect("run sluice-fetch")
}

#[tokio::test]
async fn fetch_lists_what_a_token_may_read_and_a_misspelled_dataset_names_them() {
    let gw = Gateway::start(1, &[]);
    let _conn = connector(&gw, EDGE, EDGE_KEY, &["big", "orders", "stock"]).await;
    let mut c = claims("s-list-1");
    c.datasets = Some(vec!["big".into(), "orders".into()]);
    let t = token(&c);
    let base = gw.url("");
    let base = base.trim_end_matches('/');
    let listed = fetch(&["--gateway", base, "--token", &t, "--list"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "big\norders\n");

    let out = std::env::temp_dir().join(format!("newcomer-{}.csv", std::process::id()));
    let typo = fetch(&[
        "--gateway",
        base,
        "--token",
        &t,
        "--dataset",
        "bgi",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!typo.status.success());
    let msg = String::from_utf8_lossy(&typo.stderr);
    assert!(
        msg.contains(r#"token does not allow dataset "bgi"; it allows "big", "orders""#),
        "{msg}"
    );
    // Without an allow-list, the edge's own datasets.
    let open = token(&claims("s-list-2"));
    let typo = fetch(&[
        "--gateway",
        base,
        "--token",
        &open,
        "--dataset",
        "bgi",
        "-o",
        out.to_str().unwrap(),
    ]);
    let msg = String::from_utf8_lossy(&typo.stderr);
    assert!(
        msg.contains(r#"has no dataset "bgi"; it serves "big", "orders", "stock""#),
        "{msg}"
    );

    // A token that is not a JWT, and a gateway that is not there.
    let garbage = fetch(&["--gateway", base, "--token", "garbage", "--list"]);
    let msg = String::from_utf8_lossy(&garbage.stderr);
    assert!(msg.contains("--token is not a JWT"), "{msg}");
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let nobody = format!("ws://{free}");
    let gone = fetch(&["--gateway", &nobody, "--token", &t, "--list"]);
    let msg = String::from_utf8_lossy(&gone.stderr);
    assert!(msg.contains("cannot connect to"), "{msg}");
    assert_eq!(
        msg.matches("os error").count(),
        1,
        "the OS error once: {msg}"
    );
}

#[test]
fn sluice_token_refuses_what_the_gateway_would() {
    let short = sluice_token("short-secret", &["--tenant", "acme", "--edge", EDGE]);
    assert_eq!(short.status.code(), Some(2));
    let msg = String::from_utf8_lossy(&short.stderr);
    assert!(msg.contains("at least 32 are required"), "{msg}");
    assert!(short.stdout.is_empty());

    let none = sluice_token("", &["--tenant", "acme", "--edge", EDGE]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("SLUICE_TOKEN_SECRET"));

    let long_ttl = sluice_token(
        SECRET,
        &["--tenant", "acme", "--edge", EDGE, "--ttl", "30d"],
    );
    assert_eq!(long_ttl.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&long_ttl.stderr).contains("24h"));

    // Without --sid, a fresh random session id each time.
    let a = sluice_token(SECRET, &["--tenant", "acme", "--edge", EDGE]);
    let b = sluice_token(SECRET, &["--tenant", "acme", "--edge", EDGE]);
    assert!(a.status.success() && b.status.success());
    assert_ne!(a.stderr, b.stderr);
}

#[test]
fn a_gateway_with_a_short_secret_does_not_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .env("SLUICE_LISTEN", "127.0.0.1:0")
        .env("SLUICE_TOKEN_SECRET", "secret")
        .output()
        .expect("run sluice");
    assert_eq!(out.status.code(), Some(2));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("SLUICE_TOKEN_SECRET") && msg.contains("openssl rand"),
        "{msg}"
    );
}

/// An admin command that may fail (`ctl::admin` asserts success).
fn control(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(ctl::control_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("SLUICE_MASTER_KEY", MASTER_KEY)
        .output()
        .expect("run sluice-control")
}

#[tokio::test]
async fn a_development_user_token_from_the_cli_is_accepted_by_the_control_plane() {
    let dir = provision();
    let token = ctl::admin(
        &dir.0,
        &["user-token", "--tenant", "acme", "--sub", "alice"],
    )
    .trim()
    .to_owned();
    let c = Control::start(&dir, &["--gateway", "http://127.0.0.1:9"]);
    // The user is let in: the answer is about the edge, not the token.
    let (st, v) = c.access("acme", &token, "dash", "d").await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["error"], "gateway_unreachable", "{v}");
    // A token of `other`'s users is not good for acme.
    let bob = ctl::admin(&dir.0, &["user-token", "--tenant", "other", "--sub", "bob"])
        .trim()
        .to_owned();
    let (st, v) = c.access("acme", &bob, "dash", "d").await;
    assert!(st == 401 || st == 403, "{st} {v}");

    // A tenant whose users do not sign in with HS256 gets told how.
    ctl::admin(
        &dir.0,
        &["tenant", "add", "idp-only", "--issuer", "https://idp"],
    );
    let out = control(
        &dir.0,
        &["user-token", "--tenant", "idp-only", "--sub", "x"],
    );
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(msg.contains("--user-hs256-secret-env"), "{msg}");
}

#[test]
fn commands_that_only_print_write_nothing() {
    let cwd = std::env::temp_dir().join(format!("sluice-newcomer-{}", std::process::id()));
    std::fs::create_dir_all(&cwd).unwrap();
    let out = Command::new(ctl::control_bin())
        .current_dir(&cwd)
        .arg("master-key")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim().len(), 44);
    assert_eq!(
        std::fs::read_dir(&cwd).unwrap().count(),
        0,
        "master-key created files in its working directory"
    );
    // Every admin command explains itself.
    for sub in ["tenant", "plan", "client", "dataset", "edge", "keys"] {
        let out = Command::new(ctl::control_bin())
            .args([sub, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        for line in help
            .lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
        {
            if line.trim().is_empty() {
                break;
            }
            assert!(
                line.split_whitespace().count() > 1,
                "`sluice-control {sub}`: subcommand without help: {line:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&cwd);
}

#[test]
fn a_control_plane_with_a_short_admin_token_does_not_start() {
    let dir = provision();
    let out = Command::new(ctl::control_bin())
        .arg("--data-dir")
        .arg(&dir.0)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("SLUICE_MASTER_KEY", MASTER_KEY)
        .env("SLUICE_CONTROL_ADMIN_TOKEN", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("at least 16 are required"), "{msg}");
}

#[test]
fn misspelled_variables_are_named_by_every_program() {
    let out = Command::new(ctl::control_bin())
        .arg("master-key")
        .env("SLUICE_CONTROL_LISTN", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("unknown environment variable SLUICE_CONTROL_LISTN is ignored; did you mean SLUICE_CONTROL_LISTEN?"),
        "{msg}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .env("SLUICE_LISTN", "127.0.0.1:1")
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("SLUICE_LISTN is ignored; did you mean SLUICE_LISTEN?"),
        "{msg}"
    );
    let out = Command::new(ctl::sibling_bin("sluice-connector"))
        .args([
            "--gateway",
            "ws://127.0.0.1:9",
            "--tenant",
            "t",
            "--edge",
            "e",
        ])
        .env("SLUICE_CONNECTOR_CONFG", "c.toml")
        .env("SLUICE_EDGE_KEYS", "e=some-key-0123456789abcdef")
        .env_remove("SLUICE_EDGE_KEY")
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        msg.contains("did you mean SLUICE_CONNECTOR_CONFIG?"),
        "{msg}"
    );
    assert!(
        msg.contains("the connector reads its own key from SLUICE_EDGE_KEY"),
        "{msg}"
    );
}
