//! Test plumbing for unit tests that drive the gateway's I/O with a
//! scripted peer: a monoio runtime and a connected loopback pair.

use std::sync::mpsc;
use std::time::Duration;

use monoio::net::{TcpListener, TcpStream};

pub type Runtime = monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>;

/// A runtime with timers, on the portable (epoll) driver.
pub fn runtime() -> Runtime {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("a test runtime")
}

/// A connected pair on loopback: the gateway's end and the script's. (The
/// kernel completes the handshake from the backlog, before the accept.)
pub async fn socket_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let script = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (gateway, _) = l.accept().await.unwrap();
    (gateway, script)
}

/// Far beyond any wait in these tests: reaching it means a timer or a read
/// never woke.
const HUNG: Duration = Duration::from_secs(10);

/// Runs `f` (which builds its own runtime) in a thread of its own and
/// fails the test if it has not finished by `HUNG`. The watch needs no
/// timer in that runtime, so a timer cannot wake the task it watches.
pub fn within_hung(f: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let t = std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    match finished.recv_timeout(HUNG) {
        Ok(()) => t.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The thread panicked: re-raise its assertion.
            if let Err(p) = t.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("the runtime hung"),
    }
}
