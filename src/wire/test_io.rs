//! Test plumbing for unit tests that drive the gateway's I/O with a
//! scripted peer: a monoio runtime and a connected loopback pair.

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
