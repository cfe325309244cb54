//! Prometheus metrics: upstream kube-proxy's names, types and labels, plus kproxy's own.
//!
//! Owns: one typed [`Metrics`] value holding every metric kproxy exports, registered in its
//! own registry (no global state, so tests can create as many as they like), and the text
//! exposition served on `/metrics`. Names, help strings, label names and buckets follow
//! upstream's `pkg/proxy/metrics` (subsystem `kubeproxy`, label `ip_family` = `IPv4` /
//! `IPv6`), so existing dashboards and alerts carry over. kproxy's own metrics use the
//! prefix `kproxy_`.
//!
//! Must not: decide anything. Callers record; `admin` serves.

use prometheus::core::Collector;
use prometheus::{
    exponential_buckets, linear_buckets, CounterVec, Encoder, Gauge, GaugeVec, HistogramOpts,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::nft::Family;

/// The `ip_family` label value of a family, as upstream writes it.
pub fn family_label(family: Family) -> &'static str {
    match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// Every metric kproxy exports.
pub struct Metrics {
    registry: Registry,
    // Upstream kube-proxy (subsystem `kubeproxy`).
    pub sync_duration: HistogramVec,
    pub sync_full_duration: HistogramVec,
    pub sync_partial_duration: HistogramVec,
    pub last_sync_timestamp: GaugeVec,
    pub last_queued_timestamp: GaugeVec,
    pub network_programming_duration: HistogramVec,
    pub endpoint_changes_pending: IntGauge,
    pub endpoint_changes_total: IntCounter,
    pub service_changes_pending: IntGauge,
    pub service_changes_total: IntCounter,
    pub no_local_endpoints: IntGaugeVec,
    pub sync_failures: IntCounterVec,
    pub cleanup_failures: IntCounterVec,
    pub healthz_total: IntCounterVec,
    pub livez_total: IntCounterVec,
    pub conntrack_reconcile_duration: HistogramVec,
    pub conntrack_deleted_entries: IntCounterVec,
    // kproxy's own.
    pub transaction_operations: HistogramVec,
    pub kernel_commit_duration: HistogramVec,
    pub drift_repairs: IntCounter,
    /// Comparisons of kproxy's tables with what they should hold, by `scope`: `full` (both
    /// tables read back) or `objects` (only the chains and sets others touched).
    pub drift_checks: IntCounterVec,
    /// Other programs' nftables commits the watch saw, by whether they touched kproxy's
    /// tables (`tables="kproxy"` or `"other"`).
    pub foreign_commits: IntCounterVec,
    pub invalid_objects: IntCounterVec,
    pub programmed_service_ports: IntGaugeVec,
    pub api_events: CounterVec,
    pub last_sync_kind: Gauge,
}

const SUBSYSTEM: &str = "kubeproxy";

/// A metric's name and help text, and whether it is upstream's (registered under
/// [`SUBSYSTEM`]) or kproxy's own (full name given).
#[derive(Clone, Copy)]
struct Desc {
    name: &'static str,
    help: &'static str,
    upstream: bool,
}

const fn upstream(name: &'static str, help: &'static str) -> Desc {
    Desc {
        name,
        help,
        upstream: true,
    }
}

const fn own(name: &'static str, help: &'static str) -> Desc {
    Desc {
        name,
        help,
        upstream: false,
    }
}

impl Desc {
    fn opts(self) -> Opts {
        if self.upstream {
            upstream_opts(self.name, self.help)
        } else {
            Opts::new(self.name, self.help)
        }
    }
}

/// Upstream's options: subsystem `kubeproxy`, and the help text as component-base
/// exposes an ALPHA metric's (`[ALPHA] ` + help).
fn upstream_opts(name: &str, help: &str) -> Opts {
    Opts::new(name, format!("{STABILITY_PREFIX}{help}")).subsystem(SUBSYSTEM)
}

/// component-base's prefix of every upstream kube-proxy metric's help text.
const STABILITY_PREFIX: &str = "[ALPHA] ";

// Upstream kube-proxy's metrics (`pkg/proxy/metrics`): sync timings.
const SYNC_DURATION: Desc = upstream(
    "sync_proxy_rules_duration_seconds",
    "SyncProxyRules latency in seconds",
);
const SYNC_FULL_DURATION: Desc = upstream(
    "sync_full_proxy_rules_duration_seconds",
    "SyncProxyRules latency in seconds for full resyncs",
);
const SYNC_PARTIAL_DURATION: Desc = upstream(
    "sync_partial_proxy_rules_duration_seconds",
    "SyncProxyRules latency in seconds for partial resyncs",
);
const LAST_SYNC_TIMESTAMP: Desc = upstream(
    "sync_proxy_rules_last_timestamp_seconds",
    "The last time proxy rules were successfully synced",
);
const LAST_QUEUED_TIMESTAMP: Desc = upstream(
    "sync_proxy_rules_last_queued_timestamp_seconds",
    "The last time a sync of proxy rules was queued",
);
const NETWORK_PROGRAMMING_DURATION: Desc = upstream(
    "network_programming_duration_seconds",
    "In Cluster Network Programming Latency in seconds",
);
// Upstream: pending and total object changes.
const ENDPOINT_CHANGES_PENDING: Desc = upstream(
    "sync_proxy_rules_endpoint_changes_pending",
    "Pending proxy rules Endpoint changes",
);
const ENDPOINT_CHANGES_TOTAL: Desc = upstream(
    "sync_proxy_rules_endpoint_changes_total",
    "Cumulative proxy rules Endpoint changes",
);
const SERVICE_CHANGES_PENDING: Desc = upstream(
    "sync_proxy_rules_service_changes_pending",
    "Pending proxy rules Service changes",
);
const SERVICE_CHANGES_TOTAL: Desc = upstream(
    "sync_proxy_rules_service_changes_total",
    "Cumulative proxy rules Service changes",
);
// Upstream: rules state, failures, health endpoints, conntrack.
const NO_LOCAL_ENDPOINTS: Desc = upstream(
    "sync_proxy_rules_no_local_endpoints_total",
    "Number of services with a Local traffic policy and no endpoints",
);
const SYNC_FAILURES: Desc = upstream(
    "sync_proxy_rules_nftables_sync_failures_total",
    "Cumulative proxy nftables sync failures",
);
const CLEANUP_FAILURES: Desc = upstream(
    "sync_proxy_rules_nftables_cleanup_failures_total",
    "Cumulative proxy nftables cleanup failures",
);
const HEALTHZ_TOTAL: Desc = upstream(
    "proxy_healthz_total",
    "Cumulative proxy healthz HTTP status",
);
const LIVEZ_TOTAL: Desc = upstream("proxy_livez_total", "Cumulative proxy livez HTTP status");
const CONNTRACK_RECONCILE_DURATION: Desc = upstream(
    "conntrack_reconciler_sync_duration_seconds",
    "ReconcileConntrackFlowsLatency latency in seconds",
);
const CONNTRACK_DELETED_ENTRIES: Desc = upstream(
    "conntrack_reconciler_deleted_entries_total",
    "Cumulative conntrack flows deleted by conntrack reconciler",
);
// kproxy's own.
const TRANSACTION_OPERATIONS: Desc = own(
    "kproxy_transaction_operations",
    "Operations (netlink messages) in each committed nftables transaction",
);
const KERNEL_COMMIT_DURATION: Desc = own(
    "kproxy_kernel_commit_duration_seconds",
    "Time from sending a transaction to the kernel's commit acknowledgement",
);
const DRIFT_REPAIRS: Desc = own(
    "kproxy_drift_repairs_total",
    "Times kproxy found its tables changed by someone else and repaired them",
);
const DRIFT_CHECKS: Desc = own(
    "kproxy_drift_checks_total",
    "Comparisons of kproxy's tables with what they should hold after someone else's change, by scope: full (both tables read back) or objects (only the chains and sets touched)",
);
const FOREIGN_COMMITS: Desc = own(
    "kproxy_foreign_nftables_commits_total",
    "nftables commits by other programs seen in this network namespace, by whether they touched kproxy's tables",
);
const INVALID_OBJECTS: Desc = own(
    "kproxy_invalid_objects_total",
    "Objects (or parts of them) skipped because they are invalid, by kind",
);
const PROGRAMMED_SERVICE_PORTS: Desc = own(
    "kproxy_programmed_service_ports",
    "Service ports programmed in the kernel",
);
const API_EVENTS: Desc = own(
    "kproxy_watch_events_total",
    "Watch events received from the API server, by resource and type",
);
const LAST_SYNC_KIND: Desc = own(
    "kproxy_last_sync_full",
    "1 when the last sync was a full sync, 0 when partial",
);

/// Creates metrics and registers each in one registry (a duplicate or invalid name is a
/// programming error: it panics).
struct Reg<'a>(&'a Registry);

impl Reg<'_> {
    fn add<C: Collector + Clone + 'static>(&self, c: C) -> C {
        self.0.register(Box::new(c.clone())).expect("unique");
        c
    }

    fn histogram(&self, d: Desc, buckets: Vec<f64>, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::from(d.opts()).buckets(buckets);
        self.add(HistogramVec::new(opts, labels).expect("valid histogram"))
    }

    fn gauge_vec(&self, d: Desc, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(d.opts(), labels).expect("valid gauge"))
    }

    fn int_gauge_vec(&self, d: Desc, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(d.opts(), labels).expect("valid gauge"))
    }

    fn int_counter_vec(&self, d: Desc, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(d.opts(), labels).expect("valid counter"))
    }

    fn counter_vec(&self, d: Desc, labels: &[&str]) -> CounterVec {
        self.add(CounterVec::new(d.opts(), labels).expect("valid counter"))
    }

    fn int_gauge(&self, d: Desc) -> IntGauge {
        self.add(IntGauge::with_opts(d.opts()).expect("valid gauge"))
    }

    fn int_counter(&self, d: Desc) -> IntCounter {
        self.add(IntCounter::with_opts(d.opts()).expect("valid counter"))
    }

    fn gauge(&self, d: Desc) -> Gauge {
        self.add(Gauge::with_opts(d.opts()).expect("valid gauge"))
    }
}

fn sync_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 15).expect("valid buckets")
}

/// Upstream's network programming buckets: 0.25 s, 0.5 s, 1..59 s, 60..115 s by 5,
/// 120..300 s by 30 (with a leading 0, as upstream's merge writes it).
fn network_programming_buckets() -> Vec<f64> {
    let mut b = vec![0.0];
    b.extend(linear_buckets(0.25, 0.25, 2).expect("valid"));
    b.extend(linear_buckets(1.0, 1.0, 59).expect("valid"));
    b.extend(linear_buckets(60.0, 5.0, 12).expect("valid"));
    b.extend(linear_buckets(120.0, 30.0, 7).expect("valid"));
    b
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = Reg(&registry);
        let fam = &["ip_family"];
        let m = Metrics {
            sync_duration: r.histogram(SYNC_DURATION, sync_buckets(), fam),
            sync_full_duration: r.histogram(SYNC_FULL_DURATION, sync_buckets(), fam),
            sync_partial_duration: r.histogram(SYNC_PARTIAL_DURATION, sync_buckets(), fam),
            last_sync_timestamp: r.gauge_vec(LAST_SYNC_TIMESTAMP, fam),
            last_queued_timestamp: r.gauge_vec(LAST_QUEUED_TIMESTAMP, fam),
            network_programming_duration: r.histogram(
                NETWORK_PROGRAMMING_DURATION,
                network_programming_buckets(),
                fam,
            ),
            endpoint_changes_pending: r.int_gauge(ENDPOINT_CHANGES_PENDING),
            endpoint_changes_total: r.int_counter(ENDPOINT_CHANGES_TOTAL),
            service_changes_pending: r.int_gauge(SERVICE_CHANGES_PENDING),
            service_changes_total: r.int_counter(SERVICE_CHANGES_TOTAL),
            no_local_endpoints: r
                .int_gauge_vec(NO_LOCAL_ENDPOINTS, &["ip_family", "traffic_policy"]),
            sync_failures: r.int_counter_vec(SYNC_FAILURES, fam),
            cleanup_failures: r.int_counter_vec(CLEANUP_FAILURES, fam),
            healthz_total: r.int_counter_vec(HEALTHZ_TOTAL, &["code"]),
            livez_total: r.int_counter_vec(LIVEZ_TOTAL, &["code"]),
            conntrack_reconcile_duration: r.histogram(
                CONNTRACK_RECONCILE_DURATION,
                sync_buckets(),
                fam,
            ),
            conntrack_deleted_entries: r.int_counter_vec(CONNTRACK_DELETED_ENTRIES, fam),
            transaction_operations: r.histogram(
                TRANSACTION_OPERATIONS,
                exponential_buckets(1.0, 4.0, 12).expect("valid buckets"),
                fam,
            ),
            kernel_commit_duration: r.histogram(
                KERNEL_COMMIT_DURATION,
                exponential_buckets(0.0001, 2.0, 18).expect("valid buckets"),
                fam,
            ),
            drift_repairs: r.int_counter(DRIFT_REPAIRS),
            drift_checks: r.int_counter_vec(DRIFT_CHECKS, &["scope"]),
            foreign_commits: r.int_counter_vec(FOREIGN_COMMITS, &["tables"]),
            invalid_objects: r.int_counter_vec(INVALID_OBJECTS, &["kind"]),
            programmed_service_ports: r.int_gauge_vec(PROGRAMMED_SERVICE_PORTS, fam),
            api_events: r.counter_vec(API_EVENTS, &["resource", "type"]),
            last_sync_kind: r.gauge(LAST_SYNC_KIND),
            registry,
        };
        m.precreate_family_series();
        m
    }

    /// Pre-creates the two failure counters at 0 for both families, and kproxy's own drift
    /// series. Upstream's labelled series appear on first use only; the two are kproxy's
    /// deliberate difference
    /// (docs/daemon.md): a failure counter at 0 reads the same to `rate`/`increase`, and
    /// an alert on `increase(...) > 0` then fires on the first failure too. Every other
    /// labelled series appears when upstream's would.
    fn precreate_family_series(&self) {
        for family in [Family::V4, Family::V6] {
            let l = family_label(family);
            self.sync_failures.with_label_values(&[l]);
            self.cleanup_failures.with_label_values(&[l]);
        }
        // kproxy's own drift series, so that a rate reads 0 from the start.
        for scope in ["full", "objects"] {
            self.drift_checks.with_label_values(&[scope]);
        }
        for tables in ["kproxy", "other"] {
            self.foreign_commits.with_label_values(&[tables]);
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }

    /// The registry, for collectors added by the caller (process metrics).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names_and_labels() {
        let m = Metrics::new();
        m.sync_duration.with_label_values(&["IPv4"]).observe(0.003);
        m.sync_failures.with_label_values(&["IPv6"]).inc();
        m.healthz_total.with_label_values(&["200"]).inc();
        let text = m.encode();
        for line in [
            "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.004\"} 1",
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.002\"} 0",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv6\"} 1",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"} 0",
            "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
            "# HELP kubeproxy_sync_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 0",
            "# TYPE kubeproxy_sync_proxy_rules_endpoint_changes_total counter",
            "kproxy_drift_repairs_total 0",
            "kproxy_drift_checks_total{scope=\"full\"} 0",
            "kproxy_foreign_nftables_commits_total{tables=\"other\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn network_programming_buckets_match_upstream() {
        let b = network_programming_buckets();
        assert_eq!(b.len(), 81);
        assert_eq!(&b[..4], &[0.0, 0.25, 0.5, 1.0]);
        assert_eq!(b[b.len() - 1], 300.0);
    }

    #[test]
    fn labelled_series_appear_on_first_use_except_the_failure_counters() {
        let text = Metrics::new().encode();
        for absent in [
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "kubeproxy_conntrack_reconciler_deleted_entries_total",
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "kubeproxy_network_programming_duration_seconds",
        ] {
            assert!(!text.contains(absent), "{absent} present in\n{text}");
        }
        assert!(text.contains(
            "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total{ip_family=\"IPv6\"} 0"
        ));
    }
}
