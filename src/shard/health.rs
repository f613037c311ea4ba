//! The gateway's dependencies, each an [`Outage`]: logged once when it
//! goes down, counted while it stays down, logged once when it returns
//! (see `sluice_protocol::outage`). One per process: every thread that
//! talks to Redis or the control plane reports to the same one, so an
//! outage is one line however many sessions and links notice it.

pub use sluice_protocol::outage::Outage;

/// Redis: the revocation link, the edge registry, session spend and ends.
pub static REDIS: Outage = Outage::new("redis");

/// The control plane, told of session ends without Redis (`control.url`).
pub static CONTROL_PLANE: Outage = Outage::new("control plane");
