//! The patched runtime's timer change (`crates/vendor/monoio/SLUICE.md`,
//! section 4), driven the way the gateway drives it: timers armed after
//! wake-ups that were for I/O only; and reads interrupted after many that
//! completed, which every revocation and keepalive timeout relies on.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::io::AsyncWriteRentExt;
use monoio::time::sleep;

use crate::wire::frame::{encode_client_frame, MaskRule, Opcode};
use crate::wire::reader::{FrameReader, ReadError};
use crate::wire::test_io::{runtime, socket_pair, within_hung};

#[test]
fn a_timer_armed_after_io_wakeups_with_no_timer_at_all_fires() {
    within_hung(|| {
        runtime().block_on(async {
            let l = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            // Blocking connect: the kernel completes it from the backlog.
            let mut far = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (gw, _) = l.accept().await.unwrap();
            // A plain thread writes, so the runtime has no timer while it
            // waits: every wake-up is for I/O, with nothing due.
            let writer = std::thread::spawn(move || {
                for i in 0..20u8 {
                    std::thread::sleep(Duration::from_millis(5));
                    far.write_all(&encode_client_frame(Opcode::Binary, true, &[i; 64], [9; 4]))
                        .unwrap();
                }
                far
            });
            let mut reader = FrameReader::new(gw, BytesMut::new(), MaskRule::Required, 1 << 20);
            for i in 0..20u8 {
                let f = reader.next().await.unwrap();
                assert_eq!(f.payload(), &[i; 64][..]);
            }
            // The wheel's clock is where the last look left it; the timer
            // must still fire, and not before its time.
            let armed = Instant::now();
            sleep(Duration::from_millis(30)).await;
            assert!(armed.elapsed() >= Duration::from_millis(30));
            drop(writer.join().unwrap());
        })
    });
}

#[test]
fn timers_fire_in_order_among_io_wakeups() {
    within_hung(|| {
        runtime().block_on(async {
            let (gw, mut far) = socket_pair().await;
            // Frames every millisecond: hundreds of I/O wake-ups while a
            // long timer and short ones, armed between reads, are pending.
            let writer = monoio::spawn(async move {
                for i in 0..200u32 {
                    let b = (i % 251) as u8;
                    let frame = encode_client_frame(Opcode::Binary, true, &[b; 32], [1; 4]);
                    far.write_all(frame).await.0.unwrap();
                    sleep(Duration::from_millis(1)).await;
                }
                far
            });
            let long = monoio::spawn(async {
                let t = Instant::now();
                sleep(Duration::from_millis(120)).await;
                t.elapsed()
            });
            let mut reader = FrameReader::new(gw, BytesMut::new(), MaskRule::Required, 1 << 20);
            let mut short = Vec::new();
            for i in 0..200u32 {
                let f = reader.next().await.unwrap();
                assert_eq!(f.payload(), &[(i % 251) as u8; 32][..]);
                if i % 40 == 0 {
                    short.push(monoio::spawn(async {
                        let t = Instant::now();
                        sleep(Duration::from_millis(7)).await;
                        t.elapsed()
                    }));
                }
            }
            assert!(long.await >= Duration::from_millis(120));
            for s in short {
                assert!(s.await >= Duration::from_millis(7));
            }
            drop(writer.await);
        })
    });
}

#[test]
fn an_interrupt_after_many_completed_reads_cancels_the_pending_one() {
    within_hung(|| {
        runtime().block_on(async {
            let (gw, mut far) = socket_pair().await;
            let mut reader = FrameReader::new(gw, BytesMut::new(), MaskRule::Required, 1 << 20);
            let interrupter = reader.interrupter();
            for i in 0..100u8 {
                let frame = encode_client_frame(Opcode::Binary, true, &[i; 16], [3; 4]);
                far.write_all(frame).await.0.unwrap();
                let f = reader.next().await.unwrap();
                assert_eq!(f.payload(), &[i; 16][..]);
            }
            // Nothing more comes: only the interrupt can end this read.
            let stop = monoio::spawn(async move {
                sleep(Duration::from_millis(20)).await;
                interrupter.interrupt();
            });
            assert!(matches!(reader.next().await, Err(ReadError::Interrupted)));
            stop.await;
            // And the reader still reads afterwards.
            far.write_all(encode_client_frame(Opcode::Binary, true, b"after", [5; 4]))
                .await
                .0
                .unwrap();
            assert_eq!(reader.next().await.unwrap().payload(), b"after");
        })
    });
}
