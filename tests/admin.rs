//! The operator HTTP surface over real sockets on 127.0.0.1: `/healthz` and `/livez`
//! (codes, bodies, headers) in every health state, `/metrics` (exact lines), `/proxyMode`,
//! the metrics port's `/healthz`, and the health-check NodePort servers (opened on update,
//! 200 with the count, 503 at zero, port released after removal, failed binds retried).
//! No root needed.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kproxy::admin::{self, AdminConfig, AdminHandle};
use kproxy::health::{HealthCheckService, HealthChecks, ProxyHealth};
use kproxy::metrics::Metrics;
use kproxy::nft::Family;
use serde_json::{json, Value};

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// One HTTP/1.1 exchange.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// A minimal blocking HTTP client: `GET path` with `Connection: close`, read to EOF.
fn try_get(addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("complete head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header");
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    assert!(
        !headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")),
        "the client does not decode chunked bodies"
    );
    Ok(Reply {
        status,
        headers,
        body: body.to_string(),
    })
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    try_get(addr, path).unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"))
}

/// Polls until `port` on 127.0.0.1 answers (the reconciler runs asynchronously).
fn get_when_open(port: u16, path: &str) -> Reply {
    let addr = SocketAddr::from((LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match try_get(addr, path) {
            Ok(r) => return r,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("port {port} never opened: {e}"),
        }
    }
}

/// Polls until connecting to `port` on 127.0.0.1 is refused.
fn wait_refused(port: u16) {
    let addr = SocketAddr::from((LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            r => panic!("port {port} still open: {r:?}"),
        }
    }
}

/// A port that nothing listens on right now (dual-stack, like the servers' sockets).
fn free_port() -> u16 {
    let l = TcpListener::bind("[::]:0")
        .or_else(|_| TcpListener::bind("0.0.0.0:0"))
        .expect("bind port 0");
    l.local_addr().expect("addr").port()
}

/// What the tests share: a runtime, the state, and the running servers.
struct Admin {
    rt: tokio::runtime::Runtime,
    handle: Option<AdminHandle>,
    health: Arc<ProxyHealth>,
    checks: Arc<HealthChecks>,
    metrics: Arc<Metrics>,
}

impl Admin {
    fn start(health_check_addresses: Vec<std::net::IpAddr>) -> Admin {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let health = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
        let checks = Arc::new(HealthChecks::default());
        let metrics = Arc::new(Metrics::new());
        let config = AdminConfig {
            healthz_bind: SocketAddr::from((LOCALHOST, 0)),
            metrics_bind: SocketAddr::from((LOCALHOST, 0)),
            health_check_addresses,
        };
        let handle = {
            let _g = rt.enter();
            admin::spawn(config, health.clone(), checks.clone(), metrics.clone()).expect("spawn")
        };
        Admin {
            rt,
            handle: Some(handle),
            health,
            checks,
            metrics,
        }
    }

    fn healthz(&self) -> SocketAddr {
        self.handle.as_ref().expect("running").healthz_addr()
    }

    fn metrics_addr(&self) -> SocketAddr {
        self.handle.as_ref().expect("running").metrics_addr()
    }

    fn shutdown(&mut self) {
        if let Some(h) = self.handle.take() {
            self.rt.block_on(h.shutdown());
        }
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// 2024-05-01T12:34:56Z
const T0: u64 = 1_714_566_896;

fn is_go_time(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    // 2024-05-01T12:34:56[.fraction]Z
    s.len() >= 20
        && s.ends_with('Z')
        && s.as_bytes()[4] == b'-'
        && s.as_bytes()[10] == b'T'
        && !s[19..s.len() - 1].ends_with('0')
}

fn assert_json_headers(r: &Reply) {
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

#[test]
fn healthz_and_livez_in_every_state() {
    let mut a = Admin::start(vec![]);
    let hz = a.healthz();

    // Before the first sync: healthy (upstream: starting up), lastUpdated = currentTime.
    a.health.queued_update(Family::V4, at(T0));
    for (path, node) in [("/healthz", true), ("/livez", false)] {
        let r = get(hz, path);
        assert_eq!(r.status, 200, "{path} before the first sync: {r:?}");
        assert_json_headers(&r);
        let v = r.json();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        if node {
            assert_eq!(
                keys,
                ["currentTime", "healthy", "lastUpdated", "nodeEligible"]
            );
            assert_eq!(v["nodeEligible"], json!(true));
        } else {
            assert_eq!(keys, ["currentTime", "healthy", "lastUpdated"]);
        }
        assert_eq!(v["healthy"], json!(true));
        assert!(is_go_time(&v["currentTime"]), "{v}");
        assert_eq!(v["lastUpdated"], v["currentTime"], "a 200 reports now");
        // Upstream's field order.
        assert!(r.body.starts_with(r#"{"lastUpdated":""#), "{}", r.body);
    }

    // Programmed: healthy, per-family status.
    let now = SystemTime::now();
    a.health.updated(Family::V4, now);
    a.health.updated(Family::V6, now);
    let r = get(hz, "/healthz");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["healthy"], json!(true));
    assert_eq!(v["status"]["IPv4"]["healthy"], json!(true));
    assert_eq!(v["status"]["IPv6"]["healthy"], json!(true));
    assert!(is_go_time(&v["status"]["IPv4"]["lastUpdated"]));

    // Stale: programmed at T0, an update queued a second later and never programmed.
    let b = Admin::start(vec![]);
    b.health.updated(Family::V4, at(T0));
    b.health.queued_update(Family::V4, at(T0 + 1));
    let r = get(b.healthz(), "/healthz");
    assert_eq!(r.status, 503, "{r:?}");
    assert_json_headers(&r);
    let v = r.json();
    assert_eq!(v["lastUpdated"], json!("2024-05-01T12:34:56Z"));
    assert_eq!(v["healthy"], json!(false));
    assert_eq!(v["nodeEligible"], json!(true));
    assert_eq!(
        v["status"],
        json!({"IPv4": {"lastUpdated": "2024-05-01T12:34:56Z", "healthy": false}})
    );
    let r = get(b.healthz(), "/livez");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["healthy"], json!(false));
    assert_eq!(r.json().get("nodeEligible"), None);

    // Queued but not late yet (within 2 × syncPeriod): still healthy.
    a.health.queued_update(Family::V6, SystemTime::now());
    assert_eq!(get(hz, "/healthz").status, 200);

    // Node not eligible: /healthz 503 with the real lastUpdated, /livez still 200.
    let c = Admin::start(vec![]);
    c.health.updated(Family::V4, at(T0));
    c.health.set_node_eligible(false);
    let r = get(c.healthz(), "/healthz");
    assert_eq!(r.status, 503);
    let v = r.json();
    assert_eq!(v["nodeEligible"], json!(false));
    assert_eq!(v["healthy"], json!(true));
    assert_eq!(v["lastUpdated"], json!("2024-05-01T12:34:56Z"));
    let r = get(c.healthz(), "/livez");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["healthy"], json!(true));

    // Anything else on the health port: 404.
    assert_eq!(get(hz, "/metrics").status, 404);

    // The probes were counted by code.
    let text = get(c.metrics_addr(), "/metrics").body;
    for line in [
        r#"kubeproxy_proxy_healthz_total{code="503"} 1"#,
        r#"kubeproxy_proxy_livez_total{code="200"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?}");
    }
    assert!(!text.contains(r#"kubeproxy_proxy_healthz_total{code="200"}"#));
    let text = a.metrics.encode();
    for line in [
        r#"kubeproxy_proxy_healthz_total{code="200"} 3"#,
        r#"kubeproxy_proxy_livez_total{code="200"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    a.shutdown();
}

#[test]
fn metrics_port_serves_metrics_proxy_mode_and_healthz() {
    let mut a = Admin::start(vec![]);
    assert_eq!(get(a.healthz(), "/healthz").status, 200);
    a.metrics
        .sync_duration
        .with_label_values(&["IPv4"])
        .observe(0.003);

    let r = get(a.metrics_addr(), "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for line in [
        r#"kubeproxy_proxy_healthz_total{code="200"} 1"#,
        "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
        r#"kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.004"} 1"#,
        r#"kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1"#,
        "# TYPE kproxy_drift_repairs_total counter",
        "kproxy_drift_repairs_total 0",
        "# TYPE process_resident_memory_bytes gauge",
    ] {
        assert!(
            r.body.lines().any(|l| l == line),
            "missing {line:?} in\n{}",
            r.body
        );
    }
    let rss: f64 = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .expect("RSS sample")
        .parse()
        .expect("number");
    assert!(rss > 1e6, "RSS {rss}");

    let r = get(a.metrics_addr(), "/proxyMode");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "nftables");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));

    let r = get(a.metrics_addr(), "/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    // The metrics port's /healthz is not the proxy's: it is not counted.
    assert!(a
        .metrics
        .encode()
        .lines()
        .any(|l| l == r#"kubeproxy_proxy_healthz_total{code="200"} 1"#));

    assert_eq!(get(a.metrics_addr(), "/livez").status, 404);

    // Shutdown closes both ports.
    let (h, m) = (a.healthz(), a.metrics_addr());
    a.shutdown();
    wait_refused(h.port());
    wait_refused(m.port());
}

fn svc(name: &str, port: u16, local_endpoints: usize) -> HealthCheckService {
    HealthCheckService {
        namespace: "shop".into(),
        name: name.into(),
        node_port: port,
        local_endpoints,
    }
}

fn expected_body(name: &str, n: usize, healthy: bool) -> String {
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"{name}\"\n\t}},\n\t\"localEndpoints\": {n},\n\t\"serviceProxyHealthy\": {healthy}\n}}"
    )
}

#[test]
fn health_check_node_ports_follow_the_set() {
    let mut a = Admin::start(vec![]);
    let (p1, p2) = (free_port(), free_port());

    a.checks.update(vec![svc("web", p1, 2), svc("api", p2, 0)]);
    let r = get_when_open(p1, "/");
    assert_eq!(r.status, 200, "{r:?}");
    assert_json_headers(&r);
    assert_eq!(r.header("x-load-balancing-endpoint-weight"), Some("2"));
    assert_eq!(r.body, expected_body("web", 2, true));
    assert_eq!(
        r.json(),
        json!({"service": {"namespace": "shop", "name": "web"}, "localEndpoints": 2, "serviceProxyHealthy": true})
    );
    // Any path.
    assert_eq!(get_when_open(p1, "/anything/at/all").status, 200);

    let r = get_when_open(p2, "/");
    assert_eq!(r.status, 503);
    assert_eq!(r.body, expected_body("api", 0, true));
    assert_eq!(r.header("x-load-balancing-endpoint-weight"), Some("0"));

    // Counts change without reopening.
    a.checks.update(vec![svc("web", p1, 0), svc("api", p2, 3)]);
    assert_eq!(get_when_open(p1, "/").status, 503);
    let r = get_when_open(p2, "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, expected_body("api", 3, true));

    // An unhealthy proxy fails every health check, whatever the count.
    a.health.updated(Family::V4, at(T0));
    a.health.queued_update(Family::V4, at(T0 + 1));
    let r = get_when_open(p2, "/");
    assert_eq!(r.status, 503);
    assert_eq!(r.body, expected_body("api", 3, false));
    a.health.updated(Family::V4, SystemTime::now());
    assert_eq!(get_when_open(p2, "/").status, 200);

    // Removed: the port is closed and free for anyone.
    a.checks.update(vec![svc("api", p2, 3)]);
    wait_refused(p1);
    TcpListener::bind((LOCALHOST, p1)).expect("port released");
    assert_eq!(get_when_open(p2, "/").status, 200);

    // Shutdown closes the rest.
    a.shutdown();
    wait_refused(p2);
}

#[test]
fn a_port_that_cannot_be_bound_is_retried_at_the_next_update() {
    let mut a = Admin::start(vec![LOCALHOST.into()]);
    let (busy, other) = (free_port(), free_port());
    let squatter = TcpListener::bind((LOCALHOST, busy)).expect("squat");

    a.checks
        .update(vec![svc("blocked", busy, 1), svc("fine", other, 1)]);
    // The other port opened, so the update was reconciled; the busy one was skipped.
    assert_eq!(get_when_open(other, "/").status, 200);
    drop(squatter);
    wait_refused(busy);

    // The next update (the sync loop calls it every sync) tries again.
    a.checks
        .update(vec![svc("blocked", busy, 1), svc("fine", other, 1)]);
    let r = get_when_open(busy, "/healthz");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, expected_body("blocked", 1, true));
    a.shutdown();
    wait_refused(busy);
    wait_refused(other);
}

#[test]
fn spawn_fails_clearly_when_a_port_is_taken() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let squatter = TcpListener::bind((LOCALHOST, 0)).expect("squat");
    let taken = squatter.local_addr().expect("addr");
    let config = AdminConfig {
        healthz_bind: taken,
        metrics_bind: SocketAddr::from((LOCALHOST, 0)),
        health_check_addresses: vec![],
    };
    let _g = rt.enter();
    let err = admin::spawn(
        config,
        Arc::new(ProxyHealth::new(Duration::from_secs(60))),
        Arc::new(HealthChecks::default()),
        Arc::new(Metrics::new()),
    )
    .expect_err("port in use");
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("healthz server: cannot listen on {taken}: ")),
        "{msg}"
    );
}

#[test]
fn spawn_outside_a_runtime_is_an_error_not_a_panic() {
    let err = admin::spawn(
        AdminConfig {
            healthz_bind: SocketAddr::from((LOCALHOST, 0)),
            metrics_bind: SocketAddr::from((LOCALHOST, 0)),
            health_check_addresses: vec![],
        },
        Arc::new(ProxyHealth::new(Duration::from_secs(60))),
        Arc::new(HealthChecks::default()),
        Arc::new(Metrics::new()),
    )
    .expect_err("no runtime");
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}
