//! Read buffers shared by the readers of one shard, most recently used
//! first, so that what the kernel copies a frame into is already in the
//! core's cache.
//!
//! A reader used to keep its own buffer while it waited. With 200 slow
//! streams (fan-in) that is 200 buffers, and by the time a stream's next
//! frame arrives its buffer has left the cache: the kernel's copy into it
//! (`_copy_to_iter`) cost three times what it costs a relay that reads every
//! socket into one buffer (docs/benchmarks.md, thirteenth sitting). Now a
//! reader with nothing buffered gives its buffer back here when its socket
//! has nothing to read, and takes the buffer given back last when the
//! socket wakes it: the buffer the previous frame went through, still warm.
//! An idle socket holds no buffer.
//!
//! Only a buffer nothing else refers to comes here: one whose frames are
//! still queued for a slow browser stays with its reader. Running out is
//! not an error: a reader that finds the pool empty, or its top buffer too
//! small, allocates as before, so the pool bounds only what is kept, never
//! who may read. One pool per thread is one per shard (thread-per-core).

use std::cell::RefCell;

use bytes::BytesMut;

/// How many buffers a thread keeps until [`keep_at_most`] says otherwise
/// (a shard does at start, from `limits.read_pool_buffers`).
pub const KEPT: usize = crate::config::DEFAULT_READ_POOL_BUFFERS;

/// One shard's buffers, and its bound beside them: one thread-local
/// access per give.
struct Pool {
    kept: Vec<BytesMut>,
    bound: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            kept: Vec::new(),
            bound: KEPT,
        })
    };
}

/// Sets how many buffers this thread (shard) keeps from now on; those kept
/// past a lower bound are freed at once.
pub fn keep_at_most(n: usize) {
    POOL.with_borrow_mut(|p| {
        p.bound = n;
        p.kept.truncate(n);
    });
}

/// Keeps `buf` for the next reader, or frees it if the bound is reached.
/// `buf` must be empty; its spare capacity is what the next reader gets.
pub fn give(buf: BytesMut) {
    debug_assert!(buf.is_empty());
    POOL.with_borrow_mut(|p| {
        if p.kept.len() < p.bound {
            p.kept.push(buf);
        }
    });
}

/// The buffer given back last, if it has room for `at_least` bytes; `None`
/// otherwise (the caller allocates), leaving it for a reader it fits.
pub fn take(at_least: usize) -> Option<BytesMut> {
    POOL.with_borrow_mut(|p| {
        if p.kept.last()?.capacity() >= at_least {
            p.kept.pop()
        } else {
            None
        }
    })
}

/// How many buffers this thread's pool holds now.
pub fn kept() -> usize {
    POOL.with_borrow(|p| p.kept.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain() {
        while take(0).is_some() {}
    }

    #[test]
    fn the_last_buffer_given_is_the_first_taken() {
        drain();
        let a = BytesMut::with_capacity(4096);
        let b = BytesMut::with_capacity(4096);
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        give(a);
        give(b);
        assert_eq!(take(4096).unwrap().as_ptr(), pb);
        assert_eq!(take(4096).unwrap().as_ptr(), pa);
        assert!(
            take(1).is_none(),
            "an empty pool says so; the reader allocates"
        );
    }

    #[test]
    fn keeps_at_most_kept_buffers() {
        drain();
        for _ in 0..KEPT + 5 {
            give(BytesMut::with_capacity(1024));
        }
        assert_eq!(kept(), KEPT);
        drain();
        assert_eq!(kept(), 0);
    }

    #[test]
    fn the_bound_is_set_per_shard_and_zero_keeps_none() {
        drain();
        for _ in 0..4 {
            give(BytesMut::with_capacity(1024));
        }
        keep_at_most(2);
        assert_eq!(kept(), 2, "a lower bound frees what is past it");
        give(BytesMut::with_capacity(1024));
        assert_eq!(kept(), 2);
        keep_at_most(0);
        give(BytesMut::with_capacity(1024));
        assert_eq!(kept(), 0, "0 keeps none");
        assert!(take(1).is_none());
        let other = std::thread::spawn(|| {
            give(BytesMut::with_capacity(1024));
            kept()
        });
        assert_eq!(
            other.join().unwrap(),
            1,
            "another shard keeps its own bound"
        );
        keep_at_most(KEPT);
    }

    #[test]
    fn a_buffer_too_small_stays_for_a_reader_it_fits() {
        drain();
        give(BytesMut::with_capacity(1024));
        assert!(take(64 * 1024).is_none());
        assert_eq!(kept(), 1);
        assert!(take(1024).is_some());
    }
}
