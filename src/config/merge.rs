//! Stage 2, flags + file → [`Config`]: per setting, the explicit flag, else the file's
//! value, else upstream's default; then every value validated.
//!
//! Owns: the precedence, upstream's defaulting quirks (empty strings and zero periods in
//! the file mean "unset"), the value syntaxes (CIDRs, bind addresses, interface names, the
//! `nodePortAddresses` list), and every validation message: each names the setting the
//! value came from (`--cluster-cidr`, or `clusterCIDR (in FILE)`).
//!
//! Must not: read anything (the file arrives parsed, the host name as a function), or
//! interpret the cluster: what the settings mean for rules is `model::build`'s business.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;

use super::file::{FileConfig, FileConntrack};
use super::go::{format_duration, parse_go_duration};
use super::{
    Config, ConfigError, ConntrackConfig, Given, ProxyFlags, DEFAULT_HEALTHZ_BIND,
    DEFAULT_METRICS_BIND, DEFAULT_MIN_SYNC_PERIOD, DEFAULT_SYNC_PERIOD, MAX_VERBOSITY,
};
use crate::model::build::{DetectLocalMode, NodePortAddresses, Settings};
use crate::model::DEFAULT_MASQUERADE_BIT;

/// Merges the flags with the parsed file (`FileConfig::default()` without `--config`;
/// `origin` names the file in messages) and validates the result. `hostname` is asked only when no node name is configured.
pub(super) fn merge(
    flags: &ProxyFlags,
    origin: Option<&Path>,
    file: FileConfig,
    hostname: impl FnOnce() -> Option<String>,
) -> Result<Config, ConfigError> {
    let m = Merge { file: origin };
    let given = given(flags, &file);
    // The order of the checks is the order errors are reported in.
    m.proxy_mode(flags, file.mode)?;
    let hostname = m.node_name(flags, file.hostname_override, hostname)?;
    let local = m.detect_local(
        flags,
        FileDetectLocal {
            cluster_cidr: file.cluster_cidr,
            mode: file.detect_local_mode,
            bridge_interface: file.bridge_interface,
            interface_name_prefix: file.interface_name_prefix,
        },
    )?;
    let masquerade = m.masquerade(flags, file.masquerade_all, file.masquerade_bit)?;
    let nodeport_addresses = m.nodeport_addresses(flags, file.nodeport_addresses)?;
    let (sync_period, min_sync_period) =
        m.sync_periods(flags, file.sync_period, file.min_sync_period)?;
    let healthz_bind = m.bind_address(
        flags.healthz_bind_address.clone(),
        "--healthz-bind-address",
        file.healthz_bind_address,
        "healthzBindAddress",
        DEFAULT_HEALTHZ_BIND,
    )?;
    let metrics_bind = m.bind_address(
        flags.metrics_bind_address.clone(),
        "--metrics-bind-address",
        file.metrics_bind_address,
        "metricsBindAddress",
        DEFAULT_METRICS_BIND,
    )?;
    let kubeconfig = flags
        .kubeconfig
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
        .or(file.kubeconfig.filter(|k| !k.is_empty()).map(PathBuf::from));
    let verbosity = m.verbosity(flags, file.verbosity)?;
    let conntrack = m.conntrack(flags, file.conntrack)?;

    Ok(Config {
        settings: settings(hostname, local, masquerade, nodeport_addresses),
        sync_period,
        min_sync_period,
        healthz_bind,
        metrics_bind,
        kubeconfig,
        verbosity,
        conntrack,
        config_file: flags.config.clone(),
        given,
    })
}

/// The settings `/configz` shows as written (same precedence as the merge: an explicit
/// flag, else the file), before kproxy resolves them.
fn given(flags: &ProxyFlags, file: &FileConfig) -> Given {
    let hostname_override = match flags.hostname_override.as_deref() {
        Some(h) if !h.is_empty() => h.trim().to_lowercase(),
        _ => file.hostname_override.clone().unwrap_or_default(),
    };
    let cluster_cidr = flags
        .cluster_cidr
        .clone()
        .or_else(|| file.cluster_cidr.clone())
        .unwrap_or_default();
    let listed = match &flags.nodeport_addresses {
        Some(s) => s.split(',').map(str::to_string).collect(),
        None => file.nodeport_addresses.clone().unwrap_or_default(),
    };
    let nodeport_addresses: Vec<String> = listed
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if nodeport_addresses.is_empty() {
        return Given {
            hostname_override,
            cluster_cidr,
            ..Given::default()
        };
    }
    Given {
        hostname_override,
        cluster_cidr,
        nodeport_addresses,
    }
}

/// The pure core's settings from the merged values: the one place that builds
/// `model::build::Settings`.
fn settings(
    hostname: String,
    local: DetectLocal,
    masquerade: Masquerade,
    nodeport_addresses: NodePortAddresses,
) -> Settings {
    Settings {
        hostname,
        cluster_cidrs: local.cluster_cidrs,
        detect_local_mode: local.mode,
        bridge_interface: local.bridge_interface,
        interface_name_prefix: local.interface_name_prefix,
        masquerade_all: masquerade.all,
        masquerade_mark: masquerade.mark,
        nodeport_addresses,
        service_proxy_name: None,
        local_addresses: None,
    }
}

/// The file's local-traffic-detection values.
struct FileDetectLocal {
    cluster_cidr: Option<String>,
    mode: Option<String>,
    bridge_interface: Option<String>,
    interface_name_prefix: Option<String>,
}

/// How local pods' traffic is recognised, validated.
struct DetectLocal {
    cluster_cidrs: Vec<IpNetwork>,
    mode: DetectLocalMode,
    /// Kept even when the mode does not use it (as given; validated only when used).
    bridge_interface: String,
    interface_name_prefix: String,
}

/// Masquerading, validated.
struct Masquerade {
    all: bool,
    /// The packet mark of the validated bit: the model takes it as it is.
    mark: u32,
}

/// A value and the name of the setting it came from (for error messages).
struct Sourced<T> {
    value: T,
    setting: String,
}

impl<T> Sourced<T> {
    fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            setting: self.setting.clone(),
            message: message.into(),
        }
    }
}

/// Picks each setting from the flags or the file, remembering where it came from.
struct Merge<'a> {
    file: Option<&'a Path>,
}

impl Merge<'_> {
    fn file_setting(&self, field: &str) -> String {
        match self.file {
            Some(path) => format!("{field} (in {})", path.display()),
            None => field.to_string(),
        }
    }

    fn pick<T>(
        &self,
        flag: Option<T>,
        flag_name: &str,
        file: Option<T>,
        field: &str,
    ) -> Option<Sourced<T>> {
        match (flag, file) {
            (Some(value), _) => Some(Sourced {
                value,
                setting: flag_name.to_string(),
            }),
            (None, Some(value)) => Some(Sourced {
                value,
                setting: self.file_setting(field),
            }),
            (None, None) => None,
        }
    }

    /// A duration setting. With `file_zero_is_unset`, a zero in the file counts as not
    /// given (upstream defaults zero periods).
    fn duration(
        &self,
        flag: Option<String>,
        flag_name: &str,
        file: Option<String>,
        field: &str,
        file_zero_is_unset: bool,
    ) -> Result<Option<Sourced<Duration>>, ConfigError> {
        let Some(s) = self.pick(flag, flag_name, file, field) else {
            return Ok(None);
        };
        let from_file = !s.setting.starts_with("--");
        let d = parse_go_duration(&s.value).map_err(|e| s.invalid(e))?;
        if from_file && file_zero_is_unset && d.is_zero() {
            return Ok(None);
        }
        Ok(Some(Sourced {
            value: d,
            setting: s.setting,
        }))
    }

    fn bind_address(
        &self,
        flag: Option<String>,
        flag_name: &str,
        file: Option<String>,
        field: &str,
        default: SocketAddr,
    ) -> Result<SocketAddr, ConfigError> {
        // An empty value in the file is upstream's "unset" (defaulted).
        let Some(s) = self.pick(flag, flag_name, file.filter(|f| !f.is_empty()), field) else {
            return Ok(default);
        };
        if s.value.is_empty() {
            return Err(
                s.invalid("an empty address (disabling the server) is not supported by kproxy")
            );
        }
        parse_bind_address(&s.value, default.port()).map_err(|m| s.invalid(m))
    }

    /// `--proxy-mode` / `mode`: empty or `nftables`.
    fn proxy_mode(&self, flags: &ProxyFlags, file: Option<String>) -> Result<(), ConfigError> {
        if let Some(mode) = self.pick(flags.proxy_mode.clone(), "--proxy-mode", file, "mode") {
            if !(mode.value.is_empty() || mode.value == "nftables") {
                return Err(ConfigError::UnsupportedProxyMode {
                    setting: mode.setting,
                    mode: mode.value,
                });
            }
        }
        Ok(())
    }

    /// The node name: `--hostname-override` / `hostnameOverride`, else the host name;
    /// trimmed and lowercased.
    fn node_name(
        &self,
        flags: &ProxyFlags,
        file: Option<String>,
        hostname: impl FnOnce() -> Option<String>,
    ) -> Result<String, ConfigError> {
        // Upstream: `--hostname-override=""` counts as not given.
        let override_flag = flags.hostname_override.clone().filter(|h| !h.is_empty());
        match self.pick(
            override_flag,
            "--hostname-override",
            file.filter(|h| !h.is_empty()),
            "hostnameOverride",
        ) {
            Some(h) => {
                let name = h.value.trim().to_lowercase();
                if name.is_empty() {
                    return Err(h.invalid("a node name cannot be blank"));
                }
                Ok(name)
            }
            None => hostname()
                .map(|h| h.trim().to_lowercase())
                .filter(|h| !h.is_empty())
                .ok_or(ConfigError::NoHostname),
        }
    }

    /// Local traffic detection: the cluster CIDRs, the mode, and the interface settings
    /// the mode depends on.
    fn detect_local(
        &self,
        flags: &ProxyFlags,
        file: FileDetectLocal,
    ) -> Result<DetectLocal, ConfigError> {
        let cluster_cidrs = match self.pick(
            flags.cluster_cidr.clone(),
            "--cluster-cidr",
            file.cluster_cidr,
            "clusterCIDR",
        ) {
            Some(s) => parse_cluster_cidrs(&s)?,
            None => Vec::new(),
        };
        let mode = self.pick(
            flags.detect_local_mode.clone(),
            "--detect-local-mode",
            file.mode,
            "detectLocalMode",
        );
        let detect_local_mode = match &mode {
            None => DetectLocalMode::ClusterCidr,
            Some(s) => parse_detect_local_mode(s)?,
        };
        let bridge = self.pick(
            flags.pod_bridge_interface.clone(),
            "--pod-bridge-interface",
            file.bridge_interface,
            "detectLocal.bridgeInterface",
        );
        let prefix = self.pick(
            flags.pod_interface_name_prefix.clone(),
            "--pod-interface-name-prefix",
            file.interface_name_prefix,
            "detectLocal.interfaceNamePrefix",
        );
        if let Some(mode) = &mode {
            self.check_companion(detect_local_mode, mode, &bridge, &prefix)?;
        }
        Ok(DetectLocal {
            cluster_cidrs,
            mode: detect_local_mode,
            bridge_interface: bridge.map(|b| b.value).unwrap_or_default(),
            interface_name_prefix: prefix.map(|p| p.value).unwrap_or_default(),
        })
    }

    /// A detect-local mode that names an interface needs that interface setting, and it
    /// must be a valid interface name.
    fn check_companion(
        &self,
        detect_local_mode: DetectLocalMode,
        mode: &Sourced<String>,
        bridge: &Option<Sourced<String>>,
        prefix: &Option<Sourced<String>>,
    ) -> Result<(), ConfigError> {
        let (value, flag, field) = match detect_local_mode {
            DetectLocalMode::BridgeInterface => (
                bridge,
                "--pod-bridge-interface",
                "detectLocal.bridgeInterface",
            ),
            DetectLocalMode::InterfaceNamePrefix => (
                prefix,
                "--pod-interface-name-prefix",
                "detectLocal.interfaceNamePrefix",
            ),
            _ => return Ok(()),
        };
        match value {
            Some(v) if !v.value.is_empty() => check_interface_name(v),
            _ => {
                let needs = if self.file.is_some() {
                    format!("{flag} (or {field} in the config file)")
                } else {
                    flag.to_string()
                };
                Err(ConfigError::MissingCompanion {
                    setting: mode.setting.clone(),
                    mode: mode.value.clone(),
                    needs,
                })
            }
        }
    }

    /// `--masquerade-all` and `--iptables-masquerade-bit` (`nftables.masquerade*`).
    fn masquerade(
        &self,
        flags: &ProxyFlags,
        file_all: Option<bool>,
        file_bit: Option<i64>,
    ) -> Result<Masquerade, ConfigError> {
        let all = self
            .pick(
                flags.masquerade_all,
                "--masquerade-all",
                file_all,
                "nftables.masqueradeAll",
            )
            .is_some_and(|b| b.value);
        let bit = match self.pick(
            flags.masquerade_bit,
            "--iptables-masquerade-bit",
            file_bit,
            "nftables.masqueradeBit",
        ) {
            None => DEFAULT_MASQUERADE_BIT,
            Some(b) => match u8::try_from(b.value) {
                Ok(bit) if bit <= 31 => bit,
                _ => return Err(b.invalid(format!("{} is not in the range 0..=31", b.value))),
            },
        };
        Ok(Masquerade {
            all,
            mark: 1u32 << bit,
        })
    }

    /// `--nodeport-addresses` (comma-separated) / `nodePortAddresses` (a list).
    fn nodeport_addresses(
        &self,
        flags: &ProxyFlags,
        file: Option<Vec<String>>,
    ) -> Result<NodePortAddresses, ConfigError> {
        match (&flags.nodeport_addresses, file) {
            (Some(s), _) => parse_nodeport_addresses(
                "--nodeport-addresses",
                &s.split(',').map(str::to_string).collect::<Vec<_>>(),
            ),
            (None, Some(list)) => {
                parse_nodeport_addresses(&self.file_setting("nodePortAddresses"), &list)
            }
            (None, None) => Ok(NodePortAddresses::Primary),
        }
    }

    /// The full resync period and the minimum time between syncs, defaulted and checked
    /// against each other.
    fn sync_periods(
        &self,
        flags: &ProxyFlags,
        file_sync: Option<String>,
        file_min_sync: Option<String>,
    ) -> Result<(Duration, Duration), ConfigError> {
        // In the file, 0 means "unset" (upstream's defaulting); on the command line,
        // `--iptables-min-sync-period 0` means "sync on every change".
        let sync_period = self.duration(
            flags.iptables_sync_period.clone(),
            "--iptables-sync-period",
            file_sync,
            "nftables.syncPeriod",
            true,
        )?;
        let min_sync_period = self.duration(
            flags.iptables_min_sync_period.clone(),
            "--iptables-min-sync-period",
            file_min_sync,
            "nftables.minSyncPeriod",
            true,
        )?;
        let sync = sync_period.unwrap_or(Sourced {
            value: DEFAULT_SYNC_PERIOD,
            setting: "--iptables-sync-period".into(),
        });
        if sync.value.is_zero() {
            return Err(sync.invalid("must be greater than 0"));
        }
        let min_sync = min_sync_period.map_or(DEFAULT_MIN_SYNC_PERIOD, |d| d.value);
        if min_sync > sync.value {
            return Err(sync.invalid(format!(
                "{} is shorter than the minimum sync period {}",
                format_duration(sync.value),
                format_duration(min_sync)
            )));
        }
        Ok((sync.value, min_sync))
    }

    /// `--v` / `logging.verbosity`.
    fn verbosity(&self, flags: &ProxyFlags, file: Option<i64>) -> Result<u8, ConfigError> {
        match self.pick(flags.v, "--v", file, "logging.verbosity") {
            None => Ok(0),
            Some(v) => match u8::try_from(v.value) {
                Ok(level) if level <= MAX_VERBOSITY => Ok(level),
                _ => Err(v.invalid(format!(
                    "{} is not in the range 0..={MAX_VERBOSITY}",
                    v.value
                ))),
            },
        }
    }

    /// `--conntrack-*` / `conntrack.*`.
    fn conntrack(
        &self,
        flags: &ProxyFlags,
        file: FileConntrack,
    ) -> Result<ConntrackConfig, ConfigError> {
        let mut c = ConntrackConfig::default();
        let count =
            |flag: Option<i64>, name: &str, file: Option<i64>, field: &str, out: &mut u32| {
                if let Some(n) = self.pick(flag, name, file, &format!("conntrack.{field}")) {
                    *out = u32::try_from(n.value)
                        .ok()
                        .filter(|v| i32::try_from(*v).is_ok())
                        .ok_or_else(|| {
                            n.invalid(format!("{} is not in the range 0..=2147483647", n.value))
                        })?;
                }
                Ok::<(), ConfigError>(())
            };
        count(
            flags.conntrack_max_per_core,
            "--conntrack-max-per-core",
            file.max_per_core,
            "maxPerCore",
            &mut c.max_per_core,
        )?;
        count(
            flags.conntrack_min,
            "--conntrack-min",
            file.min,
            "min",
            &mut c.min,
        )?;
        // Here an explicit 0 in the file is kept: it means "leave the kernel's value".
        let timeout = |flag: &Option<String>, name: &str, file: Option<String>, field: &str| {
            self.duration(flag.clone(), name, file, field, false)
                .map(|d| d.map(|d| d.value))
        };
        if let Some(d) = timeout(
            &flags.conntrack_tcp_timeout_established,
            "--conntrack-tcp-timeout-established",
            file.tcp_established_timeout,
            "conntrack.tcpEstablishedTimeout",
        )? {
            c.tcp_established_timeout = d;
        }
        if let Some(d) = timeout(
            &flags.conntrack_tcp_timeout_close_wait,
            "--conntrack-tcp-timeout-close-wait",
            file.tcp_close_wait_timeout,
            "conntrack.tcpCloseWaitTimeout",
        )? {
            c.tcp_close_wait_timeout = d;
        }
        if let Some(d) = timeout(
            &flags.conntrack_udp_timeout,
            "--conntrack-udp-timeout",
            file.udp_timeout,
            "conntrack.udpTimeout",
        )? {
            c.udp_timeout = d;
        }
        if let Some(d) = timeout(
            &flags.conntrack_udp_timeout_stream,
            "--conntrack-udp-timeout-stream",
            file.udp_stream_timeout,
            "conntrack.udpStreamTimeout",
        )? {
            c.udp_stream_timeout = d;
        }
        if let Some(b) = self.pick(
            flags.conntrack_tcp_be_liberal,
            "--conntrack-tcp-be-liberal",
            file.tcp_be_liberal,
            "conntrack.tcpBeLiberal",
        ) {
            c.tcp_be_liberal = b.value;
        }
        Ok(c)
    }
}

/// `--detect-local-mode` / `detectLocalMode` (empty: the default, ClusterCIDR).
fn parse_detect_local_mode(s: &Sourced<String>) -> Result<DetectLocalMode, ConfigError> {
    match s.value.as_str() {
        "" | "ClusterCIDR" => Ok(DetectLocalMode::ClusterCidr),
        "NodeCIDR" => Ok(DetectLocalMode::NodeCidr),
        "BridgeInterface" => Ok(DetectLocalMode::BridgeInterface),
        "InterfaceNamePrefix" => Ok(DetectLocalMode::InterfaceNamePrefix),
        other => Err(s.invalid(format!(
            "{other:?} is not a detect-local mode (ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix)"
        ))),
    }
}

/// `--cluster-cidr`: one CIDR, or one IPv4 and one IPv6 CIDR, comma-separated. CIDRs are
/// returned as networks (host bits cleared).
fn parse_cluster_cidrs(s: &Sourced<String>) -> Result<Vec<IpNetwork>, ConfigError> {
    if s.value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = s.value.split(',').map(str::trim).collect();
    if parts.len() > 2 {
        return Err(s.invalid(format!(
            "{:?} has {} CIDRs: give one, or one IPv4 and one IPv6 CIDR",
            s.value,
            parts.len()
        )));
    }
    let mut cidrs: Vec<IpNetwork> = Vec::new();
    for part in parts {
        let net = parse_cidr(part).map_err(|m| s.invalid(m))?;
        if let Some(prev) = cidrs.iter().find(|c| c.is_ipv4() == net.is_ipv4()) {
            return Err(s.invalid(format!(
                "{prev} and {net} are both {}: give at most one CIDR per IP family",
                if net.is_ipv4() { "IPv4" } else { "IPv6" }
            )));
        }
        cidrs.push(net);
    }
    Ok(cidrs)
}

/// One CIDR (`a.b.c.d/n` or `x::/n`; a prefix length is required), host bits cleared.
fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    let bad = || format!("{s:?} is not a CIDR");
    if !s.contains('/') {
        return Err(bad());
    }
    let net: IpNetwork = s.parse().map_err(|_| bad())?;
    IpNetwork::new(net.network(), net.prefix()).map_err(|_| bad())
}

/// `nodePortAddresses`: `primary` alone, or CIDRs (and the keyword `all`).
fn parse_nodeport_addresses(
    setting: &str,
    items: &[String],
) -> Result<NodePortAddresses, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        setting: setting.to_string(),
        message,
    };
    let items: Vec<&str> = items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Ok(NodePortAddresses::Primary);
    }
    if items.contains(&"primary") {
        if items.len() > 1 {
            return Err(invalid(
                "\"primary\" cannot be combined with other addresses".to_string(),
            ));
        }
        return Ok(NodePortAddresses::Primary);
    }
    let mut cidrs: Vec<IpNetwork> = Vec::new();
    for item in items {
        let nets = match item {
            "all" => vec![
                IpNetwork::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("valid"),
                IpNetwork::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).expect("valid"),
            ],
            "localhost" => return Err(invalid(
                "\"localhost\": NodePorts on loopback addresses are not supported in nftables mode"
                    .to_string(),
            )),
            _ => vec![parse_cidr(item)
                .map_err(|m| invalid(format!("{m} (expected \"primary\" or CIDRs)")))?],
        };
        for net in nets {
            if !cidrs.contains(&net) {
                cidrs.push(net);
            }
        }
    }
    Ok(NodePortAddresses::Cidrs(cidrs))
}

/// `IP:PORT`, `[IPv6]:PORT`, or a bare IP (`0.0.0.0`, `::`, `[::]`) given `default_port`.
fn parse_bind_address(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| format!("{s:?} is not an IP address with an optional port"))
}

/// Interface names are used in nft rules (`iifname "…"`): Linux rules (1..=15 bytes, no
/// `/`, `:` or whitespace, not `.`/`..`) plus no `"`, `\` or `*` (nft string syntax).
fn check_interface_name(s: &Sourced<String>) -> Result<(), ConfigError> {
    let name = &s.value;
    if name.len() > 15 {
        return Err(s.invalid(format!(
            "{name:?} is longer than 15 bytes, the Linux limit for interface names"
        )));
    }
    if name == "." || name == ".." {
        return Err(s.invalid(format!("{name:?} is not a valid interface name")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "/:\"\\*".contains(*c))
    {
        return Err(s.invalid(format!(
            "{name:?} is not a valid interface name (contains {c:?})"
        )));
    }
    Ok(())
}
