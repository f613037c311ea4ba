//! Per-session byte quota, charged at frame boundaries.
//!
//! A frame is admitted whole or not at all: the session never receives half
//! a frame, and the count is exactly the payload bytes of the data frames it
//! did receive (headers and the gateway's own JSON messages are free).

use std::cell::Cell;

pub struct Quota {
    limit: Option<u64>,
    used: Cell<u64>,
}

impl Quota {
    /// `limit == 0` or `None` means unlimited.
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            limit: limit.filter(|&l| l > 0),
            used: Cell::new(0),
        }
    }

    /// Charges `len` bytes if they fit; otherwise charges nothing.
    pub fn admit(&self, len: u64) -> bool {
        let next = self.used.get().saturating_add(len);
        match self.limit {
            Some(limit) if next > limit => false,
            _ => {
                self.used.set(next);
                true
            }
        }
    }

    pub fn used(&self) -> u64 {
        self.used.get()
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_at_the_boundary() {
        let q = Quota::new(Some(100));
        assert!(q.admit(60));
        assert!(q.admit(40));
        assert!(!q.admit(1));
        assert_eq!(q.used(), 100);
        let q = Quota::new(Some(100));
        assert!(q.admit(60));
        assert!(!q.admit(41));
        assert_eq!(q.used(), 60);
        assert!(Quota::new(Some(0)).admit(u64::MAX));
    }
}
