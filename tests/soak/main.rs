//! Tier 4: the soak test (issue 13). `kproxy run` in the node namespace of a throwaway
//! topology, against the API server stand-in holding thousands of services, under
//! continuous churn (endpoints added, removed and flipping readiness at a fixed rate;
//! services created and deleted), while a neighbour commits to its own table
//! (`table inet neighbour`) every 100 ms, and at seeded random moments someone flushes a
//! kproxy service chain, the API server drops every watch, answers 410 (compaction), goes
//! down or answers slowly, and kproxy is killed with SIGKILL (right after a big change
//! reached the stand-in, so often mid-sync, and during a restart's first sync) and
//! restarted.
//!
//! At the end it asserts:
//! - every change reached the kernel: each one is seen in the kernel's own nftables
//!   notifications (`kernel`), within the settle bound once churn stops;
//! - the kernel equals a render of the final objects: `kproxy apply --dry-run` against
//!   the stand-in would send 0 operations (rendered over the kernel's block placement, as
//!   the daemon renders; `kproxy diff --node` is run too and must agree);
//! - real connections reach exactly the ready pods of the services that point at the
//!   topology's pods (their readiness churns too);
//! - kproxy's RSS is flat over the second half of its last life (growth < 5%);
//! - no transaction failed (`…_nftables_sync_failures_total` of every life, and its log);
//! - the neighbour's table is byte-identical to what it wrote (its listing equals the
//!   listing of the same table written at once into a fresh namespace).
//!
//! It prints a summary: duration, changes by kind, faults by kind, watch-event → commit
//! latency percentiles (changes during which no fault was open, and the others), flush →
//! repair latency, kproxy's own `network_programming_duration_seconds`, the RSS curve, the
//! final diff. Drift repairs are counted, not asserted (the neighbour's commits may cause
//! them).
//!
//! Forms: the short one is the default (CI: about a minute on 2 cores, debug build; sized
//! in `plan`). The long one, on demand, in a release build:
//! `KPROXY_SOAK=long cargo test --release --features test-util --test soak -- --nocapture`
//! (50k services × 10 endpoints, 25 minutes of churn). `KPROXY_SOAK_SECS`,
//! `KPROXY_SOAK_SERVICES`, `KPROXY_SOAK_ENDPOINTS`, `KPROXY_SOAK_RATE` (endpoint changes
//! per second) and `KPROXY_SOAK_SEED` (printed at the start) override either form. Needs
//! root; elsewhere (CI unset) it prints one line and skips.

#[path = "../common/mod.rs"]
mod common;

mod cluster;
mod kernel;
mod neighbour;
mod nl;
mod plan;
mod report;
mod run;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Cluster, Svc, REAL_PODS, REAL_SERVICES};
use common::daemon::{cluster_ip, pods, reached, service, Setup, NODE};
use common::topology::cidr;
use kernel::{run_events, Ledger};
use kproxy::nft::Family;
use neighbour::NeighbourTable;
use plan::{Plan, Rng};
use report::*;
use run::{schedule, Soak};

/// The synthetic cluster of the plan, in the stand-in.
fn load(s: &Setup, plan: &Plan, rng: &mut Rng) -> Cluster {
    let mut cluster = Cluster::new(plan.endpoints);
    for _ in 0..plan.services {
        let svc = cluster.new_service(rng);
        cluster.svcs.push(svc);
    }
    let services: Vec<_> = cluster.svcs.iter().map(Svc::service).collect();
    s.api.apply_all(&services);
    drop(services);
    let slices: Vec<_> = cluster.svcs.iter().map(Svc::slice).collect();
    s.api.apply_all(&slices);
    cluster
}

fn kproxy_flags(s: &Setup) -> [String; 3] {
    [
        format!("--kubeconfig={}", s.kubeconfig.display()),
        format!("--hostname-override={NODE}"),
        format!(
            "--cluster-cidr={},{}",
            cidr(Family::V4, "cluster"),
            cidr(Family::V6, "cluster")
        ),
    ]
}

/// `kproxy apply --dry-run` against the stand-in, in the node namespace, until it would
/// send nothing (at most 30 s): the operations it would send at each attempt.
fn final_diff(s: &Setup, failures: &mut Vec<String>) -> Vec<Option<usize>> {
    let flags = kproxy_flags(s);
    let mut attempts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut args = vec!["apply", "--dry-run"];
        args.extend(flags.iter().map(String::as_str));
        let o = s.t.node.exec(env!("CARGO_BIN_EXE_kproxy"), &args);
        let err = String::from_utf8_lossy(&o.stderr);
        let ops = err
            .split("would send ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok());
        attempts.push(ops);
        if ops == Some(0) {
            return attempts;
        }
        if Instant::now() > deadline {
            let out = String::from_utf8_lossy(&o.stdout);
            let head: Vec<&str> = out.lines().take(40).collect();
            failures.push(format!(
                "the kernel differs from a render of the final objects: {ops:?} operations\n{err}\n{}",
                head.join("\n")
            ));
            return attempts;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `kproxy diff --node` against the stand-in: its exit code and first line.
fn node_diff(s: &Setup) -> (Option<i32>, String) {
    let flags = kproxy_flags(s);
    let mut args = vec!["diff", "--node"];
    args.extend(flags.iter().map(String::as_str));
    let o = s.t.node.exec(env!("CARGO_BIN_EXE_kproxy"), &args);
    let out = String::from_utf8_lossy(&o.stdout);
    (
        o.status.code(),
        out.lines().next().unwrap_or("").to_string(),
    )
}

/// New connections to each real-pod service (both families) reach exactly its ready
/// pods: never another, and each of them within 15 s of attempts. The attempts made.
fn connections(s: &Setup, real_ready: &[Vec<bool>], failures: &mut Vec<String>) -> usize {
    let mut attempts = 0;
    for (k, ready) in real_ready.iter().enumerate() {
        let ready: Vec<&str> = REAL_PODS
            .iter()
            .zip(ready)
            .filter(|(_, r)| **r)
            .map(|(p, _)| *p)
            .collect();
        for f in [Family::V4, Family::V6] {
            let want = pods(f, &ready);
            let ip = cluster_ip(f, 20 + k as u8);
            let mut got: BTreeSet<IpAddr> = BTreeSet::new();
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let r = reached(&s.t, &ip);
                attempts += 8;
                if let Some(wrong) = r.iter().find(|a| !want.contains(a)) {
                    failures.push(format!(
                        "real-{k} ({ip}) reached {wrong}, not one of its ready pods {want:?}"
                    ));
                    break;
                }
                got.extend(r);
                if got.len() == want.len() {
                    break;
                }
                if Instant::now() > deadline {
                    failures.push(format!(
                        "real-{k} ({ip}): reached only {got:?} of {want:?} within 15 s"
                    ));
                    break;
                }
            }
        }
    }
    attempts
}

/// The neighbour's table in the kernel, listed, equals the same table written at once
/// into a fresh namespace, listed.
fn neighbour_intact(s: &Setup, table: &NeighbourTable, failures: &mut Vec<String>) -> bool {
    let listed =
        s.t.node
            .exec("nft", &["list", "table", "inet", "neighbour"]);
    let reference = common::Netns::new("soak-ref");
    let o = reference.exec("nft", &[&table.script()]);
    assert!(o.status.success(), "reference table: {o:?}");
    let expected = reference.exec("nft", &["list", "table", "inet", "neighbour"]);
    let same = listed.status.success() && listed.stdout == expected.stdout;
    if !same {
        failures.push(format!(
            "the neighbour's table changed:\n--- written\n{}\n--- in the kernel\n{}{}",
            String::from_utf8_lossy(&expected.stdout),
            String::from_utf8_lossy(&listed.stdout),
            String::from_utf8_lossy(&listed.stderr)
        ));
    }
    same
}

#[test]
fn soak_churn_faults_and_neighbours_end_in_the_right_state() {
    let Some(s) = common::daemon::setup_for("soak") else {
        return;
    };
    let plan = Plan::from_env();
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "soak ({} form, {build} build): {} services × {} endpoints, {} s of churn, seed {:#x} (KPROXY_SOAK_SEED={:#x} repeats it)",
        plan.form,
        plan.services,
        plan.endpoints,
        plan.churn.as_secs(),
        plan.seed,
        plan.seed
    );
    let t0 = Instant::now();
    let mut rng = Rng(plan.seed);
    let cluster = load(&s, &plan, &mut rng);
    let loaded = t0.elapsed();

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let pid = Arc::new(AtomicU32::new(0));
    let stop_sampler = Arc::new(AtomicBool::new(false));
    let sampler = run_sampler(
        s.t.node.name.clone(),
        pid.clone(),
        samples.clone(),
        stop_sampler.clone(),
    );
    let mut soak = Soak::new(&plan, &s, cluster, ledger.clone(), samples.clone(), pid);
    for k in 0..REAL_SERVICES {
        s.api
            .apply(&service(&format!("real-{k}"), 20 + k, None).build());
        for sl in soak.real_slices(k as usize) {
            s.api.apply(&sl);
        }
    }
    let first_sync = soak.first_sync();

    // From here on, the kernel's notifications and the neighbour.
    let stop_events = Arc::new(AtomicBool::new(false));
    let events = run_events(s.t.node.name.clone(), ledger.clone(), stop_events.clone());
    let o = s.t.node.exec("nft", &[&NeighbourTable::create()]);
    assert!(o.status.success(), "the neighbour's table: {o:?}");
    let stop_neighbour = Arc::new(AtomicBool::new(false));
    let neighbour = neighbour::run(
        s.t.node.name.clone(),
        plan.seed ^ 0xbeef,
        stop_neighbour.clone(),
    );
    let faults = schedule(&plan, &mut rng);
    println!(
        "soak: stand-in loaded in {:.1} s; kproxy's first sync took {:.1} s; faults at {}",
        loaded.as_secs_f64(),
        first_sync.as_secs_f64(),
        faults
            .iter()
            .map(|(t, k)| format!("{:.1}s {k:?}", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let churned = soak.churn(&faults);
    let churn_end = Instant::now();
    let settled = soak.settle();
    stop_neighbour.store(true, Ordering::SeqCst);
    let nb = neighbour.join().expect("neighbour thread");

    // Every change reached the kernel.
    let mut failures: Vec<String> = Vec::new();
    {
        let l = ledger.lock().unwrap();
        if !l.pending.is_empty() || !l.flushes.is_empty() {
            let mut sample: Vec<String> = l
                .pending
                .values()
                .take(10)
                .map(|p| format!("{} ({:.1?} ago)", p.what, p.applied.elapsed()))
                .collect();
            sample.extend(l.flushes.keys().take(5).map(|c| format!("flushed {c}")));
            failures.push(format!(
                "{} changes and {} flushed chains never reached the kernel within {:?} after churn stopped (notification trouble: {:?}), e.g. {sample:#?}",
                l.pending.len(),
                l.flushes.len(),
                plan.settle,
                l.trouble
            ));
        }
    }
    let checks = Instant::now();
    let diff_attempts = final_diff(&s, &mut failures);
    let diff_took = checks.elapsed();
    let (node_diff_code, node_diff_line) = node_diff(&s);
    let node_diff_took = checks.elapsed() - diff_took;
    if node_diff_code != Some(0) {
        failures.push(format!(
            "kproxy diff --node disagrees: exit {node_diff_code:?}, {node_diff_line}"
        ));
    }
    let connections_start = Instant::now();
    let connection_attempts = connections(&s, &soak.real_ready, &mut failures);
    let connections_took = connections_start.elapsed();
    let neighbour_ok = neighbour_intact(&s, &nb.table, &mut failures);
    if !nb.errors.is_empty() {
        failures.push(format!(
            "the neighbour's commits failed: {:?}",
            &nb.errors[..nb.errors.len().min(5)]
        ));
    }

    // Stop: the sampler first (the last life's RSS ends here), then kproxy, cleanly.
    std::thread::sleep(Duration::from_secs(1));
    stop_sampler.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler");
    stop_events.store(true, Ordering::SeqCst);
    events.join().expect("notification thread");
    let last = soak.lives.current.take().expect("kproxy running");
    let (last_pid, last_log, last_started) = (last.pid(), last.log(), soak.lives.started);
    let total = t0.elapsed();
    last.stop();

    // No transaction failed: every life's last metrics, and every life's log.
    let samples = samples.lock().unwrap();
    let pids: Vec<u32> = soak
        .lives
        .done
        .iter()
        .map(|(p, ..)| *p)
        .chain([last_pid])
        .collect();
    let metric_failures: f64 = pids
        .iter()
        .filter_map(|p| samples.last_metrics.get(p))
        .map(|m| metric_sum(m, FAILURES))
        .sum();
    let logs = log_counts(
        soak.lives
            .done
            .iter()
            .map(|(.., log)| log.as_str())
            .chain([last_log.as_str()]),
    );
    // A failure logged while a chain the test flushed was unrepaired, because kproxy's
    // tables kept changing under its read, is the flush's doing.
    let (injected, not_injected): (Vec<&String>, Vec<&String>) =
        logs.failures.iter().partition(|l| {
            l.split_whitespace()
                .next()
                .and_then(kproxy::k8s::cache::parse_rfc3339)
                .is_some_and(|at| soak.injected_failure(at, l))
        });
    let injected_syncs = injected
        .iter()
        .filter(|l| l.contains("sync failed"))
        .count();
    if metric_failures > injected_syncs as f64 || !not_injected.is_empty() {
        failures.push(format!(
            "transactions failed: {metric_failures} counted in {FAILURES}; log: {not_injected:#?}"
        ));
    }

    // RSS: flat over the second half of the last life, as long as the churn went on.
    let (rss_line, growth) = rss_second_half(&samples, last_pid, last_started, churn_end);
    match growth {
        Some(g) if g < plan.rss_limit => {}
        _ => failures.push(format!(
            "RSS not flat (limit {:+.0}%): {rss_line}",
            plan.rss_limit * 100.0
        )),
    }

    // Latency: changes during which no fault was open, and the others.
    let l = ledger.lock().unwrap();
    let disturbed = |a: Instant, b: Instant| {
        soak.windows
            .iter()
            .any(|w| w.start <= b && w.end.unwrap_or(b) >= a)
    };
    let (mut calm, mut stormy, mut bursts) = (Vec::new(), Vec::new(), Vec::new());
    let mut by_change: HashMap<kernel::Change, Vec<Duration>> = HashMap::new();
    for x in &l.seen {
        let d = x.seen.saturating_duration_since(x.applied);
        if x.burst {
            bursts.push(d);
            continue;
        }
        by_change.entry(x.change).or_default().push(d);
        if disturbed(x.applied, x.seen) {
            stormy.push(d);
        } else {
            calm.push(d);
        }
    }
    let repairs: Vec<Duration> = l.repairs.iter().map(|(a, b)| *b - *a).collect();
    let last_metrics = samples
        .last_metrics
        .get(&last_pid)
        .cloned()
        .unwrap_or_default();

    // The summary.
    let mut out = Vec::new();
    out.push(format!(
        "soak summary ({} form, {build} build, seed {:#x}): {} services × {} endpoints (+{} on real pods); {:.0} s in all = load {:.1} s + first sync {:.1} s + churn {:.0} s + settle {:.1} s + checks",
        plan.form,
        plan.seed,
        plan.services,
        plan.endpoints,
        REAL_SERVICES,
        total.as_secs_f64(),
        loaded.as_secs_f64(),
        first_sync.as_secs_f64(),
        churned.as_secs_f64(),
        settled.as_secs_f64()
    ));
    let mut applied: Vec<_> = soak.applied.iter().collect();
    applied.sort();
    out.push(format!(
        "  changes applied: {} ({}); {} services at the end; API resourceVersion {}; watch events received by the last life: {}",
        soak.applied.values().sum::<usize>(),
        applied
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        soak.cluster.svcs.len(),
        s.api.resource_version(),
        metric_sum(&last_metrics, "kproxy_watch_events_total")
    ));
    let mut f: Vec<_> = soak.faults.iter().collect();
    f.sort();
    out.push(format!(
        "  faults injected: {}; API down {:.1} s in all",
        f.iter()
            .map(|(k, v)| format!("{} ×{v}", k.label()))
            .collect::<Vec<_>>()
            .join("; "),
        soak.outage_total.as_secs_f64()
    ));
    out.push(format!(
        "  fault windows (from the fault until kproxy is back): {}",
        soak.windows_summary()
    ));
    out.push(format!(
        "  kills after a big change (its tracked changes, seen in the kernel before the kill): {:?}; start-up kills (the victim had synced): {:?}",
        soak.kill_landings, soak.startup_landings
    ));
    out.push(format!(
        "  neighbour: {} element commits + {} rule replacements in {:.0} s ({:.1} commits/s), {} elements at the end, table byte-identical: {neighbour_ok}",
        nb.element_commits,
        nb.notes_commits,
        nb.elapsed.as_secs_f64(),
        (nb.element_commits + nb.notes_commits) as f64 / nb.elapsed.as_secs_f64(),
        nb.table.elements()
    ));
    out.push(format!(
        "  kernel transactions seen: kproxy {}, others {}; notifications {}; kproxy's logs: {} full syncs, {} partial, {} drift repairs",
        l.kproxy_commits, l.other_commits, l.messages, logs.full, logs.partial, logs.repairs
    ));
    out.push(format!(
        "  watch-event → commit ({} of {} tracked changes seen in the kernel; a fault is open from its injection until kproxy synced again after a kill, or the stand-in has as many watches open as before):",
        l.seen.len(),
        l.seen.len() + l.pending.len()
    ));
    out.push(format!("    no fault open:  {}", percentiles(calm)));
    out.push(format!("    across a fault: {}", percentiles(stormy)));
    out.push(format!(
        "    big changes (applied at once before a kill; not in the lines above or below): {}",
        percentiles(bursts)
    ));
    let mut kinds: Vec<_> = by_change.into_iter().collect();
    kinds.sort_by_key(|(k, _)| *k);
    for (k, v) in kinds {
        out.push(format!("    {:<15} {}", format!("{k:?}:"), percentiles(v)));
    }
    out.push(format!("  flush → repaired: {}", percentiles(repairs)));
    out.push(format!(
        "  kproxy's network_programming_duration_seconds (last life, IPv4): {}",
        programming_histogram(&last_metrics)
    ));
    out.push(format!(
        "  RSS: {rss_line} (limit {:+.0}%)",
        plan.rss_limit * 100.0
    ));
    let mut lives = Vec::new();
    for (p, started, ended, _) in &soak.lives.done {
        lives.push(format!(
            "pid {p} {:.0} s (sampled peak {:.1} MiB, VmHWM {:.1} MiB, killed)",
            (*ended - *started).as_secs_f64(),
            mib(rss_peak(&samples, *p)),
            mib(samples.hwm_kib.get(p).copied().unwrap_or(0))
        ));
    }
    lives.push(format!(
        "pid {last_pid} {:.0} s (sampled peak {:.1} MiB, VmHWM {:.1} MiB, stopped)",
        last_started.elapsed().as_secs_f64(),
        mib(rss_peak(&samples, last_pid)),
        mib(samples.hwm_kib.get(&last_pid).copied().unwrap_or(0))
    ));
    out.push(format!("  lives: {}", lives.join("; ")));
    out.push(format!(
        "  last life's RSS (MiB): {}",
        rss_curve(&samples, last_pid, last_started, 20)
    ));
    out.push(format!(
        "  failed transactions: {metric_failures} (metrics), {} (logs: {} of them reads that raced an injected flush)",
        logs.failures.len(),
        injected.len()
    ));
    out.push(format!(
        "  final diff: `kproxy apply --dry-run` would send {:?} operations (attempts {:?}, {:.1} s); `kproxy diff --node`: exit {node_diff_code:?}, {node_diff_line:?} ({:.1} s)",
        diff_attempts.last().copied().flatten(),
        diff_attempts,
        diff_took.as_secs_f64(),
        node_diff_took.as_secs_f64()
    ));
    out.push(format!(
        "  connections: {REAL_SERVICES} real-pod services × 2 families, {connection_attempts} attempts ({:.1} s)",
        connections_took.as_secs_f64()
    ));
    println!("{}", out.join("\n"));
    assert!(failures.is_empty(), "soak failed:\n{}", failures.join("\n"));
}
