//! The sync loop against the fake backend and an in-memory source.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::*;
use crate::backend::fake::FakeBackend;
use crate::health::HealthCheckBind;
use crate::model::build::NodePortAddresses;
use crate::model::LABEL_SERVICE_NAME;
use crate::nft::tx::Op;
use crate::render::render;
use crate::testutil::fixtures::{ep, node, slice as fx_slice, svc, ServiceBuilder};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// This node, with address `ip`.
fn node_named(name: &str, ip: &str) -> Node {
    node(name)
        .pod_cidrs(&["10.244.1.0/24"])
        .internal_ip(ip)
        .build()
}

/// A ClusterIP service `ns/name` with one port `p`: `port` → 8080.
fn service_with_port(name: &str, ip: &str, proto: &str, port: i32) -> Service {
    svc("ns", name)
        .cluster_ip(ip)
        .port("p", port, proto)
        .target_port(8080)
        .build()
}

fn service(name: &str, ip: &str, proto: &str) -> Service {
    service_with_port(name, ip, proto, 80)
}

fn slice(name: &str, proto: &str, endpoints: &[(&str, &str)]) -> EndpointSlice {
    let eps = endpoints.iter().map(|(ip, node)| ep(ip).node(node));
    fx_slice("ns", &format!("{name}-1"), name)
        .port("p", 8080, proto)
        .endpoints(eps)
        .build()
}

/// This node (node-a) with these services and slices.
fn objects(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Objects {
    Objects {
        services,
        slices,
        nodes: vec![node_named("node-a", "192.168.50.10")],
        ..Objects::default()
    }
}

fn key_of_service(s: &k8s_openapi::api::core::v1::Service) -> ServiceKey {
    ServiceKey::new(
        s.metadata.namespace.clone().unwrap_or_default(),
        s.metadata.name.clone().unwrap_or_default(),
    )
}

fn key_of_slice(s: &k8s_openapi::api::discovery::v1::EndpointSlice) -> ServiceKey {
    let svc = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .cloned()
        .unwrap_or_default();
    ServiceKey::new(s.metadata.namespace.clone().unwrap_or_default(), svc)
}

/// A source whose whole content is replaced at once; changes are computed per service.
#[derive(Default)]
struct MemorySource {
    inner: Mutex<(bool, Objects, Changes)>,
}

impl MemorySource {
    fn new(objects: Objects) -> Arc<MemorySource> {
        let s = Arc::new(MemorySource::default());
        s.set(objects);
        s.inner.lock().unwrap().0 = true;
        s
    }

    fn set(&self, new: Objects) {
        let mut g = self.inner.lock().unwrap();
        let old = std::mem::take(&mut g.1);
        let json = |v: &dyn erased::Ser| v.json();
        let mut keys = BTreeSet::new();
        let per_key = |objs: &Objects| {
            let mut m: BTreeMap<ServiceKey, Vec<String>> = BTreeMap::new();
            for s in &objs.services {
                m.entry(key_of_service(s)).or_default().push(json(s));
            }
            for s in &objs.slices {
                m.entry(key_of_slice(s)).or_default().push(json(s));
            }
            m
        };
        let (a, b) = (per_key(&old), per_key(&new));
        for k in a.keys().chain(b.keys()) {
            if a.get(k) != b.get(k) {
                keys.insert(k.clone());
            }
        }
        for o in [&old, &new] {
            for s in o
                .services
                .iter()
                .filter(|s| keys.contains(&key_of_service(s)))
            {
                g.2.families = g.2.families.union(service_families(s));
            }
            for s in o.slices.iter().filter(|s| keys.contains(&key_of_slice(s))) {
                g.2.families = g.2.families.union(slice_families(s));
            }
        }
        let nodes = |o: &Objects| o.nodes.iter().map(|n| json(n)).collect::<Vec<_>>();
        let cidrs = |o: &Objects| o.service_cidrs.iter().map(|n| json(n)).collect::<Vec<_>>();
        g.2.node |= nodes(&old) != nodes(&new);
        g.2.service_cidrs |= cidrs(&old) != cidrs(&new);
        g.2.services.extend(keys);
        g.1 = new;
    }
}

/// The families of a Service's ClusterIPs (the cache's rule, on plain objects).
fn service_families(s: &Service) -> Families {
    let spec = s.spec.clone().unwrap_or_default();
    let ips = match spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips,
        _ => spec.cluster_ip.into_iter().collect(),
    };
    ips.iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| Family::of(&ip))
        .collect()
}

/// The family of a slice's address type.
fn slice_families(s: &EndpointSlice) -> Families {
    match s.address_type.as_str() {
        "IPv4" => Families::of(Family::V4),
        "IPv6" => Families::of(Family::V6),
        _ => Families::NONE,
    }
}

mod erased {
    pub trait Ser {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap()
        }
    }
}

impl Source for MemorySource {
    fn service_keys(&self) -> Option<Vec<ServiceKey>> {
        let g = self.inner.lock().unwrap();
        let mut keys: Vec<ServiceKey> = g.1.services.iter().map(key_of_service).collect();
        keys.extend(g.1.slices.iter().map(key_of_slice));
        keys.sort();
        keys.dedup();
        Some(keys)
    }

    fn synced(&self) -> bool {
        self.inner.lock().unwrap().0
    }
    fn take_changes(&self) -> Changes {
        std::mem::take(&mut self.inner.lock().unwrap().2)
    }
    fn objects(&self, only: Option<&BTreeSet<ServiceKey>>) -> Objects {
        let g = self.inner.lock().unwrap();
        let keep = |k: &ServiceKey| only.is_none_or(|o| o.contains(k));
        Objects {
            services: g
                .1
                .services
                .iter()
                .filter(|s| keep(&key_of_service(s)))
                .cloned()
                .collect(),
            slices: g
                .1
                .slices
                .iter()
                .filter(|s| keep(&key_of_slice(s)))
                .cloned()
                .collect(),
            nodes: g.1.nodes.clone(),
            service_cidrs: g.1.service_cidrs.clone(),
        }
    }
}

struct Fixture {
    source: Arc<MemorySource>,
    syncer: Syncer<MemorySource, FakeBackend>,
    metrics: Arc<Metrics>,
    health: Arc<ProxyHealth>,
    checks: Arc<HealthChecks>,
}

fn settings() -> Settings {
    Settings {
        hostname: "node-a".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Settings::default()
    }
}

fn fixture_with(objects: Objects, backend: FakeBackend) -> Fixture {
    let source = MemorySource::new(objects);
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
    let checks = Arc::new(HealthChecks::default());
    let mut config = SyncConfig::new(Duration::ZERO, Duration::from_secs(30));
    config.defer_chain_deletes = false;
    let syncer = Syncer::new(
        source.clone(),
        backend,
        settings(),
        config,
        metrics.clone(),
        health.clone(),
        checks.clone(),
    );
    Fixture {
        source,
        syncer,
        metrics,
        health,
        checks,
    }
}

fn fixture(objects: Objects) -> Fixture {
    fixture_with(objects, FakeBackend::new())
}

/// What a fresh full render of the source's current objects gives.
fn expected(source: &MemorySource) -> crate::nft::Ruleset {
    let (model, _) = model::build(&source.objects(None), &settings());
    render(&model)
}

/// The kernel holds exactly what the renderer says it should (after partial syncs the
/// slot ranges differ from a fresh render; `render::incremental`'s property tests prove
/// the two equivalent), and `ip` is among the programmed endpoints.
fn assert_programmed(f: &mut Fixture, endpoint: &str) {
    let want = f.syncer.renderer.ruleset();
    let state = f.syncer.backend().state().clone();
    assert!(state == want, "kernel state differs from the renderer's");
    let text = crate::nft::text::ruleset(&state);
    assert!(
        text.contains(endpoint),
        "{endpoint} not programmed:\n{text}"
    );
}

fn two_services() -> Objects {
    two_services_with(&[("10.244.1.5", "node-a"), ("10.244.2.5", "node-b")])
}

/// TCP service `a` with these endpoints, UDP service `b` with two.
fn two_services_with(a_endpoints: &[(&str, &str)]) -> Objects {
    objects(
        vec![
            service("a", "10.96.0.1", "TCP"),
            service("b", "10.96.0.2", "UDP"),
        ],
        vec![
            slice("a", "TCP", a_endpoints),
            slice(
                "b",
                "UDP",
                &[("10.244.1.6", "node-a"), ("10.244.2.6", "node-b")],
            ),
        ],
    )
}

#[test]
fn first_sync_is_full_and_programs_the_whole_ruleset() {
    let mut f = fixture(two_services());
    let r = f.syncer.sync(false).unwrap();
    assert!(r.full);
    assert_eq!(r.service_ports, 2);
    assert_eq!(f.syncer.backend().state(), &expected(&f.source));
    let (healthy, last) = f.health.status(SystemTime::now());
    assert!(healthy && last.is_some());
    assert!(f.health.node_eligible());
    assert_eq!(
        f.metrics
            .sync_full_duration
            .with_label_values(&["IPv4"])
            .get_sample_count(),
        1
    );
}

#[test]
fn a_changed_endpoint_is_a_partial_sync_touching_only_elements() {
    let mut f = fixture(two_services());
    f.syncer.sync(false).unwrap();
    let commits = f.syncer.backend().commits();
    f.source.set(two_services_with(&[
        ("10.244.1.5", "node-a"),
        ("10.244.2.5", "node-b"),
        ("10.244.2.7", "node-b"),
    ]));
    let r = f.syncer.sync(false).unwrap();
    assert!(!r.full);
    assert_eq!(r.services_changed, 1);
    assert_eq!(f.syncer.backend().commits(), commits + 1);
    assert_programmed(&mut f, "10.244.2.7");
    let tx = f.syncer.backend().last_transaction().unwrap().clone();
    assert!(
        tx.ops.iter().all(|op| !matches!(
            op,
            Op::AddTable { .. } | Op::DeleteTable { .. } | Op::DeleteSet { .. }
        )),
        "{tx:?}"
    );
}

#[test]
fn nothing_changed_sends_nothing() {
    let mut f = fixture(two_services());
    f.syncer.sync(false).unwrap();
    let applies = f.syncer.backend().applies();
    let r = f.syncer.sync(false).unwrap();
    assert_eq!(r.operations, 0);
    assert_eq!(f.syncer.backend().applies(), applies);
}

#[test]
fn a_deleted_service_goes_away() {
    let mut f = fixture(two_services());
    f.syncer.sync(false).unwrap();
    f.source.set(objects(
        vec![service("a", "10.96.0.1", "TCP")],
        vec![slice("a", "TCP", &[("10.244.1.5", "node-a")])],
    ));
    let r = f.syncer.sync(false).unwrap();
    assert!(!r.full);
    assert_eq!(r.service_ports, 1);
    assert_programmed(&mut f, "10.244.1.5");
    let text = crate::nft::text::ruleset(f.syncer.backend().state());
    assert!(!text.contains("10.96.0.2"), "{text}");
}

#[test]
fn a_failed_transaction_is_counted_and_retried_as_a_full_sync() {
    let mut f = fixture(two_services());
    f.syncer.sync(false).unwrap();
    let before = f.syncer.backend().state().clone();
    f.source.set(objects(
        vec![service("a", "10.96.0.1", "TCP")],
        vec![slice("a", "TCP", &[("10.244.1.9", "node-a")])],
    ));
    f.syncer.backend().fail_next(libc::EINVAL);
    assert!(f.syncer.sync(false).is_err());
    assert_eq!(
        f.syncer.backend().state(),
        &before,
        "a failed sync changes nothing"
    );
    assert_eq!(
        f.metrics.sync_failures.with_label_values(&["IPv4"]).get(),
        1
    );
    // The retry waits for the backoff and is full, even though no new change arrived.
    assert!(f.syncer.retry_at.is_some());
    let r = f.syncer.sync(false).unwrap();
    assert!(r.full);
    assert_eq!(f.syncer.backend().state(), &expected(&f.source));
    assert!(f.syncer.retry_at.is_none());
}

#[test]
fn retry_backoff_doubles_up_to_the_sync_period() {
    let mut f = fixture(two_services());
    f.syncer.config.sync_period = Duration::from_secs(5);
    let mut seen = Vec::new();
    for _ in 0..5 {
        f.syncer.backend().fail_next(libc::EINVAL);
        assert!(f.syncer.sync(false).is_err());
        seen.push(f.syncer.backoff);
    }
    assert_eq!(
        seen,
        [2, 4, 5, 5, 5].map(Duration::from_secs).to_vec(),
        "backoff after each failure"
    );
}

#[test]
fn restart_adopts_what_the_kernel_holds_without_sending_anything() {
    let source = MemorySource::new(two_services());
    let held = expected(&source);
    let mut f = fixture_with(two_services(), FakeBackend::with_state(held.clone()));
    let r = f.syncer.sync(false).unwrap();
    assert!(r.full);
    assert_eq!(r.operations, 0);
    assert_eq!(f.syncer.backend().commits(), 0);
    assert_eq!(f.syncer.backend().state(), &held);
}

/// ClientIP services with two endpoints each (all TCP port 80).
fn sticky_services(names: &[&str]) -> Objects {
    let services = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            svc("ns", n)
                .cluster_ip(&format!("10.96.1.{}", i + 1))
                .port("p", 80, "TCP")
                .target_port(8080)
                .session_affinity("ClientIP")
                .build()
        })
        .collect();
    let slices = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let a = format!("10.244.3.{}", 2 * i + 1);
            let b = format!("10.244.4.{}", 2 * i + 1);
            slice(n, "TCP", &[(&a, "node-a"), (&b, "node-b")])
        })
        .collect();
    objects(services, slices)
}

#[test]
fn restart_adopts_the_affinity_lists_the_running_daemon_placed() {
    // The running daemon places "z" in the block "a" freed; a fresh render would put
    // it last and move "b" and "c" (their chains rewritten, their clients re-picked).
    let mut f = fixture(sticky_services(&["a", "b", "c"]));
    f.syncer.sync(false).unwrap();
    f.source.set(sticky_services(&["b", "c", "z"]));
    f.syncer.sync(false).unwrap();
    let held = f.syncer.backend().state().clone();
    assert_ne!(held, expected(&f.source), "the test needs a history");
    let mut restarted = fixture_with(
        sticky_services(&["b", "c", "z"]),
        FakeBackend::with_state(held.clone()),
    );
    let r = restarted.syncer.sync(false).unwrap();
    assert!(r.full);
    assert_eq!(r.operations, 0, "the restart rewrote what the kernel held");
    assert_eq!(restarted.syncer.backend().state(), &held);
}

#[test]
fn restart_after_churn_takes_over_the_kernels_blocks() {
    let svcs = |names: &[&str]| {
        let services = names
            .iter()
            .enumerate()
            .map(|(i, n)| service(n, &format!("10.96.0.{}", i + 1), "TCP"))
            .collect();
        let slices = names
            .iter()
            .enumerate()
            .map(|(i, n)| slice(n, "TCP", &[(&format!("10.244.1.{}", i + 1), "node-a")]))
            .collect();
        objects(services, slices)
    };
    let mut f = fixture(svcs(&["a", "b", "c"]));
    f.syncer.sync(false).unwrap();
    // Churn: "a" goes, "d" comes and takes a's freed block.
    f.source.set(svcs(&["b", "c", "d"]));
    assert!(!f.syncer.sync(false).unwrap().full);
    let held = f.syncer.backend().state().clone();
    assert!(
        held != expected(&f.source),
        "a fresh render places the blocks differently"
    );
    // A new process on the same kernel: nothing to send.
    let mut g = fixture_with(
        svcs(&["b", "c", "d"]),
        FakeBackend::with_state(held.clone()),
    );
    let r = g.syncer.sync(false).unwrap();
    assert!(r.full);
    assert_eq!(r.operations, 0);
    assert_eq!(g.syncer.backend().commits(), 0);
    // And it goes on from there: a new service gets a free block.
    g.source.set(svcs(&["b", "c", "d", "e"]));
    assert!(!g.syncer.sync(false).unwrap().full);
    assert_programmed(&mut g, "10.244.1.4");
}

#[test]
fn drift_is_noticed_by_generation_and_repaired_exactly() {
    let mut f = fixture(two_services());
    f.syncer.sync(false).unwrap();
    let good = f.syncer.backend().state().clone();
    // Someone flushes one of kproxy's chains.
    {
        let st = f.syncer.backend().state_mut();
        let (_, chain) = st.tables[0]
            .chains
            .iter_mut()
            .find(|(name, _)| name.starts_with("service-"))
            .unwrap();
        chain.rules.clear();
    }
    f.syncer.check_drift();
    assert_eq!(f.syncer.backend().state(), &good);
    assert_eq!(f.metrics.drift_repairs.get(), 1);
    // A generation change that did not touch kproxy's tables is not a repair.
    f.syncer.backend().state_mut();
    f.syncer.check_drift();
    assert_eq!(f.metrics.drift_repairs.get(), 1);
}

#[test]
fn node_changes_force_a_full_sync() {
    let mut f = fixture(two_services());
    f.syncer.sync(false).unwrap();
    let mut moved = two_services();
    moved.nodes = vec![node_named("node-a", "192.168.50.11")];
    f.source.set(moved);
    let r = f.syncer.sync(false).unwrap();
    assert!(r.full);
    assert_eq!(f.syncer.backend().state(), &expected(&f.source));
}

#[test]
fn node_not_found_makes_the_node_ineligible() {
    let mut other = two_services();
    other.nodes = vec![node_named("node-z", "192.168.50.10")];
    let mut f = fixture(other);
    f.syncer.sync(false).unwrap();
    assert!(!f.health.node_eligible());
}

#[test]
fn health_check_node_ports_follow_the_services() {
    let lb = svc("ns", "lb")
        .type_("LoadBalancer")
        .cluster_ip("10.96.0.9")
        .etp_local()
        .health_check_node_port(32000)
        .port("p", 80, "TCP")
        .target_port(8080)
        .node_port(31000)
        .lb_ingress("192.0.2.9")
        .build();
    let mut f = fixture(objects(
        vec![lb.clone()],
        vec![slice(
            "lb",
            "TCP",
            &[
                ("10.244.1.5", "node-a"),
                ("10.244.1.6", "node-a"),
                ("10.244.2.5", "node-b"),
            ],
        )],
    ));
    f.syncer.sync(false).unwrap();
    let hc = f
        .checks
        .get(Family::V4, 32000)
        .expect("health check served");
    assert_eq!((hc.namespace.as_str(), hc.name.as_str()), ("ns", "lb"));
    assert_eq!(hc.local_endpoints, 2);
    // Local endpoints gone: the count drops to 0 and the no-local gauge counts it.
    f.source.set(objects(
        vec![lb],
        vec![slice("lb", "TCP", &[("10.244.2.5", "node-b")])],
    ));
    f.syncer.sync(false).unwrap();
    assert_eq!(f.checks.get(Family::V4, 32000).unwrap().local_endpoints, 0);
    assert_eq!(
        f.metrics
            .no_local_endpoints
            .with_label_values(&["IPv4", "external"])
            .get(),
        1
    );
    // Service deleted: the health check goes.
    f.source.set(objects(vec![], vec![]));
    f.syncer.sync(false).unwrap();
    assert!(f.checks.get(Family::V4, 32000).is_none());
}

/// `b` as an eTP Local LoadBalancer service with ports `p` and `q`.
fn lb_two_ports(b: ServiceBuilder, hc_port: i32) -> Service {
    b.type_("LoadBalancer")
        .etp_local()
        .health_check_node_port(hc_port)
        .port("p", 80, "TCP")
        .target_port(8080)
        .node_port(hc_port - 1000)
        .port("q", 81, "TCP")
        .target_port(8081)
        .node_port(hc_port - 999)
        .build()
}

#[test]
fn health_checks_per_family_count_that_familys_local_ready_ips() {
    let two_ports = |slice_name: &str, service: &str, family: &str| {
        fx_slice("ns", slice_name, service)
            .address_type(family)
            .port("p", 8080, "TCP")
            .port("q", 8081, "TCP")
    };
    let v4 = two_ports("dual-v4", "dual", "IPv4")
        .endpoint(ep("10.244.1.5").node("node-a"))
        .endpoint(
            ep("10.244.1.6")
                .node("node-a")
                .ready(false)
                .terminating(true),
        )
        .endpoint(ep("10.244.1.7").node("node-a").ready(false))
        .endpoint(ep("10.244.2.5").node("node-b"))
        .build();
    let v6 = two_ports("dual-v6", "dual", "IPv6")
        .endpoint(ep("fd00:244:1::5").node("node-a"))
        .endpoint(ep("fd00:244:1::6").node("node-a"))
        .build();
    let only4 = two_ports("v4only-1", "v4only", "IPv4")
        .endpoint(ep("10.244.1.8").node("node-a"))
        .build();
    let mut f = fixture(objects(
        vec![
            lb_two_ports(
                svc("ns", "dual").dual_stack("10.96.0.9", "fd00:96::9"),
                32000,
            ),
            lb_two_ports(svc("ns", "v4only").cluster_ip("10.96.0.10"), 32001),
        ],
        vec![v4, v6, only4],
    ));
    f.syncer.sync(false).unwrap();
    // One per family on the same port, each with its own family's count: distinct IPs
    // across both ports, not-ready and terminating ones left out.
    let v4 = f.checks.get(Family::V4, 32000).expect("v4 health check");
    let v6 = f.checks.get(Family::V6, 32000).expect("v6 health check");
    assert_eq!((v4.name.as_str(), v4.local_endpoints), ("dual", 1));
    assert_eq!((v6.name.as_str(), v6.local_endpoints), ("dual", 2));
    // A single-stack service only in its family.
    assert_eq!(f.checks.get(Family::V4, 32001).unwrap().local_endpoints, 1);
    assert!(f.checks.get(Family::V6, 32001).is_none());
    assert_eq!(
        f.checks.ports(),
        vec![
            (Family::V4, 32000),
            (Family::V4, 32001),
            (Family::V6, 32000)
        ]
    );
}

#[test]
fn health_checks_listen_where_node_port_addresses_say() {
    let mut f = fixture(objects(vec![], vec![]));
    let ips = |a: &[&str]| HealthCheckBind::Ips(a.iter().map(|a| a.parse().unwrap()).collect());
    let mut bind = |npa: NodePortAddresses, local: &[&str]| {
        f.syncer.settings.nodeport_addresses = npa;
        f.syncer.settings.local_addresses =
            Some(local.iter().map(|a| a.parse().unwrap()).collect());
        f.syncer.sync(true).unwrap();
        (f.checks.bind(Family::V4), f.checks.bind(Family::V6))
    };
    let cidrs =
        |c: &[&str]| NodePortAddresses::Cidrs(c.iter().map(|c| c.parse().unwrap()).collect());
    // `primary`: the node's IP of the family when it is local; a family without one
    // listens everywhere.
    assert_eq!(
        bind(
            NodePortAddresses::Primary,
            &["127.0.0.1", "192.168.50.10", "::1"]
        ),
        (ips(&["192.168.50.10"]), HealthCheckBind::All)
    );
    assert_eq!(
        bind(NodePortAddresses::Primary, &["127.0.0.1", "::1"]),
        (ips(&[]), HealthCheckBind::All)
    );
    // CIDRs: every local IP of the family inside them, loopback included.
    assert_eq!(
        bind(
            cidrs(&["127.0.0.0/8", "192.168.0.0/16"]),
            &["10.1.1.1", "127.0.0.1", "192.168.50.10", "::1"]
        ),
        (ips(&["127.0.0.1", "192.168.50.10"]), HealthCheckBind::All)
    );
    assert_eq!(
        bind(cidrs(&["::1/128"]), &["127.0.0.1", "::1", "fd00::1"]),
        (HealthCheckBind::All, ips(&["::1"]))
    );
    assert_eq!(
        bind(cidrs(&["0.0.0.0/0", "fd00::/8"]), &["127.0.0.1", "::1"]),
        (HealthCheckBind::All, ips(&[]))
    );
}

/// Each `clean` call: the family and the ports passed.
type Calls = Arc<Mutex<Vec<(Family, Vec<ServicePort>)>>>;

#[derive(Clone, Default)]
struct Recorder(Calls);

impl FlowCleaner for Recorder {
    fn clean(
        &mut self,
        family: Family,
        ports: &[ServicePort],
        _node_addresses: &[IpAddr],
    ) -> Result<usize, String> {
        self.0.lock().unwrap().push((family, ports.to_vec()));
        Ok(ports.len())
    }
}

#[test]
fn conntrack_cleanup_sees_changed_udp_ports_and_deleted_ones_empty() {
    let rec = Recorder::default();
    let mut f = fixture(two_services());
    f.syncer = f.syncer.with_cleaner(Box::new(rec.clone()));
    f.syncer.sync(false).unwrap();
    {
        let calls = rec.0.lock().unwrap();
        let v4: Vec<_> = calls.iter().filter(|(f, _)| *f == Family::V4).collect();
        assert_eq!(v4.len(), 1);
        assert_eq!(v4[0].1.len(), 1, "only the UDP port");
        assert_eq!(v4[0].1[0].name.name, "b");
    }
    rec.0.lock().unwrap().clear();
    // UDP service b deleted: its old port is passed with no endpoints.
    f.source.set(objects(
        vec![service("a", "10.96.0.1", "TCP")],
        vec![slice("a", "TCP", &[("10.244.1.5", "node-a")])],
    ));
    let r = f.syncer.sync(false).unwrap();
    assert_eq!(r.conntrack_deleted, 1);
    let calls = rec.0.lock().unwrap();
    let (_, ports) = calls
        .iter()
        .find(|(f, p)| *f == Family::V4 && !p.is_empty())
        .unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.name, "b");
    assert!(ports[0].cluster_endpoints.is_empty() && ports[0].local_endpoints.is_empty());
    assert_eq!(
        f.metrics
            .conntrack_deleted_entries
            .with_label_values(&["IPv4"])
            .get(),
        2
    );
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Warning>>>);

impl WarningSink for Sink {
    fn warn(&self, w: &Warning) {
        self.0.lock().unwrap().push(w.clone());
    }
}

#[test]
fn invalid_objects_are_skipped_reported_and_counted_without_disturbing_others() {
    let sink = Sink::default();
    let mut objects = two_services();
    objects
        .services
        .push(service_with_port("bad", "10.96.0.3", "TCP", 70000));
    let mut f = fixture(objects);
    f.syncer = f.syncer.with_warnings(Box::new(sink.clone()));
    let r = f.syncer.sync(false).unwrap();
    assert_eq!(r.warnings, 1);
    assert_eq!(r.service_ports, 2);
    let w = sink.0.lock().unwrap();
    assert_eq!(w[0].object, "Service ns/bad");
    assert_eq!(
        f.metrics
            .invalid_objects
            .with_label_values(&["Service"])
            .get(),
        1
    );
}

fn run_in_background(
    mut syncer: Syncer<MemorySource, FakeBackend>,
    trigger: Arc<Trigger>,
) -> (
    Arc<AtomicBool>,
    std::thread::JoinHandle<Syncer<MemorySource, FakeBackend>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let h = std::thread::spawn(move || {
        syncer.run(&trigger, &s);
        syncer
    });
    (stop, h)
}

#[test]
fn nothing_is_programmed_before_the_source_is_synced() {
    let f = fixture(two_services());
    f.source.inner.lock().unwrap().0 = false;
    let trigger = Trigger::new(f.health.clone(), f.metrics.clone());
    let (stop, h) = run_in_background(f.syncer, trigger.clone());
    trigger.notify(Families::BOTH);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    trigger.wake();
    let mut syncer = h.join().unwrap();
    assert_eq!(syncer.backend().applies(), 0);
    assert!(syncer.backend().state().tables.is_empty());
}

#[test]
fn changes_coalesce_and_respect_the_min_sync_period() {
    let mut f = fixture(two_services());
    f.syncer.config.min_sync_period = Duration::from_millis(400);
    let trigger = Trigger::new(f.health.clone(), f.metrics.clone());
    let source = f.source.clone();
    let (stop, h) = run_in_background(f.syncer, trigger.clone());
    // 20 changes within ~200 ms after the first sync.
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..20 {
        source.set(objects(
            vec![service("a", "10.96.0.1", "TCP")],
            vec![slice(
                "a",
                "TCP",
                &[(&format!("10.244.1.{}", 10 + i), "node-a")],
            )],
        ));
        trigger.notify(Families::BOTH);
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(900));
    stop.store(true, Ordering::SeqCst);
    trigger.wake();
    let syncer = h.join().unwrap();
    let syncs = f
        .metrics
        .sync_duration
        .with_label_values(&["IPv4"])
        .get_sample_count();
    // The first (full) sync, then the 20 changes in at most two more syncs.
    assert!((2..=3).contains(&syncs), "{syncs} syncs");
    let mut f = Fixture {
        syncer,
        ..fixture(objects(vec![], vec![]))
    };
    assert_programmed(&mut f, "10.244.1.29");
}

#[test]
fn full_syncs_built_in_chunks_equal_one_build() {
    for chunk in [1, 2, 1000] {
        let mut f = fixture(two_services());
        f.syncer.config.build_chunk = chunk;
        f.syncer.sync(true).unwrap();
        assert!(
            f.syncer.backend().state() == &expected(&f.source),
            "chunk size {chunk}"
        );
    }
}

/// A fixture whose fake owns only `kproxy` tables (others are a neighbour's), watching
/// the fake's notifications, after its first full sync.
fn watching(objects: Objects) -> Fixture {
    let mut f = fixture_with(objects, FakeBackend::new().with_own_table("kproxy"));
    let trigger = Trigger::new(f.health.clone(), f.metrics.clone());
    assert!(f.syncer.watch_kernel(&trigger).unwrap());
    f.syncer.sync(false).unwrap();
    f
}

fn neighbour_table(elements: &[&str]) -> crate::nft::Table {
    use crate::nft::{DataType, Element, Set, SetData, Table, Value};
    let mut t = Table::new(Family::V4, "neighbour");
    let mut s = Set::new("blocked", vec![DataType::Ipv4Addr], SetData::None);
    for e in elements {
        s.insert(Element::key(vec![Value::Addr(e.parse().unwrap())]));
    }
    t.add_set(s);
    t
}

fn checks(f: &Fixture, scope: &str) -> u64 {
    f.metrics.drift_checks.with_label_values(&[scope]).get()
}

/// The name of the first `service-…` chain of the IPv4 table.
fn a_service_chain(f: &mut Fixture) -> String {
    f.syncer.backend().state().tables[0]
        .chains
        .keys()
        .find(|n| n.starts_with("service-"))
        .unwrap()
        .clone()
}

#[test]
fn a_neighbours_commits_to_its_own_table_cost_nothing() {
    let mut f = watching(two_services());
    let dumps = f.syncer.backend().dumps();
    for i in 0..20 {
        let ips: Vec<String> = (0..=i).map(|n| format!("192.0.2.{n}")).collect();
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        f.syncer.backend().commit_as_neighbour(|rs| {
            rs.tables.retain(|t| t.name != "neighbour");
            rs.tables.push(neighbour_table(&ips));
        });
        f.syncer.check_drift();
        // kproxy syncs a change in between, as it would from the API server.
        if i == 10 {
            f.source.set(two_services_with(&[("10.244.1.9", "node-a")]));
            assert!(!f.syncer.sync(false).unwrap().full);
        }
    }
    let b = f.syncer.backend();
    assert_eq!(
        b.dumps(),
        dumps,
        "kproxy read its tables because of the neighbour"
    );
    assert_eq!(b.object_dumps(), 0);
    assert_eq!(f.metrics.drift_repairs.get(), 0);
    assert_eq!((checks(&f, "full"), checks(&f, "objects")), (0, 0));
    let other = f
        .metrics
        .foreign_commits
        .with_label_values(&["other"])
        .get();
    assert_eq!(other, 20);
    // The neighbour's table is as it wrote it, also after a full sync of kproxy's.
    f.syncer.sync(true).unwrap();
    let held = f.syncer.backend().state().clone();
    let n = held.tables.iter().find(|t| t.name == "neighbour").unwrap();
    assert_eq!(n.sets["blocked"].elements.len(), 20);
    assert_programmed_own(&mut f);
}

/// kproxy's tables in the fake equal the renderer's ruleset (a neighbour's aside).
fn assert_programmed_own(f: &mut Fixture) {
    let want = f.syncer.renderer.ruleset();
    let mut state = f.syncer.backend().state().clone();
    state.tables.retain(|t| t.name == "kproxy");
    assert!(state == want, "kproxy's tables differ from the renderer's");
}

#[test]
fn a_flushed_chain_is_read_back_and_repaired_alone() {
    let mut f = watching(two_services());
    let chain = a_service_chain(&mut f);
    let dumps = f.syncer.backend().dumps();
    f.syncer.backend().commit_as_neighbour(|rs| {
        rs.tables[0].chains.get_mut(&chain).unwrap().rules.clear();
    });
    f.syncer.check_drift();
    assert_programmed_own(&mut f);
    let b = f.syncer.backend();
    assert_eq!(
        b.dumps(),
        dumps,
        "a flushed chain made kproxy read everything"
    );
    assert_eq!(b.object_dumps(), 1);
    let tx = b.last_transaction().unwrap().clone();
    assert!(
        tx.ops.iter().all(|op| op.describe().contains(&chain)),
        "the repair touched more than the chain: {tx:?}"
    );
    assert_eq!(f.metrics.drift_repairs.get(), 1);
    assert_eq!((checks(&f, "full"), checks(&f, "objects")), (0, 1));
    // Nothing more to see: nothing more is read.
    f.syncer.check_drift();
    assert_eq!(f.syncer.backend().object_dumps(), 1);
}

#[test]
fn elements_deleted_from_table_wide_and_endpoint_maps_come_back() {
    let mut f = watching(two_services());
    let before = f.syncer.backend().state().clone();
    f.syncer.backend().commit_as_neighbour(|rs| {
        let t = &mut rs.tables[0];
        for name in ["service-ips", "endpoints-0"] {
            let s = t.sets.get_mut(name).unwrap();
            let first = s.elements.iter().next().unwrap().clone();
            s.elements.remove(&first.key);
        }
    });
    f.syncer.check_drift();
    assert_eq!(f.syncer.backend().state(), &before);
    assert_eq!(f.metrics.drift_repairs.get(), 1);
    assert_eq!(checks(&f, "objects"), 1);
}

#[test]
fn objects_added_to_kproxys_table_by_others_are_removed() {
    let mut f = watching(two_services());
    let before = f.syncer.backend().state().clone();
    f.syncer.backend().commit_as_neighbour(|rs| {
        let t = &mut rs.tables[0];
        t.add_chain(crate::nft::Chain::regular("intruder"));
        let mut s = neighbour_table(&["192.0.2.1"]).sets["blocked"].clone();
        s.name = "intruders".into();
        t.add_set(s);
    });
    f.syncer.check_drift();
    assert_eq!(f.syncer.backend().state(), &before);
    assert_eq!(checks(&f, "objects"), 1);
}

#[test]
fn a_change_between_kproxys_commit_and_its_check_is_repaired() {
    let mut f = watching(two_services());
    let chain = a_service_chain(&mut f);
    // The neighbour flushes the chain right after kproxy's next commit.
    let c = chain.clone();
    f.syncer.backend().after_next_commit(move |rs| {
        rs.tables[0].chains.get_mut(&c).unwrap().rules.clear();
    });
    f.source.set(two_services_with(&[("10.244.1.9", "node-a")]));
    assert!(!f.syncer.sync(false).unwrap().full);
    f.syncer.check_drift();
    assert_programmed_own(&mut f);
    assert_eq!(f.metrics.drift_repairs.get(), 1);
    assert_eq!(checks(&f, "objects"), 1);
}

#[test]
fn what_notifications_cannot_attribute_is_compared_in_full() {
    // The table itself deleted.
    let mut f = watching(two_services());
    let before = f.syncer.backend().state().clone();
    f.syncer
        .backend()
        .commit_as_neighbour(|rs| rs.tables.retain(|t| t.family != Family::V4));
    f.syncer.check_drift();
    assert_eq!(f.syncer.backend().state(), &before);
    assert_eq!((checks(&f, "full"), checks(&f, "objects")), (1, 0));
    // Lost notifications (an overrun) with nothing wrong: one full comparison, no repair.
    f.syncer.backend().lose_notifications();
    f.syncer.check_drift();
    assert_eq!(checks(&f, "full"), 2);
    assert_eq!(f.metrics.drift_repairs.get(), 1);
    // A change no notification reported.
    let chain = a_service_chain(&mut f);
    f.syncer.backend().state_mut().tables[0]
        .chains
        .get_mut(&chain)
        .unwrap()
        .rules
        .clear();
    f.syncer.check_drift();
    assert_eq!(f.syncer.backend().state(), &before);
    assert_eq!((checks(&f, "full"), f.metrics.drift_repairs.get()), (3, 2));
}

#[test]
fn the_renderer_hands_out_each_object_as_the_full_ruleset_holds_it() {
    // Plain and affinity services, over several shards, after churn.
    let mut o = sticky_services(&["s1", "s2", "s3"]);
    let plain = two_services();
    o.services.extend(plain.services);
    o.slices.extend(plain.slices);
    let mut f = fixture(o.clone());
    f.syncer.sync(false).unwrap();
    o.slices.pop();
    f.source.set(o);
    f.syncer.sync(false).unwrap();
    let full = f.syncer.renderer.ruleset();
    for t in &full.tables {
        let one = |chains: &[&String], sets: &[&String]| {
            let c: BTreeSet<String> = chains.iter().map(|s| s.to_string()).collect();
            let s: BTreeSet<String> = sets.iter().map(|s| s.to_string()).collect();
            f.syncer.renderer.objects(t.family, &c, &s).unwrap()
        };
        for (name, chain) in &t.chains {
            let got = one(&[name], &[]);
            assert_eq!(got.chains.len(), 1, "{name}");
            assert_eq!(&got.chains[name], chain, "{name}");
            assert!(got.sets.is_empty());
            assert_eq!(got.comment, t.comment);
        }
        for (name, set) in &t.sets {
            let got = one(&[], &[name]);
            assert_eq!(&got.sets[name], set, "{name}");
        }
        let absent = one(&[&"nope".to_string()], &[&"none".to_string()]);
        assert!(absent.chains.is_empty() && absent.sets.is_empty());
        let all = one(
            &t.chains.keys().collect::<Vec<_>>(),
            &t.sets.keys().collect::<Vec<_>>(),
        );
        assert!(&all == t, "every object at once differs from the table");
    }
}
