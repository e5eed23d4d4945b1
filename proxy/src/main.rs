//! The `komugate` binary: the global allocator, then the command line.

use std::alloc::{GlobalAlloc, Layout, System};

/// mimalloc instead of glibc malloc: the data path allocates and frees many
/// small buffers across worker threads, where glibc spent ~7 % of the
/// proxy's CPU (profile of the plain-forward load test). Building with
/// `KOMUGATE_ALLOCATOR=glibc` picks glibc malloc instead (only this file is
/// rebuilt), so that the two can be compared on the same code
/// (benches/RESULTS.md, soak memory).
const GLIBC: bool = is_glibc(option_env!("KOMUGATE_ALLOCATOR"));

const fn is_glibc(choice: Option<&str>) -> bool {
    let Some(choice) = choice else { return false };
    let (a, b) = (choice.as_bytes(), b"glibc");
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

struct Allocator;

// SAFETY: every call goes to the one allocator GLIBC (a constant) names,
// so memory is always freed by the allocator that gave it.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if GLIBC {
            System.alloc(layout)
        } else {
            mimalloc::MiMalloc.alloc(layout)
        }
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if GLIBC {
            System.alloc_zeroed(layout)
        } else {
            mimalloc::MiMalloc.alloc_zeroed(layout)
        }
    }
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if GLIBC {
            System.dealloc(ptr, layout)
        } else {
            mimalloc::MiMalloc.dealloc(ptr, layout)
        }
    }
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if GLIBC {
            System.realloc(ptr, layout, new_size)
        } else {
            mimalloc::MiMalloc.realloc(ptr, layout, new_size)
        }
    }
}

#[global_allocator]
static GLOBAL: Allocator = Allocator;

fn main() -> std::process::ExitCode {
    komugate::cli::main()
}
