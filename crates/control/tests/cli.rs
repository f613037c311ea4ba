//! README section "The control plane": the admin CLI writes the tenant
//! files an operator can read, with every secret sealed, refuses changes
//! that would leave a tenant inconsistent, and records each change in the
//! audit log; `serve` refuses to start half-configured.

use std::path::{Path, PathBuf};
use std::process::Command;

const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const OTHER_MASTER: &str = "HxwdHhscGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn data_dir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("sluice-control-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    Dir(d)
}

/// Runs the CLI with `master` as the master key (None = unset).
fn run(dir: &Path, master: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice-control"));
    c.arg("--data-dir").arg(dir).args(args);
    c.env_remove("SLUICE_MASTER_KEY");
    if let Some(m) = master {
        c.env("SLUICE_MASTER_KEY", m);
    }
    c.env("THE_EDGE_KEY", "plaintext-edge-key-123456");
    c.env("THE_USER_SECRET", "plaintext-user-secret-0123456789abcdef");
    let o = c.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let (ok, out, err) = run(dir, Some(MASTER), args);
    assert!(ok, "{args:?}: {err}");
    out
}

fn refused(dir: &Path, args: &[&str]) -> String {
    let (ok, _, err) = run(dir, Some(MASTER), args);
    assert!(!ok, "{args:?} was accepted");
    err
}

fn all_files(dir: &Path) -> String {
    let mut text = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            text.push_str(&all_files(&p));
        } else {
            text.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
    text
}

#[test]
fn secrets_are_sealed_at_rest_and_open_only_with_the_master_key() {
    let d = data_dir("sealed");
    let (yes, key, _) = run(&d.0, None, &["master-key"]);
    assert!(yes);
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .unwrap();
    assert_eq!(raw.len(), 32);

    ok(
        &d.0,
        &[
            "tenant",
            "add",
            "acme",
            "--user-hs256-secret-env",
            "THE_USER_SECRET",
        ],
    );
    let (yes, _, err) = run(&d.0, None, &["edge", "add", "--tenant", "acme", "e1"]);
    assert!(!yes);
    assert!(err.contains("SLUICE_MASTER_KEY"), "{err}");
    let out = ok(
        &d.0,
        &[
            "edge",
            "add",
            "--tenant",
            "acme",
            "e1",
            "--key-env",
            "THE_EDGE_KEY",
        ],
    );
    assert!(out.contains("sha256:"), "{out}");
    assert!(
        !out.contains("plaintext-edge-key"),
        "a given key is not echoed: {out}"
    );
    let shown = ok(&d.0, &["edge", "add", "--tenant", "acme", "e2"]);
    assert!(shown.contains("shown once"), "{shown}");
    ok(&d.0, &["keys", "rotate", "--tenant", "acme"]);

    let files = all_files(&d.0.join("tenants"));
    assert!(
        files.contains("key_hash = \"sha256:"),
        "the gateway's hash is readable"
    );
    for secret in ["plaintext-edge-key", "plaintext-user-secret", "PRIVATE KEY"] {
        assert!(
            !files.contains(secret),
            "{secret} found in the tenant files"
        );
    }
    assert_eq!(
        ok(&d.0, &["edge", "key", "--tenant", "acme", "e1"]).trim(),
        "plaintext-edge-key-123456"
    );
    let (yes, _, err) = run(
        &d.0,
        Some(OTHER_MASTER),
        &["edge", "key", "--tenant", "acme", "e1"],
    );
    assert!(!yes);
    assert!(err.contains("does not open"), "{err}");
    let gw = ok(&d.0, &["edge", "gateway-keys"]);
    assert!(
        gw.starts_with("[edge_keys]") && gw.contains("\"e1\" = \"sha256:") && gw.contains("\"e2\""),
        "{gw}"
    );

    let audit = std::fs::read_to_string(d.0.join("audit.jsonl")).unwrap();
    assert!(audit.lines().count() >= 4);
    assert!(
        audit.contains("\"action\":\"edge.set\"") && audit.contains("\"action\":\"keys.rotate\"")
    );
    assert!(!audit.contains("plaintext"), "{audit}");
}

#[test]
fn changes_that_would_leave_a_tenant_inconsistent_are_refused() {
    let d = data_dir("consistent");
    assert!(refused(&d.0, &["tenant", "add", "Bad Slug"]).contains("invalid tenant slug"));
    assert!(refused(&d.0, &["plan", "add", "--tenant", "ghost", "p"]).contains("unknown tenant"));
    ok(&d.0, &["tenant", "add", "acme"]);
    ok(&d.0, &["tenant", "add", "other"]);
    assert!(refused(
        &d.0,
        &[
            "tenant",
            "add",
            "acme",
            "--user-hs256-secret-env",
            "THE_EDGE_KEY"
        ]
    )
    .contains("at least 32"));
    ok(&d.0, &["edge", "add", "--tenant", "acme", "e1"]);
    assert!(refused(&d.0, &["edge", "add", "--tenant", "other", "e1"])
        .contains("already belongs to tenant acme"));
    assert!(refused(
        &d.0,
        &["dataset", "add", "--tenant", "acme", "d", "--edge", "nope"]
    )
    .contains("edge \"nope\" is not defined"));
    ok(
        &d.0,
        &["dataset", "add", "--tenant", "acme", "d", "--edge", "e1"],
    );
    assert!(refused(
        &d.0,
        &["client", "add", "--tenant", "acme", "c", "--plan", "nope"]
    )
    .contains("plan \"nope\" is not defined"));
    ok(
        &d.0,
        &[
            "plan",
            "add",
            "--tenant",
            "acme",
            "p",
            "--max-streams",
            "3",
            "--session-quota",
            "500MB",
        ],
    );
    assert!(refused(
        &d.0,
        &[
            "client",
            "add",
            "--tenant",
            "acme",
            "c",
            "--plan",
            "p",
            "--dataset",
            "x"
        ]
    )
    .contains("dataset \"x\""));
    ok(
        &d.0,
        &[
            "client",
            "add",
            "--tenant",
            "acme",
            "c",
            "--plan",
            "p",
            "--dataset",
            "d",
        ],
    );
    assert!(refused(&d.0, &["plan", "remove", "--tenant", "acme", "p"]).contains("still used"));
    assert!(refused(&d.0, &["edge", "remove", "--tenant", "acme", "e1"]).contains("still serves"));
    assert!(
        refused(&d.0, &["client", "remove", "--tenant", "acme", "ghost"]).contains("no client")
    );
    assert!(refused(
        &d.0,
        &[
            "plan",
            "add",
            "--tenant",
            "acme",
            "q",
            "--session-quota",
            "12XB"
        ]
    )
    .contains("invalid size"));
    let plans = std::fs::read_to_string(d.0.join("tenants/acme/plans.toml")).unwrap();
    assert!(plans.contains("session_quota_bytes = 500000000"), "{plans}");

    // Rotation keeps the previous key until its tokens expire.
    let k1 = ok(&d.0, &["keys", "rotate", "--tenant", "acme"]);
    let k2 = ok(&d.0, &["keys", "rotate", "--tenant", "acme"]);
    let list = ok(&d.0, &["keys", "list", "--tenant", "acme"]);
    assert!(
        list.contains(&format!("{}\t", k1.trim())) && list.contains("retired at"),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with(k2.trim()) && l.ends_with("active")),
        "{list}"
    );
}

#[test]
fn serve_refuses_to_start_half_configured() {
    let d = data_dir("serve");
    let (yes, _, err) = run(
        &d.0,
        Some(MASTER),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            "http://127.0.0.1:9",
        ],
    );
    assert!(!yes);
    assert!(err.contains("no tenants/ folder"), "{err}");
    ok(&d.0, &["tenant", "add", "acme"]);
    let (yes, _, err) = run(&d.0, Some(MASTER), &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!yes);
    assert!(
        err.contains("--redis") && err.contains("--gateway"),
        "{err}"
    );
    let (yes, _, err) = run(
        &d.0,
        None,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            "http://127.0.0.1:9",
        ],
    );
    assert!(!yes);
    assert!(err.contains("SLUICE_MASTER_KEY"), "{err}");
}
