//! The command line the two floor relays share (`sluice-floor-relay`,
//! `sluice-uring-floor`): `NAME LISTEN_PORT UPSTREAM_ADDR`. Each includes
//! this file with `#[path]`, as the loader is a binary crate with no
//! library to put it in.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpListener};

/// Parses the arguments, binds the port on loopback and hands the
/// listener and the upstream address to `relay`, which runs until the
/// process is stopped. A usage error exits 2, a setup error 1.
pub fn main(name: &str, relay: fn(TcpListener, SocketAddr) -> io::Result<()>) {
    let args: Vec<String> = std::env::args().collect();
    let (Some(port), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: {name} LISTEN_PORT UPSTREAM_ADDR");
        std::process::exit(2);
    };
    if let Err(e) = bind(port, upstream).and_then(|(l, up)| relay(l, up)) {
        eprintln!("{name}: {e}");
        std::process::exit(1);
    }
}

fn bind(port: &str, upstream: &str) -> io::Result<(TcpListener, SocketAddr)> {
    let port: u16 = port
        .parse()
        .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "LISTEN_PORT is not a port"))?;
    let upstream: SocketAddr = upstream
        .parse()
        .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "UPSTREAM_ADDR is not host:port"))?;
    Ok((TcpListener::bind(("127.0.0.1", port))?, upstream))
}
