//! Instruction-count harness for the CI regression gate (`.ci/instructions`).
//!
//! Each case runs its hot path `ITERATIONS` times inside a function whose
//! name contains `measured_`; callgrind counts only inside that function
//! (`--toggle-collect=*measured_*`), so setup, the allocator warming up and
//! process start are not counted. Instruction counts do not depend on what
//! else the machine is doing, which is what lets CI gate on them without
//! flaking.
//!
//!     cargo bench --bench instructions -- --list
//!     valgrind --tool=callgrind --toggle-collect='*measured_*' \
//!         target/release/deps/instructions-* --case unmask_64k

mod support;

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};

use sluice::auth::token::Verifier;
use sluice::ids::SessionId;
use sluice::registry::{Spend, Spends};
use sluice::session::burst::{Burst, Step};
use sluice::shard::metrics::ShardMetrics;
use sluice::wire::frame::{apply_mask, encode_client_frame, parse_header, MaskRule, Opcode};
use sluice::wire::outbox::Outbox;
use sluice::wire::reader::{freeze, FrameReader, Wire};

const ITERATIONS: u64 = 1000;

const CASES: &[&str] = &[
    "frame_header",
    "unmask_1k",
    "unmask_64k",
    "token_hs256",
    "shard_route",
    "quota_admit",
    "http_upgrade",
    "outbox_push",
    "forward_4k",
    "burst_4k",
    "read_4k",
];

#[inline(never)]
fn measured_frame_header(f: &[u8]) {
    for _ in 0..ITERATIONS {
        black_box(parse_header(black_box(f), MaskRule::Required, 1 << 24).unwrap());
    }
}

#[inline(never)]
fn measured_unmask(buf: &mut [u8]) {
    for _ in 0..ITERATIONS {
        apply_mask(black_box(&mut *buf), [1, 2, 3, 4], 0);
    }
}

#[inline(never)]
fn measured_token(v: &Verifier, t: &str, sid: &SessionId) {
    for _ in 0..ITERATIONS {
        black_box(v.verify(black_box(t), sid).unwrap());
    }
}

#[inline(never)]
fn measured_shard_route(sid: &SessionId) {
    for _ in 0..ITERATIONS {
        black_box(black_box(sid).shard(16));
    }
}

#[inline(never)]
fn measured_quota(q: &Spend) {
    for _ in 0..ITERATIONS {
        black_box(q.admit(black_box(65536)));
    }
}

/// A forwarded frame joining a connection's outbox (framing check, queue,
/// byte count, the writer decision) and leaving it. The socket write
/// itself is the kernel's and is not counted.
#[inline(never)]
fn measured_outbox_push(o: &Outbox, frame: &Wire) {
    for _ in 0..ITERATIONS {
        o.push_wire(black_box(frame.clone())).unwrap();
        o.discard_pending();
    }
}

/// The forwarding loop's own work for one relayed 4 KiB frame: the reader
/// finding it in what the kernel delivered, unmasking it and rewriting its
/// header in place, splitting it off the read buffer, and the frame
/// joining the browser's outbox. What the socket calls cost is the
/// kernel's and is measured by `sluice-loadtest`, not here.
#[inline(never)]
fn measured_forward<R: sluice::wire::reader::Source>(reader: &mut FrameReader<R>, to: &Outbox) {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..ITERATIONS {
        let next = std::pin::pin!(reader.next());
        let std::task::Poll::Ready(Ok(f)) = next.poll(&mut cx) else {
            panic!("every frame is already buffered");
        };
        to.push_wire(freeze(f)).unwrap();
        to.discard_pending();
    }
}

/// The same loop for a backlog (every next frame already whole in the
/// buffer, as after a stall): each frame held in a `Burst` until one
/// direct send's worth, then queued together (`Outbox::push_wires`), as
/// query and relay forward.
#[inline(never)]
fn measured_burst<R: sluice::wire::reader::Source>(
    reader: &mut FrameReader<R>,
    to: &Outbox,
    metrics: &ShardMetrics,
) {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut burst = Burst::default();
    for _ in 0..ITERATIONS {
        let f = {
            let next = std::pin::pin!(reader.next());
            let std::task::Poll::Ready(Ok(f)) = next.poll(&mut cx) else {
                panic!("every frame is already buffered");
            };
            f
        };
        let more = reader.next_is_whole_binary();
        if burst.forward(f, more, to, metrics).unwrap() == Step::Queued {
            to.discard_pending();
        }
    }
}

/// One 4 KiB frame read off a socket, as in `fan-in`: the read finds the
/// socket not yet marked readable and waits (the first poll), the runtime's
/// epoll wait reports it, and the second poll receives the frame in place,
/// unmasks and re-heads it and hands it to the outbox. What the `recv`
/// costs in the kernel, and the runtime's wait between the two polls, are
/// not counted.
#[inline(never)]
fn measured_read<F>(next: Pin<&mut F>, to: &Outbox, cx: &mut Context<'_>) -> Poll<()>
where
    F: Future<Output = Result<sluice::wire::reader::InFrame, sluice::wire::reader::ReadError>>,
{
    let Poll::Ready(f) = next.poll(cx) else {
        return Poll::Pending;
    };
    to.push_wire(freeze(f.expect("a frame was written")))
        .unwrap();
    to.discard_pending();
    Poll::Ready(())
}

#[inline(never)]
fn measured_http_upgrade(req: &[u8]) {
    for _ in 0..ITERATIONS {
        let r = sluice::wire::http::parse_request(black_box(req), 8192, 64)
            .unwrap()
            .unwrap();
        black_box(sluice::wire::http::validate_upgrade(&r).unwrap());
    }
}

/// Runs `measure` on a reader whose buffer already holds `ITERATIONS`
/// masked 4 KiB frames, as after one large read, so its loop never waits
/// on the socket.
fn with_buffered_frames(measure: impl FnOnce(&mut FrameReader<monoio::net::UnixStream>)) {
    let mut wire = bytes::BytesMut::new();
    for _ in 0..ITERATIONS {
        wire.extend_from_slice(&encode_client_frame(
            Opcode::Binary,
            true,
            &[0u8; 4096],
            [1, 2, 3, 4],
        ));
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let io = monoio::net::UnixStream::from_std(a).unwrap();
        let mut reader = FrameReader::new(io, wire, MaskRule::Required, 1 << 20);
        measure(&mut reader);
    });
}

fn run(case: &str) {
    match case {
        "frame_header" => {
            let f = encode_client_frame(Opcode::Binary, true, &[0u8; 65536], [1, 2, 3, 4]);
            measured_frame_header(&f);
        }
        "unmask_1k" => measured_unmask(&mut vec![7u8; 1024]),
        "unmask_64k" => measured_unmask(&mut vec![7u8; 65536]),
        "token_hs256" => {
            let (v, token) = support::hs256_token();
            let sid = SessionId::parse("s-bench").unwrap();
            measured_token(&v, &token, &sid);
        }
        "shard_route" => measured_shard_route(&SessionId::parse("s-bench-0123456789").unwrap()),
        "quota_admit" => {
            // The session-wide count every connection of a session shares.
            let spends = Spends::new(1000);
            let sid = sluice::SessionId::parse("bench").unwrap();
            let spend = spends
                .open(&sid, Some(u64::MAX), 1, std::time::Duration::from_secs(60))
                .unwrap()
                .spend;
            measured_quota(&spend)
        }
        "http_upgrade" => measured_http_upgrade(
            b"GET /stream/s-0123456789abcdef HTTP/1.1\r\nHost: gw.example.com\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\nAuthorization: Bearer abc.def.ghi\r\n\r\n",
        ),
        "outbox_push" => {
            let frame = sluice::wire::frame::encode_server_frame(Opcode::Binary, &[0u8; 4096]);
            measured_outbox_push(&Outbox::new(1 << 20), &Wire::from(bytes::Bytes::from(frame)));
        }
        "forward_4k" => with_buffered_frames(|reader| {
            measured_forward(reader, &Outbox::new(1 << 20));
        }),
        "burst_4k" => with_buffered_frames(|reader| {
            let outbox = Outbox::new(1 << 20);
            measured_burst(reader, &outbox, &ShardMetrics::default());
            assert_eq!(outbox.queued_bytes(), 0, "every frame was queued");
        }),
        "read_4k" => {
            let frame = encode_client_frame(Opcode::Binary, true, &[0u8; 4096], [1, 2, 3, 4]);
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let (a, mut far) = std::os::unix::net::UnixStream::pair().unwrap();
                let io = monoio::net::UnixStream::from_std(a).unwrap();
                let mut reader =
                    FrameReader::new(io, bytes::BytesMut::new(), MaskRule::Required, 1 << 20);
                let outbox = Outbox::new(1 << 20);
                for _ in 0..ITERATIONS {
                    std::io::Write::write_all(&mut far, &frame).unwrap();
                    let mut next = std::pin::pin!(reader.next());
                    std::future::poll_fn(|cx| measured_read(next.as_mut(), &outbox, cx)).await;
                }
            });
        }
        other => {
            eprintln!("unknown case {other:?}; cases: {}", CASES.join(", "));
            std::process::exit(2);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        run(args.get(i + 1).map(String::as_str).unwrap_or(""));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        println!("iterations {ITERATIONS}");
        for c in CASES {
            println!("{c}");
        }
        return;
    }
    // `cargo bench` / `cargo test --benches` without a case: run each once
    // natively, so the harness is known to work before valgrind sees it.
    for c in CASES {
        run(c);
    }
}
