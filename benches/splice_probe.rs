//! Does `splice` pay on this host? A plain TCP byte proxy on one monoio
//! shard (io_uring), copying through user space versus splicing through a
//! pipe, measured against the direct path in the same run. This decides
//! whether the gateway's fast path should splice payloads.
//!
//!     cargo bench --bench splice_probe [-- --mib 2048 --runs 3]

mod support;
use support::pin;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Instant;

/// Sink: accepts one connection and reads `total` bytes.
fn sink(total: usize) -> (SocketAddr, std::thread::JoinHandle<Instant>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        pin(1);
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < total {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got += n;
        }
        Instant::now()
    });
    (addr, h)
}

fn source(to: SocketAddr, total: usize) -> Instant {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_nodelay(true).unwrap();
    let chunk = vec![0xABu8; 64 * 1024];
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < total {
        s.write_all(&chunk).unwrap();
        sent += chunk.len();
    }
    t0
}

async fn forward(l: std::net::TcpListener, to: SocketAddr, splice: bool) {
    let l = monoio::net::TcpListener::from_std(l).unwrap();
    let (mut src, _) = l.accept().await.unwrap();
    let mut dst = monoio::net::TcpStream::connect(to).await.unwrap();
    let _ = dst.set_nodelay(true);
    if splice {
        monoio::io::zero_copy(&mut src, &mut dst).await.unwrap();
    } else {
        monoio::io::copy(&mut src, &mut dst).await.unwrap();
    }
}

/// A one-connection proxy on its own monoio thread on CPU 0.
fn proxy(to: SocketAddr, splice: bool, uring: bool) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        pin(0);
        if !uring {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .build()
                .expect("epoll runtime");
            rt.block_on(forward(l, to, splice));
            return;
        }
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .build()
            .expect("io_uring runtime");
        rt.block_on(forward(l, to, splice));
    });
    addr
}

fn run(total: usize, via: Option<(bool, bool)>) -> f64 {
    let (sink_addr, done) = sink(total);
    let target = match via {
        None => sink_addr,
        Some((splice, uring)) => proxy(sink_addr, splice, uring),
    };
    pin(1);
    let t0 = source(target, total);
    let t1 = done.join().unwrap();
    total as f64 / (t1 - t0).as_secs_f64() / 1e6
}

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str, default: usize| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let total = get("--mib", 1024) << 20;
    let runs = get("--runs", 3);
    let mut r: [Vec<f64>; 5] = Default::default();
    for _ in 0..runs {
        r[0].push(run(total, None));
        r[1].push(run(total, Some((false, true))));
        r[2].push(run(total, Some((true, true))));
        r[3].push(run(total, Some((false, false))));
        r[4].push(run(total, Some((true, false))));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let d = med(&mut r[0]);
    println!(
        "splice probe: {} MiB, median of {runs} runs, proxy on CPU 0, source+sink on CPU 1",
        total >> 20
    );
    println!("  {:<28} {:>8} {:>7}", "path", "MB/s", "ratio");
    println!("  {:<28} {:>8.0} {:>7.3}", "direct", d, 1.0);
    for (i, name) in [
        (1, "io_uring, read/write copy"),
        (2, "io_uring, splice via pipe"),
        (3, "epoll, read/write copy"),
        (4, "epoll, splice via pipe"),
    ] {
        let m = med(&mut r[i]);
        println!("  {name:<28} {m:>8.0} {:>7.3}", m / d);
    }
}
