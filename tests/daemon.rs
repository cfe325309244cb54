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

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::topology::{cidr, node_ip, outside_ip, pod_ip, Client, Outcome, Topology};
use common::udp::{pinned_to, pod_netns, Answer, UdpClient};
use common::{in_netns, kernel_tests_enabled};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy::nft::{Family, Protocol};
use kproxy::testutil::apiserver::{ApiServer, Kind};
use kproxy::testutil::fixtures::{self as fx, ServiceBuilder, SliceBuilder};
use serde_json::{json, Value};

const NODE: &str = "node-a";
const HEALTHZ: &str = "127.0.0.1:10256";
const METRICS: &str = "127.0.0.1:10249";
/// How long the daemon may take to make a change visible (minSyncPeriod is 0 here).
const CONVERGE: Duration = Duration::from_secs(15);

fn cluster_ip(f: Family, n: u8) -> String {
    match f {
        Family::V4 => format!("10.96.0.{n}"),
        Family::V6 => format!("fd00:10:96::{n}"),
    }
}

/// A dual-stack ClusterIP service `name` with ClusterIPs `S<n>` and no ports yet.
fn service_base(name: &str, n: u8) -> ServiceBuilder {
    fx::svc("demo", name)
        .type_("ClusterIP")
        .dual_stack(&cluster_ip(Family::V4, n), &cluster_ip(Family::V6, n))
}

/// A dual-stack service `name` with ClusterIPs `S<n>`, port 80 → 8080, optional NodePort.
fn service(name: &str, n: u8, node_port: Option<u16>) -> ServiceBuilder {
    let s = service_base(name, n)
        .port("http", 80, "TCP")
        .target_port(8080);
    match node_port {
        Some(np) => s.node_port(np.into()).type_("NodePort"),
        None => s,
    }
}

/// One EndpointSlice of `family` for `service` with these pods (all ready), no ports.
fn slice_base(service: &str, family: Family, pods: &[&str]) -> SliceBuilder {
    let (suffix, addr_type) = match family {
        Family::V4 => ("v4", "IPv4"),
        Family::V6 => ("v6", "IPv6"),
    };
    let eps = pods.iter().map(|p| {
        fx::ep(&pod_ip(family, p).to_string())
            .node(if p.starts_with('A') { NODE } else { "node-b" })
            .ready(true)
    });
    fx::slice("demo", &format!("{service}-{suffix}"), service)
        .address_type(addr_type)
        .endpoints(eps)
}

/// One EndpointSlice of `family` for `service` with these pods (all ready).
fn slice(service: &str, family: Family, pods: &[&str]) -> EndpointSlice {
    slice_base(service, family, pods)
        .port("http", 8080, "TCP")
        .build()
}

fn slices(api: &ApiServer, service: &str, pods: &[&str]) {
    for f in [Family::V4, Family::V6] {
        api.apply(&slice(service, f, pods));
    }
}

/// `kproxy run` in the node namespace; killed (SIGKILL) when dropped unless stopped.
struct Daemon {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(t: &Topology, kubeconfig: &std::path::Path, extra: &[&str]) -> Daemon {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &t.node.name,
                env!("CARGO_BIN_EXE_kproxy"),
                "run",
            ])
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--hostname-override={NODE}"))
            .arg(format!(
                "--cluster-cidr={},{}",
                cidr(Family::V4, "cluster"),
                cidr(Family::V6, "cluster")
            ))
            .arg("--iptables-min-sync-period=0s")
            .arg(format!("--healthz-bind-address={HEALTHZ}"))
            .arg(format!("--metrics-bind-address={METRICS}"))
            .arg("--conntrack-max-per-core=0")
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kproxy run");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Daemon {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, and wait for a clean exit.
    fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "kproxy run exited with {status}:\n{}",
                    self.log()
                );
                return;
            }
            assert!(Instant::now() < deadline, "kproxy did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A plain HTTP GET from inside the node namespace: (status, body).
fn http_get(t: &Topology, addr: &str, path: &str) -> Option<(u16, String)> {
    let (addr, path) = (addr.to_string(), path.to_string());
    in_netns(&t.node.name, move || {
        kproxy::testutil::http_get(&addr, &path)
    })
}

fn metrics(t: &Topology) -> String {
    http_get(t, METRICS, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// The value of a metric line (`name{labels}` exactly as printed).
fn metric(t: &Topology, series: &str) -> Option<f64> {
    metrics(t)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `check` until it returns true or [`CONVERGE`] passes.
fn eventually(what: &str, d: &Daemon, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + CONVERGE;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{what}: not reached within {CONVERGE:?}\nkproxy log:\n{}",
        d.log()
    );
}

/// Which pods new connections to `ip:80` from pod A3 reach (8 attempts).
fn reached(t: &Topology, ip: &str) -> Vec<IpAddr> {
    let ip: IpAddr = ip.parse().expect("ip");
    let mut v: Vec<IpAddr> = t
        .connect_many(
            Client::Pod("A3"),
            ip,
            80,
            Protocol::Tcp,
            Duration::from_millis(800),
            8,
        )
        .into_iter()
        .filter_map(|o| match o {
            Outcome::Reached { server, .. } => Some(server),
            _ => None,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

fn pods(f: Family, names: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = names.iter().map(|n| pod_ip(f, n)).collect();
    v.sort();
    v
}

struct Setup {
    t: Topology,
    api: ApiServer,
    _dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

impl Setup {
    /// Service `web` (ClusterIP S10) on these pods, `kproxy run` started, and the IPv4
    /// ClusterIP seen reaching exactly those pods.
    fn running_web(&self, pods_: &[&str]) -> (Daemon, String) {
        self.api.apply(&service("web", 10, None).build());
        slices(&self.api, "web", pods_);
        let d = Daemon::start(&self.t, &self.kubeconfig, &[]);
        let ip = cluster_ip(Family::V4, 10);
        eventually("programmed", &d, || {
            reached(&self.t, &ip) == pods(Family::V4, pods_)
        });
        (d, ip)
    }
}

fn setup() -> Setup {
    let t = Topology::new(3, 1, false);
    let api =
        ApiServer::start_in_netns(&t.node.name).expect("API server stand-in in the node netns");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let cluster = common::node_objects();
    api.apply(&cluster.nodes[0]);
    api.apply(&cluster.service_cidrs[0]);
    Setup {
        t,
        api,
        _dir: dir,
        kubeconfig,
    }
}

#[test]
fn api_changes_reach_the_kernel_and_the_operator_surface_reports_them() {
    if !kernel_tests_enabled("daemon::api_changes_reach_the_kernel") {
        return;
    }
    let s = setup();
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
    if !kernel_tests_enabled("daemon::api_outage") {
        return;
    }
    let s = setup();
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
    if !kernel_tests_enabled("daemon::flushed_table_repaired") {
        return;
    }
    let s = setup();
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
    if !kernel_tests_enabled("daemon::restart_adopts") {
        return;
    }
    let s = setup();
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
    if !kernel_tests_enabled("daemon::health_check_and_events") {
        return;
    }
    let s = setup();
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
    if !kernel_tests_enabled("daemon::udp_conntrack") {
        return;
    }
    let s = setup();
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
