//! Criterion micro-benchmarks of the per-frame and per-session hot paths.
//!
//!     cargo bench --bench hot_path

mod support;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sluice::ids::SessionId;
use sluice::registry::Spends;
use sluice::wire::frame::{apply_mask, encode_client_frame, parse_header, MaskRule, Opcode};

fn frames(c: &mut Criterion) {
    let f = encode_client_frame(Opcode::Binary, true, &[0u8; 65536], [1, 2, 3, 4]);
    c.bench_function("frame/parse_header_64k_masked", |b| {
        b.iter(|| parse_header(black_box(&f), MaskRule::Required, 1 << 24).unwrap())
    });
    let mut g = c.benchmark_group("frame/unmask");
    for size in [1024usize, 65536] {
        let mut buf = vec![7u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}"), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), [1, 2, 3, 4], 0))
        });
    }
    g.finish();
}

fn sessions(c: &mut Criterion) {
    let (v, t) = support::hs256_token();
    let sid = SessionId::parse("s-bench").unwrap();
    c.bench_function("token/verify_hs256", |b| {
        b.iter(|| v.verify(black_box(&t), &sid).unwrap())
    });
    c.bench_function("shard/route_session_id", |b| {
        b.iter(|| black_box(&sid).shard(16))
    });
    let spends = Spends::new(1000);
    let q = spends
        .open(&sid, Some(u64::MAX), 1, std::time::Duration::from_secs(60))
        .unwrap()
        .spend;
    c.bench_function("quota/admit", |b| b.iter(|| q.admit(black_box(65536))));
}

criterion_group!(benches, frames, sessions);
criterion_main!(benches);
