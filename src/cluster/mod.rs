//! What this gateway shares with the others through Redis, on threads of
//! their own and never on the data path: revocations in, the edge registry
//! and session ends out.

pub mod announce;
pub mod revocation_link;
pub mod session_end;
pub mod spend_link;
