//! Long-lived UDP clients in test namespaces: one socket, one source port, so the
//! conntrack entry it creates persists between datagrams (what stale-entry cleanup is
//! about). Answers come from `kproxy-echo serve`, which replies with its own address.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use super::in_netns;
use super::topology::Topology;

/// How long a datagram waits for its answer.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(1500);

/// The name of a pod's namespace: the peer of the node's veth `v<pod>` (the topology keeps
/// pod namespaces private; `ip netns list-id` names the node's peer namespaces).
pub fn pod_netns(t: &Topology, pod: &str) -> String {
    let run = |args: &[&str]| -> serde_json::Value {
        let o = t.node.exec("ip", args);
        assert!(o.status.success(), "ip {args:?}: {o:?}");
        serde_json::from_slice(&o.stdout).expect("ip -j output")
    };
    let link = run(&["-j", "link", "show", &format!("v{pod}")]);
    let nsid = link[0]["link_netnsid"]
        .as_i64()
        .unwrap_or_else(|| panic!("v{pod} has no peer namespace: {link}"));
    let ids = run(&["-j", "netns", "list-id"]);
    ids.as_array()
        .expect("list-id array")
        .iter()
        .find(|e| e["nsid"].as_i64() == Some(nsid))
        .and_then(|e| e["name"].as_str())
        .unwrap_or_else(|| panic!("no name for nsid {nsid}: {ids}"))
        .to_string()
}

/// What a datagram got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The echo server with this address answered.
    From(IpAddr),
    /// ICMP port unreachable.
    Refused,
    Timeout,
}

/// A UDP client socket that lives in a namespace and sends from one source port.
pub struct UdpClient {
    sock: UdpSocket,
    /// The port the echo servers answer on (after DNAT).
    target_port: u16,
    pub what: String,
}

impl UdpClient {
    /// A socket in namespace `ns` bound to `from` (any port), connected to `to`; answers
    /// must come from echo servers on `target_port`.
    pub fn new(
        ns: &str,
        from: IpAddr,
        to: SocketAddr,
        target_port: u16,
        what: String,
    ) -> UdpClient {
        let sock = in_netns(ns, move || -> io::Result<UdpSocket> {
            let s = UdpSocket::bind(SocketAddr::new(from, 0))?;
            s.connect(to)?; // connected: ICMP errors come back as ECONNREFUSED
            s.set_read_timeout(Some(ANSWER_WITHIN))?;
            Ok(s)
        })
        .expect("client socket");
        UdpClient {
            sock,
            target_port,
            what,
        }
    }

    pub fn sport(&self) -> u16 {
        self.sock.local_addr().expect("local addr").port()
    }

    /// Sends one datagram from the same source port and says who answered.
    pub fn ask(&self) -> Answer {
        // Drain anything late (an answer to an earlier datagram that timed out).
        self.sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        while self.sock.recv(&mut buf).is_ok() {}
        self.sock.set_nonblocking(false).unwrap();
        // A signal (the test harness's children exiting) can interrupt either call: retry.
        match retry_eintr(|| self.sock.send(b"who\n")) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Answer::Refused,
            Err(e) => panic!("{}: send: {e}", self.what),
        }
        match retry_eintr(|| self.sock.recv(&mut buf)) {
            Ok(n) => {
                let line = String::from_utf8_lossy(&buf[..n]);
                let f: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(f.len(), 4, "{}: echo answer {line:?}", self.what);
                assert_eq!(
                    f[1],
                    self.target_port.to_string(),
                    "{}: answered on {line:?}",
                    self.what
                );
                Answer::From(f[0].parse().expect("server address"))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Answer::Refused,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Answer::Timeout
            }
            Err(e) => panic!("{}: recv: {e}", self.what),
        }
    }
}

/// `f` again while it fails with EINTR (std's socket calls do not retry it themselves).
fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// A new client (new socket, new source port) each try until one is answered by `want`:
/// the endpoint pick is random, the tests need a known one.
pub fn pinned_to(make: impl Fn() -> UdpClient, want: IpAddr) -> UdpClient {
    for _ in 0..40 {
        let c = make();
        match c.ask() {
            Answer::From(ip) if ip == want => return c,
            Answer::From(_) => continue,
            other => panic!("{}: {other:?} while endpoints exist", c.what),
        }
    }
    panic!("40 new clients and none reached {want}");
}
