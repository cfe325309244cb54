//! `/configz`: the effective configuration as upstream kube-proxy serves it on the
//! metrics port, `{"kubeproxy.config.k8s.io":{…}}` holding a v1alpha1
//! `KubeProxyConfiguration` converted from the running configuration in nftables mode.
//!
//! Owns: the JSON shape (upstream's fields in its struct order, its `omitempty`s, Go's
//! duration strings and `encoding/json` escaping) and which value fills each field.
//!
//! Must not: serve anything (`admin` does), or read anything but the given [`Config`].
//!
//! kproxy's real values: `clientConnection.kubeconfig`, `logging.verbosity`,
//! `hostnameOverride`, `healthzBindAddress`, `metricsBindAddress`, `mode` (always
//! `nftables`), the whole `nftables` block (masquerade bit and all, sync periods),
//! `detectLocalMode`, `detectLocal`, `clusterCIDR`, `nodePortAddresses` (as written, before
//! "primary" is resolved to the node IPs, as upstream shows it) and `conntrack`.
//!
//! Upstream's defaults for what kproxy does not configure (it accepts these fields in a
//! config file and ignores them): `featureGates` (absent), the rest of `clientConnection`
//! (protobuf content type, qps 5, burst 10), the rest of `logging` (text format, 5s
//! flush), `bindAddress` `0.0.0.0`, `bindAddressHardFail`, `enableProfiling`,
//! `showHiddenMetricsForVersion`, the `iptables` block (masquerade bit 14: kproxy reads
//! `--iptables-masquerade-bit` into `nftables.masqueradeBit` instead), `oomScoreAdj` -999,
//! `configSyncPeriod` 15m0s. As upstream in nftables mode, the `iptables` and `ipvs` sync
//! periods are `0s`, `ipvs` and `winkernel` hold zero values, `portRange` is empty and
//! `windowsRunAsService` is absent.

use std::time::Duration;

use serde::Serialize;

use super::{format_duration, Config, API_VERSION, KIND};
use crate::model::build::DetectLocalMode;

/// The configz group name: the key of the one entry in `/configz`'s object.
pub const CONFIGZ_GROUP: &str = "kubeproxy.config.k8s.io";

/// `/configz`'s body for `config`: compact JSON, no trailing newline, escaped as Go's
/// `encoding/json` escapes (`<`, `>`, `&`, U+2028 and U+2029 as `\uXXXX`).
pub fn configz_json(config: &Config) -> String {
    let body = Configz {
        kube_proxy: KubeProxyConfiguration::from_config(config),
    };
    let json = serde_json::to_string(&body).expect("configz serializes");
    go_escape(&json)
}

/// Go's `encoding/json` HTML-safe escaping. These characters only occur inside JSON
/// strings, so replacing them in the serialized text is exact.
fn go_escape(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// Go's `time.Duration.String()`, as `metav1.Duration` marshals.
pub(super) fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 || nanos >= 1_000_000_000 {
        return format_duration(d);
    }
    let (scale, unit) = match nanos {
        n if n < 1_000 => (1, "ns"),
        n if n < 1_000_000 => (1_000, "µs"),
        _ => (1_000_000, "ms"),
    };
    let (whole, frac) = (nanos / scale, nanos % scale);
    if frac == 0 {
        return format!("{whole}{unit}");
    }
    let width = scale.ilog10() as usize;
    let frac = format!("{frac:0width$}");
    format!("{whole}.{}{unit}", frac.trim_end_matches('0'))
}

#[derive(Serialize)]
struct Configz {
    #[serde(rename = "kubeproxy.config.k8s.io")]
    kube_proxy: KubeProxyConfiguration,
}

/// `k8s.io/kube-proxy/config/v1alpha1.KubeProxyConfiguration`, fields in its order.
/// `featureGates` (empty) and `windowsRunAsService` (false) are `omitempty` and absent.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KubeProxyConfiguration {
    kind: &'static str,
    api_version: &'static str,
    client_connection: ClientConnection,
    logging: Logging,
    hostname_override: String,
    bind_address: &'static str,
    healthz_bind_address: String,
    metrics_bind_address: String,
    bind_address_hard_fail: bool,
    enable_profiling: bool,
    show_hidden_metrics_for_version: &'static str,
    mode: &'static str,
    iptables: IpTables,
    ipvs: Ipvs,
    nftables: NfTables,
    winkernel: Winkernel,
    detect_local_mode: &'static str,
    detect_local: DetectLocal,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: String,
    node_port_addresses: Vec<String>,
    oom_score_adj: i32,
    conntrack: Conntrack,
    config_sync_period: String,
    port_range: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClientConnection {
    kubeconfig: String,
    accept_content_types: &'static str,
    content_type: &'static str,
    /// A Go float32 5 marshals as `5`.
    qps: u32,
    burst: i32,
}

/// `logsapi.LoggingConfiguration` as `SetRecommendedLoggingConfiguration` leaves it
/// (`vmodule` is `omitempty` and absent; `flushFrequency` marshals as a string).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Logging {
    format: &'static str,
    flush_frequency: &'static str,
    verbosity: u8,
    options: LoggingOptions,
}

#[derive(Serialize)]
struct LoggingOptions {
    text: BufferOptions,
    json: BufferOptions,
}

/// `splitStream` is `omitempty` (false: absent); a zero `infoBufferSize` marshals as `"0"`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BufferOptions {
    info_buffer_size: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IpTables {
    masquerade_bit: i32,
    masquerade_all: bool,
    localhost_node_ports: bool,
    sync_period: String,
    min_sync_period: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Ipvs {
    sync_period: String,
    min_sync_period: String,
    scheduler: &'static str,
    /// `null`: unset.
    #[serde(rename = "excludeCIDRs")]
    exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    strict_arp: bool,
    tcp_timeout: String,
    tcp_fin_timeout: String,
    udp_timeout: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NfTables {
    masquerade_bit: u32,
    masquerade_all: bool,
    sync_period: String,
    min_sync_period: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Winkernel {
    network_name: &'static str,
    source_vip: &'static str,
    #[serde(rename = "enableDSR")]
    enable_dsr: bool,
    root_hns_endpoint_name: &'static str,
    forward_health_check_vip: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DetectLocal {
    bridge_interface: String,
    interface_name_prefix: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Conntrack {
    max_per_core: u32,
    min: u32,
    tcp_established_timeout: String,
    tcp_close_wait_timeout: String,
    tcp_be_liberal: bool,
    udp_timeout: String,
    udp_stream_timeout: String,
}

/// Upstream's `iptables.masqueradeBit` default (and `nftables.masqueradeBit`'s).
const UPSTREAM_MASQUERADE_BIT: i32 = 14;
/// Upstream's `oomScoreAdj` default (`qos.KubeProxyOOMScoreAdj`).
const UPSTREAM_OOM_SCORE_ADJ: i32 = -999;
/// Upstream's `configSyncPeriod` default.
const UPSTREAM_CONFIG_SYNC_PERIOD: Duration = Duration::from_secs(15 * 60);

impl KubeProxyConfiguration {
    fn from_config(c: &Config) -> KubeProxyConfiguration {
        let s = &c.settings;
        let zero = || go_duration(Duration::ZERO);
        KubeProxyConfiguration {
            kind: KIND,
            api_version: API_VERSION,
            client_connection: ClientConnection {
                kubeconfig: c
                    .kubeconfig
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                accept_content_types: "",
                content_type: "application/vnd.kubernetes.protobuf",
                qps: 5,
                burst: 10,
            },
            logging: Logging {
                format: "text",
                flush_frequency: "5s",
                verbosity: c.verbosity,
                options: LoggingOptions {
                    text: BufferOptions {
                        info_buffer_size: "0",
                    },
                    json: BufferOptions {
                        info_buffer_size: "0",
                    },
                },
            },
            hostname_override: c.given.hostname_override.clone(),
            bind_address: "0.0.0.0",
            healthz_bind_address: c.healthz_bind.to_string(),
            metrics_bind_address: c.metrics_bind.to_string(),
            bind_address_hard_fail: false,
            enable_profiling: false,
            show_hidden_metrics_for_version: "",
            mode: "nftables",
            iptables: IpTables {
                masquerade_bit: UPSTREAM_MASQUERADE_BIT,
                masquerade_all: false,
                localhost_node_ports: true,
                sync_period: zero(),
                min_sync_period: zero(),
            },
            ipvs: Ipvs {
                sync_period: zero(),
                min_sync_period: zero(),
                scheduler: "",
                exclude_cidrs: None,
                strict_arp: false,
                tcp_timeout: zero(),
                tcp_fin_timeout: zero(),
                udp_timeout: zero(),
            },
            nftables: NfTables {
                masquerade_bit: s.masquerade_mark.trailing_zeros(),
                masquerade_all: s.masquerade_all,
                sync_period: go_duration(c.sync_period),
                min_sync_period: go_duration(c.min_sync_period),
            },
            winkernel: Winkernel {
                network_name: "",
                source_vip: "",
                enable_dsr: false,
                root_hns_endpoint_name: "",
                forward_health_check_vip: false,
            },
            detect_local_mode: detect_local_mode(s.detect_local_mode),
            detect_local: DetectLocal {
                bridge_interface: s.bridge_interface.clone(),
                interface_name_prefix: s.interface_name_prefix.clone(),
            },
            cluster_cidr: c.given.cluster_cidr.clone(),
            node_port_addresses: c.given.nodeport_addresses.clone(),
            oom_score_adj: UPSTREAM_OOM_SCORE_ADJ,
            conntrack: Conntrack {
                max_per_core: c.conntrack.max_per_core,
                min: c.conntrack.min,
                tcp_established_timeout: go_duration(c.conntrack.tcp_established_timeout),
                tcp_close_wait_timeout: go_duration(c.conntrack.tcp_close_wait_timeout),
                tcp_be_liberal: c.conntrack.tcp_be_liberal,
                udp_timeout: go_duration(c.conntrack.udp_timeout),
                udp_stream_timeout: go_duration(c.conntrack.udp_stream_timeout),
            },
            config_sync_period: go_duration(UPSTREAM_CONFIG_SYNC_PERIOD),
            port_range: "",
        }
    }
}

/// `detectLocalMode`'s spelling. `None` is the model's own state, never a configured mode.
fn detect_local_mode(mode: DetectLocalMode) -> &'static str {
    match mode {
        DetectLocalMode::ClusterCidr => "ClusterCIDR",
        DetectLocalMode::NodeCidr => "NodeCIDR",
        DetectLocalMode::BridgeInterface => "BridgeInterface",
        DetectLocalMode::InterfaceNamePrefix => "InterfaceNamePrefix",
        DetectLocalMode::None => "",
    }
}
