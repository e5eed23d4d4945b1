//! Giving the memory of bulk work back to the operating system.

/// Frees the calling thread's unused allocator pages now.
///
/// Policy builds and list imports allocate hundreds of MiB of temporaries
/// on a blocking-pool thread that then sits idle. Allocators return freed
/// pages lazily (mimalloc on that same thread's later allocations, glibc
/// at the top of an arena only), so without this the gateway kept ~75 MiB
/// of dead import memory resident after loading the UT1 categories. Both
/// allocators are asked, as the binary uses glibc malloc or mimalloc
/// (`KOMUGATE_ALLOCATOR=mimalloc`, see main.rs): the unused one has
/// nothing to give back.
pub fn release_thread_cache() {
    // SAFETY: mi_collect only walks and trims the calling thread's heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory at the top of the heap
    // and of each arena to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
