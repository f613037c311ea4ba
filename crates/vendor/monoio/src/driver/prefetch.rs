//! Sluice patch (`SLUICE.md` §6): start loading what a woken reader will
//! touch, all at once, as its readiness event is dispatched.
//!
//! A slow stream's frame (fan-in: 200 streams, 50 frames/s each) finds
//! every line of its state cold: between two of its frames, 199 other
//! streams and the kernel's copies have passed through the core's cache.
//! Followed one by one (task header, the future's levels, the reader, its
//! interrupter, the session, the outbox), each line is a miss that starts
//! only when the one before it is done. Their addresses are known when the
//! event arrives (the task's cell is the waker's; the rest the reader left
//! with its waker), so the misses can overlap instead of following each
//! other.

use std::task::Waker;

/// Addresses a waiting reader's task loads first when it runs again
/// (0: none), left with its waker by `RecvReady::poll_recv_ready`.
pub type WakeHints = [usize; 6];

/// What a socket's slot keeps: the reader's hints, then the socket's own
/// state and the object holding the socket (a split half's shared cell),
/// which the read touches before anything of the reader's.
pub(crate) type SlotHints = [usize; 8];

/// The slot's hints for a read through `holder` (0: the socket is held
/// directly) of a socket whose shared state is at `fd_state`.
pub(crate) fn slot_hints(hints: &WakeHints, fd_state: usize, holder: usize) -> SlotHints {
    let mut all = [0; 8];
    all[..6].copy_from_slice(hints);
    all[6] = fd_state;
    all[7] = holder;
    all
}

/// Lines of the woken task's cell loaded ahead: its header and the start
/// of its future. Measured against 8, 24, 32, 64 and the whole cell
/// (docs/benchmarks.md, ninth sitting): loading the whole cell saved the
/// fast path as much but cost relay mode more than it saved.
const TASK_LINES: usize = 16;
const LINE: usize = 64;

/// One prefetch of the line holding `addr` into every cache level.
#[inline(always)]
fn line(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is a hint: it never faults, whatever the
    // address (unmapped, null, freed), and changes no architectural state,
    // so no address can make it unsound; `sse`, the feature the intrinsic
    // is declared with, is part of the x86_64 baseline every Rust target
    // for it enables. Every read wake-up on the epoll driver runs it; null,
    // freed and unmapped hint addresses in `wake_hints_tests` (the
    // gateway's `src/wire/reader.rs`).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// Loads ahead what a reader woken through `waker` touches first: the
/// start of its task's cell (the waker's data pointer is the cell) and
/// the lines it named. A waker that is not a task's (a test's, a
/// combinator's) only makes the first loads useless: nothing is read or
/// written through them.
#[inline]
pub(crate) fn reader_wakeup(waker: &Waker, hints: &SlotHints) {
    let task = waker.data() as usize;
    for i in 0..TASK_LINES {
        line(task.wrapping_add(i * LINE));
    }
    for &h in hints {
        if h != 0 {
            line(h);
        }
    }
}
