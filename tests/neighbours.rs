//! kproxy beside other programs that use nftables (issue 13, "Neighbours on the same host").
//!
//! Tier 2, the backend's watch of the kernel's change notifications in a throwaway
//! namespace with `nft` as the neighbour: kproxy's own commits say nothing, a neighbour's
//! commits to its own table are counted and nothing else, a flushed chain, a deleted
//! element and a deleted table of kproxy's are named exactly, only the touched objects
//! are read back, and a neighbour's commit made while kproxy committed unheard (a large
//! commit) is never lost silently.
//!
//! Tier 4, `kproxy run` (`common::daemon`): a neighbour committing to its own table in a
//! tight loop while kproxy syncs API changes costs kproxy no repair and no read of its
//! tables, and the neighbour's table stays exactly as written; a kproxy chain flushed
//! (and a map element deleted) right after kproxy's commit is repaired within a second,
//! by reading back that object alone, and real connections work again.
//!
//! Needs root; elsewhere (CI unset) each test prints one line and skips.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::*;
use common::{kernel_tests_enabled, Netns};
use kproxy::apply::{self, Base, Options};
use kproxy::backend::netlink::NetlinkBackend;
use kproxy::backend::{Backend, Watched};
use kproxy::nft::{Family, Ruleset, Value};

/// The bound for repairing a drifted chain.
const REPAIR_BOUND: Duration = Duration::from_secs(1);

/// The synthetic cluster's ruleset with `services` services × 10 endpoints.
fn rendered(services: usize) -> Ruleset {
    let objects = kproxy::testutil::synthetic_cluster(services, 10, false);
    let (model, _) = kproxy::model::build(&objects, &kproxy::testutil::synthetic_settings());
    kproxy::render::render(&model)
}

use kproxy::testutil::nft_in as nft;

/// Runs `f` with a watching backend created inside a throwaway namespace (`tag`), and
/// the namespace's name; `None` when kernel tests are off.
fn in_watching_backend(
    test: &str,
    f: impl FnOnce(&mut NetlinkBackend, &str) + Send + 'static,
) -> Option<()> {
    if !kernel_tests_enabled(test) {
        return None;
    }
    let ns = Netns::new("nb");
    let name = ns.name.clone();
    ns.run_in(move || {
        let mut b = NetlinkBackend::new("kproxy").expect("netlink");
        f(&mut b, &name)
    });
    Some(())
}

/// Adds what `w` saw to `all`.
fn merge(all: &mut Watched, w: Watched) {
    all.touched.merge(w.touched);
    all.lost = all.lost.take().or(w.lost);
    all.kproxy_tables += w.kproxy_tables;
    all.other_tables += w.other_tables;
}

/// What the watch reports within `wait`, or until `done` says enough was seen.
fn watched(b: &mut NetlinkBackend, wait: Duration, done: impl Fn(&Watched) -> bool) -> Watched {
    let mut all = Watched::default();
    let deadline = Instant::now() + wait;
    loop {
        merge(&mut all, b.drift().expect("watching"));
        if done(&all) || Instant::now() > deadline {
            return all;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn first_service_chain(rs: &Ruleset) -> String {
    rs.tables[0]
        .chains
        .keys()
        .find(|n| n.starts_with("service-"))
        .expect("a service chain")
        .clone()
}

#[test]
fn the_watch_tells_kproxys_commits_from_others_and_names_what_they_touched() {
    let test = "neighbours::the_watch_names_what_others_touched";
    in_watching_backend(test, |b, name| {
        let nft = |args: &[&str]| nft(name, args);
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = wakes.clone();
        let wake = move || {
            w.fetch_add(1, Ordering::SeqCst);
        };
        assert!(b.watch(Box::new(wake)).expect("watch"));
        let rs = rendered(20);
        apply::apply(b, Base::Kernel, rs.clone(), &Options::default()).expect("load");

        // kproxy's own commit: nothing to report, nobody woken.
        let w = watched(b, Duration::from_millis(500), |_| false);
        assert_eq!(w, Watched::default());
        assert_eq!(wakes.load(Ordering::SeqCst), 0);

        // A neighbour's three commits to its own table: counted, nothing else.
        nft(&["add", "table", "inet", "neighbour"]);
        nft(&["add set inet neighbour blocked { type ipv4_addr; }"]);
        nft(&["add element inet neighbour blocked { 192.0.2.1, 192.0.2.2 }"]);
        let w = watched(b, Duration::from_secs(5), |w| w.other_tables >= 3);
        assert_eq!((w.other_tables, w.kproxy_tables), (3, 0), "{w:?}");
        assert!(w.touched.is_empty() && w.lost.is_none(), "{w:?}");
        assert_eq!(wakes.load(Ordering::SeqCst), 0, "a neighbour woke kproxy");

        // A flushed chain of kproxy's and an element deleted from one of its sets: named
        // exactly, with who did it.
        let chain = first_service_chain(&rs);
        nft(&["flush", "chain", "ip", "kproxy", &chain]);
        let cluster_ip = match rs.tables[0].sets["cluster-ips"].elements.iter().next() {
            Some(e) => match &e.key[0] {
                Value::Addr(a) => a.to_string(),
                v => panic!("not an address: {v:?}"),
            },
            None => panic!("no ClusterIP"),
        };
        nft(&[
            "delete",
            "element",
            "ip",
            "kproxy",
            "cluster-ips",
            &format!("{{ {cluster_ip} }}"),
        ]);
        let w = watched(b, Duration::from_secs(5), |w| w.kproxy_tables >= 2);
        assert_eq!(w.kproxy_tables, 2, "{w:?}");
        assert_eq!(
            w.touched.chains,
            BTreeSet::from([(Family::V4, chain.clone())])
        );
        assert_eq!(
            w.touched.sets,
            BTreeSet::from([(Family::V4, "cluster-ips".to_string())])
        );
        assert!(w.touched.whole.is_none() && w.lost.is_none(), "{w:?}");
        assert!(
            w.touched.by.iter().all(|p| p.starts_with("nft (pid ")),
            "{:?}",
            w.touched.by
        );
        assert!(wakes.load(Ordering::SeqCst) >= 1);

        // Only those objects are read back, as a full dump holds them.
        let got = b.dump_objects(&w.touched).expect("objects");
        let full = b.dump().expect("dump");
        assert_eq!(got, w.touched.select(full));
        assert_eq!(got.tables.len(), 1);
        assert!(got.tables[0].chains[&chain].rules.is_empty());
        assert_eq!(got.tables[0].chains.len() + got.tables[0].sets.len(), 2);
        assert_eq!(
            got.tables[0].sets["cluster-ips"].elements.len() + 1,
            rs.tables[0].sets["cluster-ips"].elements.len()
        );

        // kproxy's table deleted: only a full comparison covers that.
        nft(&["delete", "table", "ip", "kproxy"]);
        let w = watched(b, Duration::from_secs(5), |w| w.touched.whole.is_some());
        let whole = w.touched.whole.expect("the table named");
        assert!(whole.contains("table ip kproxy"), "{whole}");
    });
}

#[test]
fn a_neighbours_commit_while_kproxy_commits_unheard_is_never_lost_silently() {
    in_watching_backend("neighbours::commits_while_unheard", |b, name| {
        assert!(b.watch(Box::new(|| {})).expect("watch"));
        std::thread::sleep(Duration::from_millis(200));
        // A large commit (over a mebibyte: made while not listening) with nobody else
        // committing: nothing to report.
        let big = rendered(10_000);
        apply::apply(b, Base::Kernel, big.clone(), &Options::default()).expect("load");
        let w = watched(b, Duration::from_millis(800), |_| false);
        assert_eq!(
            w,
            Watched::default(),
            "kproxy's own large commit was reported"
        );

        // The same while a neighbour commits in a tight loop.
        let neighbour = Neighbour::start(name);
        // Three large loads (each after a cleanup) while it does.
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(200));
            apply::cleanup(b, &kproxy::render::own_tables()).expect("cleanup");
            apply::apply(b, Base::Kernel, big.clone(), &Options::default()).expect("load");
        }
        std::thread::sleep(Duration::from_millis(200));
        // Its table and set, and its elements.
        let n = neighbour.stop() as u64 + 2;
        let w = watched(b, Duration::from_secs(5), |w| {
            w.other_tables + w.lost.is_some() as u64 >= n
        });
        println!(
            "neighbour commits {n}, seen {}, lost: {:?}",
            w.other_tables, w.lost
        );
        assert!(w.touched.is_empty(), "{w:?}");
        assert!(w.other_tables <= n);
        // A commit not seen is reported as lost (a false alarm is allowed, never silence).
        if w.other_tables < n {
            assert!(
                w.lost.is_some(),
                "{} commits went unseen silently",
                n - w.other_tables
            );
        }
    });
}

/// A neighbour in namespace `ns`: its own table `inet neighbour` with an interval set
/// (two commits), then one element added per commit in a tight loop until stopped.
struct Neighbour {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

/// The `i`-th element the neighbour adds.
fn neighbour_element(i: usize) -> String {
    format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)
}

/// The neighbour's table and set, created in namespace `ns` (two commits).
fn neighbour_table(ns: &str) {
    nft(ns, &["add table inet neighbour"]);
    nft(
        ns,
        &["add set inet neighbour blocked { type ipv4_addr; flags interval; }"],
    );
}

impl Neighbour {
    fn start(ns: &str) -> Neighbour {
        neighbour_table(ns);
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicUsize::new(0));
        let (st, c, ns) = (stop.clone(), commits.clone(), ns.to_string());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let e = format!("{{ {} }}", neighbour_element(c.load(Ordering::SeqCst)));
                nft(&ns, &["add", "element", "inet", "neighbour", "blocked", &e]);
                c.fetch_add(1, Ordering::SeqCst);
            }
        });
        Neighbour {
            stop,
            commits,
            thread,
        }
    }

    /// Elements added so far (one commit each).
    fn commits(&self) -> usize {
        self.commits.load(Ordering::SeqCst)
    }

    /// Stops the loop; the elements it added.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("neighbour");
        self.commits.load(Ordering::SeqCst)
    }
}

#[test]
fn kproxys_tables_are_read_whole_while_a_neighbour_commits_in_a_tight_loop() {
    in_watching_backend("neighbours::read_while_a_neighbour_commits", |b, name| {
        assert!(b.watch(Box::new(|| {})).expect("watch"));
        let rs = rendered(5_000);
        apply::apply(b, Base::Kernel, rs.clone(), &Options::default()).expect("load");
        let quiet = b.dump().expect("dump");
        // Every read spans neighbour commits (the generation moves, dumps are flagged
        // interrupted); none of them touches kproxy's tables, so the reads stand.
        let neighbour = Neighbour::start(name);
        for _ in 0..3 {
            let start = Instant::now();
            let busy = b.dump().expect("a read while the neighbour commits");
            assert!(busy == quiet, "the read differs");
            println!("read in {:?}", start.elapsed());
        }
        let n = neighbour.stop();
        println!("neighbour commits during the reads: {n}");
        assert!(n > 3, "the neighbour hardly committed");
    });
}

/// The names of kproxy's IPv4 chains for service `web` (`service-…demo/web/…`).
fn web_chain(t: &common::topology::Topology) -> String {
    let text =
        String::from_utf8_lossy(&t.node.exec("nft", &["list", "chains", "ip"]).stdout).into_owned();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("chain ")?.strip_suffix(" {"))
        .find(|c| c.starts_with("service-") && c.contains("demo/web/"))
        .unwrap_or_else(|| panic!("no service chain for web in\n{text}"))
        .to_string()
}

fn node_nft(t: &common::topology::Topology, args: &[&str]) -> String {
    nft(&t.node.name, args)
}

fn time_until(check: impl FnMut() -> bool) -> Option<Duration> {
    kproxy::testutil::time_until(Duration::from_secs(10), check)
}

#[test]
fn a_neighbour_committing_in_a_tight_loop_costs_kproxy_nothing() {
    let Some(s) = setup_for("neighbours::tight_loop_costs_nothing") else {
        return;
    };
    let (t, api) = (&s.t, &s.api);
    let (d, ip) = s.running_web(&["A1"]);
    let full_syncs = "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}";
    let full_before = metric(t, full_syncs);
    let neighbour = Neighbour::start(&t.node.name);
    // kproxy syncs changes from the API server meanwhile, for as long as it takes the
    // neighbour to commit a hundred times.
    let rounds = [&["A1", "B1"][..], &["B1"], &["A1", "A2"], &["A2"], &["A1"]];
    let mut round = 0;
    while round < rounds.len() || neighbour.commits() < 100 {
        let pods_ = rounds[round % rounds.len()];
        slices(api, "web", pods_);
        eventually(&format!("round {round}: {pods_:?}"), &d, || {
            reached(t, &ip) == pods(Family::V4, pods_)
        });
        round += 1;
    }
    let n = neighbour.stop();
    println!("neighbour commits: {n} while kproxy synced {round} changes");
    let listed = node_nft(t, &["list", "table", "inet", "neighbour"]);

    // Every neighbour commit was seen (its table and set too) and cost nothing.
    eventually("the neighbour's commits counted", &d, || {
        metric(t, "kproxy_foreign_nftables_commits_total{tables=\"other\"}") == Some((n + 2) as f64)
    });
    for (series, want) in [
        ("kproxy_drift_repairs_total", Some(0.0)),
        ("kproxy_drift_checks_total{scope=\"full\"}", Some(0.0)),
        ("kproxy_drift_checks_total{scope=\"objects\"}", Some(0.0)),
        (
            "kproxy_foreign_nftables_commits_total{tables=\"kproxy\"}",
            Some(0.0),
        ),
        (full_syncs, full_before),
    ] {
        assert_eq!(
            metric(t, series),
            want,
            "{series}\nkproxy log:\n{}",
            d.log()
        );
    }

    // The neighbour's table is exactly what it wrote: as listed when it stopped, after
    // kproxy's next sync, and as the same elements loaded into an empty namespace.
    slices(api, "web", &["B1"]);
    eventually("a sync after the neighbour stopped", &d, || {
        reached(t, &ip) == pods(Family::V4, &["B1"])
    });
    assert_eq!(node_nft(t, &["list", "table", "inet", "neighbour"]), listed);
    let scratch = Netns::new("nb-scratch");
    let elements: Vec<String> = (0..n).map(neighbour_element).collect();
    neighbour_table(&scratch.name);
    for chunk in elements.chunks(500) {
        let list = format!("{{ {} }}", chunk.join(", "));
        nft(
            &scratch.name,
            &["add", "element", "inet", "neighbour", "blocked", &list],
        );
    }
    assert_eq!(
        nft(&scratch.name, &["list", "table", "inet", "neighbour"]),
        listed,
        "the neighbour's table is not what it wrote"
    );
    d.stop();
}

#[test]
fn a_chain_flushed_right_after_kproxys_commit_is_repaired_within_a_second() {
    let Some(s) = setup_for("neighbours::flushed_chain_repaired") else {
        return;
    };
    let (t, api) = (&s.t, &s.api);
    let (d, ip) = s.running_web(&["A1"]);
    let chain = web_chain(t);
    let b1 = common::topology::pod_ip(Family::V4, "B1").to_string();

    // kproxy commits an endpoint change; the moment it is in the kernel, a neighbour
    // flushes the service's chain.
    slices(api, "web", &["A1", "B1"]);
    time_until(|| node_nft(t, &["list", "table", "ip", "kproxy"]).contains(&b1))
        .expect("kproxy committed the change");
    node_nft(t, &["flush", "chain", "ip", "kproxy", &chain]);
    let repaired =
        time_until(|| node_nft(t, &["list", "chain", "ip", "kproxy", &chain]).contains("dnat"))
            .expect("the chain was not repaired");
    println!("flushed chain repaired after {repaired:?}");
    assert!(repaired <= REPAIR_BOUND, "repaired after {repaired:?}");
    eventually("connections work again", &d, || {
        reached(t, &ip) == pods(Family::V4, &["A1", "B1"])
    });

    // The ClusterIP's dispatch element deleted: connections fail until it is back.
    let key = format!("{ip} . tcp . 80");
    node_nft(
        t,
        &[
            "delete",
            "element",
            "ip",
            "kproxy",
            "service-ips",
            &format!("{{ {key} }}"),
        ],
    );
    let repaired =
        time_until(|| node_nft(t, &["list", "map", "ip", "kproxy", "service-ips"]).contains(&key))
            .expect("the element was not repaired");
    println!("deleted element repaired after {repaired:?}");
    assert!(repaired <= REPAIR_BOUND, "repaired after {repaired:?}");
    eventually("connections work again", &d, || {
        reached(t, &ip) == pods(Family::V4, &["A1", "B1"])
    });

    // Both repaired alone: two targeted repairs, no full comparison.
    assert_eq!(
        metric(t, "kproxy_drift_repairs_total"),
        Some(2.0),
        "{}",
        d.log()
    );
    assert_eq!(
        metric(t, "kproxy_drift_checks_total{scope=\"full\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(t, "kproxy_drift_checks_total{scope=\"objects\"}"),
        Some(2.0)
    );
    d.stop();
}
