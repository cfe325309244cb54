//! The cluster as the test holds it: synthetic services in the mix (tracked change
//! by change in the kernel) and their objects for the stand-in.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy::k8s::cache::TRIGGER_TIME_ANNOTATION;
use kproxy::model::ServicePortName;
use kproxy::nft::Protocol;
use kproxy::render::names;
use kproxy::testutil::fixtures as fx;

use crate::plan::Rng;
use crate::NODE;

pub const NS_COUNT: usize = 50;
/// ClusterIPs of synthetic services: 10.96.1.0 onwards, inside the topology's ServiceCIDR
/// (10.96.0.0/16; the harness's `S<n>` services use 10.96.0.n). Never reused.
pub const CLUSTER_IP_BASE: u32 = u32::from_be_bytes([10, 96, 1, 0]);
pub const CLUSTER_IP_LIMIT: u32 = u32::from_be_bytes([10, 96, 255, 255]);
/// Endpoint addresses: 10.128.0.0/9, outside the cluster CIDR, each used once.
pub const ENDPOINT_BASE: u32 = u32::from_be_bytes([10, 128, 0, 1]);
/// The services pointing at real pods (`real-K`, ClusterIPs `S<20+K>`).
pub const REAL_SERVICES: u8 = 6;
pub const REAL_PODS: [&str; 4] = ["A1", "A2", "A3", "B1"];

#[derive(Clone, Debug)]
pub struct Endpoint {
    pub ip: u32,
    pub local: bool,
    pub ready: bool,
}

#[derive(Clone, Debug)]
pub struct Svc {
    pub ns: String,
    pub name: String,
    pub cip: u32,
    pub affinity: bool,
    pub node_port: Option<u16>,
    pub etp_local: bool,
    pub udp: bool,
    pub eps: Vec<Endpoint>,
    /// Not changed again until this is seen in the kernel.
    pub hold: Option<Hold>,
}

#[derive(Clone, Debug)]
pub enum Hold {
    Key(u32),
    Chain(String),
}

pub fn ip_string(ip: u32) -> String {
    Ipv4Addr::from(ip).to_string()
}

pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    k8s_openapi::jiff::Timestamp::new(d.as_secs() as i64, d.subsec_nanos() as i32)
        .expect("timestamp")
        .to_string()
}

impl Svc {
    pub fn chain(&self) -> String {
        let spn = ServicePortName {
            namespace: self.ns.clone(),
            name: self.name.clone(),
            port: "http".into(),
            protocol: Protocol::Tcp,
        };
        format!("{}{}", names::PREFIX_CLUSTER, names::chain_base(&spn))
    }

    pub fn service(&self) -> Service {
        let mut s = fx::svc(&self.ns, &self.name)
            .type_(if self.node_port.is_some() {
                "NodePort"
            } else {
                "ClusterIP"
            })
            .cluster_ip(&ip_string(self.cip))
            .port("http", 80, "TCP")
            .target_port(8080);
        if let Some(np) = self.node_port {
            s = s.node_port(np.into());
            if self.etp_local {
                s = s.etp_local();
            }
        }
        if self.udp {
            s = s.port("dns", 53, "UDP").target_port(5353);
        }
        if self.affinity {
            s = s.session_affinity("ClientIP");
        }
        s.build()
    }

    pub fn slice_name(&self) -> String {
        format!("{}-x", self.name)
    }

    pub fn slice(&self) -> EndpointSlice {
        let mut b = fx::slice(&self.ns, &self.slice_name(), &self.name)
            .annotation(TRIGGER_TIME_ANNOTATION, &now_rfc3339())
            .port("http", 8080, "TCP");
        if self.udp {
            b = b.port("dns", 5353, "UDP");
        }
        b.endpoints(self.eps.iter().map(|e| {
            fx::ep(&ip_string(e.ip))
                .node(if e.local { NODE } else { "node-b" })
                .ready(e.ready)
                .serving(e.ready)
                .terminating(false)
        }))
        .build()
    }

    pub fn ready(&self) -> usize {
        self.eps.iter().filter(|e| e.ready).count()
    }
}

pub struct Cluster {
    pub svcs: Vec<Svc>,
    pub next_id: usize,
    pub next_cip: u32,
    pub next_ep: u32,
    pub free_node_ports: Vec<u16>,
    pub endpoints: usize,
}

impl Cluster {
    pub fn new(endpoints: usize) -> Cluster {
        Cluster {
            svcs: Vec::new(),
            next_id: 0,
            next_cip: CLUSTER_IP_BASE,
            next_ep: ENDPOINT_BASE,
            free_node_ports: (30000..=32767).rev().collect(),
            endpoints,
        }
    }

    pub fn fresh_endpoint(&mut self, rng: &mut Rng) -> Endpoint {
        let ip = self.next_ep;
        self.next_ep += 1;
        Endpoint {
            ip,
            local: rng.below(10) == 0,
            ready: true,
        }
    }

    /// A new service in the mix: a tenth with ClientIP affinity, a twentieth
    /// NodePort (half of those externalTrafficPolicy Local), a seventh with a UDP port.
    pub fn new_service(&mut self, rng: &mut Rng) -> Svc {
        let id = self.next_id;
        self.next_id += 1;
        assert!(self.next_cip < CLUSTER_IP_LIMIT, "ClusterIPs exhausted");
        let cip = self.next_cip;
        self.next_cip += 1;
        let node_port = (id % 20 == 3).then(|| self.free_node_ports.pop()).flatten();
        let eps = (0..self.endpoints)
            .map(|_| self.fresh_endpoint(rng))
            .collect();
        Svc {
            ns: format!("soak-{}", id % NS_COUNT),
            name: format!("s-{id}"),
            cip,
            affinity: id % 10 == 7,
            node_port,
            etp_local: node_port.is_some() && id % 40 == 3,
            udp: id % 7 == 5,
            eps,
            hold: None,
        }
    }
}
