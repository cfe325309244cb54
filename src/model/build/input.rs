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

use crate::model::DEFAULT_MASQUERADE_BIT;

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
