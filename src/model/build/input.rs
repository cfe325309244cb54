//! The input of a build: the Kubernetes objects it reads and the proxy settings.
//!
//! Owns: [`Objects`] and [`Settings`] (with the setting enums [`DetectLocalMode`] and
//! [`NodePortAddresses`]): the typed values `config`, `k8s` and the manifests loader hand to
//! [`build`](super::build).
//!
//! Must not: validate. `config` validates every setting before it gets here (the
//! masquerade bit arrives as the mark it sets); the objects are validated by the build,
//! which warns about what it cannot use.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{label, namespace_of};
use crate::model::{DEFAULT_MASQUERADE_BIT, LABEL_SERVICE_NAME};

/// The Kubernetes objects a build reads (from informers or manifests).
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    pub service_cidrs: Vec<ServiceCIDR>,
}

/// `--detect-local-mode` / `detectLocalMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DetectLocalMode {
    #[default]
    ClusterCidr,
    NodeCidr,
    BridgeInterface,
    InterfaceNamePrefix,
    /// No detection (not an upstream flag value; reached when ClusterCIDR mode has no CIDR).
    None,
}

/// `--nodeport-addresses` / `nodePortAddresses`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// `primary` (the default): the node's primary IP of each family.
    #[default]
    Primary,
    /// Local addresses inside these CIDRs (`0.0.0.0/0` / `::/0` mean every local address).
    Cidrs(Vec<IpNetwork>),
}

/// The part of the proxy configuration the pure core needs (validated, typed; no I/O).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// This node's name (`--hostname-override`, default the host name).
    pub hostname: String,
    /// `--cluster-cidr`, any number of CIDRs of either family.
    pub cluster_cidrs: Vec<IpNetwork>,
    pub detect_local_mode: DetectLocalMode,
    /// `--pod-bridge-interface`.
    pub bridge_interface: String,
    /// `--pod-interface-name-prefix`.
    pub interface_name_prefix: String,
    pub masquerade_all: bool,
    /// The masquerade mark (`1 << masqueradeBit`; `config` checked the bit is 0..=31).
    pub masquerade_mark: u32,
    pub nodeport_addresses: NodePortAddresses,
    /// Services labelled `service.kubernetes.io/service-proxy-name` are ours only when the
    /// label equals this.
    pub service_proxy_name: Option<String>,
    /// The host's interface addresses, for matching nodePortAddresses CIDRs. `None` in
    /// dry runs: then the Node object's addresses stand in.
    pub local_addresses: Option<Vec<IpAddr>>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            hostname: String::new(),
            cluster_cidrs: Vec::new(),
            detect_local_mode: DetectLocalMode::ClusterCidr,
            bridge_interface: String::new(),
            interface_name_prefix: String::new(),
            masquerade_all: false,
            masquerade_mark: 1 << DEFAULT_MASQUERADE_BIT,
            nodeport_addresses: NodePortAddresses::Primary,
            service_proxy_name: None,
            local_addresses: None,
        }
    }
}

impl Objects {
    /// The objects split into runs of at most `services` Services each, in Service key
    /// order, every EndpointSlice in the run of the Service its `kubernetes.io/service-name`
    /// label names (slices naming no Service here, or nothing, in a last run of their own),
    /// the Nodes and ServiceCIDRs in every run. Building each run and concatenating the
    /// models gives the model one build of everything gives (a Service only ever looks at
    /// its own slices and the node-level inputs), while only one run's objects and model
    /// need to exist beside what was already made of the earlier ones.
    pub fn into_chunks(self, services: usize) -> impl Iterator<Item = Objects> {
        use std::collections::BTreeMap;
        let key = |meta: &ObjectMeta, name: Option<&str>| {
            (
                namespace_of(meta).to_string(),
                name.unwrap_or_default().to_string(),
            )
        };
        let mut by_service: BTreeMap<(String, String), Objects> = BTreeMap::new();
        for svc in self.services {
            let k = key(&svc.metadata, svc.metadata.name.as_deref());
            by_service.entry(k).or_default().services.push(svc);
        }
        let mut orphans = Vec::new();
        for slice in self.slices {
            let named = label(&slice.metadata, LABEL_SERVICE_NAME);
            let k = key(&slice.metadata, named);
            match by_service.get_mut(&k) {
                Some(o) if named.is_some() => o.slices.push(slice),
                _ => orphans.push(slice),
            }
        }
        let (nodes, cidrs) = (self.nodes, self.service_cidrs);
        let mut runs: Vec<Objects> = Vec::new();
        let mut run = Objects::default();
        let mut in_run = 0;
        for (_, o) in by_service {
            if in_run == services.max(1) {
                runs.push(std::mem::take(&mut run));
                in_run = 0;
            }
            run.services.extend(o.services);
            run.slices.extend(o.slices);
            in_run += 1;
        }
        run.slices.extend(orphans);
        runs.push(run);
        runs.into_iter().map(move |mut o| {
            o.nodes = nodes.clone();
            o.service_cidrs = cidrs.clone();
            o
        })
    }
}
