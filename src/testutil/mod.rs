//! Test seams (feature `test-util`): synthetic clusters for benchmarks and tests.
//!
//! Owns: generating realistic object sets of any size, (`apiserver`) a local Kubernetes
//! API server stand-in for daemon tests, (`netns`) throwaway network namespaces, and a
//! counting allocator. Must not be used by the daemon or the CLI.

pub mod apiserver;
pub mod fixtures;
pub mod manifests;
mod netns;

pub use netns::{in_netns, netns_path, nft_in, InNetns, Netns};

use crate::model::build::{Objects, Settings};
use fixtures::{ep, node, slice, svc};

/// The node the synthetic clusters are rendered for.
pub const NODE: &str = "node-a";

/// `services` ClusterIP+NodePort services (one TCP port each) with `endpoints` ready
/// endpoints each, a tenth of them on this node; every 10th service has
/// externalTrafficPolicy Local and every 50th ClientIP affinity (when `affinity`).
pub fn synthetic_cluster(services: usize, endpoints: usize, affinity: bool) -> Objects {
    synthetic_cluster_mix(services, endpoints, if affinity { 50 } else { 0 })
}

/// [`synthetic_cluster`] where every `affinity_every`-th service (0: none) has ClientIP
/// affinity (10: a tenth of them, the 50k mix).
pub fn synthetic_cluster_mix(services: usize, endpoints: usize, affinity_every: usize) -> Objects {
    let mut o = Objects::default();
    o.nodes.push(
        node(NODE)
            .pod_cidrs(&["10.128.0.0/24"])
            .internal_ip("192.168.0.10")
            .build(),
    );
    for i in 0..services {
        let name = format!("svc-{i}");
        let ns = format!("ns-{}", i % 100);
        let cip = format!("172.16.{}.{}", i / 250, i % 250 + 1);
        let mut s = svc(&ns, &name)
            .type_("NodePort")
            .cluster_ip(&cip)
            .port("http", 80, "TCP")
            .target_port(8080)
            .node_port(30000 + (i % 2700) as i32);
        if i % 10 == 0 {
            s = s.etp_local();
        }
        if affinity_every > 0 && i % affinity_every == 0 {
            s = s.session_affinity("ClientIP");
        }
        o.services.push(s.build());
        let eps = (0..endpoints).map(|e| {
            let n = i * endpoints + e;
            let ip = format!(
                "10.{}.{}.{}",
                128 + n / 65000,
                (n / 250) % 260 % 256,
                n % 250 + 1
            );
            let on = if e % 10 == 0 {
                NODE.to_string()
            } else {
                format!("node-{}", e % 7)
            };
            ep(&ip).node(&on)
        });
        let sl = slice(&ns, &format!("{name}-abcde"), &name)
            .port("http", 8080, "TCP")
            .endpoints(eps);
        o.slices.push(sl.build());
    }
    o
}

/// Settings matching [`synthetic_cluster`].
pub fn synthetic_settings() -> Settings {
    Settings {
        hostname: NODE.into(),
        cluster_cidrs: vec!["10.128.0.0/9".parse().expect("cidr")],
        ..Settings::default()
    }
}

/// Polls `check` every 10 ms until it holds: how long that took, or `None` once `limit`
/// has passed (latency measurements in kernel tests and benchmarks).
pub fn time_until(
    limit: std::time::Duration,
    mut check: impl FnMut() -> bool,
) -> Option<std::time::Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}

/// A global allocator for tests and benchmarks that counts heap bytes on top of mimalloc
/// (the binary's allocator): `#[global_allocator] static A: Counting = Counting;`.
/// [`Counting::live`] and [`Counting::peak`] count the whole process;
/// [`Counting::thread_live`] only the calling thread's allocations minus its frees, so
/// tests running in parallel do not disturb each other's measurement.
pub struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    static THREAD_LIVE: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
    static THREAD_PEAK: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

impl Counting {
    /// Bytes currently allocated.
    pub fn live() -> usize {
        LIVE.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// The most bytes allocated at once since the last [`Counting::reset_peak`].
    pub fn peak() -> usize {
        PEAK.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// Starts a new peak measurement from the current live bytes.
    pub fn reset_peak() {
        PEAK.store(Counting::live(), std::sync::atomic::Ordering::Relaxed);
    }
    /// Bytes allocated minus bytes freed by the calling thread (negative when it freed
    /// what another thread allocated). Compare two readings.
    pub fn thread_live() -> isize {
        THREAD_LIVE.with(std::cell::Cell::get)
    }
    /// The highest [`Counting::thread_live`] of the calling thread since its last
    /// [`Counting::reset_thread_peak`]: what one computation on this thread held at once.
    pub fn thread_peak() -> isize {
        THREAD_PEAK.with(std::cell::Cell::get)
    }
    /// Starts a new [`Counting::thread_peak`] measurement from the thread's live bytes.
    pub fn reset_thread_peak() {
        THREAD_PEAK.with(|p| p.set(Counting::thread_live()));
    }
}

// SAFETY: every call is forwarded to mimalloc with the caller's layout; the counters are
// only statistics.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        use std::sync::atomic::Ordering::Relaxed;
        // SAFETY: forwarded to mimalloc with the caller's layout.
        let p = unsafe { mimalloc::MiMalloc.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
            // `try_with`: the thread-local may already be gone while a thread exits.
            let _ = THREAD_LIVE.try_with(|c| {
                let now = c.get() + l.size() as isize;
                c.set(now);
                let _ = THREAD_PEAK.try_with(|p| p.set(p.get().max(now)));
            });
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        // SAFETY: `p` was allocated by `alloc` above with this layout.
        unsafe { mimalloc::MiMalloc.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
        let _ = THREAD_LIVE.try_with(|c| c.set(c.get() - l.size() as isize));
    }
}

/// A plain HTTP/1.1 GET in the calling thread's network namespace (no keep-alive):
/// `(status, body)`, or `None` when nothing answers. For tests and benchmarks.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let sa: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// A `/proc/PID/status` field in KiB: `VmRSS` (resident now), `VmHWM` (the peak); `None`
/// once the process is gone. For memory measurements of a `kproxy run` child.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Whether this process runs as root (kernel tests and benchmarks need network namespaces).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// The start of a root-only benchmark binary's `main`: `None` (after one printed line)
/// when it runs in test mode (`cargo test --benches` runs bench targets without
/// `--bench`; these need a release build and minutes) or without root; otherwise the
/// name filter given on the command line, if any.
pub fn root_bench_filter(bench: &str) -> Option<Option<String>> {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "{bench} benchmarks: run with `cargo bench --bench {bench}` (skipped in test mode)"
        );
        return None;
    }
    if !is_root() {
        println!("skipping {bench} benchmarks: they need root for network namespaces");
        return None;
    }
    Some(std::env::args().skip(1).find(|a| !a.starts_with('-')))
}
