//! A throwaway network of namespaces for packet tests: a node running kproxy's rules, pods on
//! it and on a second node, and an outside network, all joined by veth pairs, IPv4 and IPv6
//! on every link. Everything is removed when the [`Topology`] is dropped (servers killed
//! first), also when a test fails.
//!
//! ```text
//!  outside ──eth0═══eth0── node ──eth1═══eth0── node-b
//!  192.168.50.1/24    192.168.50.10/24   192.168.51.10/24   192.168.51.20/24
//!  fd00:50::1/64      fd00:50::10/64     fd00:51::10/64     fd00:51::20/64
//!  + 198.51.100.5 (O5, inside the LB    │ cni0 (bridge)       │ cni0 (bridge)
//!    source range), 192.0.2.5 (X5,      │ 10.244.1.1/24        │ 10.244.2.1/24
//!    outside it), 2001:db8:100::5,      │ fd00:10:244:1::1/64  │ fd00:10:244:2::1/64
//!    2001:db8:2::5                      ├─ A1 10.244.1.11      ├─ B1 10.244.2.11
//!                                       │     fd00:10:244:1::11 │     fd00:10:244:2::11
//!                                       └─ A2 …                └─ B2 …
//! ```
//!
//! - node: forwarding on (v4 and v6), rp_filter off, ICMP error rate limits off (rejects
//!   must answer every probe), redirects off; default route to the outside (so ClusterIPs
//!   are routable from the node itself, as in a cluster), 10.244.2.0/24 via node-b.
//! - outside: default route via the node, so externalIPs and LoadBalancer IPs (not bound
//!   anywhere) reach the node, as behind a cloud load balancer; forwarding off, so nothing
//!   goes further.
//! - node-b: a plain router for the other node's pod CIDR (no rules), default via the node.
//! - pods: one address per family in their node's pod CIDR, default route via the bridge.
//!   Each runs `kproxy-echo serve` on TCP [`TCP_PORTS`] and UDP [`UDP_PORTS`], and, when
//!   asked, `kproxy-echo sctp-listen` on [`SCTP_PORT`].
//!
//! The pod bridges behave like the CNI bridge plugin's: ports in hairpin mode, and
//! br_netfilter on (`bridge-nf-call-ip(6)tables`, built into this kernel), so traffic
//! between two pods of one bridge that went through a service (DNATed to the neighbour, or
//! back to the sender itself) passes the node's netfilter hooks both ways, as kube-proxy
//! requires of bridge CNIs.
//!
//! DAD is turned off in every namespace before any interface exists, so every address
//! (link-local ones too) is usable at once; the build ends by checking, from the outside
//! namespace, that every pod answers on both families (routes and neighbours work) before
//! any rule is loaded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kproxy::nft::{Family, Protocol, Ruleset};
use kproxy::trace::{trace, Host, Origin, Probe, Trace};

use super::{pipeline, Netns};

/// TCP ports every pod serves.
pub const TCP_PORTS: &[u16] = &[8080, 8081];
/// UDP ports every pod serves.
pub const UDP_PORTS: &[u16] = &[5353];
/// The SCTP port pods listen on (raw sockets) when the topology was built with SCTP.
pub const SCTP_PORT: u16 = 2905;

/// How long a probe expected to succeed (or be refused) may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

const ECHO: &str = env!("CARGO_BIN_EXE_kproxy-echo");

// ---------------------------------------------------------------------------------------
// Addresses (pure functions, so manifests can be written before a topology exists).

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().expect("IPv4 address"))
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().expect("IPv6 address"))
}

fn pick(f: Family, a: &str, b: &str) -> IpAddr {
    match f {
        Family::V4 => v4(a),
        Family::V6 => v6(b),
    }
}

/// A pod's address: `A<n>` on this node (10.244.1.(10+n)), `B<n>` on node-b (10.244.2.(10+n)).
pub fn pod_ip(f: Family, name: &str) -> IpAddr {
    let (kind, n) = name.split_at(1);
    let n: u8 = n.parse().expect("pod number");
    assert!((1..=200).contains(&n), "pod number {n}");
    let host = u16::from(n) + 10;
    let subnet = match kind {
        "A" => 1,
        "B" => 2,
        _ => panic!("pods are A<n> (this node) or B<n> (node-b), not {name}"),
    };
    match f {
        Family::V4 => v4(&format!("10.244.{subnet}.{host}")),
        Family::V6 => v6(&format!("fd00:10:244:{subnet}::{host}")),
    }
}

/// The node's primary address (its InternalIP), on the link to the outside.
pub fn node_ip(f: Family) -> IpAddr {
    pick(f, "192.168.50.10", "fd00:50::10")
}

/// The node's address on the link to node-b.
pub fn node_link_b_ip(f: Family) -> IpAddr {
    pick(f, "192.168.51.10", "fd00:51::10")
}

/// node-b's address on that link.
pub fn node_b_ip(f: Family) -> IpAddr {
    pick(f, "192.168.51.20", "fd00:51::20")
}

/// The node's address on its pod bridge (the pods' gateway).
pub fn gateway_ip(f: Family) -> IpAddr {
    pick(f, "10.244.1.1", "fd00:10:244:1::1")
}

fn node_b_gateway_ip(f: Family) -> IpAddr {
    pick(f, "10.244.2.1", "fd00:10:244:2::1")
}

/// Outside addresses: `O` (the outside end of the node's link), `O5` (inside
/// `cidr(f, "sources")`), `X5` (outside it).
pub fn outside_ip(f: Family, name: &str) -> IpAddr {
    match name {
        "O" => pick(f, "192.168.50.1", "fd00:50::1"),
        "O5" => pick(f, "198.51.100.5", "2001:db8:100::5"),
        "X5" => pick(f, "192.0.2.5", "2001:db8:2::5"),
        _ => panic!("unknown outside address {name}"),
    }
}

/// Named ranges: `cluster` (all pods), `pods` (this node), `pods-b` (node-b), `nodes` (the
/// node's primary link), `nodes-b` (the node ↔ node-b link), `sources` (where `O5` lives).
pub fn cidr(f: Family, what: &str) -> &'static str {
    match (f, what) {
        (Family::V4, "cluster") => "10.244.0.0/16",
        (Family::V6, "cluster") => "fd00:10:244::/56",
        (Family::V4, "pods") => "10.244.1.0/24",
        (Family::V6, "pods") => "fd00:10:244:1::/64",
        (Family::V4, "pods-b") => "10.244.2.0/24",
        (Family::V6, "pods-b") => "fd00:10:244:2::/64",
        (Family::V4, "nodes") => "192.168.50.0/24",
        (Family::V6, "nodes") => "fd00:50::/64",
        (Family::V4, "nodes-b") => "192.168.51.0/24",
        (Family::V6, "nodes-b") => "fd00:51::/64",
        (Family::V4, "sources") => "198.51.100.0/24",
        (Family::V6, "sources") => "2001:db8:100::/64",
        _ => panic!("unknown range {what}"),
    }
}

fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let net: ipnetwork::IpNetwork = cidr.parse().expect("cidr");
    net.contains(ip)
}

pub fn family_of(ip: IpAddr) -> Family {
    Family::of(&ip)
}

// ---------------------------------------------------------------------------------------
// Clients and outcomes.

/// Where a connection starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// A pod by name (`A<n>` on the node, `B<n>` on node-b).
    Pod(&'static str),
    /// A process on the node itself.
    Node,
    /// The outside namespace, with this source address (see [`outside_ip`]).
    Outside(IpAddr),
}

/// What a connection attempt ended in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A server answered: its own address and port (after DNAT) and the source it saw
    /// (after any masquerade).
    Reached {
        server: IpAddr,
        port: u16,
        saw_source: IpAddr,
    },
    /// Refused (TCP: ICMP port unreachable or RST; UDP: ICMP port unreachable).
    Refused,
    /// No answer in time.
    Timeout,
    /// ICMP host/network unreachable (never expected here).
    Unreachable,
    /// Connected, then reset or closed before an answer (a held connection's second
    /// request, typically).
    Broken,
}

impl Outcome {
    pub fn parse(line: &str) -> Outcome {
        match line.trim() {
            "refused" => Outcome::Refused,
            "timeout" => Outcome::Timeout,
            "unreachable" => Outcome::Unreachable,
            "reset" | "closed" => Outcome::Broken,
            l => {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert!(f.len() >= 3, "unexpected client output {l:?}");
                Outcome::Reached {
                    server: f[0].parse().expect("server address"),
                    port: f[1].parse().expect("server port"),
                    saw_source: f[2].parse().expect("source address"),
                }
            }
        }
    }

    /// The server's address, if reached.
    pub fn server(&self) -> Option<IpAddr> {
        match self {
            Outcome::Reached { server, .. } => Some(*server),
            _ => None,
        }
    }
}

struct Pod {
    name: String,
    ns: Netns,
    sctp_seen: Option<Arc<Mutex<Vec<String>>>>,
}

/// A process started in a namespace, killed on drop; its stderr is collected.
struct Proc {
    what: String,
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `kproxy-echo ARGS` in `ns` and waits until it says `ready` on stderr.
fn spawn_ready(ns: &Netns, args: &[&str], stdout: Stdio) -> (Proc, Option<ChildStdout>) {
    let what = format!("{} in {}", args.join(" "), ns.name);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, ECHO])
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let out = child.stdout.take();
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let mut proc = Proc {
        what,
        child,
        stderr: stderr.clone(),
    };
    let mut line = String::new();
    loop {
        line.clear();
        let n = err.read_line(&mut line).expect("read server stderr");
        if n == 0 {
            let status = proc.child.wait().ok();
            panic!(
                "{} exited before it was ready ({status:?}): {:?}",
                proc.what,
                stderr.lock().unwrap()
            );
        }
        if line.trim() == "ready" {
            break;
        }
        stderr.lock().unwrap().push(line.trim_end().to_string());
    }
    // Keep draining stderr, so the server never writes into a closed pipe.
    thread::spawn(move || {
        for l in err.lines() {
            let Ok(l) = l else { break };
            stderr.lock().unwrap().push(l);
        }
    });
    (proc, out)
}

/// A long-lived TCP connection (`kproxy-echo client --hold-ms`): the first answer is read at
/// once; [`Held::finish`] reads the answer to a second request sent on the same connection
/// after the hold time.
pub struct Held {
    child: Child,
    out: BufReader<ChildStdout>,
    pub first: Outcome,
    /// When the client sends its second request (at the earliest).
    pub second_at: Instant,
}

impl Held {
    pub fn finish(mut self) -> Outcome {
        let mut line = String::new();
        self.out
            .read_line(&mut line)
            .expect("read held connection output");
        let _ = self.child.wait();
        assert!(!line.is_empty(), "held client printed no second line");
        Outcome::parse(&line)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The network. Build with [`Topology::new`]; program with [`Topology::program`].
pub struct Topology {
    // Field order is drop order: processes first, then the namespaces.
    procs: Vec<Proc>,
    pods: Vec<Pod>,
    pub node: Netns,
    pub outside: Netns,
    pub node_b: Netns,
    ruleset: Mutex<Option<Ruleset>>,
    sctp_lock: Mutex<()>,
    sctp_port: AtomicU16,
    files: AtomicUsize,
}

fn sh(ns: &Netns, script: &str) {
    let o = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-ec", script])
        .output()
        .expect("ip netns exec sh");
    assert!(
        o.status.success(),
        "in {}: {script}\n{}",
        ns.name,
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `ip -n NS -batch -` with these commands (one per line).
fn ip_batch(ns: &Netns, cmds: &[String]) {
    let mut child = Command::new("ip")
        .args(["-n", &ns.name, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ip -batch");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for c in cmds {
            writeln!(stdin, "{c}").expect("write ip batch");
        }
    }
    let o = child.wait_with_output().expect("ip -batch");
    assert!(
        o.status.success(),
        "ip -n {} -batch failed: {}\n{}",
        ns.name,
        String::from_utf8_lossy(&o.stderr),
        cmds.join("\n")
    );
}

const SYSCTL_ALL: &str = "sysctl -q -w net.ipv6.conf.all.accept_dad=0 \
     net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_redirects=0 \
     net.ipv6.conf.default.accept_redirects=0 net.ipv4.conf.all.accept_redirects=0 \
     net.ipv4.conf.default.accept_redirects=0";

const SYSCTL_ROUTER: &str = "sysctl -q -w net.ipv4.ip_forward=1 \
     net.ipv6.conf.all.forwarding=1 net.ipv6.conf.default.forwarding=1 \
     net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
     net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0 \
     net.ipv4.icmp_ratelimit=0 net.ipv6.icmp.ratelimit=0 \
     net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1";

fn bridge_cmds(gw4: IpAddr, gw6: IpAddr) -> Vec<String> {
    vec![
        "link add cni0 type bridge forward_delay 0 mcast_snooping 0".into(),
        format!("addr add {gw4}/24 dev cni0"),
        format!("addr add {gw6}/64 dev cni0 nodad"),
        "link set cni0 up".into(),
    ]
}

impl Topology {
    /// `local` pods `A1…` on the node and `remote` pods `B1…` on node-b; with `sctp`, every
    /// pod also listens for SCTP INITs on [`SCTP_PORT`].
    pub fn new(local: usize, remote: usize, sctp: bool) -> Topology {
        let node = Netns::new("pk-node");
        let outside = Netns::new("pk-out");
        let node_b = Netns::new("pk-nodeb");
        let mut t = Topology {
            procs: Vec::new(),
            pods: Vec::new(),
            node,
            outside,
            node_b,
            ruleset: Mutex::new(None),
            sctp_lock: Mutex::new(()),
            sctp_port: AtomicU16::new(40000),
            files: AtomicUsize::new(0),
        };
        let names: Vec<String> = (1..=local)
            .map(|i| format!("A{i}"))
            .chain((1..=remote).map(|i| format!("B{i}")))
            .collect();
        for name in &names {
            t.pods.push(Pod {
                name: name.clone(),
                ns: Netns::new(&format!("pk-{name}")),
                sctp_seen: None,
            });
        }

        t.set_sysctls();
        t.wire_nodes();
        t.wire_outside();
        t.wire_pods();
        t.start_servers(sctp);
        t.check_wiring();
        t
    }

    /// Namespace settings first: interfaces take the `default` values when created.
    fn set_sysctls(&self) {
        for ns in [&self.node, &self.node_b] {
            sh(ns, &format!("{SYSCTL_ALL}; {SYSCTL_ROUTER}"));
        }
        sh(&self.outside, SYSCTL_ALL);
        for p in &self.pods {
            sh(&p.ns, SYSCTL_ALL);
        }
    }

    /// The node: links to the outside and to node-b, its pod bridge and pod veths; node-b:
    /// its pod bridge and pod veths, its link to the node.
    fn wire_nodes(&self) {
        let (f4, f6) = (Family::V4, Family::V6);
        let mut cmds = vec![
            "link set lo up".to_string(),
            format!(
                "link add eth0 type veth peer name eth0 netns {}",
                self.outside.name
            ),
            format!(
                "link add eth1 type veth peer name eth0 netns {}",
                self.node_b.name
            ),
            format!("addr add {}/24 dev eth0", node_ip(f4)),
            format!("addr add {}/64 dev eth0 nodad", node_ip(f6)),
            format!("addr add {}/24 dev eth1", node_link_b_ip(f4)),
            format!("addr add {}/64 dev eth1 nodad", node_link_b_ip(f6)),
            "link set eth0 up".into(),
            "link set eth1 up".into(),
        ];
        cmds.extend(bridge_cmds(gateway_ip(f4), gateway_ip(f6)));
        let mut cmds_b = vec!["link set lo up".to_string()];
        cmds_b.extend(bridge_cmds(node_b_gateway_ip(f4), node_b_gateway_ip(f6)));
        for p in &self.pods {
            let veth = format!("v{}", p.name);
            let peer = format!(
                "link add {veth} type veth peer name eth0 netns {}",
                p.ns.name
            );
            // Hairpin mode, as the CNI bridge plugin sets it: with br_netfilter, a pod's
            // packet DNATed back to itself is bridged out of the port it came in by.
            let up = [
                format!("link set {veth} master cni0"),
                format!("link set {veth} type bridge_slave hairpin on"),
                format!("link set {veth} up"),
            ];
            let c = if p.name.starts_with('A') {
                &mut cmds
            } else {
                &mut cmds_b
            };
            c.push(peer);
            c.extend(up);
        }
        cmds.extend([
            format!("route add default via {}", outside_ip(f4, "O")),
            format!("route add {} via {}", cidr(f4, "pods-b"), node_b_ip(f4)),
            format!("route add default via {}", outside_ip(f6, "O")),
            format!("route add {} via {}", cidr(f6, "pods-b"), node_b_ip(f6)),
        ]);
        ip_batch(&self.node, &cmds);

        cmds_b.extend([
            format!("addr add {}/24 dev eth0", node_b_ip(f4)),
            format!("addr add {}/64 dev eth0 nodad", node_b_ip(f6)),
            "link set eth0 up".into(),
            format!("route add default via {}", node_link_b_ip(f4)),
            format!("route add default via {}", node_link_b_ip(f6)),
        ]);
        ip_batch(&self.node_b, &cmds_b);
    }

    /// The outside: the node's peer, with extra client addresses `O5` and `X5`.
    fn wire_outside(&self) {
        let (f4, f6) = (Family::V4, Family::V6);
        let mut out = vec![
            "link set lo up".to_string(),
            format!("addr add {}/24 dev eth0", outside_ip(f4, "O")),
            format!("addr add {}/64 dev eth0 nodad", outside_ip(f6, "O")),
        ];
        for name in ["O5", "X5"] {
            out.push(format!("addr add {}/32 dev eth0", outside_ip(f4, name)));
            out.push(format!(
                "addr add {}/128 dev eth0 nodad",
                outside_ip(f6, name)
            ));
        }
        out.extend([
            "link set eth0 up".into(),
            format!("route add default via {}", node_ip(f4)),
            format!("route add default via {}", node_ip(f6)),
        ]);
        ip_batch(&self.outside, &out);
    }

    /// Each pod: its address and default route via its node's bridge.
    fn wire_pods(&self) {
        let (f4, f6) = (Family::V4, Family::V6);
        for p in &self.pods {
            let (gw4, gw6) = if p.name.starts_with('A') {
                (gateway_ip(f4), gateway_ip(f6))
            } else {
                (node_b_gateway_ip(f4), node_b_gateway_ip(f6))
            };
            ip_batch(
                &p.ns,
                &[
                    "link set lo up".into(),
                    format!("addr add {}/24 dev eth0", pod_ip(f4, &p.name)),
                    format!("addr add {}/64 dev eth0 nodad", pod_ip(f6, &p.name)),
                    "link set eth0 up".into(),
                    format!("route add default via {gw4}"),
                    format!("route add default via {gw6}"),
                ],
            );
        }
    }

    /// Starts the echo servers in every pod (and, with `sctp`, the SCTP INIT listeners).
    fn start_servers(&mut self, sctp: bool) {
        let tcp: Vec<String> = TCP_PORTS.iter().map(u16::to_string).collect();
        let udp: Vec<String> = UDP_PORTS.iter().map(u16::to_string).collect();
        let (tcp, udp) = (tcp.join(","), udp.join(","));
        let sctp_port = SCTP_PORT.to_string();
        let mut procs = Vec::new();
        for p in &mut self.pods {
            let (proc, _) = spawn_ready(
                &p.ns,
                &["serve", "--tcp", &tcp, "--udp", &udp],
                Stdio::null(),
            );
            procs.push(proc);
            if sctp {
                let (proc, out) = spawn_ready(
                    &p.ns,
                    &["sctp-listen", "--port", &sctp_port],
                    Stdio::piped(),
                );
                procs.push(proc);
                let seen = Arc::new(Mutex::new(Vec::new()));
                let sink = seen.clone();
                let out = out.expect("sctp-listen stdout");
                thread::spawn(move || {
                    for l in BufReader::new(out).lines() {
                        let Ok(l) = l else { break };
                        sink.lock().unwrap().push(l);
                    }
                });
                p.sctp_seen = Some(seen);
            }
        }
        self.procs = procs;
    }

    /// Before any rule exists: the outside reaches every pod directly, on both families,
    /// and sees it unchanged (routes, neighbours and servers all work).
    fn check_wiring(&self) {
        for f in [Family::V4, Family::V6] {
            for p in &self.pods {
                let ip = pod_ip(f, &p.name);
                let o = self.connect_timeout(
                    Client::Outside(outside_ip(f, "O")),
                    ip,
                    TCP_PORTS[0],
                    Protocol::Tcp,
                    DEFAULT_TIMEOUT,
                );
                assert_eq!(
                    o,
                    Outcome::Reached {
                        server: ip,
                        port: TCP_PORTS[0],
                        saw_source: outside_ip(f, "O")
                    },
                    "topology wiring: outside → {} ({ip})",
                    p.name
                );
            }
        }
    }

    /// Names of all pods, `A…` first.
    pub fn pod_names(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.name.clone()).collect()
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in this topology"))
    }

    fn client_ns(&self, from: Client) -> &Netns {
        match from {
            Client::Pod(name) => &self.pod(name).ns,
            Client::Node => &self.node,
            Client::Outside(_) => &self.outside,
        }
    }

    /// Installs kproxy's rules for these manifests and flags in the node namespace,
    /// replacing whatever kproxy rules were there in one atomic transaction, and keeps the
    /// ruleset for [`Topology::trace`]. Programmed with `kproxy apply` (netlink, minimal diff against what the kernel holds).
    pub fn program(&self, manifests_yaml: &str, flags: &[&str]) -> Ruleset {
        // The ruleset the tracer checks against: `kproxy apply` renders the same input and
        // makes the kernel hold exactly this (its minimal diff against what is there).
        let (_model, warnings, rs) = pipeline(manifests_yaml, flags);
        assert!(warnings.is_empty(), "fixture warnings: {warnings:?}");
        let n = self.files.fetch_add(1, Ordering::SeqCst);
        let file = std::env::temp_dir().join(format!("{}-{n}.yaml", self.node.name));
        std::fs::write(&file, manifests_yaml).expect("write manifests");
        let path = file.to_str().expect("path").to_string();
        let mut args = vec!["apply", "-f", path.as_str()];
        args.extend_from_slice(flags);
        let o = self.node.exec(env!("CARGO_BIN_EXE_kproxy"), &args);
        let _ = std::fs::remove_file(&file);
        assert!(
            o.status.success(),
            "kproxy apply failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        *self.ruleset.lock().unwrap() = Some(rs.clone());
        rs
    }

    /// What `nft list ruleset` shows in the node (for failure messages).
    pub fn node_ruleset_text(&self) -> String {
        String::from_utf8_lossy(&self.node.exec("nft", &["list", "ruleset"]).stdout).into_owned()
    }

    /// The node's local addresses (what `fib … type local` matches).
    pub fn host(&self) -> Host {
        let mut local_addrs = Vec::new();
        for f in [Family::V4, Family::V6] {
            local_addrs.extend([node_ip(f), node_link_b_ip(f), gateway_ip(f)]);
        }
        Host { local_addrs }
    }

    pub fn is_node_addr(&self, ip: IpAddr) -> bool {
        self.host().local_addrs.contains(&ip)
    }

    /// The node's address on the link a packet to `dst` leaves by: what masquerade turns
    /// the source into.
    pub fn egress_addr(&self, dst: IpAddr) -> IpAddr {
        let f = family_of(dst);
        if in_cidr(dst, cidr(f, "pods")) {
            gateway_ip(f)
        } else if in_cidr(dst, cidr(f, "pods-b")) || in_cidr(dst, cidr(f, "nodes-b")) {
            node_link_b_ip(f)
        } else {
            node_ip(f)
        }
    }

    /// The source address a connection from `from` to `to` starts with.
    pub fn source_of(&self, from: Client, to: IpAddr) -> IpAddr {
        let f = family_of(to);
        match from {
            Client::Pod(name) => pod_ip(f, name),
            Client::Outside(ip) => {
                assert_eq!(family_of(ip), f, "outside source {ip} for {to}");
                ip
            }
            Client::Node if self.is_node_addr(to) => to,
            Client::Node => self.egress_addr(to),
        }
    }

    /// The tracer's view of the same connection on the last programmed ruleset.
    pub fn probe(&self, from: Client, to: IpAddr, port: u16, proto: Protocol) -> Probe {
        let origin = match from {
            Client::Pod(name) if name.starts_with('A') => Origin::Pod {
                iifname: "cni0".into(),
            },
            Client::Pod(_) => Origin::External {
                iifname: "eth1".into(),
            },
            Client::Node => Origin::Node,
            Client::Outside(_) => Origin::External {
                iifname: "eth0".into(),
            },
        };
        Probe {
            origin,
            src: self.source_of(from, to),
            dst: to,
            proto,
            port,
        }
    }

    pub fn trace(&self, probe: &Probe) -> Trace {
        let rs = self.ruleset.lock().unwrap();
        let rs = rs.as_ref().expect("program() before trace()");
        trace(rs, &self.host(), probe)
    }

    /// One connection attempt with [`DEFAULT_TIMEOUT`].
    pub fn connect(&self, from: Client, to: IpAddr, port: u16, proto: Protocol) -> Outcome {
        self.connect_timeout(from, to, port, proto, DEFAULT_TIMEOUT)
    }

    /// One connection attempt (TCP: connect + one request; UDP: one datagram; SCTP: one
    /// INIT, reached when a pod's listener saw it, never `Refused`).
    pub fn connect_timeout(
        &self,
        from: Client,
        to: IpAddr,
        port: u16,
        proto: Protocol,
        timeout: Duration,
    ) -> Outcome {
        self.connect_many(from, to, port, proto, timeout, 1)
            .pop()
            .expect("one outcome")
    }

    /// `count` attempts in a row, each a new connection from a new source port.
    pub fn connect_many(
        &self,
        from: Client,
        to: IpAddr,
        port: u16,
        proto: Protocol,
        timeout: Duration,
        count: usize,
    ) -> Vec<Outcome> {
        if proto == Protocol::Sctp {
            return (0..count)
                .map(|_| self.sctp_attempt(from, to, port, timeout))
                .collect();
        }
        let target = SocketAddr::new(to, port).to_string();
        let ms = timeout.as_millis().to_string();
        let count_s = count.to_string();
        let mut args = vec![
            "client",
            proto.name(),
            &target,
            "--timeout-ms",
            &ms,
            "--count",
            &count_s,
        ];
        let from_s;
        if let Client::Outside(ip) = from {
            from_s = ip.to_string();
            args.extend(["--from", &from_s]);
        }
        let o = self.client_ns(from).exec(ECHO, &args);
        assert!(
            o.status.success(),
            "kproxy-echo {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let outcomes: Vec<Outcome> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(Outcome::parse)
            .collect();
        assert_eq!(outcomes.len(), count, "kproxy-echo {args:?}");
        outcomes
    }

    fn sctp_attempt(&self, from: Client, to: IpAddr, port: u16, timeout: Duration) -> Outcome {
        let _one_at_a_time = self.sctp_lock.lock().unwrap();
        let seen: Vec<(&str, Arc<Mutex<Vec<String>>>)> = self
            .pods
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.sctp_seen
                        .clone()
                        .expect("topology built without SCTP listeners"),
                )
            })
            .collect();
        let before: BTreeMap<&str, usize> = seen
            .iter()
            .map(|(n, s)| (*n, s.lock().unwrap().len()))
            .collect();
        // A fresh source port per INIT: a new conntrack entry, so a new endpoint pick.
        let sport = self.sctp_port.fetch_add(1, Ordering::SeqCst).to_string();
        let target = SocketAddr::new(to, port).to_string();
        let mut args = vec!["sctp-init", &target, "--from-port", &sport];
        let from_s;
        if let Client::Outside(ip) = from {
            from_s = ip.to_string();
            args.extend(["--from", &from_s]);
        }
        let o = self.client_ns(from).exec(ECHO, &args);
        assert!(
            o.status.success(),
            "kproxy-echo {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let deadline = Instant::now() + timeout;
        loop {
            for (name, s) in &seen {
                let s = s.lock().unwrap();
                if let Some(line) = s.get(before[name]) {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    assert_eq!(f.len(), 3, "sctp-listen line {line:?}");
                    return Outcome::Reached {
                        server: f[1].parse().expect("dst"),
                        port: f[2].parse().expect("port"),
                        saw_source: f[0].parse().expect("src"),
                    };
                }
            }
            if Instant::now() >= deadline {
                return Outcome::Timeout;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Opens a TCP connection from `from` to `to:port` that stays open for `hold`, then
    /// asks again on the same connection (see [`Held`]).
    pub fn hold(&self, from: Client, to: IpAddr, port: u16, hold: Duration) -> Held {
        let ms = DEFAULT_TIMEOUT.as_millis().to_string();
        let hold_ms = hold.as_millis().to_string();
        let (child, mut out) = self.spawn_tcp_client(
            from,
            SocketAddr::new(to, port),
            &["--timeout-ms", &ms, "--hold-ms", &hold_ms],
        );
        let mut line = String::new();
        out.read_line(&mut line).expect("read held client");
        let second_at = Instant::now() + hold;
        Held {
            child,
            out,
            first: Outcome::parse(&line),
            second_at,
        }
    }

    /// `kproxy-echo client tcp TARGET ARGS…` started from `from`, its stdout piped.
    fn spawn_tcp_client(
        &self,
        from: Client,
        target: SocketAddr,
        args: &[&str],
    ) -> (Child, BufReader<ChildStdout>) {
        let target = target.to_string();
        let mut args: Vec<&str> = [&["client", "tcp", &target], args].concat();
        let from_s;
        if let Client::Outside(ip) = from {
            from_s = ip.to_string();
            args.extend(["--from", &from_s]);
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.client_ns(from).name, ECHO])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn kproxy-echo {args:?}: {e}"));
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        (child, out)
    }
}

/// A steady stream of new TCP connections (`kproxy-echo client --interval-ms`), each
/// outcome stamped when its line arrived. Stopped (killed) by [`Stream::stop`] or on drop.
pub struct Stream {
    child: Child,
    seen: Arc<Mutex<Vec<(Instant, Outcome)>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Stream {
    /// The outcomes so far.
    pub fn outcomes(&self) -> Vec<(Instant, Outcome)> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops the client and returns every outcome.
    pub fn stop(mut self) -> Vec<(Instant, Outcome)> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.outcomes()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Topology {
    /// Starts a new TCP connection from `from` to `to:port` every `every` (each with
    /// `timeout`), until stopped.
    pub fn stream(
        &self,
        from: Client,
        to: IpAddr,
        port: u16,
        every: Duration,
        timeout: Duration,
    ) -> Stream {
        let ms = timeout.as_millis().to_string();
        let every_ms = every.as_millis().to_string();
        let (child, out) = self.spawn_tcp_client(
            from,
            SocketAddr::new(to, port),
            &[
                "--timeout-ms",
                &ms,
                "--interval-ms",
                &every_ms,
                "--count",
                "4000000000",
            ],
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let reader = thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { break };
                sink.lock()
                    .unwrap()
                    .push((Instant::now(), Outcome::parse(&l)));
            }
        });
        Stream {
            child,
            seen,
            reader: Some(reader),
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Servers first (a namespace with live processes would outlive `ip netns del`),
        // then the namespaces (their Drop), pods before the node they hang off.
        self.procs.clear();
        self.pods.clear();
    }
}
