//! Properties of the diff engine, checked against the validating fake kernel:
//! - `diff(x, x)` is empty;
//! - `apply(prev, diff(prev, next)) == next` (dynamic set elements aside): from empty, to
//!   empty, between random pairs of rendered clusters, and for targeted changes;
//! - the fake accepts every diff produced (it validates each op at its point of the
//!   transaction, so this checks the ordering), also as a pre-6.2 kernel when chain
//!   deletes are deferred, and the deferred deletes succeed in a later transaction;
//! - runtime contents of dynamic (affinity) sets are never touched;
//! - one endpoint added to one of 1,000 services is exactly five operations.

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use kproxy::backend::fake::FakeBackend;
use kproxy::backend::Backend;
use kproxy::diff::{diff, DiffOptions};
use kproxy::model::build::{NodePortAddresses, Objects, Settings};
use kproxy::model::{self};
use kproxy::nft::tx::{Op, TableRef, Transaction};
use kproxy::nft::{text, Chain, Element, Family, Ruleset, Stmt, Value};
use kproxy::render;
use kproxy::testutil::fixtures::{conditions, ep, slice, svc, ServiceBuilder};
use kproxy::testutil::{synthetic_cluster, synthetic_settings};
use proptest::prelude::*;

fn render_of(o: &Objects, s: &Settings) -> Ruleset {
    let (m, _) = model::build(o, s);
    render::render(&m)
}

/// The ruleset without the elements of dynamic sets (the kernel's runtime contents).
fn strip(rs: &Ruleset) -> Ruleset {
    let mut rs = rs.clone();
    for t in &mut rs.tables {
        for s in t.sets.values_mut() {
            if s.flags.dynamic {
                s.elements = Default::default();
            }
        }
    }
    rs
}

fn describe(tx: &Transaction) -> String {
    let s = text::transaction(tx);
    if s.len() > 20_000 {
        format!("{}…", &s[..20_000])
    } else {
        s
    }
}

/// Every check of one (prev, next) pair: the fake (>= 6.2) accepts the diff and ends at
/// `next`; a pre-6.2 fake accepts the deferring diff, ends at `next` plus the flushed
/// chains, and accepts their deletion afterwards; `diff(next, next)` is empty.
fn check(prev: &Ruleset, next: &Ruleset) {
    let d = diff(prev, next, &DiffOptions::default());
    assert!(d.deferred.is_empty());
    let mut b = FakeBackend::with_state(prev.clone());
    if let Err(e) = b.apply(&d.tx) {
        panic!("{e}\n{}", describe(&d.tx));
    }
    assert!(
        strip(b.state()) == strip(next),
        "state differs from next after\n{}",
        describe(&d.tx)
    );

    let opts = DiffOptions {
        defer_chain_deletes: true,
    };
    let d = diff(prev, next, &opts);
    let mut old = FakeBackend::with_state(prev.clone()).kernel_pre_6_2();
    if let Err(e) = old.apply(&d.tx) {
        panic!("pre-6.2: {e}\n{}", describe(&d.tx));
    }
    let mut want = strip(next);
    for (tref, chain) in &d.deferred {
        let t = want
            .tables
            .iter_mut()
            .find(|t| t.family == tref.family && t.name == tref.name)
            .expect("deferred chains live in tables that stay");
        assert!(!t.chains.contains_key(chain));
        t.add_chain(Chain::regular(chain.clone()));
    }
    assert!(strip(old.state()) == want, "pre-6.2 state differs");
    let later = Transaction {
        ops: d
            .deferred
            .iter()
            .map(|(table, chain)| Op::DeleteChain {
                table: table.clone(),
                chain: chain.clone(),
            })
            .collect(),
    };
    old.apply(&later).expect("deferred deletes");
    assert!(strip(old.state()) == strip(next));

    assert!(diff(next, next, &DiffOptions::default()).is_empty());
}

// ---------------------------------------------------------------------------------------
// Editing the synthetic cluster (services[i] and slices[i] belong together).

fn spec(s: &mut Service) -> &mut ServiceSpec {
    s.spec.get_or_insert_with(ServiceSpec::default)
}

#[derive(Clone, Debug)]
enum Mutation {
    AddEndpoint(usize, u16),
    RemoveEndpoint(usize),
    NotReady(usize),
    AddService(u16),
    DeleteService(usize),
    ExternalPolicy(usize),
    InternalPolicy(usize),
    Affinity(usize),
    ChangePort(usize),
    LoadBalancer(usize),
    ExternalIp(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u16>()).prop_map(|(i, a)| Mutation::AddEndpoint(i, a)),
        3 => any::<usize>().prop_map(Mutation::RemoveEndpoint),
        1 => any::<usize>().prop_map(Mutation::NotReady),
        2 => any::<u16>().prop_map(Mutation::AddService),
        2 => any::<usize>().prop_map(Mutation::DeleteService),
        2 => any::<usize>().prop_map(Mutation::ExternalPolicy),
        1 => any::<usize>().prop_map(Mutation::InternalPolicy),
        2 => any::<usize>().prop_map(Mutation::Affinity),
        1 => any::<usize>().prop_map(Mutation::ChangePort),
        1 => any::<usize>().prop_map(Mutation::LoadBalancer),
        1 => any::<usize>().prop_map(Mutation::ExternalIp),
    ]
}

fn toggle(field: &mut Option<String>, on: &str, off: &str) {
    let now = field.as_deref() == Some(on);
    *field = Some(if now { off } else { on }.into());
}

fn apply_mutation(o: &mut Objects, m: &Mutation) {
    let n = o.services.len();
    match *m {
        Mutation::AddService(a) => {
            let name = format!("added-{a}");
            let svc = svc("extra", &name)
                .type_("NodePort")
                .cluster_ip(&format!("172.31.{}.{}", a / 250 % 250, a % 250 + 1))
                .port("http", 80, "TCP")
                .target_port(8080)
                .node_port(31000 + (a % 1000) as i32)
                .build();
            let addr = format!("10.252.{}.{}", a / 250 % 250, a % 250 + 1);
            let slice = slice("extra", &format!("{name}-x"), &name)
                .port("http", 8080, "TCP")
                .endpoint(ep(&addr).node("node-a"))
                .build();
            // Names may repeat (same `a` twice): keep one.
            if !o
                .services
                .iter()
                .any(|s| s.metadata.name.as_deref() == Some(&name))
            {
                o.services.push(svc);
                o.slices.push(slice);
            }
        }
        _ if n == 0 => {}
        Mutation::AddEndpoint(i, a) => {
            let addr = format!("10.251.{}.{}", a / 250 % 250, a % 250 + 1);
            let node = if a % 3 == 0 { "node-a" } else { "node-3" };
            let endpoints = o.slices[i % n].endpoints.as_mut().expect("endpoints");
            endpoints.push(ep(&addr).node(node).build());
        }
        Mutation::RemoveEndpoint(i) => {
            if let Some(a) = o.slices[i % n].endpoints.as_mut() {
                a.pop();
            }
        }
        Mutation::NotReady(i) => {
            let endpoints = o.slices[i % n].endpoints.as_mut();
            if let Some(e) = endpoints.and_then(|a| a.first_mut()) {
                e.conditions = Some(conditions(false, true, true));
            }
        }
        Mutation::DeleteService(i) => {
            o.services.remove(i % n);
            o.slices.remove(i % n);
        }
        Mutation::ExternalPolicy(i) => {
            let s = spec(&mut o.services[i % n]);
            toggle(&mut s.external_traffic_policy, "Local", "Cluster")
        }
        Mutation::InternalPolicy(i) => {
            let s = spec(&mut o.services[i % n]);
            toggle(&mut s.internal_traffic_policy, "Local", "Cluster")
        }
        Mutation::Affinity(i) => {
            let s = spec(&mut o.services[i % n]);
            toggle(&mut s.session_affinity, "ClientIP", "None")
        }
        Mutation::ChangePort(i) => {
            let port = &mut spec(&mut o.services[i % n]).ports.as_mut().expect("ports")[0].port;
            *port = if *port == 80 { 8000 } else { 80 };
        }
        Mutation::LoadBalancer(i) => {
            let s = &mut o.services[i % n];
            *s = ServiceBuilder::from(s.clone())
                .type_("LoadBalancer")
                .source_ranges(&["203.0.113.0/24", "192.168.0.0/16"])
                .with(|s| s.status = None)
                .lb_ingress(&format!("198.51.100.{}", i % n + 1))
                .build();
        }
        Mutation::ExternalIp(i) => {
            spec(&mut o.services[i % n]).external_ips =
                Some(vec![format!("198.18.0.{}", i % n + 1)]);
        }
    }
}

#[derive(Clone, Debug)]
struct Gen {
    services: usize,
    endpoints: usize,
    affinity: bool,
    nodeports: u8,
    masquerade_all: bool,
    mutations: Vec<Mutation>,
}

fn gen() -> impl Strategy<Value = Gen> {
    (
        0usize..14,
        0usize..5,
        any::<bool>(),
        0u8..3,
        any::<bool>(),
        prop::collection::vec(mutation(), 0..6),
    )
        .prop_map(
            |(services, endpoints, affinity, nodeports, masquerade_all, mutations)| Gen {
                services,
                endpoints,
                affinity,
                nodeports,
                masquerade_all,
                mutations,
            },
        )
}

fn settings(nodeports: u8, masquerade_all: bool) -> Settings {
    let mut s = synthetic_settings();
    s.nodeport_addresses = match nodeports {
        0 => NodePortAddresses::Primary,
        // Everything: no nodeport-ips set, `fib daddr type local` instead.
        1 => NodePortAddresses::Cidrs(vec!["0.0.0.0/0".parse().unwrap()]),
        _ => NodePortAddresses::Cidrs(vec!["192.168.0.0/16".parse().unwrap()]),
    };
    s.masquerade_all = masquerade_all;
    s
}

fn objects_of(g: &Gen) -> Objects {
    let mut o = synthetic_cluster(g.services, g.endpoints, g.affinity);
    // Every 3rd service with affinity as well, so small clusters have some.
    if g.affinity {
        for i in (0..o.services.len()).step_by(3) {
            spec(&mut o.services[i]).session_affinity = Some("ClientIP".into());
        }
    }
    for m in &g.mutations {
        apply_mutation(&mut o, m);
    }
    o
}

fn ruleset_of(g: &Gen) -> Ruleset {
    render_of(&objects_of(g), &settings(g.nodeports, g.masquerade_all))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn from_and_to_empty(g in gen()) {
        let next = ruleset_of(&g);
        check(&Ruleset::default(), &next);
        check(&next, &Ruleset::default());
    }

    #[test]
    fn between_related_pairs(g in gen(), more in prop::collection::vec(mutation(), 1..6),
                             nodeports in 0u8..3, masq in any::<bool>()) {
        let a = ruleset_of(&g);
        let mut o = objects_of(&g);
        for m in &more {
            apply_mutation(&mut o, m);
        }
        let b = render_of(&o, &settings(nodeports, masq));
        check(&a, &b);
        check(&b, &a);
    }

    #[test]
    fn between_unrelated_pairs(a in gen(), b in gen()) {
        let (a, b) = (ruleset_of(&a), ruleset_of(&b));
        check(&a, &b);
    }

    /// A daemon's life: successive models through one fake, affinity
    /// entries appearing at runtime, and a full resync that diffs against the dump.
    #[test]
    fn sequence_with_runtime_state(g in gen(), steps in prop::collection::vec(
        prop::collection::vec(mutation(), 1..4), 1..4)) {
        let s = settings(g.nodeports, g.masquerade_all);
        let mut o = objects_of(&g);
        let (m, _) = model::build(&o, &s);
        let mut last = render::render(&m);
        let mut b = FakeBackend::new();
        b.apply(&diff(&Ruleset::default(), &last, &DiffOptions::default()).tx).unwrap();
        for (n, muts) in steps.iter().enumerate() {
            // The kernel learns affinity clients.
            for t in &mut b.state_mut().tables {
                for set in t.sets.values_mut().filter(|s| s.flags.dynamic) {
                    set.insert(Element::key(vec![Value::Addr(
                        format!("10.129.0.{}", n + 1).parse().unwrap(),
                    )]));
                }
            }
            for m in muts {
                apply_mutation(&mut o, m);
            }
            let (m, _) = model::build(&o, &s);
            let next = render::render(&m);
            let kernel = b.state().clone();
            // Alternately from the last committed ruleset and from the kernel's dump.
            let prev = if n % 2 == 0 { last.clone() } else { b.dump().unwrap() };
            let d = diff(&prev, &next, &DiffOptions::default());
            if let Err(e) = b.apply(&d.tx) {
                panic!("{e}\n{}", describe(&d.tx));
            }
            prop_assert!(strip(b.state()) == strip(&next));
            // Runtime entries of dynamic sets that stayed as they were are still there.
            for t in &b.state().tables {
                for (name, set) in t.sets.iter().filter(|(_, s)| s.flags.dynamic) {
                    let before = kernel.table(t.family).and_then(|k| k.set(name));
                    if let Some(before) = before {
                        if before.timeout == set.timeout && before.comment == set.comment {
                            prop_assert_eq!(&before.elements, &set.elements);
                        }
                    }
                }
            }
            last = next;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Targeted changes on a 20-service cluster with affinity.

fn base_objects() -> Objects {
    let mut o = synthetic_cluster(20, 3, true);
    // A second affinity service besides svc-0 (every 50th has it).
    spec(&mut o.services[7]).session_affinity = Some("ClientIP".into());
    o
}

fn check_both_ways(a: &Ruleset, b: &Ruleset) {
    assert_ne!(a, b, "the change must change the ruleset");
    check(a, b);
    check(b, a);
}

fn check_change(m: Mutation) {
    let s = synthetic_settings();
    let o = base_objects();
    let mut o2 = o.clone();
    apply_mutation(&mut o2, &m);
    check_both_ways(&render_of(&o, &s), &render_of(&o2, &s));
}

#[test]
fn endpoint_added() {
    check_change(Mutation::AddEndpoint(3, 7));
}

#[test]
fn endpoint_added_to_affinity_service() {
    check_change(Mutation::AddEndpoint(7, 8));
}

#[test]
fn endpoint_removed() {
    check_change(Mutation::RemoveEndpoint(4));
    check_change(Mutation::RemoveEndpoint(0));
}

#[test]
fn service_added() {
    check_change(Mutation::AddService(5));
}

#[test]
fn service_deleted() {
    check_change(Mutation::DeleteService(5));
    check_change(Mutation::DeleteService(7)); // with affinity chains and sets
}

#[test]
fn policy_changed() {
    check_change(Mutation::ExternalPolicy(5));
    check_change(Mutation::ExternalPolicy(10)); // Local → Cluster
    check_change(Mutation::InternalPolicy(6));
}

#[test]
fn affinity_toggled() {
    check_change(Mutation::Affinity(0)); // off
    check_change(Mutation::Affinity(3)); // on
}

#[test]
fn load_balancer_with_source_ranges() {
    check_change(Mutation::LoadBalancer(2));
}

#[test]
fn nodeport_mode_switched() {
    let o = base_objects();
    let primary = render_of(&o, &settings(0, false));
    let all = render_of(&o, &settings(1, false));
    let has = |rs: &Ruleset| rs.table(Family::V4).unwrap().set("nodeport-ips").is_some();
    assert!(has(&primary) && !has(&all));
    check_both_ways(&primary, &all);
    // The set goes only after the rules using it were rewritten.
    let d = diff(&primary, &all, &DiffOptions::default());
    let pos = |f: &dyn Fn(&Op) -> bool| d.tx.ops.iter().position(f).expect("op");
    let del = pos(&|op| matches!(op, Op::DeleteSet { set, .. } if set == "nodeport-ips"));
    let flush = pos(&|op| matches!(op, Op::FlushChain { chain, .. } if chain == "services"));
    let rules = pos(&|op| matches!(op, Op::AddRule { chain, .. } if chain == "services"));
    assert!(flush < rules && rules < del);
    // And it comes before the rules that use it.
    let d = diff(&all, &primary, &DiffOptions::default());
    let add =
        d.tx.ops
            .iter()
            .position(|op| matches!(op, Op::AddSet { set, .. } if set.name == "nodeport-ips"))
            .unwrap();
    let rule =
        d.tx.ops
            .iter()
            .position(|op| matches!(op, Op::AddRule { chain, .. } if chain == "services"))
            .unwrap();
    assert!(add < rule);
}

#[test]
fn runtime_affinity_entries_survive() {
    let s = synthetic_settings();
    let o = base_objects();
    let prev = render_of(&o, &s);
    let mut b = FakeBackend::new();
    b.apply(&diff(&Ruleset::default(), &prev, &DiffOptions::default()).tx)
        .unwrap();
    let client = Element::key(vec![Value::Addr("10.129.9.9".parse().unwrap())]);
    let mut dynamic = 0;
    for t in &mut b.state_mut().tables {
        for set in t.sets.values_mut().filter(|s| s.flags.dynamic) {
            set.insert(client.clone());
            dynamic += 1;
        }
    }
    assert!(dynamic > 0);
    // The dump differs from the render only in runtime contents: nothing to do.
    let dump = b.dump().unwrap();
    assert!(diff(&dump, &prev, &DiffOptions::default()).is_empty());
    // An unrelated change keeps them.
    let mut o2 = o.clone();
    apply_mutation(&mut o2, &Mutation::AddEndpoint(3, 1));
    let next = render_of(&o2, &s);
    b.apply(&diff(&dump, &next, &DiffOptions::default()).tx)
        .unwrap();
    let kept = b
        .state()
        .tables
        .iter()
        .flat_map(|t| t.sets.values())
        .filter(|s| s.flags.dynamic && s.elements.contains_key(&client.key))
        .count();
    assert_eq!(kept, dynamic);
}

#[test]
fn one_endpoint_in_a_thousand_services_is_elements_only() {
    let s = synthetic_settings();
    let o = synthetic_cluster(1000, 3, false);
    let prev = render_of(&o, &s);
    let mut o2 = o.clone();
    // svc-501: ClusterIP + NodePort, eTP Cluster, 3 endpoints.
    let i = 501;
    assert_eq!(o2.services[i].metadata.name.as_deref(), Some("svc-501"));
    let new = ep("10.250.0.1").node("node-3").build();
    o2.slices[i].endpoints.as_mut().unwrap().push(new);
    let next = render_of(&o2, &s);

    let d = diff(&prev, &next, &DiffOptions::default());
    let t = next.table(Family::V4).unwrap();
    let tref = TableRef::new(Family::V4, "kproxy");
    let chain = t
        .chains
        .values()
        .find(|c| c.name.starts_with("service-") && c.name.contains("-ns-1/svc-501/"))
        .expect("service chain");
    // The rule is the same on both sides: only the block's ranges change.
    assert_eq!(
        Some(chain),
        prev.table(Family::V4).unwrap().chain(&chain.name)
    );
    let (base, map) = chain
        .rules
        .iter()
        .flat_map(|r| &r.stmts)
        .find_map(|s| match s {
            Stmt::DnatPick { offset, map, .. } => Some((*offset, map.clone())),
            _ => None,
        })
        .expect("dnat over a block");
    let in_block = |t: &kproxy::nft::Table| -> Vec<kproxy::nft::Element> {
        t.sets[&map]
            .elements
            .iter()
            .filter(
                |e| matches!(e.key[..], [Value::Range(lo, _)] if lo >= base && lo - base < 65536),
            )
            .cloned()
            .collect()
    };
    let old = in_block(prev.table(Family::V4).unwrap());
    let now = in_block(t);
    assert_eq!(old.len(), 3);
    assert_eq!(now.len(), 4);
    let ip = Value::Addr("10.250.0.1".parse().unwrap());
    assert_eq!(
        now[3].data,
        kproxy::nft::ElementData::Values(vec![ip.clone(), Value::Port(8080)])
    );
    assert_eq!(now[3].key, vec![Value::Range(base + 49152, base + 65535)]);
    // The new endpoint is on another node: it cannot hairpin through this node.
    assert!(t.sets["hairpin-endpoints"]
        .elements
        .get(&[ip.clone(), ip])
        .is_none());
    let want = vec![
        Op::DeleteElements {
            table: tref.clone(),
            set: map.clone(),
            keys: old.iter().map(|e| e.key.clone()).collect(),
        },
        Op::AddElements {
            table: tref.clone(),
            set: map.clone(),
            elements: now,
        },
    ];
    assert_eq!(d.tx.ops, want, "\n{}", text::transaction(&d.tx));
    assert!(d.deferred.is_empty());

    let mut b = FakeBackend::with_state(prev.clone());
    b.apply(&d.tx).unwrap();
    assert!(b.state() == &next);
    // And back: the same two ops, the other way round.
    let back = diff(&next, &prev, &DiffOptions::default());
    assert_eq!(back.tx.len(), 2, "\n{}", text::transaction(&back.tx));
    b.apply(&back.tx).unwrap();
    assert!(b.state() == &prev);
}

#[test]
fn full_load_of_a_thousand_services_is_accepted() {
    let rs = render_of(&synthetic_cluster(1000, 3, true), &synthetic_settings());
    check(&Ruleset::default(), &rs);
}
