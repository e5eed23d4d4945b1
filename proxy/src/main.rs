//! The `komugate` binary: the global allocator, then the command line.

use std::alloc::{GlobalAlloc, Layout, System};

/// The global allocator: glibc malloc, or mimalloc when built with
/// `KOMUGATE_ALLOCATOR=mimalloc` (only this file is rebuilt).
///
/// glibc by default for memory: in the 30-minute saturating soak (800
/// devices, benches/RESULTS.md, issue 20 point 5) glibc held 737-742 MiB
/// flat from minute 14, mimalloc 989-1093 MiB (v3 defaults) and still
/// 788 MiB and rising after 4 minutes with `purge_delay` 0. mimalloc is
/// ~7 % cheaper in CPU on the plain-forward path (profile of that load
/// test), which is why the choice stays a build option.
const GLIBC: bool = !is_mimalloc(option_env!("KOMUGATE_ALLOCATOR"));

const fn is_mimalloc(choice: Option<&str>) -> bool {
    let Some(choice) = choice else { return false };
    let (a, b) = (choice.as_bytes(), b"mimalloc");
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
