//! Tier 4: daemon tests. `kproxy run` runs inside the node namespace of a throwaway
//! topology (`common::topology`) against the API server stand-in
//! (`kproxy::testutil::apiserver`, real list/watch over HTTP, in the same namespace), and
//! real connections prove that what is created, changed and deleted through the API
//! reaches the kernel; that an API outage, dropped watch streams and a 410 relist change
//! nothing and are caught up with; that a flushed table is repaired; and that a restart
//! adopts the rules without breaking an established connection. `/healthz`, `/livez`,
//! `/metrics` (exact lines), a health-check NodePort and Events are checked on the live
//! daemon. Needs root; elsewhere (CI unset) each test prints one line and skips.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::daemon::*;
use common::topology::{node_ip, outside_ip, pod_ip, Client, Outcome};
use common::udp::{pinned_to, pod_netns, Answer, UdpClient};
use kproxy::nft::{Family, Protocol};
use kproxy::testutil::apiserver::Kind;
use serde_json::{json, Value};

#[test]
fn api_changes_reach_the_kernel_and_the_operator_surface_reports_them() {
    let Some(s) = setup_for("daemon::api_changes_reach_the_kernel") else {
        return;
    };
    let (t, api) = (&s.t, &s.api);
    api.apply(&service("web", 10, Some(30080)).build());
    slices(api, "web", &["A1", "A2"]);
    let d = Daemon::start(t, &s.kubeconfig, &[]);

    for f in [Family::V4, Family::V6] {
        let ip = cluster_ip(f, 10);
        eventually(&format!("{f:?} ClusterIP spread over A1, A2"), &d, || {
            reached(t, &ip) == pods(f, &["A1", "A2"])
        });
    }
    // NodePort from outside, masqueraded to the node.
    let out = t.connect(
        Client::Outside(outside_ip(Family::V4, "O")),
        node_ip(Family::V4),
        30080,
        Protocol::Tcp,
    );
    assert!(
        matches!(out, Outcome::Reached { server, .. } if pods(Family::V4, &["A1", "A2"]).contains(&server)),
        "NodePort: {out:?}"
    );

    // Endpoint change: only B1 now.
    slices(api, "web", &["B1"]);
    for f in [Family::V4, Family::V6] {
        let ip = cluster_ip(f, 10);
        eventually(&format!("{f:?} endpoints replaced by B1"), &d, || {
            reached(t, &ip) == pods(f, &["B1"])
        });
    }
    // A second service appears.
    api.apply(&service("api", 11, None).build());
    slices(api, "api", &["A2"]);
    eventually("new service api", &d, || {
        reached(t, &cluster_ip(Family::V4, 11)) == pods(Family::V4, &["A2"])
    });
    // Service deleted: its address is an unallocated ServiceCIDR address (dropped).
    api.delete(Kind::Service, "demo", "web");
    eventually("web deleted", &d, || {
        matches!(
            t.connect_timeout(
                Client::Pod("A3"),
                cluster_ip(Family::V4, 10).parse().unwrap(),
                80,
                Protocol::Tcp,
                Duration::from_millis(600)
            ),
            Outcome::Timeout
        )
    });

    // Operator surface: health, metrics, proxy mode.
    let (code, body) = http_get(t, HEALTHZ, "/healthz").expect("/healthz");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("healthz JSON");
    assert_eq!(v["nodeEligible"], json!(true), "{body}");
    assert!(
        v["lastUpdated"].is_string() && v["currentTime"].is_string(),
        "{body}"
    );
    let (code, _) = http_get(t, HEALTHZ, "/livez").expect("/livez");
    assert_eq!(code, 200);
    assert_eq!(
        http_get(t, METRICS, "/proxyMode").map(|(_, b)| b),
        Some("nftables".to_string())
    );
    let m = metrics(t);
    for line in [
        "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
        "kubeproxy_proxy_livez_total{code=\"200\"} 1",
        "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"} 0",
        "kproxy_programmed_service_ports{ip_family=\"IPv4\"} 1",
        "kproxy_programmed_service_ports{ip_family=\"IPv6\"} 1",
        "kproxy_drift_repairs_total 0",
    ] {
        assert!(
            m.lines().any(|l| l == line),
            "missing {line:?} in /metrics:\n{m}"
        );
    }
    let full = metric(
        t,
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
    );
    let partial = metric(
        t,
        "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
    );
    assert_eq!(full, Some(1.0), "one full sync at start");
    assert!(
        partial.unwrap_or(0.0) >= 3.0,
        "changes were partial syncs: {partial:?}"
    );
    assert!(
        metric(t, "kubeproxy_sync_proxy_rules_service_changes_total").unwrap_or(0.0) >= 3.0,
        "{m}"
    );
    d.stop();
    // SIGTERM leaves the rules in place.
    assert!(
        t.node_ruleset_text().contains("table ip kproxy"),
        "rules removed on SIGTERM"
    );
}

#[test]
fn api_outage_slow_responses_dropped_streams_and_410_change_nothing_and_are_caught_up() {
    let Some(s) = setup_for("daemon::api_outage") else {
        return;
    };
    let (t, api) = (&s.t, &s.api);
    let (d, ip) = s.running_web(&["A1"]);

    // The API server goes away: nothing changes on the node.
    api.set_down(true);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        reached(t, &ip),
        pods(Family::V4, &["A1"]),
        "rules kept during the outage"
    );
    let (code, _) = http_get(t, HEALTHZ, "/healthz").expect("/healthz");
    assert_eq!(
        code, 200,
        "no update is queued while the API server is down"
    );
    // A change made while it was away is caught up once it is back.
    slices(api, "web", &["A2"]);
    api.set_down(false);
    eventually("caught up after the outage", &d, || {
        reached(t, &ip) == pods(Family::V4, &["A2"])
    });

    // Streams cut mid-way: the watch resumes and later changes arrive.
    api.drop_watches();
    slices(api, "web", &["A1", "A2"]);
    eventually("after dropped watches", &d, || {
        reached(t, &ip) == pods(Family::V4, &["A1", "A2"])
    });

    // A slow API server (every response starts 1.5 s late) and cut streams: the watches
    // reconnect slowly and the change still arrives.
    api.set_latency(Duration::from_millis(1500));
    api.drop_watches();
    slices(api, "web", &["A2"]);
    eventually("caught up through a slow API server", &d, || {
        reached(t, &ip) == pods(Family::V4, &["A2"])
    });
    api.set_latency(Duration::ZERO);

    // History compacted and streams cut: 410 Gone, relist; a deletion in the gap is seen.
    api.compact();
    api.drop_watches();
    api.delete(Kind::EndpointSlice, "demo", "web-v4");
    api.delete(Kind::EndpointSlice, "demo", "web-v6");
    eventually("relist after 410 sees the deleted slices", &d, || {
        t.connect_timeout(
            Client::Pod("A3"),
            ip.parse().unwrap(),
            80,
            Protocol::Tcp,
            Duration::from_millis(800),
        ) == Outcome::Refused
    });
    assert!(
        api.request_log()
            .iter()
            .filter(|r| r.is(kproxy::testutil::apiserver::Verb::List, "endpointslices"))
            .count()
            >= 2,
        "the 410 made the EndpointSlice watcher list again"
    );
    assert_eq!(
        metric(
            t,
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"}"
        ),
        Some(0.0)
    );
    d.stop();
}

#[test]
fn a_flushed_table_is_repaired_within_seconds() {
    let Some(s) = setup_for("daemon::flushed_table_repaired") else {
        return;
    };
    let t = &s.t;
    let (d, ip) = s.running_web(&["A1"]);
    let before = t.node_ruleset_text();

    // A firewall reload flushes kproxy's IPv4 table.
    let o = t.node.exec("nft", &["flush", "table", "ip", "kproxy"]);
    assert!(o.status.success());
    eventually("repaired", &d, || {
        reached(t, &ip) == pods(Family::V4, &["A1"])
    });
    eventually("drift repair counted", &d, || {
        metric(t, "kproxy_drift_repairs_total").unwrap_or(0.0) >= 1.0
    });
    assert_eq!(t.node_ruleset_text(), before, "repaired exactly");
    d.stop();
}

#[test]
fn restart_adopts_the_rules_without_breaking_an_established_connection() {
    let Some(s) = setup_for("daemon::restart_adopts") else {
        return;
    };
    let t = &s.t;
    let (d, ip) = s.running_web(&["A1", "A2"]);
    let ip: IpAddr = ip.parse().unwrap();
    let before = t.node_ruleset_text();

    let held = t.hold(Client::Pod("A3"), ip, 80, Duration::from_secs(5));
    let Outcome::Reached { server, .. } = held.first else {
        panic!("held connection: {:?}", held.first);
    };
    d.stop();
    assert_eq!(t.node_ruleset_text(), before, "rules untouched by the stop");

    let d = Daemon::start(t, &s.kubeconfig, &[]);
    eventually("restarted daemon synced", &d, || {
        metric(
            t,
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
        ) == Some(1.0)
    });
    // Adoption sent nothing: no transaction was observed (the histogram has no series).
    assert_eq!(
        metric(t, "kproxy_transaction_operations_count{ip_family=\"IPv4\"}").unwrap_or(0.0),
        0.0,
        "{}",
        d.log()
    );
    assert_eq!(
        t.node_ruleset_text(),
        before,
        "rules unchanged by the adoption"
    );
    let second = held.finish();
    assert!(
        matches!(second, Outcome::Reached { server: s2, .. } if s2 == server),
        "the established connection survived the restart: {second:?}"
    );
    d.stop();
}

#[test]
fn health_check_node_port_and_events_for_invalid_objects() {
    let Some(s) = setup_for("daemon::health_check_and_events") else {
        return;
    };
    let (t, api) = (&s.t, &s.api);
    let lb = service("lb", 12, Some(30090))
        .type_("LoadBalancer")
        .etp_local()
        .health_check_node_port(32000);
    api.apply(&lb.build());
    slices(api, "lb", &["A1", "A2", "B1"]);
    // An invalid Service: skipped, reported as an Event, others unaffected.
    let bad = service_base("bad", 13)
        .port("http", 70000, "TCP")
        .target_port(8080);
    api.apply(&bad.build());
    let d = Daemon::start(t, &s.kubeconfig, &[]);

    let hc = format!("{}:32000", node_ip(Family::V4));
    eventually("health check answers with 2 local endpoints", &d, || {
        http_get(t, &hc, "/").is_some_and(|(code, body)| {
            code == 200
                && serde_json::from_str::<Value>(&body).is_ok_and(|v| {
                    v["localEndpoints"] == json!(2) && v["service"]["name"] == json!("lb")
                })
        })
    });
    // No local endpoints left: 503.
    slices(api, "lb", &["B1"]);
    eventually("health check 503 without local endpoints", &d, || {
        http_get(t, &hc, "/").is_some_and(|(code, _)| code == 503)
    });
    // Service gone: port closed.
    api.delete(Kind::Service, "demo", "lb");
    eventually("health check port closed", &d, || {
        http_get(t, &hc, "/").is_none()
    });

    eventually("an Event about the invalid Service", &d, || {
        api.events().iter().any(|e| {
            e["regarding"]["name"] == json!("bad")
                && e["regarding"]["kind"] == json!("Service")
                && e["type"] == json!("Warning")
        })
    });
    assert!(metric(t, "kproxy_invalid_objects_total{kind=\"Service\"}").unwrap_or(0.0) >= 1.0);
    d.stop();
}

#[test]
fn a_udp_client_is_moved_off_a_removed_endpoint() {
    let Some(s) = setup_for("daemon::udp_conntrack") else {
        return;
    };
    let (t, api) = (&s.t, &s.api);
    let svc = service_base("dns", 14)
        .port("dns", 53, "UDP")
        .target_port(5353);
    api.apply(&svc.build());
    let dns_slice = |pods: &[&str]| {
        slice_base("dns", Family::V4, pods)
            .port("dns", 5353, "UDP")
            .build()
    };
    api.apply(&dns_slice(&["A1", "A2"]));
    let d = Daemon::start(t, &s.kubeconfig, &[]);
    let ns = pod_netns(t, "A3");
    let to: SocketAddr = format!("{}:53", cluster_ip(Family::V4, 14))
        .parse()
        .unwrap();
    let client = || UdpClient::new(&ns, pod_ip(Family::V4, "A3"), to, 5353, "A3 → dns".into());
    eventually("dns programmed", &d, || {
        matches!(client().ask(), Answer::From(_))
    });
    // One socket, one source port: its conntrack entry pins it to A1.
    let pinned = pinned_to(client, pod_ip(Family::V4, "A1"));
    assert_eq!(pinned.ask(), Answer::From(pod_ip(Family::V4, "A1")));

    // A1 leaves the service (the pod still runs and would still answer): the daemon's
    // partial sync deletes the stale entry, and the same socket reaches A2.
    api.apply(&dns_slice(&["A2"]));
    eventually("the pinned client moved to A2", &d, || {
        pinned.ask() == Answer::From(pod_ip(Family::V4, "A2"))
    });
    assert!(
        metric(
            t,
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{}",
        metrics(t)
    );
    d.stop();
}
