//! Tier 2 for the netlink backend: transactions applied by `NetlinkBackend` inside
//! throwaway network namespaces give the kernel exactly what `nft -f` of the same ruleset
//! gives it, read back as the same typed ruleset; bad transactions change nothing; large
//! batches commit whole; hand edits read back as differences, never panics.
//!
//! The backend runs on a thread that first enters the test's namespace (`setns`), so the
//! host's ruleset is never touched.

mod common;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Instant;

use common::*;
use kproxy::backend::netlink::NetlinkBackend;
use kproxy::backend::{Backend, BackendError};
use kproxy::nft::tx::{ChainDecl, Op, TableRef, Transaction};
use kproxy::nft::*;

/// Runs `f` with a backend created inside the namespace `ns`.
fn with_backend<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce(&mut NetlinkBackend) -> T + Send + 'static,
) -> T {
    ns.run_in(move || {
        let mut b = NetlinkBackend::new("kproxy").expect("netlink socket");
        f(&mut b)
    })
}

/// Everything in `rs`, as one transaction, in the order `nft -f` sends a table: table,
/// chains, sets, elements, then rules. (Elements before the rules that reference their
/// set matter for cost: see the measurement test.)
fn full_load(rs: &Ruleset) -> Transaction {
    let mut tx = Transaction::new();
    for t in &rs.tables {
        let tr = TableRef::new(t.family, t.name.clone());
        tx.push(Op::AddTable {
            table: tr.clone(),
            comment: t.comment.clone(),
        });
        // Chains in the order `nft -f` of the text creates them (the kernel lists chains
        // in creation order): base chains by hook and priority, then by name.
        let mut chains: Vec<&Chain> = t.chains.values().collect();
        chains.sort_by_key(|c| {
            (
                c.base.is_none(),
                c.base.as_ref().map(|b| (b.hook, b.priority)),
                c.name.clone(),
            )
        });
        for c in &chains {
            tx.push(Op::AddChain {
                table: tr.clone(),
                chain: ChainDecl {
                    name: c.name.clone(),
                    base: c.base.clone(),
                    comment: c.comment.clone(),
                },
            });
        }
        for s in t.sets.values() {
            tx.push(Op::AddSet {
                table: tr.clone(),
                set: Box::new(s.clone()),
            });
            if !s.elements.is_empty() {
                tx.push(Op::AddElements {
                    table: tr.clone(),
                    set: s.name.clone(),
                    elements: s.elements.iter().cloned().collect(),
                });
            }
        }
        for c in &chains {
            for r in &c.rules {
                tx.push(Op::AddRule {
                    table: tr.clone(),
                    chain: c.name.clone(),
                    rule: r.clone(),
                });
            }
        }
    }
    tx
}

fn nft_ok(ns: &Netns, args: &[&str]) -> String {
    let o = ns.exec("nft", args);
    assert!(o.status.success(), "nft {args:?}: {}", stderr(&o));
    stdout(&o)
}

/// A fresh namespace holding the `clusterip` scenario, loaded over netlink.
fn clusterip_loaded(ns: &str) -> (Netns, Ruleset) {
    let dir = scenarios()
        .into_iter()
        .find(|d| d.ends_with("clusterip"))
        .unwrap();
    let rs = render_scenario(&dir);
    let ns = Netns::new(ns);
    let tx = full_load(&rs);
    with_backend(&ns, move |b| b.apply(&tx)).expect("load");
    (ns, rs)
}

fn load_with_nft(ns: &Netns, rs: &Ruleset) {
    let file = std::env::temp_dir().join(format!("{}.nft", ns.name));
    std::fs::write(&file, text::ruleset(rs)).unwrap();
    let o = ns.exec("nft", &["-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(o.status.success(), "nft -f: {}", stderr(&o));
}

fn strip_handles(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("handle");
            m.values_mut().for_each(strip_handles);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_handles),
        _ => {}
    }
}

/// What the kernel holds, as `nft list` text and as JSON without handles.
fn kernel_views(ns: &Netns, rs: &Ruleset) -> Vec<(String, serde_json::Value)> {
    rs.tables
        .iter()
        .map(|t| {
            let txt = nft_ok(ns, &["list", "table", t.family.keyword(), &t.name]);
            let mut js: serde_json::Value = serde_json::from_str(&nft_ok(
                ns,
                &["-j", "list", "table", t.family.keyword(), &t.name],
            ))
            .expect("nft -j output");
            strip_handles(&mut js);
            (txt, js)
        })
        .collect()
}

/// A full-length prefix is the same bytes in the kernel as the address itself.
fn canon(v: &Value) -> Value {
    match v {
        Value::Net(n) if n.prefix() == if n.is_ipv4() { 32 } else { 128 } => {
            Value::Addr(n.network())
        }
        v => v.clone(),
    }
}

/// A ruleset as it can be compared with a dump (full-length prefixes as addresses): comments as nft stores them, dynamic
/// sets' runtime elements dropped.
fn comparable(rs: &Ruleset) -> Ruleset {
    let clean = |c: &str| {
        let q = text::quote(c);
        q[1..q.len() - 1].to_string()
    };
    let mut rs = rs.clone();
    for t in &mut rs.tables {
        t.comment = t.comment.as_deref().map(clean);
        for s in t.sets.values_mut() {
            s.comment = s.comment.as_deref().map(clean);
            if s.flags.dynamic {
                s.elements = Default::default();
            }
            let els: Vec<Element> = s
                .elements
                .iter()
                .cloned()
                .map(|mut e| {
                    e.key = e.key.iter().map(canon).collect();
                    e.comment = e.comment.as_deref().map(|c| clean(c).into());
                    e
                })
                .collect();
            s.elements = els.into_iter().collect();
        }
        for c in t.chains.values_mut() {
            c.comment = c.comment.as_deref().map(clean);
            for r in &mut c.rules {
                for st in &mut r.stmts {
                    if let Stmt::Cmp { value, .. } = st {
                        *value = canon(value);
                    }
                }
                r.comment = r.comment.as_deref().map(clean);
            }
        }
    }
    rs
}

fn assert_same_ruleset(got: &Ruleset, want: &Ruleset, what: &str) {
    let (got, want) = (comparable(got), comparable(want));
    assert_eq!(got.tables.len(), want.tables.len(), "{what}: tables");
    for (g, w) in got.tables.iter().zip(&want.tables) {
        assert_eq!(g.comment, w.comment, "{what}: {} comment", w.family);
        let what = format!("{what}: {}", w.family);
        assert_same_map(&g.sets, &w.sets, &what, "set");
        assert_same_map(&g.chains, &w.chains, &what, "chain");
    }
}

/// The same `kind`s by name, then each the same.
fn assert_same_map<V: PartialEq + Debug>(
    got: &BTreeMap<String, V>,
    want: &BTreeMap<String, V>,
    what: &str,
    kind: &str,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what} {kind}s"
    );
    for (name, w) in want {
        assert_eq!(&got[name], w, "{what} {kind} {name}");
    }
}

#[test]
fn scenarios_applied_over_netlink_match_nft_and_read_back() {
    if !kernel_tests_enabled("scenarios_applied_over_netlink_match_nft_and_read_back") {
        return;
    }
    for dir in scenarios() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let full = render_scenario(&dir);
        // nft cannot load the affinity rules: both sides compare without them, and the
        // full ruleset (with them) is loaded over netlink and read back below.
        let rs = without_affinity_rules(&full);
        let ours = Netns::new("nl-ours");
        let theirs = Netns::new("nl-nft");
        let tx = full_load(&rs);
        let report = with_backend(&ours, move |b| b.apply(&tx))
            .unwrap_or_else(|e| panic!("{name}: apply failed: {e}"));
        assert!(report.messages > 2);
        load_with_nft(&theirs, &rs);
        let (a, b) = (kernel_views(&ours, &rs), kernel_views(&theirs, &rs));
        for ((ta, ja), (tb, jb)) in a.iter().zip(&b) {
            assert_eq!(
                ta, tb,
                "{name}: `nft list table` differs (left: netlink, right: nft -f)"
            );
            assert_eq!(ja, jb, "{name}: `nft -j list table` differs");
        }
        let dumped = with_backend(&ours, |b| b.dump()).expect("dump");
        assert_same_ruleset(&dumped, &rs, &format!("{name}: dump after netlink"));
        let dumped = with_backend(&theirs, |b| b.dump()).expect("dump");
        assert_same_ruleset(&dumped, &rs, &format!("{name}: dump after nft -f"));
        if full != rs {
            affinity_rules_load_and_read_back(&name, &full);
        }
    }
}

/// A ruleset with affinity rules, loaded over netlink into a fresh namespace: it reads
/// back as the same typed ruleset, and `nft list` (1.0.6) still lists it (its
/// delinearizer aborted on a lookup keyed by a lookup's result before the ids passed
/// through the mark).
fn affinity_rules_load_and_read_back(name: &str, full: &Ruleset) {
    let ns = Netns::new("nl-aff");
    let tx = full_load(full);
    with_backend(&ns, move |b| b.apply(&tx))
        .unwrap_or_else(|e| panic!("{name}: apply with affinity failed: {e}"));
    let dumped = with_backend(&ns, |b| b.dump()).expect("dump");
    assert_same_ruleset(&dumped, full, &format!("{name}: dump with affinity"));
    for t in full
        .tables
        .iter()
        .filter(|t| t.sets.contains_key("affinity-0"))
    {
        let txt = nft_ok(&ns, &["list", "table", t.family.keyword(), &t.name]);
        assert!(txt.contains("@affinity-endpoints-0"), "{name}: {txt}");
    }
}

#[test]
fn a_bad_operation_rejects_the_whole_transaction() {
    if !kernel_tests_enabled("a_bad_operation_rejects_the_whole_transaction") {
        return;
    }
    let (ns, _) = clusterip_loaded("nl-bad");
    let before = nft_ok(&ns, &["list", "ruleset"]);
    let gen_before = with_backend(&ns, |b| b.generation()).unwrap();

    // `apply` borrows the transaction; `commit` drops each operation's payload once it
    // is encoded, so its error detail comes from the encoded message: both must name the
    // failing rule, and the failing element of a list.
    let t = TableRef::new(Family::V4, "kproxy");
    for shed in [false, true] {
        let mut tx = Transaction::new();
        tx.push(Op::FlushChain {
            table: t.clone(),
            chain: "services".into(),
        });
        tx.push(Op::AddChain {
            table: t.clone(),
            chain: ChainDecl {
                name: "new-chain".into(),
                base: None,
                comment: None,
            },
        });
        tx.push(Op::AddRule {
            table: t.clone(),
            chain: "new-chain".into(),
            rule: Rule::new(vec![Stmt::jump("no-such-chain")]),
        });
        tx.push(Op::AddRule {
            table: t.clone(),
            chain: "new-chain".into(),
            rule: Rule::new(vec![Stmt::Verdict(Verdict::Accept)]),
        });
        let err =
            with_backend(&ns, move |b| if shed { b.commit(tx) } else { b.apply(&tx) }).unwrap_err();
        match &err {
            BackendError::Rejected { failures } => {
                assert_eq!(failures.len(), 1, "{err}");
                assert_eq!(failures[0].index, 2, "{err}");
                assert_eq!(failures[0].errno, libc::ENOENT, "{err}");
                assert!(failures[0].op.contains("jump no-such-chain"), "{err}");
            }
            e => panic!("expected Rejected, got {e}"),
        }
        assert_eq!(nft_ok(&ns, &["list", "ruleset"]), before, "nothing changed");
        assert_eq!(with_backend(&ns, |b| b.generation()).unwrap(), gen_before);

        // The third of four elements enters a chain that does not exist.
        let elem = |port: u16, chain: &str| {
            Element::verdict(
                vec![
                    Value::Addr("172.30.99.1".parse().unwrap()),
                    Value::Proto(Protocol::Tcp),
                    Value::Port(port),
                ],
                Verdict::Goto(chain.into()),
            )
        };
        let mut tx = Transaction::new();
        tx.push(Op::AddElements {
            table: t.clone(),
            set: "service-ips".into(),
            elements: vec![
                elem(1, "services"),
                elem(2, "services"),
                elem(3, "no-such-chain"),
                elem(4, "services"),
            ],
        });
        let err =
            with_backend(&ns, move |b| if shed { b.commit(tx) } else { b.apply(&tx) }).unwrap_err();
        match &err {
            BackendError::Rejected { failures } => {
                assert_eq!(failures[0].index, 0, "{err}");
                let op = &failures[0].op;
                assert!(op.contains("service-ips (4 elements)"), "{err}");
                assert!(op.contains(". 3 : goto no-such-chain"), "{err}");
            }
            e => panic!("expected Rejected, got {e}"),
        }
        assert_eq!(nft_ok(&ns, &["list", "ruleset"]), before, "nothing changed");
    }

    // Elements for a set that does not exist: refused up front with ENOENT.
    let mut tx = Transaction::new();
    tx.push(Op::AddElements {
        table: TableRef::new(Family::V4, "kproxy"),
        set: "no-such-set".into(),
        elements: vec![Element::key(vec![Value::Int(1)])],
    });
    let err = with_backend(&ns, move |b| b.apply(&tx)).unwrap_err();
    assert!(
        matches!(&err, BackendError::Rejected { failures } if failures[0].errno == libc::ENOENT),
        "{err}"
    );
    // An empty transaction sends nothing.
    let r = with_backend(&ns, |b| b.apply(&Transaction::new())).unwrap();
    assert_eq!(r.messages, 0);
}

#[test]
fn a_batch_over_one_mebibyte_commits_whole() {
    if !kernel_tests_enabled("a_batch_over_one_mebibyte_commits_whole") {
        return;
    }
    const N: u32 = 100_000;
    let ns = Netns::new("nl-big");
    let tx = kproxy::nft::tx::slot_map_load(&TableRef::new(Family::V4, "kproxy"), N);
    let (report, secs, dumped) = with_backend(&ns, move |b| {
        let start = Instant::now();
        let r = b.apply(&tx).expect("apply");
        let secs = start.elapsed().as_secs_f64();
        let d = b.dump().expect("dump");
        (r, secs, d)
    });
    println!(
        "100k elements: {} bytes in {} messages, applied in {secs:.3}s",
        report.bytes, report.messages
    );
    assert!(report.bytes > 1 << 20);
    let s = dumped.table(Family::V4).unwrap().set("endpoints").unwrap();
    assert_eq!(s.elements.len(), N as usize);
    let listed = nft_ok(&ns, &["list", "map", "ip", "kproxy", "endpoints"]);
    assert_eq!(listed.matches(" : 10.").count(), N as usize);
}

#[test]
fn hand_edits_read_back_as_differences() {
    if !kernel_tests_enabled("hand_edits_read_back_as_differences") {
        return;
    }
    let (ns, rs) = clusterip_loaded("nl-edit");
    nft_ok(
        &ns,
        &[
            "add", "rule", "ip", "kproxy", "services", "counter", "log", "prefix", "\"x\"",
        ],
    );
    nft_ok(
        &ns,
        &[
            "insert", "rule", "ip", "kproxy", "services", "tcp", "sport", "1-1024", "accept",
        ],
    );
    nft_ok(
        &ns,
        &[
            "add", "rule", "ip", "kproxy", "services", "ip", "saddr", "1.2.3.4", "ct", "mark",
            "set", "5",
        ],
    );
    nft_ok(
        &ns,
        &[
            "add", "chain", "ip", "kproxy", "extra", "{", "type", "filter", "hook", "input",
            "priority", "0;", "policy", "drop;", "}",
        ],
    );
    nft_ok(
        &ns,
        &[
            "add",
            "set",
            "ip",
            "kproxy",
            "strange",
            "{",
            "type",
            "ether_addr;",
            "}",
        ],
    );
    let dumped = with_backend(&ns, |b| b.dump()).expect("dump never fails on foreign rules");
    let t = dumped.table(Family::V4).unwrap();
    let services = t.chain("services").unwrap();
    let want = rs.table(Family::V4).unwrap().chain("services").unwrap();
    assert_ne!(services, want);
    assert!(services
        .rules
        .iter()
        .flat_map(|r| &r.stmts)
        .any(|s| matches!(s, Stmt::Foreign(_))));
    assert!(t
        .chain("extra")
        .unwrap()
        .rules
        .iter()
        .flat_map(|r| &r.stmts)
        .any(|s| matches!(s, Stmt::Foreign(d) if d.contains("policy"))));
}

#[test]
fn a_dump_comes_back_while_a_neighbour_commits_to_its_own_table() {
    if !kernel_tests_enabled("a_dump_comes_back_while_a_neighbour_commits_to_its_own_table") {
        return;
    }
    // kproxy's tables for 300 services, whose dump takes longer than a neighbour's commit.
    let (model, _) = kproxy::model::build(
        &kproxy::testutil::synthetic_cluster(300, 10, false),
        &kproxy::testutil::synthetic_settings(),
    );
    let rs = kproxy::render::render(&model);
    let ns = Netns::new("nl-neighbour");
    let tx = full_load(&rs);
    with_backend(&ns, move |b| b.apply(&tx)).expect("load");

    // The neighbour: the clusterip scenario as table `neighbour`, one of its chains
    // flushed and refilled, commit after commit, as fast as the kernel takes them.
    let dir = scenarios()
        .into_iter()
        .find(|d| d.ends_with("clusterip"))
        .unwrap();
    let mut full = render_scenario(&dir);
    for t in &mut full.tables {
        t.name = "neighbour".into();
    }
    let mut bare = full.clone();
    bare.tables[0]
        .chains
        .values_mut()
        .find(|c| !c.rules.is_empty())
        .expect("a chain with rules")
        .rules
        .clear();
    let opts = kproxy::diff::DiffOptions::default();
    let (down, up) = (
        kproxy::diff::diff(&full, &bare, &opts).tx,
        kproxy::diff::diff(&bare, &full, &opts).tx,
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let load = full_load(&full);
    let path = kproxy::testutil::netns_path(&ns.name);
    let neighbour = std::thread::spawn(move || {
        kproxy::netlink::enter_netns(&path).expect("enter netns");
        let mut b = NetlinkBackend::new("neighbour").expect("netlink socket");
        b.apply(&load).expect("neighbour's table");
        let mut commits = 0u32;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            b.apply(&down).expect("neighbour's commit");
            b.apply(&up).expect("neighbour's commit");
            commits += 2;
        }
        commits
    });
    let dumps = with_backend(&ns, |b| (0..3).map(|_| b.dump()).collect::<Vec<_>>());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let commits = neighbour.join().expect("neighbour");
    assert!(commits > 10, "the neighbour committed only {commits} times");
    for d in dumps {
        let d = d.expect("a dump comes back although the neighbour commits meanwhile");
        assert_same_ruleset(&comparable(&d), &comparable(&rs), "dump beside a neighbour");
    }
}

/// The same operations with every element operation moved after the rules.
fn rules_before_elements(tx: &Transaction) -> Transaction {
    let (elems, rest): (Vec<Op>, Vec<Op>) = tx
        .ops
        .iter()
        .cloned()
        .partition(|op| matches!(op, Op::AddElements { .. }));
    Transaction {
        ops: rest.into_iter().chain(elems).collect(),
    }
}

/// Not a timed assertion: prints how long a fresh 10k-service ruleset takes to commit.
#[test]
fn measure_ten_thousand_services() {
    if !kernel_tests_enabled("measure_ten_thousand_services") {
        return;
    }
    let objects = kproxy::testutil::synthetic_cluster(10_000, 10, false);
    let (model, _) = kproxy::model::build(&objects, &kproxy::testutil::synthetic_settings());
    let rs = kproxy::render::render(&model);
    let tx = full_load(&rs);
    let ops = tx.len();
    let start = Instant::now();
    let batch = kproxy::backend::netlink::encode(&tx).expect("encode");
    println!(
        "10k services: encoded {} messages / {} bytes in {:.3}s",
        batch.messages(),
        batch.len_bytes(),
        start.elapsed().as_secs_f64()
    );
    if std::env::var_os("KPROXY_MEASURE_NFT").is_some() {
        // Slow (minutes with nft 1.0.6): opt in.
        let nft_ns = Netns::new("nl-10k-nft");
        let start = Instant::now();
        load_with_nft(&nft_ns, &rs);
        println!(
            "10k services: nft -f took {:.3}s",
            start.elapsed().as_secs_f64()
        );
    }
    let ns = Netns::new("nl-10k");
    let tx = rules_before_elements(&tx);
    let n_tables = rs.tables.len();
    let (report, secs, dump_secs) = with_backend(&ns, move |b| {
        let start = Instant::now();
        let r = b.apply(&tx).expect("apply");
        let secs = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let d = b.dump().expect("dump");
        let dump_secs = start.elapsed().as_secs_f64();
        assert_eq!(d.tables.len(), n_tables);
        (r, secs, dump_secs)
    });
    // The same ruleset in phases (separate transactions) to see where the kernel spends.
    let phased = Netns::new("nl-10k-phases");
    let mut phases: Vec<(String, Transaction)> = Vec::new();
    let all = full_load(&rs);
    let mut decl = Transaction::new();
    let mut rules = Transaction::new();
    let mut data_elems = Transaction::new();
    let mut verdict_elems = Transaction::new();
    for op in all.ops {
        match &op {
            Op::AddRule { .. } => rules.push(op),
            Op::AddElements { table, set, .. } => {
                let vmap = rs
                    .table(table.family)
                    .and_then(|t| t.set(set))
                    .is_some_and(|s| s.data == SetData::Verdict);
                if vmap {
                    verdict_elems.push(op)
                } else {
                    data_elems.push(op)
                }
            }
            _ => decl.push(op),
        }
    }
    phases.push(("tables, chains, sets".into(), decl));
    phases.push(("rules".into(), rules));
    phases.push(("data/plain set elements".into(), data_elems));
    phases.push(("verdict map elements".into(), verdict_elems));
    let timings = with_backend(&phased, move |b| {
        phases
            .into_iter()
            .map(|(name, tx)| {
                let start = Instant::now();
                b.apply(&tx).expect("phase");
                (name, tx.len(), start.elapsed().as_secs_f64())
            })
            .collect::<Vec<_>>()
    });
    for (name, n, secs) in timings {
        println!("10k services, phase {name}: {n} ops in {secs:.3}s");
    }
    println!(
        "10k services x 10 endpoints: {ops} ops, {} messages, {} bytes, applied in {secs:.3}s, dumped in {dump_secs:.3}s",
        report.messages, report.bytes
    );
}

/// An endpoint added to and removed from an affinity service, as the daemon's incremental
/// path renders it: the kernel receives element operations only (picks and live
/// endpoints), commits them, and then holds exactly the renderer's ruleset.
#[test]
fn affinity_endpoint_changes_reach_the_kernel_as_elements_only() {
    use kproxy::diff::{diff, DiffOptions};
    use kproxy::model::{self, ServiceKey};
    use kproxy::render::Renderer;
    use kproxy::testutil::{fixtures::ep, synthetic_cluster, synthetic_settings};
    if !kernel_tests_enabled("affinity_endpoint_changes_reach_the_kernel_as_elements_only") {
        return;
    }
    // Every 50th service has ClientIP affinity: svc-0 and svc-50.
    let mut objects = synthetic_cluster(100, 10, true);
    let build = |o: &_| model::build(o, &synthetic_settings()).0;
    let mut renderer = Renderer::new();
    let full = renderer.full(&build(&objects));
    let ns = Netns::new("nl-aff-ep");
    let tx = full_load(&full);
    with_backend(&ns, move |b| b.apply(&tx)).expect("load");
    let key = ServiceKey::new("ns-50", "svc-50");
    for add in [true, false] {
        let slice = objects
            .slices
            .iter_mut()
            .find(|s| {
                s.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("svc-50"))
            })
            .expect("svc-50's slice");
        let eps = slice.endpoints.as_mut().unwrap();
        if add {
            eps.push(ep("10.250.0.1").node("node-3").build());
        } else {
            eps.pop();
        }
        let p = renderer
            .update(&build(&objects), &[key.clone()].into())
            .expect("incremental");
        let d = diff(&p.before, &p.after, &DiffOptions::default());
        for op in &d.tx.ops {
            match op {
                Op::AddElements { set, .. } | Op::DeleteElements { set, .. } => assert!(
                    set.starts_with("affinity-pick-") || set.starts_with("affinity-endpoints-"),
                    "{set}"
                ),
                op => panic!("not an element operation: {op:?}"),
            }
        }
        assert!(!d.tx.ops.is_empty());
        let tx = d.tx;
        with_backend(&ns, move |b| b.apply(&tx)).expect("commit");
        let dumped = with_backend(&ns, |b| b.dump()).expect("dump");
        assert_same_ruleset(&dumped, &renderer.ruleset(), &format!("add={add}"));
    }
}
