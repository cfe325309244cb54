//! The daemon tests' harness: `kproxy run` in the node namespace of a throwaway
//! [`Topology`] against the API server stand-in, the objects they create (dual-stack
//! services `S<n>`, slices of pods `A*`/`B*`), and polling helpers. Shared by
//! `tests/daemon.rs` and the reliability tests (neighbours, API faults, takeover, soak).

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy::nft::{Family, Protocol};
use kproxy::testutil::apiserver::ApiServer;
use kproxy::testutil::fixtures::{self as fx, ServiceBuilder, SliceBuilder};

use super::topology::{cidr, pod_ip, Client, Outcome, Topology};
use super::{in_netns, kernel_tests_enabled};

pub const NODE: &str = "node-a";
pub const HEALTHZ: &str = "127.0.0.1:10256";
pub const METRICS: &str = "127.0.0.1:10249";
/// How long the daemon may take to make a change visible (minSyncPeriod is 0 here).
pub const CONVERGE: Duration = Duration::from_secs(15);

pub fn cluster_ip(f: Family, n: u8) -> String {
    match f {
        Family::V4 => format!("10.96.0.{n}"),
        Family::V6 => format!("fd00:10:96::{n}"),
    }
}

/// A dual-stack ClusterIP service `name` with ClusterIPs `S<n>` and no ports yet.
pub fn service_base(name: &str, n: u8) -> ServiceBuilder {
    fx::svc("demo", name)
        .type_("ClusterIP")
        .dual_stack(&cluster_ip(Family::V4, n), &cluster_ip(Family::V6, n))
}

/// A dual-stack service `name` with ClusterIPs `S<n>`, port 80 → 8080, optional NodePort.
pub fn service(name: &str, n: u8, node_port: Option<u16>) -> ServiceBuilder {
    let s = service_base(name, n)
        .port("http", 80, "TCP")
        .target_port(8080);
    match node_port {
        Some(np) => s.node_port(np.into()).type_("NodePort"),
        None => s,
    }
}

/// One EndpointSlice of `family` for `service` with these pods (all ready), no ports.
pub fn slice_base(service: &str, family: Family, pods: &[&str]) -> SliceBuilder {
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
pub fn slice(service: &str, family: Family, pods: &[&str]) -> EndpointSlice {
    slice_base(service, family, pods)
        .port("http", 8080, "TCP")
        .build()
}

pub fn slices(api: &ApiServer, service: &str, pods: &[&str]) {
    for f in [Family::V4, Family::V6] {
        api.apply(&slice(service, f, pods));
    }
}

/// `kproxy run` in the node namespace; killed (SIGKILL) when dropped unless stopped.
pub struct Daemon {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(t: &Topology, kubeconfig: &std::path::Path, extra: &[&str]) -> Daemon {
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

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, as an OOM kill or a node crash would, and reap it.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) {
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
pub fn http_get(t: &Topology, addr: &str, path: &str) -> Option<(u16, String)> {
    let (addr, path) = (addr.to_string(), path.to_string());
    in_netns(&t.node.name, move || {
        kproxy::testutil::http_get(&addr, &path)
    })
}

pub fn metrics(t: &Topology) -> String {
    http_get(t, METRICS, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// The value of a metric line (`name{labels}` exactly as printed).
pub fn metric(t: &Topology, series: &str) -> Option<f64> {
    metrics(t)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `check` until it returns true or [`CONVERGE`] passes.
pub fn eventually(what: &str, d: &Daemon, mut check: impl FnMut() -> bool) {
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
pub fn reached(t: &Topology, ip: &str) -> Vec<IpAddr> {
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

pub fn pods(f: Family, names: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = names.iter().map(|n| pod_ip(f, n)).collect();
    v.sort();
    v
}

pub struct Setup {
    pub t: Topology,
    pub api: ApiServer,
    pub _dir: tempfile::TempDir,
    pub kubeconfig: std::path::PathBuf,
}

impl Setup {
    /// Service `web` (ClusterIP S10) on these pods, `kproxy run` started, and the IPv4
    /// ClusterIP seen reaching exactly those pods.
    pub fn running_web(&self, pods_: &[&str]) -> (Daemon, String) {
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

pub fn setup() -> Setup {
    let t = Topology::new(3, 1, false);
    let api =
        ApiServer::start_in_netns(&t.node.name).expect("API server stand-in in the node netns");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let cluster = super::node_objects();
    api.apply(&cluster.nodes[0]);
    api.apply(&cluster.service_cidrs[0]);
    Setup {
        t,
        api,
        _dir: dir,
        kubeconfig,
    }
}

/// [`setup`] for `test`, or `None` when kernel tests are off.
pub fn setup_for(test: &str) -> Option<Setup> {
    kernel_tests_enabled(test).then(setup)
}
