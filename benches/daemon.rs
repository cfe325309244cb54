//! Daemon benchmarks (need root: each runs in a throwaway network namespace).
//!
//! - `event_to_commit/{end_to_end,kproxy_own}/50000x10`: one endpoint change with 50k
//!   services × 10 endpoints cached and programmed: from the watch event reaching the
//!   informer cache (`Cache::apply`) through the partial sync (objects → model → render →
//!   diff → netlink commit), minSyncPeriod 0, with and without the kernel's commit.
//!   Targets: 5 ms and 1 ms. `…_affinity10pct`: the same with a tenth of the services
//!   on ClientIP affinity, the change in one of them.
//! - printed once: the steady-state RSS of `kproxy run` (a real process, against the
//!   API server stand-in holding 50k services × 10 endpoints) after its first full sync.
//!   Targets (issue 13): steady under 200 MiB, peak (VmHWM) under 400 MiB.
//!
//! Only under `cargo bench --bench daemon` (release build, minutes); `cargo test --benches`
//! runs this binary without `--bench` and it returns at once.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;

use kproxy::backend::netlink::NetlinkBackend;
use kproxy::health::{HealthChecks, ProxyHealth};
use kproxy::k8s::cache::{Cache, Update};
use kproxy::metrics::Metrics;
use kproxy::sync::{SyncConfig, Syncer, Trigger};
use kproxy::testutil::{
    root_bench_filter, synthetic_cluster, synthetic_cluster_mix, synthetic_settings, Counting,
    InNetns,
};

#[global_allocator]
static GLOBAL: Counting = Counting;

const SERVICES: usize = 50_000;

/// A cache holding the synthetic cluster (as after the watchers' first lists), every
/// `affinity_every`-th service with ClientIP affinity (0: none).
fn filled_cache(
    services: usize,
    affinity_every: usize,
    trigger: Arc<Trigger>,
    metrics: Arc<Metrics>,
) -> Arc<Cache> {
    let cache = Arc::new(Cache::new(&synthetic_settings().hostname, trigger, metrics));
    cache.list_all(synthetic_cluster_mix(services, 10, affinity_every));
    cache
}

/// Slice `i` of the synthetic cluster with one extra endpoint (or without it).
fn changed_slice(base: &EndpointSlice, extra: bool, n: usize) -> EndpointSlice {
    let mut s = base.clone();
    if extra {
        let eps = s.endpoints.get_or_insert_with(Vec::new);
        let mut e = eps[0].clone();
        e.addresses = vec![format!("10.250.{}.{}", (n / 250) % 250, n % 250 + 1)];
        eps.push(e);
    }
    s
}

/// One endpoint change of svc-0 (ClientIP affinity when `affinity_every` > 0: svc-0 is
/// every n-th), measured as `{end_to_end,kproxy_own}{suffix}/50000x10`.
fn event_to_commit(c: &mut Criterion, affinity_every: usize, suffix: &str) {
    let _ns = InNetns::enter("daemon");
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
    let trigger = Trigger::new(health.clone(), metrics.clone());
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let base = Counting::live();
    let cache = filled_cache(SERVICES, affinity_every, trigger, metrics.clone());
    let cache_bytes = Counting::live() - base;
    let backend = NetlinkBackend::new("kproxy").expect("netlink");
    let mut config = SyncConfig::new(Duration::ZERO, Duration::from_secs(30));
    config.defer_chain_deletes = false;
    let mut syncer = Syncer::new(
        cache.clone(),
        backend,
        synthetic_settings(),
        config,
        metrics.clone(),
        health,
        Arc::new(HealthChecks::default()),
    );
    let start = Instant::now();
    Counting::reset_peak();
    syncer.sync(true).expect("first full sync");
    println!(
        "first full sync from the cache, {SERVICES}x10{suffix}: {:.2} s; heap: cache {:.1} MiB, \
         live after the sync (cache + renderer + sync state) {:.1} MiB, peak during it {:.1} MiB",
        start.elapsed().as_secs_f64(),
        mib(cache_bytes),
        mib(Counting::live() - base),
        mib(Counting::peak() - base),
    );

    let base = synthetic_cluster_mix(1, 10, affinity_every)
        .slices
        .remove(0);
    let mut n = 0usize;
    let kernel = metrics.kernel_commit_duration.with_label_values(&["IPv4"]);
    let mut g = c.benchmark_group("event_to_commit");
    g.sample_size(50);
    // `end_to_end` includes the kernel's commit (netlink round trip and its validation of
    // the table, which grows with the table); `kproxy_own` is the same runs minus the time
    // from sending the batch to the kernel's acknowledgement.
    for what in ["end_to_end", "kproxy_own"] {
        let id = BenchmarkId::new(format!("{what}{suffix}"), format!("{SERVICES}x10"));
        g.bench_with_input(id, &(), |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut in_kernel = 0.0;
                for _ in 0..iters {
                    n += 1;
                    let slice = changed_slice(&base, n % 2 == 1, n);
                    let k0 = kernel.get_sample_sum();
                    let t = Instant::now();
                    cache.apply(Update::Slice(Event::Apply(slice)));
                    let r = syncer.sync(false).expect("partial sync");
                    total += t.elapsed();
                    in_kernel += kernel.get_sample_sum() - k0;
                    assert!(!r.full && r.operations > 0, "{r:?}");
                }
                match what {
                    "end_to_end" => total,
                    _ => total.saturating_sub(Duration::from_secs_f64(in_kernel)),
                }
            })
        });
    }
    g.finish();
}

/// Runs `kproxy run` against the stand-in with the synthetic cluster and prints its RSS
/// once the first full sync is done and the process is idle.
fn steady_state_rss() {
    use kproxy::testutil::apiserver::ApiServer;
    // This thread lives in the namespace: the stand-in, kproxy and the metrics scrape.
    let ns = InNetns::enter("rss");
    let api = ApiServer::start_in_netns(ns.name()).expect("api server");
    let objects = synthetic_cluster(SERVICES, 10, false);
    let load = Instant::now();
    api.apply_all(&objects.nodes);
    api.apply_all(&objects.services);
    api.apply_all(&objects.slices);
    drop(objects);
    println!(
        "stand-in loaded with {SERVICES} services in {:.1} s",
        load.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            env!("CARGO_BIN_EXE_kproxy"),
            "run",
        ])
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args([
            "--hostname-override=node-a",
            "--cluster-cidr=10.128.0.0/9",
            "--healthz-bind-address=127.0.0.1:10256",
            "--metrics-bind-address=127.0.0.1:10249",
            "--conntrack-max-per-core=0",
        ])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(dir.path().join("kproxy.log")).expect("log file"))
        .spawn()
        .expect("kproxy run");
    // The child of `ip netns exec` is kproxy itself (exec), so its pid is the child's.
    let pid = child.id();
    let started = Instant::now();
    let mut synced_at = None;
    let mut peak = 0u64;
    // RSS samples once synced: steady state is their median over the last 10 s of 30.
    let mut steady: Vec<u64> = Vec::new();
    let mut trail: Vec<String> = Vec::new();
    while started.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(500));
        let metrics = kproxy::testutil::http_get("127.0.0.1:10249", "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        let programmed = metrics
            .lines()
            .find(|l| l.starts_with("kproxy_programmed_service_ports{ip_family=\"IPv4\"}"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0);
        let rss = kproxy::testutil::proc_status_kib(pid, "VmRSS").unwrap_or(0);
        peak = peak.max(rss);
        trail.push(format!(
            "{:.1}s:{}MiB",
            started.elapsed().as_secs_f64(),
            rss / 1024
        ));
        if programmed as usize >= SERVICES && synced_at.is_none() {
            synced_at = Some(started.elapsed());
        }
        if let Some(at) = synced_at {
            let since = started.elapsed() - at;
            if since > Duration::from_secs(20) {
                steady.push(rss);
            }
            if since > Duration::from_secs(30) {
                break;
            }
        }
    }
    if let Ok(log) = std::fs::read_to_string(dir.path().join("kproxy.log")) {
        for l in log
            .lines()
            .filter(|l| l.contains("synced") || l.contains("repaired"))
        {
            println!("  kproxy: {l}");
        }
    }
    let hwm = kproxy::testutil::proc_status_kib(pid, "VmHWM").unwrap_or(0);
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
    println!("  RSS over time: {}", trail.join(" "));
    steady.sort_unstable();
    let mib = |kib: u64| kib as f64 / 1024.0;
    match (synced_at, steady.is_empty()) {
        (Some(at), false) => println!(
            "kproxy_run_steady_state_rss/{SERVICES}x10: median {:.1} MiB, range {:.1}–{:.1} MiB over 20–30 s after the first full sync (reached {:.1} s after start); peak RSS (VmHWM) {:.1} MiB, sampled peak {:.1} MiB",
            mib(steady[steady.len() / 2]),
            mib(steady[0]),
            mib(steady[steady.len() - 1]),
            at.as_secs_f64(),
            mib(hwm),
            mib(peak)
        ),
        _ => println!("kproxy_run_steady_state_rss: kproxy did not finish its first sync in 300 s"),
    }
}

fn main() {
    let Some(filter) = root_bench_filter("daemon") else {
        return;
    };
    let wants = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if wants("kproxy_run_steady_state_rss") {
        steady_state_rss();
    }
    if wants("event_to_commit") {
        let mut c = Criterion::default().configure_from_args();
        event_to_commit(&mut c, 0, "");
        // The mix: a tenth of the services with ClientIP affinity, the change in
        // one of them.
        event_to_commit(&mut c, 10, "_affinity10pct");
        c.final_summary();
    }
}
