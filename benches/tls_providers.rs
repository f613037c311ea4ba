//! Which rustls crypto provider should the workspace build: `ring` or
//! `aws-lc-rs`? Both run the same in-memory TLS 1.3 work in one process, on
//! one core: full handshakes (ECDSA P-256 server certificate, the
//! provider's preferred key exchange) and bulk records (the negotiated
//! AES-GCM suite), both directions of a connection in user space, so the
//! figures are the crypto and rustls alone.
//!
//!     cargo bench --bench tls_providers --features tls-provider-bench \
//!         [-- --handshakes 2000 --mib 512 --runs 3]

mod support;
use support::pin;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};

struct Pair {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

fn configs(provider: CryptoProvider) -> Pair {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = CertificateDer::from(cert.der().to_vec());
    let mut roots = RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let provider = Arc::new(provider);
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Pair {
        client: Arc::new(client),
        server: Arc::new(server),
    }
}

/// Moves whatever TLS bytes `from` has for `to` (in memory), reading the
/// plaintext `to` decrypts into `sink` as it goes; returns its length.
fn pump(from: &mut Connection, to: &mut Connection, wire: &mut Vec<u8>, sink: &mut [u8]) -> usize {
    let mut got = 0;
    while from.wants_write() {
        wire.clear();
        from.write_tls(wire).unwrap();
        let mut rd = &wire[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets().unwrap();
            loop {
                match to.reader().read(sink) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }
    got
}

fn connect(p: &Pair) -> (Connection, Connection) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c: Connection = ClientConnection::new(p.client.clone(), name)
        .unwrap()
        .into();
    let mut s: Connection = ServerConnection::new(p.server.clone()).unwrap().into();
    let mut wire = Vec::with_capacity(64 * 1024);
    let mut sink = [0u8; 1024];
    while c.is_handshaking() || s.is_handshaking() {
        pump(&mut c, &mut s, &mut wire, &mut sink);
        pump(&mut s, &mut c, &mut wire, &mut sink);
    }
    (c, s)
}

fn handshakes(p: &Pair, n: usize) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        let (c, _s) = connect(p);
        assert!(c.negotiated_cipher_suite().is_some());
    }
    t.elapsed() / n as u32
}

/// Seconds per MiB: encrypt on one side, decrypt on the other.
fn bulk(p: &Pair, mib: usize) -> (f64, String) {
    let (mut c, mut s) = connect(p);
    let suite = format!("{:?}", c.negotiated_cipher_suite().unwrap().suite());
    let chunk = vec![7u8; 64 * 1024];
    let mut wire = Vec::with_capacity(256 * 1024);
    let mut sink = vec![0u8; 256 * 1024];
    let t = Instant::now();
    for _ in 0..mib * 16 {
        c.writer().write_all(&chunk).unwrap();
        let got = pump(&mut c, &mut s, &mut wire, &mut sink);
        assert_eq!(got, chunk.len());
    }
    (t.elapsed().as_secs_f64() / mib as f64, suite)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    pin(0);
    let n = arg("--handshakes", 2000);
    let mib = arg("--mib", 512);
    let runs = arg("--runs", 3);
    let providers: [(&str, fn() -> CryptoProvider); 2] = [
        ("ring", rustls::crypto::ring::default_provider),
        ("aws-lc-rs", rustls::crypto::aws_lc_rs::default_provider),
    ];
    println!("provider    suite                      handshake µs (median of {runs})   bulk MB/s (median of {runs})");
    for (name, make) in providers {
        let p = configs(make());
        let mut hs = Vec::new();
        let mut mbs = Vec::new();
        let mut suite = String::new();
        for _ in 0..runs {
            hs.push(handshakes(&p, n).as_secs_f64() * 1e6);
            let (s_per_mib, s) = bulk(&p, mib);
            mbs.push(1.048_576 / s_per_mib);
            suite = s;
        }
        println!(
            "{name:<11} {suite:<26} {:>10.0} {:>31.0}",
            median(hs),
            median(mbs)
        );
    }
}
