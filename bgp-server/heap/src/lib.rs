//! Gives the heap's free pages back to the kernel.
//!
//! glibc keeps memory a program has freed for its next allocations, and returns it only from
//! the top of each heap, past a threshold that grows with the largest block freed so far. After
//! a large transient (a 100,000-route Apply decodes a message of several MiB, sessions encode
//! the table in batches) that leaves megabytes resident that nothing uses until the next such
//! change. `malloc_trim` hands every whole free page back (`MADV_DONTNEED`), wherever it lies.

/// Returns the free pages of every heap to the kernel; whether any were returned. A no-op
/// where the C library is not glibc.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a plain integer (the padding to keep at each heap's top)
        // and touches only the allocator's own state, under its own locks; it is safe to call
        // from any thread at any time.
        #[allow(unsafe_code)]
        let released = unsafe { libc::malloc_trim(0) };
        released != 0
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_in_the_heap_goes_back_to_the_kernel() {
        // Many small blocks (below the mmap threshold, so they live in the heap), every other
        // one kept so the freed pages sit between live ones, where only a trim reaches them.
        let mut blocks: Vec<Vec<u8>> = (0..40_000).map(|_| vec![1u8; 1000]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(64).map(std::mem::take).collect();
        drop(blocks);
        assert!(release_free_memory(), "some pages were free and went back");
        // The kept blocks must live until here, or their pages would be free too.
        std::hint::black_box(&kept);
    }
}
