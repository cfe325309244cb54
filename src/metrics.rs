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
    pub invalid_objects: IntCounterVec,
    pub programmed_service_ports: IntGaugeVec,
    pub api_events: CounterVec,
    pub last_sync_kind: Gauge,
}

const SUBSYSTEM: &str = "kubeproxy";

fn upstream_opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).subsystem(SUBSYSTEM)
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
        let fam = &["ip_family"];
        let histogram = |name: &str, help: &str, buckets: Vec<f64>, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::from(upstream_opts(name, help)).buckets(buckets),
                labels,
            )
            .expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        let own_histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), fam)
                .expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        let gauge_vec = |opts: Opts, labels: &[&str]| {
            let g = GaugeVec::new(opts, labels).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let int_gauge_vec = |opts: Opts, labels: &[&str]| {
            let g = IntGaugeVec::new(opts, labels).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let counter_vec = |opts: Opts, labels: &[&str]| {
            let c = IntCounterVec::new(opts, labels).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let int_gauge = |opts: Opts| {
            let g = IntGauge::with_opts(opts).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let int_counter = |opts: Opts| {
            let c = IntCounter::with_opts(opts).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };

        let m = Metrics {
            sync_duration: histogram(
                "sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                sync_buckets(),
                fam,
            ),
            sync_full_duration: histogram(
                "sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
                sync_buckets(),
                fam,
            ),
            sync_partial_duration: histogram(
                "sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
                sync_buckets(),
                fam,
            ),
            last_sync_timestamp: gauge_vec(
                upstream_opts(
                    "sync_proxy_rules_last_timestamp_seconds",
                    "The last time proxy rules were successfully synced",
                ),
                fam,
            ),
            last_queued_timestamp: gauge_vec(
                upstream_opts(
                    "sync_proxy_rules_last_queued_timestamp_seconds",
                    "The last time a sync of proxy rules was queued",
                ),
                fam,
            ),
            network_programming_duration: histogram(
                "network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                network_programming_buckets(),
                fam,
            ),
            endpoint_changes_pending: int_gauge(upstream_opts(
                "sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
            )),
            endpoint_changes_total: int_counter(upstream_opts(
                "sync_proxy_rules_endpoint_changes_total",
                "Cumulative proxy rules Endpoint changes",
            )),
            service_changes_pending: int_gauge(upstream_opts(
                "sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
            )),
            service_changes_total: int_counter(upstream_opts(
                "sync_proxy_rules_service_changes_total",
                "Cumulative proxy rules Service changes",
            )),
            no_local_endpoints: int_gauge_vec(
                upstream_opts(
                    "sync_proxy_rules_no_local_endpoints_total",
                    "Number of services with a Local traffic policy and no endpoints",
                ),
                &["ip_family", "traffic_policy"],
            ),
            sync_failures: counter_vec(
                upstream_opts(
                    "sync_proxy_rules_nftables_sync_failures_total",
                    "Cumulative proxy nftables sync failures",
                ),
                fam,
            ),
            cleanup_failures: counter_vec(
                upstream_opts(
                    "sync_proxy_rules_nftables_cleanup_failures_total",
                    "Cumulative proxy nftables cleanup failures",
                ),
                fam,
            ),
            healthz_total: counter_vec(
                upstream_opts(
                    "proxy_healthz_total",
                    "Cumulative proxy healthz HTTP status",
                ),
                &["code"],
            ),
            livez_total: counter_vec(
                upstream_opts("proxy_livez_total", "Cumulative proxy livez HTTP status"),
                &["code"],
            ),
            conntrack_reconcile_duration: histogram(
                "conntrack_reconciler_sync_duration_seconds",
                "ReconcileConntrackFlowsLatency latency in seconds",
                sync_buckets(),
                fam,
            ),
            conntrack_deleted_entries: counter_vec(
                upstream_opts(
                    "conntrack_reconciler_deleted_entries_total",
                    "Cumulative conntrack flows deleted by conntrack reconciler",
                ),
                fam,
            ),
            transaction_operations: own_histogram(
                "kproxy_transaction_operations",
                "Operations (netlink messages) in each committed nftables transaction",
                exponential_buckets(1.0, 4.0, 12).expect("valid buckets"),
            ),
            kernel_commit_duration: own_histogram(
                "kproxy_kernel_commit_duration_seconds",
                "Time from sending a transaction to the kernel's commit acknowledgement",
                exponential_buckets(0.0001, 2.0, 18).expect("valid buckets"),
            ),
            drift_repairs: int_counter(Opts::new(
                "kproxy_drift_repairs_total",
                "Times kproxy found its tables changed by someone else and repaired them",
            )),
            invalid_objects: counter_vec(
                Opts::new(
                    "kproxy_invalid_objects_total",
                    "Objects (or parts of them) skipped because they are invalid, by kind",
                ),
                &["kind"],
            ),
            programmed_service_ports: int_gauge_vec(
                Opts::new(
                    "kproxy_programmed_service_ports",
                    "Service ports programmed in the kernel",
                ),
                fam,
            ),
            api_events: {
                let c = CounterVec::new(
                    Opts::new(
                        "kproxy_watch_events_total",
                        "Watch events received from the API server, by resource and type",
                    ),
                    &["resource", "type"],
                )
                .expect("valid counter");
                registry.register(Box::new(c.clone())).expect("unique");
                c
            },
            last_sync_kind: {
                let g = Gauge::with_opts(Opts::new(
                    "kproxy_last_sync_full",
                    "1 when the last sync was a full sync, 0 when partial",
                ))
                .expect("valid gauge");
                registry.register(Box::new(g.clone())).expect("unique");
                g
            },
            registry,
        };
        // Pre-create the per-family series so the page lists them from the start, as
        // upstream does for its unlabelled metrics.
        for family in [Family::V4, Family::V6] {
            let l = family_label(family);
            m.sync_failures.with_label_values(&[l]);
            m.cleanup_failures.with_label_values(&[l]);
            m.conntrack_deleted_entries.with_label_values(&[l]);
            for policy in ["internal", "external"] {
                m.no_local_endpoints.with_label_values(&[l, policy]);
            }
        }
        m
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
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"external\"} 0",
            "# TYPE kubeproxy_sync_proxy_rules_endpoint_changes_total counter",
            "kproxy_drift_repairs_total 0",
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
}
