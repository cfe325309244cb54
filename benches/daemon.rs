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
//! - `nft_listener_cost/{nobody,another_listener,kproxy_watch}/{10000,50000}x10`: the
//!   kernel's time for kproxy's cold load with nobody listening to nftables notifications,
//!   with another program listening, and with kproxy's own watch (docs/daemon.md, "Drift").
//! - `kproxy_neighbour/{watch,poll}/…` (`kproxy run` at 50k × 10, with its watch of
//!   nftables notifications and without, as before): CPU while a neighbour commits 74
//!   times in 20 s to its own table (target: nothing measurable), and the time from
//!   `nft flush chain` of a service chain to its repair (target: 1 s).
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

/// `kproxy run` in a throwaway namespace against the stand-in holding the synthetic
/// cluster (50k services × 10 endpoints), its log in a file.
struct Running {
    ns: InNetns,
    _api: kproxy::testutil::apiserver::ApiServer,
    dir: tempfile::TempDir,
    child: std::process::Child,
    pid: u32,
    started: Instant,
}

impl Running {
    /// Loads the stand-in and starts kproxy. This thread lives in the namespace: the
    /// stand-in, kproxy and the metrics scrape.
    fn start(tag: &str, env: &[(&str, &str)]) -> Running {
        use kproxy::testutil::apiserver::ApiServer;
        let ns = InNetns::enter(tag);
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
        let child = Command::new("ip")
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
            .envs(env.iter().copied())
            .stderr(std::fs::File::create(dir.path().join("kproxy.log")).expect("log file"))
            .spawn()
            .expect("kproxy run");
        // The child of `ip netns exec` is kproxy itself (exec), so its pid is the child's.
        let pid = child.id();
        Running {
            ns,
            _api: api,
            dir,
            child,
            pid,
            started: Instant::now(),
        }
    }

    fn metrics(&self) -> String {
        kproxy::testutil::http_get("127.0.0.1:10249", "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The value of the series `name{labels}` exactly as printed.
    fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Whether every service is programmed.
    fn synced(&self) -> bool {
        self.metric("kproxy_programmed_service_ports{ip_family=\"IPv4\"}")
            .is_some_and(|n| n as usize >= SERVICES)
    }

    /// CPU time (user + system) the process used so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the command name (which may hold spaces): state is field 3.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // utime and stime are fields 14 and 15: indexes 11 and 12 after the name.
        let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        Duration::from_millis(ticks * 10)
    }

    /// CPU time per thread name so far (`/proc/PID/task/*/stat`).
    fn cpu_by_thread(&self) -> std::collections::BTreeMap<String, Duration> {
        let mut out = std::collections::BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return out;
        };
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let name = head.split_once('(').map_or("?", |(_, n)| n).to_string();
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
            *out.entry(name).or_default() += Duration::from_millis(ticks * 10);
        }
        out
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kproxy.log")).unwrap_or_default()
    }

    /// Runs `nft ARGS` in the namespace.
    fn nft(&self, args: &[&str]) -> String {
        kproxy::testutil::nft_in(self.ns.name(), args)
    }

    fn stop(mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        let _ = self.child.wait();
    }
}

/// Runs `kproxy run` against the stand-in with the synthetic cluster and prints its RSS
/// once the first full sync is done and the process is idle.
fn steady_state_rss() {
    let mut r = Running::start("rss", &[]);
    let pid = r.pid;
    let mut synced_at = None;
    let mut peak = 0u64;
    // RSS samples once synced: steady state is their median over the last 10 s of 30.
    let mut steady: Vec<u64> = Vec::new();
    let mut trail: Vec<String> = Vec::new();
    while r.started.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(500));
        let programmed = r.synced();
        let rss = kproxy::testutil::proc_status_kib(pid, "VmRSS").unwrap_or(0);
        peak = peak.max(rss);
        trail.push(format!(
            "{:.1}s:{}MiB",
            r.started.elapsed().as_secs_f64(),
            rss / 1024
        ));
        if programmed && synced_at.is_none() {
            synced_at = Some(r.started.elapsed());
        }
        if let Some(at) = synced_at {
            let since = r.started.elapsed() - at;
            if since > Duration::from_secs(20) {
                steady.push(rss);
            }
            if since > Duration::from_secs(30) {
                break;
            }
        }
    }
    for l in r
        .log()
        .lines()
        .filter(|l| l.contains("synced") || l.contains("repaired"))
    {
        println!("  kproxy: {l}");
    }
    let hwm = kproxy::testutil::proc_status_kib(pid, "VmHWM").unwrap_or(0);
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = r.child.wait();
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

/// The machine's load average over the last minute (the machine is shared).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

fn time_until(check: impl FnMut() -> bool) -> Option<Duration> {
    kproxy::testutil::time_until(Duration::from_secs(30), check)
}

/// `kproxy run` at 50k × 10 beside a neighbour (issue 13): the CPU kproxy spends while a
/// neighbour adds one element to its own table 74 times in 20 s (against 20 s of
/// nothing), and the time from `nft flush chain` of one service chain (and from deleting
/// one element of the 50k-element `service-ips` map) to its repair, also right after a
/// burst of neighbour commits. `kproxy_neighbour/{watch,poll}/…` lines: `poll` is kproxy
/// without its watch (`KPROXY_NFT_WATCH=0`), as it was before.
fn neighbours(mode: &str) {
    let env: &[(&str, &str)] = match mode {
        "poll" => &[("KPROXY_NFT_WATCH", "0")],
        _ => &[],
    };
    let r = Running::start("neighbour", env);
    let synced = time_until(|| {
        std::thread::sleep(Duration::from_millis(500));
        r.synced()
    });
    let Some(synced) = synced else {
        println!("kproxy_neighbour: kproxy did not finish its first sync");
        return r.stop();
    };
    println!("  synced {:.1} s after start", synced.as_secs_f64());
    std::thread::sleep(Duration::from_secs(10));

    let idle0 = r.cpu();
    std::thread::sleep(Duration::from_secs(20));
    let idle = r.cpu() - idle0;

    // The neighbour commits over netlink: `nft` spends seconds reading the 50k-service
    // ruleset before each command, and could not commit 74 times in 20 s here.
    use kproxy::backend::{Backend, Touched};
    use kproxy::nft::tx::{Op, TableRef, Transaction};
    use kproxy::nft::{DataType, Element, Family, Protocol, Set, SetData, Value};
    let mut nb = NetlinkBackend::new("kproxy").expect("netlink");
    let own = TableRef::new(Family::V4, "neighbour");
    let neighbour_adds = |nb: &mut NetlinkBackend, ip: String| {
        let e = Element::key(vec![Value::Addr(ip.parse().expect("ip"))]);
        let tx = Transaction {
            ops: vec![Op::AddElements {
                table: own.clone(),
                set: "blocked".into(),
                elements: vec![e],
            }],
        };
        nb.apply(&tx).expect("the neighbour's commit");
    };
    let tx = Transaction {
        ops: vec![
            Op::AddTable {
                table: own.clone(),
                comment: None,
            },
            Op::AddSet {
                table: own.clone(),
                set: Box::new(Set::new("blocked", vec![DataType::Ipv4Addr], SetData::None)),
            },
        ],
    };
    nb.apply(&tx).expect("the neighbour's table");
    let cpu0 = r.cpu();
    let threads0 = r.cpu_by_thread();
    let start = Instant::now();
    for i in 0..74u32 {
        let at = Duration::from_secs(20) * i / 74;
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        neighbour_adds(&mut nb, format!("192.0.2.{}", i + 1));
    }
    std::thread::sleep(Duration::from_secs(20).saturating_sub(start.elapsed()));
    let window = start.elapsed();
    let busy = r.cpu() - cpu0;
    let by_thread: Vec<String> = r
        .cpu_by_thread()
        .into_iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.saturating_sub(threads0.get(&n).copied().unwrap_or_default()),
            )
        })
        .filter(|(_, t)| !t.is_zero())
        .map(|(n, t)| format!("{n} {:.2} s", t.as_secs_f64()))
        .collect();
    println!(
        "kproxy_neighbour/{mode}/cpu_74_commits_in_20s/{SERVICES}x10: {:.2} s of CPU in {:.1} s (idle 20 s: {:.2} s); load {}",
        busy.as_secs_f64(),
        window.as_secs_f64(),
        idle.as_secs_f64(),
        load()
    );
    println!("  by thread: {}", by_thread.join(", "));
    println!(
        "  full drift checks {:?}, object checks {:?}, repairs {:?}, neighbour commits seen {:?}",
        r.metric("kproxy_drift_checks_total{scope=\"full\"}"),
        r.metric("kproxy_drift_checks_total{scope=\"objects\"}"),
        r.metric("kproxy_drift_repairs_total"),
        r.metric("kproxy_foreign_nftables_commits_total{tables=\"other\"}"),
    );

    let chains: Vec<String> = r
        .nft(&["list", "chains", "ip"])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("chain ")?.strip_suffix(" {"))
        .filter(|c| c.starts_with("service-"))
        .take(3)
        .map(str::to_string)
        .collect();
    // The drift itself over netlink too, timed from its commit to kproxy's next commit
    // (the generation moving again; nothing else commits meanwhile), then the object read
    // back to check it.
    let table = TableRef::new(Family::V4, "kproxy");
    let drift = |nb: &mut NetlinkBackend,
                 what: &str,
                 op: Op,
                 object: Touched,
                 repaired: &dyn Fn(&kproxy::nft::Ruleset) -> bool| {
        let tx = Transaction { ops: vec![op] };
        let before = nb.generation().expect("generation");
        nb.apply(&tx).expect("the neighbour's commit");
        // Two commits on: the drift's and kproxy's repair.
        let took = time_until(|| {
            nb.generation()
                .is_ok_and(|now| now.wrapping_sub(before) >= 2)
        });
        let ok = repaired(&nb.dump_objects(&object).expect("read back"));
        println!(
            "kproxy_neighbour/{mode}/{what}_to_repair/{SERVICES}x10: {} ({}); load {}",
            took.map_or("no commit in 30 s".into(), |d| format!(
                "{:.0} ms",
                d.as_secs_f64() * 1e3
            )),
            if ok { "repaired" } else { "NOT repaired" },
            load()
        );
    };
    let flush = |chain: &str| Op::FlushChain {
        table: table.clone(),
        chain: chain.to_string(),
    };
    let chain_object = |chain: &str| Touched {
        chains: [(Family::V4, chain.to_string())].into(),
        ..Touched::default()
    };
    for (what, chain) in [("flush_chain", &chains[0]), ("flush_chain", &chains[1])] {
        let c = chain.clone();
        drift(
            &mut nb,
            what,
            flush(chain),
            chain_object(chain),
            &move |rs| !rs.tables[0].chains[&c].rules.is_empty(),
        );
    }
    // Right after a burst of neighbour commits.
    for i in 0..74u32 {
        neighbour_adds(&mut nb, format!("198.51.100.{}", i + 1));
    }
    let c = chains[2].clone();
    drift(
        &mut nb,
        "flush_chain_after_a_burst",
        flush(&chains[2]),
        chain_object(&chains[2]),
        &move |rs| !rs.tables[0].chains[&c].rules.is_empty(),
    );
    // One element of the table-wide dispatch map (50k elements): every port's
    // table-wide elements are rendered, the map read back whole.
    let key = vec![
        Value::Addr("172.16.0.1".parse().expect("ip")),
        Value::Proto(Protocol::Tcp),
        Value::Port(80),
    ];
    let k = key.clone();
    drift(
        &mut nb,
        "delete_service_ips_element",
        Op::DeleteElements {
            table: table.clone(),
            set: "service-ips".into(),
            keys: vec![key],
        },
        Touched {
            sets: [(Family::V4, "service-ips".to_string())].into(),
            ..Touched::default()
        },
        &move |rs| {
            rs.tables[0].sets["service-ips"]
                .elements
                .keys()
                .any(|e| *e == k)
        },
    );
    for l in r
        .log()
        .lines()
        .filter(|l| l.contains("repaired") || l.contains("lost"))
    {
        println!("  kproxy: {l}");
    }
    r.stop();
}

/// What listening to nftables notifications costs kproxy's own large commits: the
/// kernel's commit time (send to acknowledgement) of a cold load of the synthetic
/// cluster (10k and 50k services × 10 endpoints) with nobody listening, with another
/// program listening (the kernel then builds a message per object and element), and with
/// kproxy's own watch (which does not listen during its large commits).
/// `nft_listener_cost/…` lines, the median of 3 loads each.
fn listener_cost() {
    use kproxy::apply::{self, Base, Options};
    use kproxy::backend::Backend;
    let _ns = InNetns::enter("listener");
    for services in [10_000, 50_000] {
        let objects = synthetic_cluster(services, 10, false);
        let (model, _) = kproxy::model::build(&objects, &synthetic_settings());
        drop(objects);
        let rs = kproxy::render::render(&model);
        drop(model);
        for mode in ["nobody", "another_listener", "kproxy_watch"] {
            let mut b = NetlinkBackend::new("kproxy").expect("netlink");
            let mut other = NetlinkBackend::new("other").expect("netlink");
            match mode {
                "another_listener" => {
                    other.watch(Box::new(|| {})).expect("watch");
                }
                "kproxy_watch" => {
                    b.watch(Box::new(|| {})).expect("watch");
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(200));
            let mut times = Vec::new();
            for _ in 0..3 {
                apply::cleanup(&mut b, &kproxy::render::own_tables()).expect("cleanup");
                let a = apply::apply(
                    &mut b,
                    Base::Given(Default::default()),
                    rs.clone(),
                    &Options::default(),
                )
                .expect("load");
                times.push(a.commit_elapsed);
            }
            times.sort();
            println!(
                "nft_listener_cost/{mode}/{services}x10: commit {:.2} s (runs {:?}); load {}",
                times[1].as_secs_f64(),
                times
                    .iter()
                    .map(|t| format!("{:.2}", t.as_secs_f64()))
                    .collect::<Vec<_>>(),
                load()
            );
            if let Some(w) = b.drift().or_else(|| other.drift()) {
                println!(
                    "  watch saw: lost {:?}, other tables {}, kproxy's {}",
                    w.lost, w.other_tables, w.kproxy_tables
                );
            }
        }
        apply::cleanup(
            &mut NetlinkBackend::new("kproxy").expect("netlink"),
            &kproxy::render::own_tables(),
        )
        .expect("cleanup");
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
    if wants("nft_listener_cost") {
        listener_cost();
    }
    for mode in ["watch", "poll"] {
        if wants(&format!("kproxy_neighbour/{mode}")) {
            neighbours(mode);
        }
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
