//! Allocation probe shared by the decoder property tests (`agent/tests/decoders.rs`,
//! `proto/tests/decoders.rs`), included there with `#[path]`: it wraps the system allocator
//! and records the largest single request made on the calling thread.
#![allow(unsafe_code)] // the probe implements `GlobalAlloc`, an unsafe trait

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::test_runner::TestCaseError;

struct Probe;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the probe only reads
// the requested size into a thread-local `Cell` (which never allocates).
unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static PROBE: Probe = Probe;

/// Runs `f` and returns its result with the largest single allocation it made, failing on
/// a panic.
pub fn probed<T>(what: &str, f: impl FnOnce() -> T) -> Result<(T, usize), TestCaseError> {
    LARGEST.with(|l| l.set(0));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|_| TestCaseError::fail(format!("{what} panicked")))?;
    Ok((r, LARGEST.with(|l| l.get())))
}
