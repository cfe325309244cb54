//! The `kproxy` binary: only the allocator choice and the exit code live here.

/// mimalloc instead of glibc malloc: rendering, diffing and encoding a large ruleset
/// allocate millions of small objects, and glibc spent ~40% of render time consolidating
/// and unlinking free chunks (perf, 50k services).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (libmimalloc-sys does not name every option).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // Pages freed during a full sync go back to the OS at once instead of 10 ms (100 ms
    // for arenas) later: a 50k × 10 sync frees its ruleset while it builds the netlink
    // batch, and the delay let both stay resident. Measured with `kproxy run` at 50k × 10
    // (benches/daemon.rs): peak RSS 621 → 557 MiB, steady 229 → 225 MiB, sync time within
    // noise. `MIMALLOC_PURGE_DELAY` in the environment still wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an option value; called first thing in main,
        // before any thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    std::process::exit(kproxy::cli::main());
}
