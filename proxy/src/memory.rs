//! Giving the memory of bulk work back to the operating system.

/// Frees the calling thread's unused allocator pages now.
///
/// Policy builds and list imports allocate hundreds of MiB of temporaries
/// on a blocking-pool thread that then sits idle. mimalloc (the binary's
/// global allocator) returns freed pages lazily, on that same thread's
/// later allocations, so without this the gateway kept ~75 MiB of dead
/// import memory resident after loading the UT1 categories. Harmless when
/// another allocator is in use (tests): mimalloc's own heap is then empty.
pub fn release_thread_cache() {
    // SAFETY: mi_collect only walks and trims the calling thread's heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
