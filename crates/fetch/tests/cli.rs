//! `sluice-fetch`'s own answers, before any data flows (the end-to-end
//! downloads are in `connector/tests/fetch.rs`, which needs the connector).

use std::process::Command;

fn fetch(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-fetch"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A JWT-shaped token whose body is `{"sid":"s-1"}` (the gateway verifies
/// signatures; the client only reads the session id).
const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzaWQiOiJzLTEifQ.c2ln";

#[test]
fn a_bad_output_name_is_refused_before_connecting() {
    let (ok, err) = fetch(&[
        "--gateway",
        "ws://127.0.0.1:1",
        "--token",
        TOKEN,
        "--dataset",
        "d",
        "-o",
        "out.xlsx",
    ]);
    assert!(!ok);
    assert!(err.contains(".arrow, .parquet or .csv"), "{err}");
}

#[test]
fn an_unreachable_gateway_is_a_clear_error_and_leaves_no_file() {
    let out = std::env::temp_dir().join(format!("sluice-fetch-cli-{}.parquet", std::process::id()));
    let (ok, err) = fetch(&[
        "--gateway",
        "ws://127.0.0.1:1",
        "--token",
        TOKEN,
        "--dataset",
        "d",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("cannot connect to ws://127.0.0.1:1"), "{err}");
    assert_eq!(
        err.matches("os error").count(),
        1,
        "the OS error once: {err}"
    );
    assert!(!out.exists());
}

#[test]
fn the_session_id_comes_from_the_token_or_the_flag() {
    let (ok, err) = fetch(&[
        "--gateway",
        "ws://127.0.0.1:1",
        "--token",
        "not-a-jwt",
        "--dataset",
        "d",
        "-o",
        "x.csv",
    ]);
    assert!(!ok);
    assert!(
        err.contains("--token is not a JWT (three base64url parts separated by dots)"),
        "{err}"
    );
    // With --session it gets as far as connecting.
    let (ok, err) = fetch(&[
        "--gateway",
        "ws://127.0.0.1:1",
        "--token",
        "not-a-jwt",
        "--session",
        "s-1",
        "--dataset",
        "d",
        "-o",
        "x.csv",
    ]);
    assert!(!ok);
    assert!(err.contains("cannot connect to"), "{err}");
}

#[test]
fn asking_a_control_plane_needs_a_client_and_a_user_token_and_names_it_when_unreachable() {
    let (ok, err) = fetch(&[
        "--control",
        "http://127.0.0.1:1",
        "--dataset",
        "d",
        "-o",
        "x.csv",
    ]);
    assert!(!ok);
    assert!(
        err.contains("--client") && err.contains("--user-token"),
        "{err}"
    );
    let (ok, err) = fetch(&[
        "--control",
        "http://127.0.0.1:1",
        "--gateway",
        "ws://127.0.0.1:1",
        "--client",
        "c",
        "--user-token",
        "u",
        "--dataset",
        "d",
        "-o",
        "x.csv",
    ]);
    assert!(!ok);
    assert!(err.contains("cannot be used with"), "{err}");
    let out = std::env::temp_dir().join(format!("sluice-fetch-ctl-{}.csv", std::process::id()));
    let (ok, err) = fetch(&[
        "--control",
        "http://127.0.0.1:1",
        "--client",
        "c",
        "--user-token",
        "u",
        "--dataset",
        "d",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("cannot reach the control plane at http://127.0.0.1:1: Connection refused"),
        "{err}"
    );
    assert!(!out.exists());
}
