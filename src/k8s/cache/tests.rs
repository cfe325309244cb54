//! Tests of the informer cache's event semantics (no server: [`Cache::apply`] directly).

use std::time::UNIX_EPOCH;

use super::*;
use crate::health::ProxyHealth;
use crate::testutil::fixtures as fx;

const START: u64 = 1_700_000_000;

fn cache() -> (Cache, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
    let trigger = Trigger::new(health, metrics.clone());
    let started = UNIX_EPOCH + Duration::from_secs(START);
    (
        Cache::with_start_time("node-a", trigger, metrics.clone(), started),
        metrics,
    )
}

/// Whether `Trigger::notify` ran since the last call (it stamps this gauge).
fn notified(m: &Metrics) -> bool {
    let g = m.last_queued_timestamp.with_label_values(&["IPv4"]);
    let n = g.get() > 0.0;
    g.set(0.0);
    n
}

fn svc_b(name: &str, ip: &str) -> fx::ServiceBuilder {
    fx::svc("ns", name)
        .uid(&format!("uid-{name}"))
        .resource_version("1")
        .cluster_ip(ip)
        .port("", 80, "TCP")
}

fn svc(name: &str, ip: &str) -> Service {
    svc_b(name, ip).build()
}

fn slice_b(name: &str, service: &str, ips: &[&str]) -> fx::SliceBuilder {
    fx::slice("ns", name, service)
        .uid(&format!("uid-{name}"))
        .resource_version("1")
        .port("", 8080, "TCP")
        .endpoints(ips.iter().map(|ip| fx::ep(ip).node("node-a").ready(true)))
}

fn slice(name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
    slice_b(name, service, ips).build()
}

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("ns", name)
}

fn keys(names: &[&str]) -> BTreeSet<ServiceKey> {
    names.iter().map(|n| key(n)).collect()
}

/// Lists services and slices once (every watcher complete) and forgets the changes.
fn synced_with(c: &Cache, services: Vec<Service>, slices: Vec<EndpointSlice>) {
    c.list_all(Objects {
        services,
        slices,
        ..Objects::default()
    });
    assert!(c.synced());
    c.take_changes();
}

fn names(objects: &Objects) -> (Vec<String>, Vec<String>) {
    (
        objects
            .services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect(),
        objects
            .slices
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect(),
    )
}

#[test]
fn synced_after_all_first_lists_and_notified_then() {
    let (c, m) = cache();
    c.apply(Update::ServiceCidr(Event::Init));
    c.apply(Update::ServiceCidr(Event::InitDone));
    c.apply(Update::Service(Event::Init));
    c.apply(Update::Service(Event::InitApply(svc("a", "10.0.0.1"))));
    c.apply(Update::Service(Event::InitDone));
    assert!(!c.synced(), "slices not listed yet");
    assert!(!notified(&m));
    c.apply(Update::Slice(Event::Init));
    c.apply(Update::Slice(Event::InitApply(slice(
        "a-1",
        "a",
        &["10.1.0.1"],
    ))));
    assert!(!c.synced());
    c.apply(Update::Slice(Event::InitDone));
    assert!(!c.synced(), "the Node list is not in yet");
    assert!(!notified(&m));
    c.apply(Update::Node(Event::Init));
    c.apply(Update::Node(Event::InitDone));
    assert!(c.synced());
    assert!(notified(&m));
    let ch = c.take_changes();
    assert_eq!(ch.services, keys(&["a"]));
    assert!(c.take_changes().is_empty());
    let (svcs, slices) = names(&c.objects(None));
    assert_eq!((svcs, slices), (vec!["a".into()], vec!["a-1".into()]));
}

#[test]
fn relist_deletes_what_is_gone_and_marks_only_differences() {
    let (c, m) = cache();
    synced_with(
        &c,
        vec![
            svc("a", "10.0.0.1"),
            svc("b", "10.0.0.2"),
            svc("c", "10.0.0.3"),
        ],
        vec![
            slice("a-1", "a", &["10.1.0.1"]),
            slice("b-1", "b", &["10.1.0.2"]),
            slice("c-1", "c", &["10.1.0.3"]),
        ],
    );
    notified(&m);
    c.apply(Update::Service(Event::Init));
    assert!(!c.apply(Update::Service(Event::InitApply(svc("a", "10.0.0.1")))));
    assert!(c.apply(Update::Service(Event::InitApply(svc("b", "10.0.0.22")))));
    assert!(c.apply(Update::Service(Event::InitApply(svc("d", "10.0.0.4")))));
    assert!(!notified(&m), "no wake-up in the middle of a relist");
    assert!(c.apply(Update::Service(Event::InitDone)));
    assert!(notified(&m));
    assert_eq!(c.take_changes().services, keys(&["b", "c", "d"]));

    c.apply(Update::Slice(Event::Init));
    c.apply(Update::Slice(Event::InitApply(slice(
        "a-1",
        "a",
        &["10.1.0.1"],
    ))));
    c.apply(Update::Slice(Event::InitApply(slice(
        "c-1",
        "c",
        &["10.1.0.3"],
    ))));
    c.apply(Update::Slice(Event::InitDone));
    assert_eq!(c.take_changes().services, keys(&["b"]));

    let (svcs, slices) = names(&c.objects(None));
    assert_eq!(svcs, vec!["a", "b", "d"]);
    // c's slice stays (its Service may come back); b's slice is gone.
    assert_eq!(slices, vec!["a-1", "c-1"]);

    // A relist with nothing new changes nothing and wakes nobody.
    notified(&m);
    c.apply(Update::Service(Event::Init));
    for (n, ip) in [("a", "10.0.0.1"), ("b", "10.0.0.22"), ("d", "10.0.0.4")] {
        c.apply(Update::Service(Event::InitApply(svc(n, ip))));
    }
    assert!(!c.apply(Update::Service(Event::InitDone)));
    assert!(!notified(&m));
    assert!(c.take_changes().is_empty());
}

#[test]
fn interrupted_relist_keeps_contents() {
    let (c, _m) = cache();
    synced_with(
        &c,
        vec![svc("a", "10.0.0.1"), svc("b", "10.0.0.2")],
        vec![slice("a-1", "a", &["10.1.0.1"])],
    );
    // The watcher restarts (Init), gets one object, fails (errors never reach the cache),
    // and restarts again.
    c.apply(Update::Service(Event::Init));
    c.apply(Update::Service(Event::InitApply(svc("a", "10.0.0.1"))));
    assert_eq!(names(&c.objects(None)).0, vec!["a", "b"]);
    c.apply(Update::Service(Event::Init));
    c.apply(Update::Service(Event::InitApply(svc("b", "10.0.0.2"))));
    c.apply(Update::Service(Event::InitApply(svc("a", "10.0.0.1"))));
    c.apply(Update::Service(Event::InitDone));
    assert!(c.take_changes().is_empty());
    assert_eq!(names(&c.objects(None)).0, vec!["a", "b"]);
}

#[test]
fn no_op_events_are_not_changes() {
    let (c, m) = cache();
    synced_with(
        &c,
        vec![svc("a", "10.0.0.1")],
        vec![slice("a-1", "a", &["10.1.0.1"])],
    );
    notified(&m);
    let before = m.service_changes_total.get();
    // Same content, new resourceVersion, managed fields, annotations, selector.
    let v = svc_b("a", "10.0.0.1")
        .resource_version("2")
        .annotation("x", "y")
        .managed_field("m")
        .selector(&[("app", "a")]);
    assert!(!c.apply(Update::Service(Event::Apply(v.build()))));
    let v = slice_b("a-1", "a", &[]).resource_version("2").endpoint(
        fx::ep("10.1.0.1")
            .node("node-a")
            .ready(true)
            .target_ref("Pod", "p"),
    );
    assert!(!c.apply(Update::Slice(Event::Apply(v.build()))));
    assert!(c.take_changes().is_empty());
    assert!(!notified(&m));
    assert_eq!(
        m.service_changes_total.get(),
        before + 1,
        "every event counts"
    );
    assert_eq!(m.service_changes_pending.get(), 0);
}

#[test]
fn changes_wake_the_loop_and_update_metrics() {
    let (c, m) = cache();
    synced_with(&c, vec![svc("a", "10.0.0.1")], vec![]);
    notified(&m);
    let svc_total = m.service_changes_total.get();
    let ep_total = m.endpoint_changes_total.get();
    assert!(c.apply(Update::Service(Event::Apply(svc("a", "10.0.0.9")))));
    assert!(notified(&m));
    c.apply(Update::Slice(Event::Apply(slice(
        "a-1",
        "a",
        &["10.1.0.1"],
    ))));
    c.apply(Update::Slice(Event::Apply(slice(
        "a-2",
        "a",
        &["10.1.0.2"],
    ))));
    c.apply(Update::Slice(Event::Apply(slice(
        "b-1",
        "b",
        &["10.1.0.3"],
    ))));
    assert_eq!(m.service_changes_total.get(), svc_total + 1);
    assert_eq!(m.endpoint_changes_total.get(), ep_total + 3);
    assert_eq!(m.service_changes_pending.get(), 1);
    assert_eq!(m.endpoint_changes_pending.get(), 2, "distinct services");
    assert_eq!(
        m.api_events
            .with_label_values(&["endpointslices", "Apply"])
            .get(),
        3.0
    );
    assert_eq!(c.take_changes().services, keys(&["a", "b"]));
    assert_eq!(m.endpoint_changes_pending.get(), 0);
}

#[test]
fn deletes() {
    let (c, _m) = cache();
    synced_with(
        &c,
        vec![svc("a", "10.0.0.1")],
        vec![
            slice("a-1", "a", &["10.1.0.1"]),
            slice("a-2", "a", &["10.1.0.2"]),
        ],
    );
    assert!(c.apply(Update::Slice(Event::Delete(slice("a-1", "a", &[])))));
    assert!(!c.apply(Update::Slice(Event::Delete(slice("a-1", "a", &[])))));
    assert_eq!(c.take_changes().services, keys(&["a"]));
    assert!(c.apply(Update::Service(Event::Delete(svc("a", "")))));
    assert!(!c.apply(Update::Service(Event::Delete(svc("zz", "")))));
    let o = c.objects(Some(&keys(&["a"])));
    assert_eq!(names(&o), (vec![], vec!["a-2".to_string()]));
    assert!(c.apply(Update::Slice(Event::Delete(slice("a-2", "a", &[])))));
    assert_eq!(c.len(), (0, 0), "empty entries are dropped");
    assert_eq!(c.take_changes().services, keys(&["a"]));
}

#[test]
fn slice_before_its_service_and_partial_objects() {
    let (c, _m) = cache();
    synced_with(&c, vec![svc("b", "10.0.0.2")], vec![]);
    assert!(c.apply(Update::Slice(Event::Apply(slice(
        "a-1",
        "a",
        &["10.1.0.1"]
    )))));
    let o = c.objects(Some(&keys(&["a"])));
    assert_eq!(names(&o), (vec![], vec!["a-1".to_string()]));
    assert!(c.apply(Update::Service(Event::Apply(svc("a", "10.0.0.1")))));
    let o = c.objects(Some(&keys(&["a", "missing"])));
    assert_eq!(names(&o), (vec!["a".to_string()], vec!["a-1".to_string()]));
    assert_eq!(c.take_changes().services, keys(&["a"]));
}

#[test]
fn slice_moving_between_services() {
    let (c, _m) = cache();
    synced_with(
        &c,
        vec![svc("a", "10.0.0.1"), svc("b", "10.0.0.2")],
        vec![slice("s-1", "a", &["10.1.0.1"])],
    );
    assert!(c.apply(Update::Slice(Event::Apply(slice(
        "s-1",
        "b",
        &["10.1.0.1"]
    )))));
    assert_eq!(c.take_changes().services, keys(&["a", "b"]));
    assert_eq!(
        names(&c.objects(Some(&keys(&["a"])))).1,
        Vec::<String>::new()
    );
    assert_eq!(names(&c.objects(Some(&keys(&["b"])))).1, vec!["s-1"]);
    // Losing the label removes it.
    let v = slice_b("s-1", "b", &["10.1.0.1"]).with(|s| s.metadata.labels = Some(BTreeMap::new()));
    assert!(c.apply(Update::Slice(Event::Apply(v.build()))));
    assert_eq!(c.take_changes().services, keys(&["b"]));
    assert_eq!(c.len().1, 0);
}

#[test]
fn fqdn_slices_are_dropped() {
    let (c, _m) = cache();
    synced_with(&c, vec![], vec![]);
    let v = slice_b("f-1", "a", &["example.com"]).address_type("FQDN");
    assert!(!c.apply(Update::Slice(Event::Apply(v.build()))));
    assert_eq!(c.len(), (0, 0));
}

#[test]
fn trigger_times() {
    let (c, _m) = cache();
    synced_with(&c, vec![svc("a", "10.0.0.1")], vec![]);
    let with_time = |name: &str, ip: &str, t: &str| -> EndpointSlice {
        slice_b(name, "a", &[ip])
            .annotation(TRIGGER_TIME_ANNOTATION, t)
            .build()
    };
    // Before the cache started: not measured.
    c.apply(Update::Slice(Event::Apply(with_time(
        "a-0",
        "10.1.0.9",
        "2000-01-01T00:00:00Z",
    ))));
    assert!(c.take_changes().trigger_times.is_empty());

    let t1 = "2024-01-01T00:00:01.5Z";
    c.apply(Update::Slice(Event::Apply(with_time(
        "a-1", "10.1.0.1", t1,
    ))));
    // A no-op copy adds nothing.
    c.apply(Update::Slice(Event::Apply(with_time(
        "a-1", "10.1.0.1", t1,
    ))));
    let ch = c.take_changes();
    assert_eq!(
        ch.trigger_times,
        vec![UNIX_EPOCH + Duration::from_millis(1_704_067_201_500)]
    );
    // A slice deletion drops the service's pending times (upstream).
    c.apply(Update::Slice(Event::Apply(with_time(
        "a-1", "10.1.0.2", t1,
    ))));
    c.apply(Update::Slice(Event::Delete(slice("a-0", "a", &[]))));
    assert!(c.take_changes().trigger_times.is_empty());

    assert_eq!(
        parse_rfc3339("2024-01-01T02:00:00+02:00"),
        Some(UNIX_EPOCH + Duration::from_secs(1_704_067_200))
    );
    assert_eq!(parse_rfc3339("yesterday"), None);
}

#[test]
fn stored_objects_are_pruned() {
    let (c, _m) = cache();
    let v = svc_b("a", "10.0.0.1")
        .annotation("big", &"x".repeat(1000))
        .managed_field("m")
        .label("app", "a");
    c.apply(Update::Service(Event::Apply(v.build())));
    let o = c.objects(None);
    let meta = &o.services[0].metadata;
    assert!(meta.annotations.is_none() && meta.managed_fields.is_none());
    assert!(meta.labels.is_none() && meta.resource_version.is_none());
    assert_eq!(c.uid("Service", "ns", "a").as_deref(), Some("uid-a"));
}

#[test]
fn node_events() {
    let (c, m) = cache();
    synced_with(&c, vec![], vec![]);
    notified(&m);
    let node = |name: &str, heartbeat: &str, ip: &str| -> Node {
        fx::node(name)
            .uid("n-uid")
            .internal_ip(ip)
            .ready_heartbeat(heartbeat)
            .build()
    };
    c.apply(Update::Node(Event::Init));
    c.apply(Update::Node(Event::InitApply(node(
        "node-a",
        "2024-01-01T00:00:00Z",
        "192.168.0.1",
    ))));
    c.apply(Update::Node(Event::InitDone));
    assert!(notified(&m));
    assert!(c.take_changes().node);
    // Other nodes (a stand-in ignoring the field selector) and heartbeats: no change.
    assert!(!c.apply(Update::Node(Event::Apply(node(
        "node-b",
        "2024-01-01T00:00:00Z",
        "192.168.0.2"
    )))));
    assert!(!c.apply(Update::Node(Event::Apply(node(
        "node-a",
        "2024-01-01T00:00:10Z",
        "192.168.0.1"
    )))));
    assert!(c.apply(Update::Node(Event::Apply(node(
        "node-a",
        "2024-01-01T00:00:20Z",
        "192.168.0.9"
    )))));
    assert!(c.take_changes().node);
    assert_eq!(c.objects(None).nodes.len(), 1);
    assert_eq!(c.uid("Node", "", "node-a").as_deref(), Some("n-uid"));
    // A relist without it deletes it.
    c.apply(Update::Node(Event::Init));
    assert!(c.apply(Update::Node(Event::InitDone)));
    assert!(c.take_changes().node);
    assert!(c.objects(None).nodes.is_empty());
}

#[test]
fn service_cidrs_and_the_not_served_case() {
    let (c, _m) = cache();
    synced_with(&c, vec![], vec![]);
    // What the watch task applies on a 404: an empty list.
    c.apply(Update::ServiceCidr(Event::Init));
    assert!(!c.apply(Update::ServiceCidr(Event::InitDone)));
    assert!(c.take_changes().is_empty());
    let sc = |cidr: &str| -> ServiceCIDR {
        fx::service_cidr("kubernetes", &[cidr])
            .resource_version("1")
            .empty_status()
            .build()
    };
    assert!(c.apply(Update::ServiceCidr(Event::Apply(sc("10.96.0.0/16")))));
    assert!(!c.apply(Update::ServiceCidr(Event::Apply(sc("10.96.0.0/16")))));
    assert!(c.take_changes().service_cidrs);
    assert_eq!(c.objects(None).service_cidrs.len(), 1);
    c.apply(Update::ServiceCidr(Event::Init));
    assert!(c.apply(Update::ServiceCidr(Event::InitDone)));
    assert!(c.take_changes().service_cidrs);
    assert!(c.objects(None).service_cidrs.is_empty());
}

#[test]
fn objects_build_the_same_model_as_the_originals() {
    use crate::model::build::{build, Settings};
    let (c, _m) = cache();
    let services = vec![svc("a", "10.0.0.1"), svc("b", "10.0.0.2")];
    let slices = vec![
        slice("a-1", "a", &["10.1.0.1", "10.1.0.2"]),
        slice("b-1", "b", &["10.1.0.3"]),
    ];
    synced_with(&c, services.clone(), slices.clone());
    let settings = Settings {
        hostname: "node-a".into(),
        ..Settings::default()
    };
    let original = Objects {
        services,
        slices,
        ..Objects::default()
    };
    assert_eq!(
        build(&c.objects(None), &settings),
        build(&original, &settings)
    );
}
