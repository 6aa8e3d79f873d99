//! The C allocator, told not to keep an arena per thread.
//!
//! glibc's malloc gives threads their own arenas (up to 8 per core) and keeps what they freed.
//! A publish runs compressors on many short-lived blocking threads: publishing the benchmark
//! fleet peaked at 136 MiB RSS, 76 MiB with two arenas, in the same time (BENCHMARKS.md).

/// Caps glibc's malloc at two arenas, unless the user set `MALLOC_ARENA_MAX` themselves. Call
/// first thing in `main`, before any thread exists. A no-op on other C libraries.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no thread is running yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
