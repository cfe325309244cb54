//! `/metrics` after a scripted sequence, compared sample by sample with what upstream
//! kube-proxy v1.36.2 (nftables mode, one proxier per family on an IPv6-capable kernel)
//! would show: the set of `kubeproxy_*` series (name and labels) and every count
//! (histogram `_count`, counters, change gauges), not the values of durations or
//! timestamps. The sync loop runs against the informer cache (fed directly) and the fake
//! backend.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy::backend::fake::FakeBackend;
use kproxy::health::{HealthChecks, ProxyHealth};
use kproxy::k8s::cache::{Cache, Update, TRIGGER_TIME_ANNOTATION};
use kproxy::metrics::Metrics;
use kproxy::model::build::{Objects, Settings};
use kproxy::sync::{SyncConfig, Syncer, Trigger};
use kproxy::testutil::fixtures as fx;
use kube::runtime::watcher::Event;

/// After the cache's start time (1970), before now: every slice change is measured.
const TRIGGER: &str = "2024-01-01T00:00:00Z";

/// `web`: a dual-stack ClusterIP Service; `v4`: an IPv4-only one.
fn services() -> Vec<Service> {
    let web = fx::svc("ns", "web")
        .cluster_ip("10.96.0.10")
        .cluster_ips(&["10.96.0.10", "fd00::10"])
        .ip_families(&["IPv4", "IPv6"])
        .port("http", 80, "TCP")
        .target_port(8080)
        .build();
    let v4 = fx::svc("ns", "v4")
        .cluster_ip("10.96.0.11")
        .port("http", 80, "TCP")
        .target_port(8080)
        .build();
    vec![web, v4]
}

fn slice(name: &str, service: &str, family: &str, ips: &[&str]) -> EndpointSlice {
    fx::slice("ns", name, service)
        .address_type(family)
        .port("http", 8080, "TCP")
        .endpoints(ips.iter().map(|ip| fx::ep(ip).node("node-a").ready(true)))
        .annotation(TRIGGER_TIME_ANNOTATION, TRIGGER)
        .build()
}

/// The expected series: `name{labels}` → the count, or `None` where only presence is
/// compared (durations' `_sum`, timestamps).
#[derive(Default, Clone)]
struct Expected(BTreeMap<String, Option<f64>>);

impl Expected {
    fn set(&mut self, series: &str, v: f64) {
        self.0.insert(series.to_string(), Some(v));
    }
    fn present(&mut self, series: &str) {
        self.0.insert(series.to_string(), None);
    }
    fn add(&mut self, series: &str, d: f64) {
        let v = self.0.get(series).copied().flatten().unwrap_or(0.0);
        self.set(series, v + d);
    }
    /// One observation of a histogram in `fam`.
    fn observe(&mut self, name: &str, fam: &str) {
        self.add(&format!("{name}_count{{ip_family=\"{fam}\"}}"), 1.0);
        self.present(&format!("{name}_sum{{ip_family=\"{fam}\"}}"));
    }
    /// Upstream's end of one proxier's sync (`full` or partial), successful or not.
    fn synced(&mut self, fam: &str, full: bool, ok: bool) {
        self.observe("kubeproxy_sync_proxy_rules_duration_seconds", fam);
        let kind = if full { "full" } else { "partial" };
        self.observe(
            &format!("kubeproxy_sync_{kind}_proxy_rules_duration_seconds"),
            fam,
        );
        if ok {
            self.present(&format!(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds{{ip_family=\"{fam}\"}}"
            ));
            for policy in ["internal", "external"] {
                self.set(
                    &format!("kubeproxy_sync_proxy_rules_no_local_endpoints_total{{ip_family=\"{fam}\",traffic_policy=\"{policy}\"}}"),
                    0.0,
                );
            }
        } else {
            self.add(
                &format!(
                    "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{{ip_family=\"{fam}\"}}"
                ),
                1.0,
            );
        }
    }
    fn programmed(&mut self, fam: &str, n: usize) {
        for _ in 0..n {
            self.observe("kubeproxy_network_programming_duration_seconds", fam);
        }
    }
}

/// The `kubeproxy_*` samples of `/metrics`, buckets left out.
fn samples(m: &Metrics) -> BTreeMap<String, f64> {
    m.encode()
        .lines()
        .filter(|l| l.starts_with("kubeproxy_") && !l.contains("_bucket{"))
        .map(|l| {
            let (series, v) = l.rsplit_once(' ').expect("sample line");
            (series.to_string(), v.parse().expect("sample value"))
        })
        .collect()
}

fn compare(step: &str, m: &Metrics, e: &Expected) {
    let got = samples(m);
    let got_keys: Vec<&String> = got.keys().collect();
    let want_keys: Vec<&String> = e.0.keys().collect();
    assert_eq!(got_keys, want_keys, "{step}: the set of series");
    for (series, want) in &e.0 {
        if let Some(want) = want {
            assert_eq!(got[series], *want, "{step}: {series}");
        }
    }
}

#[test]
fn per_family_series_match_upstream_through_a_scripted_sequence() {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
    let trigger = Trigger::new(health.clone(), metrics.clone());
    let started = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let cache = Arc::new(Cache::with_start_time(
        "node-a",
        trigger,
        metrics.clone(),
        started,
    ));
    let mut config = SyncConfig::new(Duration::ZERO, Duration::from_secs(30));
    config.defer_chain_deletes = false;
    let settings = Settings {
        hostname: "node-a".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Settings::default()
    };
    let mut syncer = Syncer::new(
        cache.clone(),
        FakeBackend::new(),
        settings,
        config,
        metrics.clone(),
        health.clone(),
        Arc::new(HealthChecks::default()),
    );

    // Start: the unlabelled counters and gauges at 0; SyncLoop's last-queued stamp for
    // both families. kproxy's one deliberate difference: the failure counters at 0.
    syncer.loop_started();
    let mut e = Expected::default();
    for unlabelled in [
        "endpoint_changes_pending",
        "endpoint_changes_total",
        "service_changes_pending",
        "service_changes_total",
    ] {
        e.set(&format!("kubeproxy_sync_proxy_rules_{unlabelled}"), 0.0);
    }
    for fam in ["IPv4", "IPv6"] {
        e.present(&format!(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{{ip_family=\"{fam}\"}}"
        ));
        for failures in ["sync", "cleanup"] {
            e.set(
                &format!("kubeproxy_sync_proxy_rules_nftables_{failures}_failures_total{{ip_family=\"{fam}\"}}"),
                0.0,
            );
        }
    }
    compare("start", &metrics, &e);

    // The first lists: each Service counts once per family's tracker; each slice once.
    // The IPv6 tracker has one Service pending (`web`); three slices changed.
    let node = fx::node("node-a")
        .internal_ip("192.168.50.10")
        .internal_ip("fd00:50::10")
        .build();
    cache.list_all(Objects {
        services: services(),
        slices: vec![
            slice("web-4", "web", "IPv4", &["10.244.1.5"]),
            slice("web-6", "web", "IPv6", &["fd00:244::5"]),
            slice("v4-4", "v4", "IPv4", &["10.244.1.6"]),
        ],
        nodes: vec![node],
        ..Objects::default()
    });
    e.set("kubeproxy_sync_proxy_rules_service_changes_total", 4.0);
    e.set("kubeproxy_sync_proxy_rules_service_changes_pending", 1.0);
    e.set("kubeproxy_sync_proxy_rules_endpoint_changes_total", 3.0);
    e.set("kubeproxy_sync_proxy_rules_endpoint_changes_pending", 3.0);
    compare("lists", &metrics, &e);

    // First sync: full in both families; each slice's trigger time under its family.
    assert!(syncer.sync(false).unwrap().full);
    e.set("kubeproxy_sync_proxy_rules_service_changes_pending", 0.0);
    e.set("kubeproxy_sync_proxy_rules_endpoint_changes_pending", 0.0);
    for fam in ["IPv4", "IPv6"] {
        e.synced(fam, true, true);
    }
    e.programmed("IPv4", 2);
    e.programmed("IPv6", 1);
    compare("first sync", &metrics, &e);

    // One IPv4 endpoint change: only the IPv4 proxier syncs (partially).
    let apply = |s: EndpointSlice| cache.apply(Update::Slice(Event::Apply(s)));
    assert!(apply(slice("v4-4", "v4", "IPv4", &["10.244.1.7"])));
    e.add("kubeproxy_sync_proxy_rules_endpoint_changes_total", 1.0);
    e.set("kubeproxy_sync_proxy_rules_endpoint_changes_pending", 1.0);
    compare("IPv4 change queued", &metrics, &e);
    assert!(!syncer.sync(false).unwrap().full);
    e.set("kubeproxy_sync_proxy_rules_endpoint_changes_pending", 0.0);
    e.synced("IPv4", false, true);
    e.programmed("IPv4", 1);
    compare("IPv4 change synced", &metrics, &e);

    // One IPv6 endpoint change of the dual-stack Service: only the IPv6 proxier.
    assert!(apply(slice("web-6", "web", "IPv6", &["fd00:244::9"])));
    e.add("kubeproxy_sync_proxy_rules_endpoint_changes_total", 1.0);
    assert!(!syncer.sync(false).unwrap().full);
    e.synced("IPv6", false, true);
    e.programmed("IPv6", 1);
    compare("IPv6 change synced", &metrics, &e);

    // A failed transaction (an IPv4 change): counted and timed in IPv4; its trigger time
    // is lost.
    assert!(apply(slice("v4-4", "v4", "IPv4", &["10.244.1.8"])));
    e.add("kubeproxy_sync_proxy_rules_endpoint_changes_total", 1.0);
    syncer.backend().fail_next(libc::EINVAL);
    assert!(syncer.sync(false).is_err());
    e.synced("IPv4", false, false);
    compare("failed sync", &metrics, &e);

    // The retry is a full sync of both tables: both families record it.
    assert!(syncer.sync(false).unwrap().full);
    for fam in ["IPv4", "IPv6"] {
        e.synced(fam, true, true);
    }
    compare("retry", &metrics, &e);

    // A Service change: queued in the families of its ClusterIPs, counted twice.
    let queued = |fam: &str| {
        metrics
            .last_queued_timestamp
            .with_label_values(&[fam])
            .get()
    };
    let (q4, q6) = (queued("IPv4"), queued("IPv6"));
    std::thread::sleep(Duration::from_millis(5));
    let v4 = fx::svc("ns", "v4")
        .cluster_ip("10.96.0.11")
        .port("http", 81, "TCP")
        .target_port(8080)
        .build();
    assert!(cache.apply(Update::Service(Event::Apply(v4))));
    assert!(queued("IPv4") > q4 && queued("IPv6") == q6);
    e.add("kubeproxy_sync_proxy_rules_service_changes_total", 2.0);
    compare("IPv4 Service change queued", &metrics, &e);
}
