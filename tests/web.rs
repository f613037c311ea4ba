//! README section "Dashboard": the gateway serves the built dashboard at
//! `/` from memory, with security headers; nothing outside its directory
//! is reachable; without a build, `/` says how to make one.

mod common;

use common::*;

#[tokio::test]
async fn the_gateway_serves_the_dashboard_files_and_nothing_else() {
    let dir = std::env::temp_dir().join(format!("sluice-web-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(
        dir.join("index.html"),
        "<!doctype html><title>Sluice</title>",
    )
    .unwrap();
    std::fs::write(dir.join("assets/app.js"), "console.log(1)").unwrap();
    let gw = Gateway::start(2, &[("SLUICE_WEB_DIR", dir.to_str().unwrap())]);

    let (st, head_and_body) = raw_full(&gw, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(st, 200);
    assert!(
        head_and_body.contains("Content-Type: text/html"),
        "{head_and_body}"
    );
    assert!(head_and_body.contains("Content-Security-Policy: default-src 'self'"));
    assert!(head_and_body.contains("X-Content-Type-Options: nosniff"));
    assert!(head_and_body.ends_with("<title>Sluice</title>"));
    let (st, js) = raw_full(&gw, "GET /assets/app.js HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(st, 200);
    assert!(js.contains("Content-Type: text/javascript") && js.ends_with("console.log(1)"));
    for path in [
        "/../Cargo.toml",
        "/assets/../index.html",
        "/assets/",
        "/nope.js",
    ] {
        let (st, _) = raw_full(&gw, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        assert_eq!(st, 404, "{path}");
    }
    let (st, _) = raw_full(
        &gw,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(st, 405);
    // The data paths are unaffected.
    assert_eq!(gw.get("/healthz").await.0, 200);
    let _ = std::fs::remove_dir_all(&dir);

    let bare = Gateway::start(1, &[("SLUICE_WEB_DIR", "/nonexistent/sluice-web")]);
    let (st, body) = bare.get("/").await;
    assert_eq!(st, 404);
    assert!(body.contains("npm run build"), "{body}");
}

async fn raw_full(gw: &Gateway, request: &str) -> (u16, String) {
    raw_exchange(gw.addr, request).await
}
