//! Stage 1a, the command line: kube-proxy's flags as clap parses them, raw.
//!
//! Owns: [`ProxyFlags`], the flag names, aliases and help texts (kube-proxy's), and the
//! few clap-level value parsers (Go booleans).
//!
//! Must not: validate or default values (that is `merge`'s job, so that a bad value reads
//! the same from a flag or the file), or read anything.

use std::path::PathBuf;

use super::go::parse_go_bool;

/// kube-proxy's command-line flags (the subset kproxy uses), for `#[command(flatten)]`.
///
/// Every flag is optional so that a `--config` file can supply the value; see the
/// [`config`](super) module documentation for the precedence. Values are validated by
/// [`Config::from_flags`](super::Config::from_flags), not by clap, so that errors read the
/// same whether a value came from a flag or the file.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProxyFlags {
    /// Path to a KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1, YAML or
    /// JSON). Flags given on the command line override its values.
    #[arg(long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Name of this node (default: the host name, lowercased).
    #[arg(long, value_name = "NAME")]
    pub hostname_override: Option<String>,

    /// Pod CIDR range(s) of the cluster: one CIDR, or a comma-separated IPv4,IPv6 pair.
    #[arg(long, value_name = "CIDRS")]
    pub cluster_cidr: Option<String>,

    /// How to recognise traffic from local pods: ClusterCIDR (default), NodeCIDR,
    /// BridgeInterface or InterfaceNamePrefix.
    #[arg(long, value_name = "MODE")]
    pub detect_local_mode: Option<String>,

    /// Bridge interface of local pods (with --detect-local-mode BridgeInterface).
    #[arg(long, value_name = "IFACE")]
    pub pod_bridge_interface: Option<String>,

    /// Interface name prefix of local pods (with --detect-local-mode InterfaceNamePrefix).
    #[arg(long, value_name = "PREFIX")]
    pub pod_interface_name_prefix: Option<String>,

    /// SNAT all traffic sent to Service cluster IPs (`--masquerade-all` or
    /// `--masquerade-all=true|false`).
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool
    )]
    pub masquerade_all: Option<bool>,

    /// Addresses that accept NodePort traffic: `primary` (default: the node's primary
    /// IPs) or a comma-separated list of CIDRs (`all` stands for 0.0.0.0/0,::/0).
    #[arg(long, value_name = "LIST")]
    pub nodeport_addresses: Option<String>,

    /// Proxy mode; kproxy only implements `nftables`.
    #[arg(long, value_name = "MODE")]
    pub proxy_mode: Option<String>,

    /// Path to a kubeconfig file (default: in-cluster configuration).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Period of full resyncs, Go duration syntax (default 30s).
    #[arg(long, value_name = "DURATION")]
    pub iptables_sync_period: Option<String>,

    /// Minimum time between syncs, Go duration syntax; 0 syncs on every change
    /// (default 1s).
    #[arg(long, value_name = "DURATION")]
    pub iptables_min_sync_period: Option<String>,

    /// IP and port of the health check server (default 0.0.0.0:10256; a bare IP gets
    /// port 10256).
    #[arg(long, value_name = "IP[:PORT]")]
    pub healthz_bind_address: Option<String>,

    /// IP and port of the metrics server (default 127.0.0.1:10249; a bare IP gets port
    /// 10249).
    #[arg(long, value_name = "IP[:PORT]")]
    pub metrics_bind_address: Option<String>,

    /// Bit of the packet mark used to flag packets for SNAT, 0..=31 (default 14).
    #[arg(
        long = "iptables-masquerade-bit",
        visible_alias = "masquerade-bit",
        value_name = "BIT",
        allow_negative_numbers = true
    )]
    pub masquerade_bit: Option<i64>,

    /// Log verbosity, 0..=10 (default 0).
    #[arg(
        short = 'v',
        long = "v",
        value_name = "LEVEL",
        allow_negative_numbers = true
    )]
    pub v: Option<i64>,

    /// Conntrack entries to allow per CPU core; 0 leaves the limit as-is (default 32768).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub conntrack_max_per_core: Option<i64>,

    /// Minimum conntrack table size, whatever --conntrack-max-per-core says
    /// (default 131072).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub conntrack_min: Option<i64>,

    /// Idle timeout of established TCP connections; 0 leaves it as-is (default 24h0m0s).
    #[arg(long, value_name = "DURATION")]
    pub conntrack_tcp_timeout_established: Option<String>,

    /// Timeout of TCP connections in CLOSE_WAIT; 0 leaves it as-is (default 1h0m0s).
    #[arg(long, value_name = "DURATION")]
    pub conntrack_tcp_timeout_close_wait: Option<String>,

    /// Set nf_conntrack_tcp_be_liberal (`--conntrack-tcp-be-liberal[=true|false]`).
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool
    )]
    pub conntrack_tcp_be_liberal: Option<bool>,

    /// Idle timeout of UNREPLIED UDP flows; 0 leaves it as-is (default 0).
    #[arg(long, value_name = "DURATION")]
    pub conntrack_udp_timeout: Option<String>,

    /// Idle timeout of ASSURED UDP flows; 0 leaves it as-is (default 0).
    #[arg(long, value_name = "DURATION")]
    pub conntrack_udp_timeout_stream: Option<String>,
}
