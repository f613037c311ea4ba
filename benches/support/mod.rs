//! Helpers shared by the benchmark binaries (each uses some of them).
#![allow(dead_code)]

use sluice::auth::token::{sign_hs256, Claims, Mode, Verifier};

const SECRET: &[u8] = b"bench-secret-0123456789abcdef-0123456789";

/// An HS256 verifier and a valid token for session `s-bench`. The expiry
/// is fixed far in the future: the token's bytes (and so the instruction
/// count of verifying it) must not change from day to day.
pub fn hs256_token() -> (Verifier, String) {
    let v = Verifier::from_config(&sluice::config::Auth {
        hs256_secret: String::from_utf8(SECRET.to_vec()).expect("ascii").into(),
        ..Default::default()
    })
    .expect("valid auth config");
    let claims = Claims {
        sid: "s-bench".into(),
        sub: "u".into(),
        tenant: "t".into(),
        edge: "e".into(),
        mode: Mode::Query,
        datasets: None,
        quota: Some(1 << 30),
        exp: 4_102_444_800,
        jti: None,
        client: None,
    };
    (v, sign_hs256(&claims, SECRET))
}

/// Pins the calling thread to `cpu` (modulo the CPUs there are); a no-op on
/// a single-CPU host, where there is nothing to separate.
pub fn pin(cpu: usize) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if cpus > 1 {
        let _ = monoio::utils::bind_to_cpu_set([cpu % cpus]);
    }
}
