//! The `kproxy` binary: only the allocator choice and the exit code live here.

/// mimalloc instead of glibc malloc: rendering, diffing and encoding a large ruleset
/// allocate millions of small objects, and glibc spent ~40% of render time consolidating
/// and unlinking free chunks (perf, 50k services).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(kproxy::cli::main());
}
