//! Bytes on the wire: RFC 6455 frames and the HTTP/1.1 upgrade, read into
//! owned buffers and written through bounded outboxes; no knowledge of
//! sessions or edges.

pub mod acks;
pub mod closing;
pub mod egress;
pub mod frame;
pub mod handoff;
pub mod http;
pub mod keepalive;
pub mod message;
pub mod outbox;
pub mod peer;
pub mod read_pool;
pub mod reader;
#[cfg(test)]
mod runtime_tests;
#[cfg(test)]
pub mod test_io;
pub mod utf8;
