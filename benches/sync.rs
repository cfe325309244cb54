//! End-to-end sync benchmarks in a throwaway network namespace (root only; otherwise
//! they print one line and do nothing):
//! - `cold_full_sync/N`: render + diff against an empty kernel + encode + commit of N
//!   services × 10 endpoints (targets: 10k < 1 s, 50k < 5 s);
//! - `one_endpoint_added/50000`: with 50k services programmed, one endpoint added to one
//!   service: incremental render + diff + encode + commit (target < 5 ms);
//! - `upstream_shape_nft_f/N`: the same services in upstream kube-proxy's layout (an
//!   inline `numgen … vmap { … }` per service and a chain per endpoint) loaded with
//!   `nft -f`, for the ratio;
//! - and, printed once: the peak heap of the sync path (model, rulesets, transaction,
//!   encoded batch; manifests excluded) for 50k × 10 (target < 300 MiB).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion};
use kproxy::apply::{Base, Options};
use kproxy::backend::netlink::NetlinkBackend;
use kproxy::backend::Backend;
use kproxy::diff::DiffOptions;
use kproxy::health::{HealthChecks, ProxyHealth};
use kproxy::k8s::cache::Cache;
use kproxy::metrics::Metrics;
use kproxy::model::{self, EndpointAddr, Model, ServiceKey};
use kproxy::nft::tx::{Op, TableRef, Transaction};
use kproxy::nft::Family;
use kproxy::render::Renderer;
use kproxy::sync::{SyncConfig, Syncer, Trigger};
use kproxy::testutil::{
    root_bench_filter, synthetic_cluster, synthetic_settings, Counting, InNetns,
};

#[global_allocator]
static ALLOC: Counting = Counting;

fn model_for(n: usize) -> Model {
    let objects = synthetic_cluster(n, 10, false);
    let (m, warnings) = model::build(&objects, &synthetic_settings());
    assert!(warnings.is_empty());
    m
}

fn tables() -> Vec<TableRef> {
    vec![
        TableRef::new(Family::V4, "kproxy"),
        TableRef::new(Family::V6, "kproxy"),
    ]
}

fn delete_tables(b: &mut NetlinkBackend) {
    let present = b.dump().expect("dump");
    let mut tx = Transaction::new();
    for t in tables() {
        if present.table(t.family).is_some() {
            tx.push(Op::DeleteTable { table: t });
        }
    }
    b.apply(&tx).expect("delete tables");
}

/// Render + diff against the (empty) kernel + encode + commit.
fn full_sync(b: &mut NetlinkBackend, m: &Model) {
    let next = Renderer::new().full(m);
    kproxy::apply::apply(b, Base::Kernel, next, &Options::default()).expect("apply");
}

/// `iters` cold full syncs, each after deleting the tables (untimed).
fn timed_cold_syncs(b: &mut NetlinkBackend, m: &Model, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        delete_tables(b);
        let start = Instant::now();
        full_sync(b, m);
        total += start.elapsed();
    }
    total
}

fn cold(c: &mut Criterion) {
    let mut g = c.benchmark_group("cold_full_sync");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    let _ns = InNetns::enter("cold");
    let mut b = NetlinkBackend::new("kproxy").expect("netlink");
    for n in [10_000usize, 50_000] {
        let m = model_for(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &m, |bench, m| {
            bench.iter_custom(|iters| timed_cold_syncs(&mut b, m, iters))
        });
    }
    g.finish();
}

/// With 50k services programmed, add one endpoint to one service (and take it away again
/// in the next iteration, so the state stays the same size).
fn incremental(c: &mut Criterion) {
    let mut g = c.benchmark_group("one_endpoint_added");
    g.sample_size(50);
    let _ns = InNetns::enter("incr");
    let mut b = NetlinkBackend::new("kproxy").expect("netlink");
    let n = 50_000;
    let mut m = model_for(n);
    let mut r = Renderer::new();
    let full = r.full(&m);
    let d = kproxy::diff::diff(&b.dump().expect("dump"), &full, &DiffOptions::default());
    b.apply(&d.tx).expect("initial load");
    drop(full);
    let idx = 12_345;
    let fm = m
        .families
        .iter_mut()
        .find(|f| f.settings.family == Family::V4)
        .unwrap();
    let name = fm.services[idx].name.clone();
    let key: BTreeSet<ServiceKey> = [ServiceKey::new(&name.namespace, &name.name)].into();
    let extra = EndpointAddr {
        ip: "10.250.0.1".parse::<IpAddr>().unwrap(),
        port: 8080,
    };
    let mut added = false;
    g.bench_function(BenchmarkId::from_parameter(n), |bench| {
        bench.iter(|| {
            {
                let fm = m
                    .families
                    .iter_mut()
                    .find(|f| f.settings.family == Family::V4)
                    .unwrap();
                let sp = &mut fm.services[idx];
                if added {
                    sp.cluster_endpoints.retain(|e| *e != extra);
                } else {
                    sp.cluster_endpoints.push(extra);
                }
                added = !added;
            }
            let p = r.update(&m, &key).expect("incremental");
            let applied =
                kproxy::apply::apply(&mut b, Base::Given(p.before), p.after, &Options::default())
                    .expect("apply");
            assert!(applied.stats.ops > 0);
        })
    });
    g.finish();
}

/// Upstream kube-proxy's nftables layout for the same services, as `nft -f` text.
fn upstream_shape(n: usize) -> String {
    let mut s = String::from("table ip kube-proxy {\n");
    s.push_str(
        "\tmap service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }\n\
         \tchain services { ip daddr . meta l4proto . th dport vmap @service-ips; }\n\
         \tchain nat-prerouting { type nat hook prerouting priority -100; jump services; }\n\
         \tchain mark-for-masquerade { meta mark set meta mark | 0x4000; }\n",
    );
    let mut elements = Vec::new();
    for i in 0..n {
        let svc = format!("service-{i:08}-ns/svc-{i}/tcp/http");
        let mut vmap = Vec::new();
        for e in 0..10 {
            let k = i * 10 + e;
            let ip = format!("10.{}.{}.{}", 128 + k / 65000, (k / 250) % 256, k % 250 + 1);
            let ep = format!("endpoint-{i:08}-{e}");
            let _ = writeln!(
                s,
                "\tchain {ep} {{ ip saddr {ip} jump mark-for-masquerade; meta l4proto tcp dnat to {ip}:8080; }}"
            );
            vmap.push(format!("{e} : goto {ep}"));
        }
        let cip = format!("172.16.{}.{}", i / 250, i % 250 + 1);
        let _ = writeln!(
            s,
            "\tchain {svc} {{ ip daddr {cip} tcp dport 80 ip saddr != 10.128.0.0/9 jump mark-for-masquerade; numgen random mod 10 vmap {{ {} }}; }}",
            vmap.join(", ")
        );
        elements.push(format!("{cip} . tcp . 80 : goto {svc}"));
    }
    let _ = writeln!(s, "\tmap service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; elements = {{ {} }} }}", elements.join(", "));
    s.push_str("}\n");
    s
}

fn upstream(c: &mut Criterion) {
    let mut g = c.benchmark_group("upstream_shape_nft_f");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    let _ns = InNetns::enter("upstream");
    let mut b = NetlinkBackend::new("kproxy").expect("netlink");
    for n in [1_000usize, 5_000] {
        let text = upstream_shape(n);
        let file = std::env::temp_dir().join(format!("kproxy-upstream-{n}.nft"));
        std::fs::write(&file, &text).expect("write");
        let m = model_for(n);
        g.bench_with_input(BenchmarkId::new("upstream", n), &file, |bench, file| {
            bench.iter_batched(
                || {
                    let _ = Command::new("nft")
                        .args(["delete", "table", "ip", "kube-proxy"])
                        .output();
                },
                |_| {
                    let o = Command::new("nft")
                        .arg("-f")
                        .arg(file)
                        .output()
                        .expect("nft");
                    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_with_input(BenchmarkId::new("kproxy", n), &m, |bench, m| {
            bench.iter_custom(|iters| timed_cold_syncs(&mut b, m, iters))
        });
        let _ = std::fs::remove_file(&file);
    }
    g.finish();
}

/// User + system CPU time of this thread.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// One cold sync of `n` services, phase by phase (printed once, for the notes).
fn breakdown(n: usize) {
    let _ns = InNetns::enter("phases");
    let mut b = NetlinkBackend::new("kproxy").expect("netlink");
    let m = model_for(n);
    let t = Instant::now();
    let next = Renderer::new().full(&m);
    let render = t.elapsed();
    let t = Instant::now();
    let current = b.dump().expect("dump");
    let dump = t.elapsed();
    let t = Instant::now();
    let d = kproxy::diff::diff(&current, &next, &DiffOptions::default());
    let diff = t.elapsed();
    let t = Instant::now();
    let batch = kproxy::backend::netlink::encode(&d.tx).expect("encode");
    let encode = t.elapsed();
    let t = Instant::now();
    let cpu0 = cpu_time();
    let result = b.apply(&d.tx);
    let apply = t.elapsed();
    let apply_cpu = cpu_time() - cpu0;
    let total = render + dump + diff + apply;
    println!(
        "phases/{n}x10: render {:.0} ms, read-back {:.0} ms, diff {:.0} ms, encode {:.0} ms \
         ({} messages, {:.1} MB), encode+commit {:.0} ms (cpu {:.0} ms) => total {:.0} ms{}",
        render.as_secs_f64() * 1e3,
        dump.as_secs_f64() * 1e3,
        diff.as_secs_f64() * 1e3,
        encode.as_secs_f64() * 1e3,
        batch.messages(),
        batch.len_bytes() as f64 / 1e6,
        apply.as_secs_f64() * 1e3,
        apply_cpu.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        match result {
            Ok(_) => String::new(),
            Err(e) => format!(" FAILED: {e}"),
        }
    );
}

/// With 50k services programmed: commit time of tiny transactions of different kinds, to
/// show where an incremental sync's kernel time goes (printed once).
fn commit_kinds(n: usize) {
    use kproxy::nft::{Element, Rule, Stmt, Value};
    let _ns = InNetns::enter("kinds");
    let mut b = NetlinkBackend::new("kproxy").expect("netlink");
    let m = model_for(n);
    let full = Renderer::new().full(&m);
    let d = kproxy::diff::diff(&b.dump().expect("dump"), &full, &DiffOptions::default());
    b.apply(&d.tx).expect("load");
    let t = TableRef::new(Family::V4, "kproxy");
    let chain = full.tables[0]
        .chains
        .keys()
        .find(|c| c.starts_with("service-"))
        .unwrap()
        .clone();
    let rule = full.tables[0].chains[&chain].rules[0].clone();
    let mut time = |what: &str, ops: Vec<Op>| {
        let tx = Transaction { ops };
        let start = Instant::now();
        b.apply(&tx).expect(what);
        println!(
            "commit_kinds/{n}: {what}: {:.2} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    };
    let elem = |ip: &str| Element::key(vec![Value::Addr(ip.parse().unwrap())]);
    time(
        "add one plain-set element",
        vec![Op::AddElements {
            table: t.clone(),
            set: "cluster-ips".into(),
            elements: vec![elem("10.99.0.1")],
        }],
    );
    time(
        "flush a chain and re-add its dnat rule",
        vec![
            Op::FlushChain {
                table: t.clone(),
                chain: chain.clone(),
            },
            Op::AddRule {
                table: t.clone(),
                chain: chain.clone(),
                rule: rule.clone(),
            },
        ],
    );
    time(
        "add a rule without nat or jumps",
        vec![Op::AddRule {
            table: t.clone(),
            chain: chain.clone(),
            rule: Rule::new(vec![Stmt::Verdict(kproxy::nft::Verdict::Accept)]),
        }],
    );
}

/// Peak heap of the sync path for 50k × 10, measured on the daemon's own path: a
/// [`Syncer`] over the informer cache (the cache itself, like manifests, is the base and
/// excluded) doing its first full sync into an empty namespace — the model built a chunk
/// at a time and dropped once rendered, the ruleset consumed by the diff, each operation
/// dropped once encoded — then a second full sync against what the kernel holds (the
/// hourly resync: a dump of both tables, a full render, an empty transaction).
fn memory() {
    let _ns = InNetns::enter("mem");
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
    let trigger = Trigger::new(health.clone(), metrics.clone());
    let cache = Arc::new(Cache::new(
        &synthetic_settings().hostname,
        trigger,
        metrics.clone(),
    ));
    cache.list_all(synthetic_cluster(50_000, 10, false));
    let mut config = SyncConfig::new(Duration::ZERO, Duration::from_secs(30));
    config.defer_chain_deletes = false;
    let mut syncer = Syncer::new(
        cache.clone(),
        NetlinkBackend::new("kproxy").expect("netlink"),
        synthetic_settings(),
        config.clone(),
        metrics,
        health,
        Arc::new(HealthChecks::default()),
    );
    let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
    let base = Counting::live();
    Counting::reset_peak();
    let cold = syncer.sync(true).expect("cold full sync");
    assert!(cold.operations > 0);
    let peak = Counting::peak() - base;
    let retained = Counting::live().saturating_sub(base);
    Counting::reset_peak();
    let warm = syncer.sync(true).expect("warm full sync");
    assert_eq!(warm.operations, 0, "the kernel already holds it");
    let warm_peak = Counting::peak() - base;
    // A restart: a fresh syncer (fresh renderer) over the programmed kernel adopts what
    // it holds and diffs against it.
    drop(syncer);
    let mut restarted = Syncer::new(
        cache,
        NetlinkBackend::new("kproxy").expect("netlink"),
        synthetic_settings(),
        config,
        Arc::new(Metrics::new()),
        Arc::new(ProxyHealth::new(Duration::from_secs(60))),
        Arc::new(HealthChecks::default()),
    );
    let base = Counting::live();
    Counting::reset_peak();
    let again = restarted.sync(true).expect("restart's full sync");
    assert_eq!(again.operations, 0, "the kernel already holds it");
    let restart_peak = Counting::peak() - base;
    println!(
        "sync_path_peak_heap/50000x10: {:.1} MiB (cold full sync: model, ruleset, transaction, encoded batch; the informer cache excluded)",
        mib(peak)
    );
    println!(
        "  retained after it (renderer, per-port facts, set catalog) {:.1} MiB; peak of a full resync over the programmed kernel (dump + render + diff) {:.1} MiB",
        mib(retained),
        mib(warm_peak)
    );
    println!(
        "  peak of a restart's first full sync over the programmed kernel (adoption read, render, diff) {:.1} MiB",
        mib(restart_peak)
    );
}

criterion_group!(benches, cold, incremental, upstream);

fn main() {
    let Some(filter) = root_bench_filter("sync") else {
        return;
    };
    if filter
        .as_deref()
        .is_none_or(|f| "sync_path_peak_heap".contains(f))
    {
        memory();
    }
    if filter.as_deref().is_none_or(|f| "commit_kinds".contains(f)) {
        commit_kinds(1_000);
        commit_kinds(50_000);
    }
    if filter.as_deref().is_none_or(|f| f.starts_with("phases")) {
        breakdown(10_000);
        if filter.as_deref() != Some("phases10k") {
            breakdown(50_000);
        }
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
