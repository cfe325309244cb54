//! Names kproxy gives nftables objects: the fixed skeleton's chains, sets and maps, the
//! prefixes of per-service-port and per-endpoint chains, and their hashed bases.
//!
//! Owns: every name `render` writes. Must not: decide which objects exist (that is the rest
//! of `render`).

use sha2::{Digest, Sha256};

use crate::model::ServicePortName;
use crate::nft::NAME_MAX;

// Chain, set and map names of the fixed skeleton.
pub const FILTER_PREROUTING_PRE_DNAT: &str = "filter-prerouting-pre-dnat";
pub const FILTER_OUTPUT_PRE_DNAT: &str = "filter-output-pre-dnat";
pub const FILTER_INPUT: &str = "filter-input";
pub const FILTER_FORWARD: &str = "filter-forward";
pub const FILTER_OUTPUT: &str = "filter-output";
pub const NAT_PREROUTING: &str = "nat-prerouting";
pub const NAT_OUTPUT: &str = "nat-output";
pub const NAT_POSTROUTING: &str = "nat-postrouting";

pub const SERVICES: &str = "services";
pub const MASQUERADING: &str = "masquerading";
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
pub const ENDPOINTS_CHECK: &str = "service-endpoints-check";
pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
pub const FIREWALL_CHECK: &str = "firewall-check";
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
pub const REJECT: &str = "reject-chain";

pub const CLUSTER_IPS: &str = "cluster-ips";
pub const SERVICE_CIDRS: &str = "service-cidrs";
pub const POD_CIDRS: &str = "pod-cidrs";
pub const NODEPORT_IPS: &str = "nodeport-ips";
pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const CLUSTERIP_MASQUERADE: &str = "clusterip-masquerade";
pub const EXTERNAL_MASQUERADE: &str = "external-masquerade";
pub const NODEPORT_MASQUERADE: &str = "nodeport-masquerade";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const FIREWALL_IPS: &str = "firewall-ips";
pub const FIREWALL_ALLOW: &str = "firewall-allow";
/// Endpoint maps are sharded: `endpoints-0`, `endpoints-1`, … (see `slots`).
pub const ENDPOINTS_PREFIX: &str = "endpoints-";
pub const HAIRPIN: &str = "hairpin-endpoints";

pub const PREFIX_CLUSTER: &str = "service-";
pub const PREFIX_LOCAL: &str = "local-";
pub const PREFIX_EXTERNAL: &str = "external-";
/// Affinity shards' dynamic maps: `affinity-0`, … (see `affinity`).
pub const PREFIX_AFFINITY: &str = "affinity-";

/// `HASH-namespace/name/protocol/port`: upstream's chain-name base, so names are unique,
/// readable and (at most 8 + 4 + 3×63 + 4 characters) well within nft's limit.
pub fn chain_base(name: &ServicePortName) -> String {
    hashed(&format!(
        "{}/{}/{}/{}",
        name.namespace, name.name, name.protocol, name.port
    ))
}

/// Longest name part after a prefix (prefixes are at most 16 characters).
const NAME_BASE_MAX: usize = NAME_MAX - 16;

fn hashed(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let enc = base32::encode(base32::Alphabet::Rfc4648 { padding: true }, &digest);
    let mut out = format!("{}-{s}", &enc[..8]);
    if out.len() > NAME_BASE_MAX {
        let mut cut = NAME_BASE_MAX - 3;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}
