//! The proxy configuration: kube-proxy-compatible flags and `KubeProxyConfiguration`
//! files, turned into one validated, typed [`Config`].
//!
//! Owns: the flag definitions ([`ProxyFlags`], kube-proxy's names), reading and strictly
//! checking the `--config` file (`kubeproxy.config.k8s.io/v1alpha1`
//! `KubeProxyConfiguration`, YAML or JSON), merging the two, applying upstream's defaults,
//! and validating every value with a one-line, operator-readable [`ConfigError`].
//!
//! Must not: do any I/O except reading the config file it is asked to read (and the host
//! name, when `--hostname-override` is not given), or interpret the cluster: what the
//! settings *mean* for rules is `model::build`'s business.
//!
//! Precedence, per setting: a flag given on the command line, else the config file's
//! value, else upstream's default. (Upstream kube-proxy ignores most flags once `--config`
//! is given, honouring only `--hostname-override` and the logging flags; kproxy lets every
//! explicitly given flag override the file, so `--config` plus a flag never silently drops
//! the flag.) Flags are `Option`s without clap defaults for exactly this reason: `None`
//! means "not on the command line".

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::model::build::{DetectLocalMode, NodePortAddresses, Settings};
use crate::model::DEFAULT_MASQUERADE_BIT;

/// The config file's `apiVersion`.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// The config file's `kind`.
pub const KIND: &str = "KubeProxyConfiguration";
/// Default `--healthz-bind-address`.
pub const DEFAULT_HEALTHZ_BIND: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 10256);
/// Default `--metrics-bind-address`.
pub const DEFAULT_METRICS_BIND: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 10249);
/// Default `--iptables-sync-period` / `nftables.syncPeriod`.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);
/// Default `--iptables-min-sync-period` / `nftables.minSyncPeriod`.
pub const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);
/// Highest accepted `--v`.
pub const MAX_VERBOSITY: u8 = 10;

/// kube-proxy's command-line flags (the subset kproxy uses), for `#[command(flatten)]`.
///
/// Every flag is optional so that a `--config` file can supply the value; see the module
/// documentation for the precedence. Values are validated by [`Config::from_flags`], not
/// by clap, so that errors read the same whether a value came from a flag or the file.
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

/// Conntrack tuning (`--conntrack-*` / `conntrack.*`). Zero means "leave the kernel's
/// value as it is", as upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Entries per CPU core for `nf_conntrack_max`; 0 leaves it (and ignores `min`).
    pub max_per_core: u32,
    /// Lower bound for `nf_conntrack_max`.
    pub min: u32,
    pub tcp_established_timeout: Duration,
    pub tcp_close_wait_timeout: Duration,
    pub tcp_be_liberal: bool,
    pub udp_timeout: Duration,
    pub udp_stream_timeout: Duration,
}

impl Default for ConntrackConfig {
    /// Upstream's defaults.
    fn default() -> ConntrackConfig {
        ConntrackConfig {
            max_per_core: 32 * 1024,
            min: 128 * 1024,
            tcp_established_timeout: Duration::from_secs(24 * 3600),
            tcp_close_wait_timeout: Duration::from_secs(3600),
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        }
    }
}

/// The validated, typed configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// What the pure core needs (`local_addresses` is left `None`: the daemon fills it).
    pub settings: Settings,
    /// Full resync period (`--iptables-sync-period` / `nftables.syncPeriod`).
    pub sync_period: Duration,
    /// Minimum time between syncs (`--iptables-min-sync-period` / `nftables.minSyncPeriod`).
    pub min_sync_period: Duration,
    pub healthz_bind: SocketAddr,
    pub metrics_bind: SocketAddr,
    /// `--kubeconfig` / `clientConnection.kubeconfig`; `None` means in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// `--v` / `logging.verbosity`.
    pub verbosity: u8,
    pub conntrack: ConntrackConfig,
    /// The `--config` file the values were read from, if any (upstream exits when it
    /// changes; the daemon may watch it).
    pub config_file: Option<PathBuf>,
}

/// A configuration the operator must fix. Every variant is a usage error (exit code 64)
/// except [`ConfigError::ReadFile`] (the file is missing or unreadable) and
/// [`ConfigError::NoHostname`]; see [`ConfigError::is_usage`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file cannot be read.
    #[error("--config {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The `--config` file is not a valid KubeProxyConfiguration (syntax, apiVersion or
    /// kind, unknown or mistyped field).
    #[error("--config {}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A value is invalid. `setting` names where it came from: `--cluster-cidr`, or
    /// `clusterCIDR (in /etc/kube-proxy/config.yaml)`.
    #[error("{setting}: {message}")]
    Invalid { setting: String, message: String },
    /// A proxy mode other than nftables.
    #[error("{setting} {mode:?} is not supported: kproxy only implements nftables")]
    UnsupportedProxyMode { setting: String, mode: String },
    /// A detect-local mode without the setting it depends on.
    #[error("{setting} {mode} needs {needs}")]
    MissingCompanion {
        setting: String,
        mode: String,
        needs: String,
    },
    /// Neither `--hostname-override` nor the host name gives a node name.
    #[error(
        "cannot determine the node name: the host name is empty (read /proc/sys/kernel/hostname and $HOSTNAME); set --hostname-override"
    )]
    NoHostname,
}

impl ConfigError {
    /// True when the operator's input is wrong (flags or file content): exit code 64.
    pub fn is_usage(&self) -> bool {
        !matches!(self, ConfigError::ReadFile { .. } | ConfigError::NoHostname)
    }
}

impl Config {
    /// Reads `--config` (if given), merges it with the flags (explicit flags win) and
    /// upstream's defaults, and validates the result. The node name defaults to the host
    /// name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`), trimmed and lowercased.
    pub fn from_flags(flags: &ProxyFlags) -> Result<Config, ConfigError> {
        Config::from_flags_with_hostname(flags, system_hostname)
    }

    /// [`Config::from_flags`] with the host name lookup supplied (tests).
    pub fn from_flags_with_hostname(
        flags: &ProxyFlags,
        hostname: impl FnOnce() -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                parse_file(path, &text)?
            }
            None => FileConfig::default(),
        };
        let m = Merge {
            file: flags.config.as_deref(),
        };

        // Proxy mode.
        if let Some(mode) = m.pick(flags.proxy_mode.clone(), "--proxy-mode", file.mode, "mode") {
            if !(mode.value.is_empty() || mode.value == "nftables") {
                return Err(ConfigError::UnsupportedProxyMode {
                    setting: mode.setting,
                    mode: mode.value,
                });
            }
        }

        // Node name (upstream: `--hostname-override=""` counts as not given).
        let override_flag = flags.hostname_override.clone().filter(|h| !h.is_empty());
        let hostname = match m.pick(
            override_flag,
            "--hostname-override",
            file.hostname_override.filter(|h| !h.is_empty()),
            "hostnameOverride",
        ) {
            Some(h) => {
                let name = h.value.trim().to_lowercase();
                if name.is_empty() {
                    return Err(h.invalid("a node name cannot be blank"));
                }
                name
            }
            None => hostname()
                .map(|h| h.trim().to_lowercase())
                .filter(|h| !h.is_empty())
                .ok_or(ConfigError::NoHostname)?,
        };

        // Local traffic detection.
        let cluster_cidrs = match m.pick(
            flags.cluster_cidr.clone(),
            "--cluster-cidr",
            file.cluster_cidr,
            "clusterCIDR",
        ) {
            Some(s) => parse_cluster_cidrs(&s)?,
            None => Vec::new(),
        };
        let mode = m.pick(
            flags.detect_local_mode.clone(),
            "--detect-local-mode",
            file.detect_local_mode,
            "detectLocalMode",
        );
        let detect_local_mode = match &mode {
            None => DetectLocalMode::ClusterCidr,
            Some(s) => match s.value.as_str() {
                "" | "ClusterCIDR" => DetectLocalMode::ClusterCidr,
                "NodeCIDR" => DetectLocalMode::NodeCidr,
                "BridgeInterface" => DetectLocalMode::BridgeInterface,
                "InterfaceNamePrefix" => DetectLocalMode::InterfaceNamePrefix,
                other => {
                    return Err(s.invalid(format!(
                        "{other:?} is not a detect-local mode (ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix)"
                    )))
                }
            },
        };
        let bridge = m.pick(
            flags.pod_bridge_interface.clone(),
            "--pod-bridge-interface",
            file.bridge_interface,
            "detectLocal.bridgeInterface",
        );
        let prefix = m.pick(
            flags.pod_interface_name_prefix.clone(),
            "--pod-interface-name-prefix",
            file.interface_name_prefix,
            "detectLocal.interfaceNamePrefix",
        );
        let companion = match detect_local_mode {
            DetectLocalMode::BridgeInterface => Some((
                &bridge,
                "--pod-bridge-interface",
                "detectLocal.bridgeInterface",
            )),
            DetectLocalMode::InterfaceNamePrefix => Some((
                &prefix,
                "--pod-interface-name-prefix",
                "detectLocal.interfaceNamePrefix",
            )),
            _ => None,
        };
        if let (Some((value, flag, field)), Some(mode)) = (companion, &mode) {
            match value {
                Some(v) if !v.value.is_empty() => check_interface_name(v)?,
                _ => {
                    let needs = if m.file.is_some() {
                        format!("{flag} (or {field} in the config file)")
                    } else {
                        flag.to_string()
                    };
                    return Err(ConfigError::MissingCompanion {
                        setting: mode.setting.clone(),
                        mode: mode.value.clone(),
                        needs,
                    });
                }
            }
        }

        // Masquerading.
        let masquerade_all = m
            .pick(
                flags.masquerade_all,
                "--masquerade-all",
                file.masquerade_all,
                "nftables.masqueradeAll",
            )
            .is_some_and(|b| b.value);
        let masquerade_bit = match m.pick(
            flags.masquerade_bit,
            "--iptables-masquerade-bit",
            file.masquerade_bit,
            "nftables.masqueradeBit",
        ) {
            None => DEFAULT_MASQUERADE_BIT,
            Some(b) => match u8::try_from(b.value) {
                Ok(bit) if bit <= 31 => bit,
                _ => return Err(b.invalid(format!("{} is not in the range 0..=31", b.value))),
            },
        };

        // NodePort addresses.
        let nodeport_addresses = match (&flags.nodeport_addresses, file.nodeport_addresses) {
            (Some(s), _) => parse_nodeport_addresses(
                "--nodeport-addresses",
                &s.split(',').map(str::to_string).collect::<Vec<_>>(),
            )?,
            (None, Some(list)) => {
                parse_nodeport_addresses(&m.file_setting("nodePortAddresses"), &list)?
            }
            (None, None) => NodePortAddresses::Primary,
        };

        // Sync periods. In the file, 0 means "unset" (upstream's defaulting); on the
        // command line, `--iptables-min-sync-period 0` means "sync on every change".
        let sync_period = m.duration(
            flags.iptables_sync_period.clone(),
            "--iptables-sync-period",
            file.sync_period,
            "nftables.syncPeriod",
            true,
        )?;
        let min_sync_period = m.duration(
            flags.iptables_min_sync_period.clone(),
            "--iptables-min-sync-period",
            file.min_sync_period,
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

        // Servers.
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

        let verbosity = match m.pick(flags.v, "--v", file.verbosity, "logging.verbosity") {
            None => 0,
            Some(v) => match u8::try_from(v.value) {
                Ok(level) if level <= MAX_VERBOSITY => level,
                _ => {
                    return Err(v.invalid(format!(
                        "{} is not in the range 0..={MAX_VERBOSITY}",
                        v.value
                    )))
                }
            },
        };

        let conntrack = m.conntrack(flags, file.conntrack)?;

        Ok(Config {
            settings: Settings {
                hostname,
                cluster_cidrs,
                detect_local_mode,
                bridge_interface: bridge.map(|b| b.value).unwrap_or_default(),
                interface_name_prefix: prefix.map(|p| p.value).unwrap_or_default(),
                masquerade_all,
                masquerade_mark: 1u32 << masquerade_bit,
                nodeport_addresses,
                service_proxy_name: None,
                local_addresses: None,
            },
            sync_period: sync.value,
            min_sync_period: min_sync,
            healthz_bind,
            metrics_bind,
            kubeconfig,
            verbosity,
            conntrack,
            config_file: flags.config.clone(),
        })
    }
}

/// The host name as upstream reads it (`os.Hostname()`), or `None`.
fn system_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
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

/// Parses a boolean as Go's `strconv.ParseBool` (`1 t T TRUE true True`, `0 f F FALSE
/// false False`), the syntax of kube-proxy's boolean flags.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (true or false)")),
    }
}

/// Parses a Go duration (`time.ParseDuration`): an optional sign, then one or more
/// decimal numbers with a unit each (`ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`), like
/// `30s`, `1m`, `1h0m0s`, `1.5h`, `300ms`; the lone `0` needs no unit. Negative durations
/// are rejected (no kube-proxy period may be negative). Fractions are truncated to whole
/// nanoseconds.
pub fn parse_go_duration(input: &str) -> Result<Duration, String> {
    let bad = || format!("{input:?} is not a duration (like 30s, 1m, 1h0m0s)");
    let (negative, mut rest) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        _ => (false, input),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    // Go limits durations to i64 nanoseconds.
    const MAX: u128 = i64::MAX as u128;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            "" => {
                return Err(format!(
                    "{input:?} is not a duration: missing unit (like s, m, h)"
                ))
            }
            _ => {
                return Err(format!(
                    "{input:?} is not a duration: unknown unit {unit:?}"
                ))
            }
        };
        let too_long = || format!("{input:?} is too long a duration");
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_long())?
        };
        let mut value = int.checked_mul(scale).ok_or_else(too_long)?;
        if !frac_part.is_empty() {
            // Truncate fractions beyond nanosecond precision (at most 18 digits matter).
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac: u128 = digits.parse().map_err(|_| bad())?;
            value += frac * scale / 10u128.pow(digits.len() as u32);
        }
        total = total.checked_add(value).ok_or_else(too_long)?;
        if total > MAX {
            return Err(too_long());
        }
        rest = after;
    }
    if negative && total != 0 {
        return Err(format!("{input:?}: a negative duration is not allowed"));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Formats a duration as Go does for whole seconds and above (`1h0m0s`, `30s`), else
/// `300ms` style: for messages.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        return if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            format!("{}µs", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let secs = d.as_secs();
    let sub = d.subsec_nanos();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let s = if sub == 0 {
        format!("{s}s")
    } else {
        let frac = format!("{sub:09}");
        format!("{s}.{}s", frac.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

// ---------------------------------------------------------------------------------------
// The config file.

/// Every top-level field of upstream's v1alpha1 `KubeProxyConfiguration`. Fields kproxy
/// does not use are accepted (so kubeadm's generated file loads) and ignored.
const KNOWN_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "featureGates",
    "clientConnection",
    "logging",
    "hostnameOverride",
    "bindAddress",
    "healthzBindAddress",
    "metricsBindAddress",
    "bindAddressHardFail",
    "enableProfiling",
    "showHiddenMetricsForVersion",
    "mode",
    "iptables",
    "ipvs",
    "nftables",
    "winkernel",
    "detectLocalMode",
    "detectLocal",
    "clusterCIDR",
    "nodePortAddresses",
    "oomScoreAdj",
    "conntrack",
    "configSyncPeriod",
    "portRange",
    "windowsRunAsService",
];

/// The values kproxy takes from the file (`None`: absent or null).
#[derive(Debug, Default)]
struct FileConfig {
    mode: Option<String>,
    hostname_override: Option<String>,
    cluster_cidr: Option<String>,
    detect_local_mode: Option<String>,
    bridge_interface: Option<String>,
    interface_name_prefix: Option<String>,
    nodeport_addresses: Option<Vec<String>>,
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    kubeconfig: Option<String>,
    masquerade_bit: Option<i64>,
    masquerade_all: Option<bool>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
    verbosity: Option<i64>,
    conntrack: FileConntrack,
}

#[derive(Debug, Default)]
struct FileConntrack {
    max_per_core: Option<i64>,
    min: Option<i64>,
    tcp_established_timeout: Option<String>,
    tcp_close_wait_timeout: Option<String>,
    tcp_be_liberal: Option<bool>,
    udp_timeout: Option<String>,
    udp_stream_timeout: Option<String>,
}

/// One mapping of the file, with its dotted path for messages.
struct Block<'a> {
    map: &'a Map<String, Value>,
    /// `""` at the top, `"nftables."` inside `nftables`.
    path: String,
    file: &'a Path,
}

impl<'a> Block<'a> {
    fn error(&self, message: String) -> ConfigError {
        ConfigError::File {
            path: self.file.to_path_buf(),
            message,
        }
    }

    /// Rejects fields not in `known` (upstream decodes strictly).
    fn check_fields(&self, known: &[&str], what: &str) -> Result<(), ConfigError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(self.error(format!(
                "unknown field \"{}{k}\" ({what} has no such field)",
                self.path
            ))),
            None => Ok(()),
        }
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| self.error(format!("{}{key}: {e}", self.path))),
        }
    }

    fn block(&self, key: &str) -> Result<Option<Block<'a>>, ConfigError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Block {
                map,
                path: format!("{}{key}.", self.path),
                file: self.file,
            })),
            Some(_) => Err(self.error(format!("{}{key}: expected a mapping", self.path))),
        }
    }
}

/// Parses and strictly checks a `KubeProxyConfiguration` (YAML or JSON).
fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let error = |message: String| ConfigError::File {
        path: path.to_path_buf(),
        message,
    };
    let trimmed = text.trim_start();
    let json = if trimmed.starts_with('{') {
        serde_json::from_str::<Value>(text).ok()
    } else {
        None
    };
    let value = match json {
        Some(v) => v,
        None => serde_yaml_ng::from_str::<Value>(text)
            .map_err(|e| error(format!("not valid YAML or JSON: {e}")))?,
    };
    let map = match &value {
        Value::Object(map) => map,
        Value::Null => return Err(error("the file is empty".to_string())),
        _ => {
            return Err(error(format!(
                "expected a {KIND} mapping, found {}",
                match value {
                    Value::Array(_) => "a list",
                    _ => "a single value",
                }
            )))
        }
    };
    let top = Block {
        map,
        path: String::new(),
        file: path,
    };
    let api_version: String = top.get("apiVersion")?.unwrap_or_default();
    let kind: String = top.get("kind")?.unwrap_or_default();
    if api_version != API_VERSION || kind != KIND {
        return Err(error(format!(
            "expected apiVersion {API_VERSION} and kind {KIND}, found {} {}",
            if api_version.is_empty() {
                "<no apiVersion>"
            } else {
                &api_version
            },
            if kind.is_empty() { "<no kind>" } else { &kind },
        )));
    }
    top.check_fields(KNOWN_FIELDS, KIND)?;

    let mut f = FileConfig {
        mode: top.get("mode")?,
        hostname_override: top.get("hostnameOverride")?,
        cluster_cidr: top.get("clusterCIDR")?,
        detect_local_mode: top.get("detectLocalMode")?,
        nodeport_addresses: top.get("nodePortAddresses")?,
        healthz_bind_address: top.get("healthzBindAddress")?,
        metrics_bind_address: top.get("metricsBindAddress")?,
        ..FileConfig::default()
    };
    if let Some(b) = top.block("detectLocal")? {
        // `clusterCIDRs` is the internal (v1alpha2) spelling; not accepted in v1alpha1.
        b.check_fields(&["bridgeInterface", "interfaceNamePrefix"], "detectLocal")?;
        f.bridge_interface = b.get("bridgeInterface")?;
        f.interface_name_prefix = b.get("interfaceNamePrefix")?;
    }
    if let Some(b) = top.block("clientConnection")? {
        b.check_fields(
            &[
                "kubeconfig",
                "acceptContentTypes",
                "contentType",
                "qps",
                "burst",
            ],
            "clientConnection",
        )?;
        f.kubeconfig = b.get("kubeconfig")?;
    }
    if let Some(b) = top.block("nftables")? {
        b.check_fields(
            &[
                "masqueradeBit",
                "masqueradeAll",
                "syncPeriod",
                "minSyncPeriod",
            ],
            "nftables",
        )?;
        f.masquerade_bit = b.get("masqueradeBit")?;
        f.masquerade_all = b.get("masqueradeAll")?;
        f.sync_period = b.get("syncPeriod")?;
        f.min_sync_period = b.get("minSyncPeriod")?;
    }
    if let Some(b) = top.block("logging")? {
        // Only the verbosity matters to kproxy; format, vmodule, … are ignored.
        f.verbosity = b.get("verbosity")?;
    }
    if let Some(b) = top.block("conntrack")? {
        b.check_fields(
            &[
                "maxPerCore",
                "min",
                "tcpEstablishedTimeout",
                "tcpCloseWaitTimeout",
                "tcpBeLiberal",
                "udpTimeout",
                "udpStreamTimeout",
            ],
            "conntrack",
        )?;
        f.conntrack = FileConntrack {
            max_per_core: b.get("maxPerCore")?,
            min: b.get("min")?,
            tcp_established_timeout: b.get("tcpEstablishedTimeout")?,
            tcp_close_wait_timeout: b.get("tcpCloseWaitTimeout")?,
            tcp_be_liberal: b.get("tcpBeLiberal")?,
            udp_timeout: b.get("udpTimeout")?,
            udp_stream_timeout: b.get("udpStreamTimeout")?,
        };
    }
    // `iptables`, `ipvs`, `winkernel` and the other known fields: accepted, ignored.
    for key in ["iptables", "ipvs", "winkernel", "featureGates"] {
        top.block(key)?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(flatten)]
        flags: ProxyFlags,
        /// A positional, like `kproxy render DIR`.
        paths: Vec<String>,
    }

    fn flags(args: &[&str]) -> ProxyFlags {
        let mut argv = vec!["kproxy"];
        argv.extend_from_slice(args);
        TestCli::try_parse_from(argv).unwrap().flags
    }

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        Config::from_flags_with_hostname(&flags(args), || Some("  Node-A\n".to_string()))
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A config file in a unique scratch directory, removed on drop.
    struct TempFile(PathBuf);
    impl TempFile {
        fn new(name: &str, text: &str) -> TempFile {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "kproxy-config-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
        fn arg(&self) -> String {
            format!("--config={}", self.0.display())
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    fn with_file(text: &str, args: &[&str]) -> Result<Config, ConfigError> {
        let f = TempFile::new("config.yaml", text);
        let arg = f.arg();
        let mut all = vec![arg.as_str()];
        all.extend_from_slice(args);
        config(&all).map_err(|e| {
            // Make messages independent of the scratch path.
            let msg = e.to_string().replace(&f.0.display().to_string(), "FILE");
            ConfigError::Invalid {
                setting: "TEST".into(),
                message: msg,
            }
        })
    }

    fn file_err(text: &str, args: &[&str]) -> String {
        match with_file(text, args).unwrap_err() {
            ConfigError::Invalid { message, .. } => message,
            e => panic!("{e}"),
        }
    }

    const HEAD: &str =
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";

    #[test]
    fn defaults() {
        let c = Config::from_flags_with_hostname(&ProxyFlags::default(), || {
            Some("  Worker-1.Example \n".into())
        })
        .unwrap();
        assert_eq!(
            c,
            Config {
                settings: Settings {
                    hostname: "worker-1.example".into(),
                    cluster_cidrs: vec![],
                    detect_local_mode: DetectLocalMode::ClusterCidr,
                    bridge_interface: String::new(),
                    interface_name_prefix: String::new(),
                    masquerade_all: false,
                    masquerade_mark: 1 << 14,
                    nodeport_addresses: NodePortAddresses::Primary,
                    service_proxy_name: None,
                    local_addresses: None,
                },
                sync_period: Duration::from_secs(30),
                min_sync_period: Duration::from_secs(1),
                healthz_bind: addr("0.0.0.0:10256"),
                metrics_bind: addr("127.0.0.1:10249"),
                kubeconfig: None,
                verbosity: 0,
                conntrack: ConntrackConfig {
                    max_per_core: 32768,
                    min: 131072,
                    tcp_established_timeout: Duration::from_secs(86400),
                    tcp_close_wait_timeout: Duration::from_secs(3600),
                    tcp_be_liberal: false,
                    udp_timeout: Duration::ZERO,
                    udp_stream_timeout: Duration::ZERO,
                },
                config_file: None,
            }
        );
    }

    #[test]
    fn system_hostname_is_used_when_not_overridden() {
        // Whatever this machine is called, the default is its lowercased, trimmed name.
        if let Some(h) = system_hostname().filter(|h| !h.trim().is_empty()) {
            let c = Config::from_flags(&ProxyFlags::default()).unwrap();
            assert_eq!(c.settings.hostname, h.trim().to_lowercase());
        }
    }

    #[test]
    fn no_hostname_is_an_error() {
        let e = Config::from_flags_with_hostname(&ProxyFlags::default(), || Some(" \n".into()))
            .unwrap_err();
        assert!(matches!(e, ConfigError::NoHostname));
        assert!(!e.is_usage());
        assert!(e.to_string().contains("set --hostname-override"), "{e}");
    }

    #[test]
    fn every_flag() {
        let c = config(&[
            "--hostname-override",
            " MyNode ",
            "--cluster-cidr",
            "10.244.0.0/16, fd00:10:244::/56",
            "--detect-local-mode",
            "InterfaceNamePrefix",
            "--pod-bridge-interface",
            "cbr0",
            "--pod-interface-name-prefix",
            "veth",
            "--masquerade-all",
            "--nodeport-addresses",
            "192.168.0.0/16,fd00::/64",
            "--proxy-mode",
            "nftables",
            "--kubeconfig",
            "/etc/kube/proxy.conf",
            "--iptables-sync-period",
            "1h0m0s",
            "--iptables-min-sync-period",
            "0",
            "--healthz-bind-address",
            "[::]:1234",
            "--metrics-bind-address",
            "0.0.0.0",
            "--iptables-masquerade-bit",
            "5",
            "--v",
            "4",
            "--conntrack-max-per-core",
            "0",
            "--conntrack-min",
            "1000",
            "--conntrack-tcp-timeout-established",
            "2h",
            "--conntrack-tcp-timeout-close-wait",
            "30s",
            "--conntrack-tcp-be-liberal",
            "--conntrack-udp-timeout",
            "30s",
            "--conntrack-udp-timeout-stream",
            "2m",
            "manifests/",
        ])
        .unwrap();
        let s = &c.settings;
        assert_eq!(s.hostname, "mynode");
        assert_eq!(
            s.cluster_cidrs,
            vec![net("10.244.0.0/16"), net("fd00:10:244::/56")]
        );
        assert_eq!(s.detect_local_mode, DetectLocalMode::InterfaceNamePrefix);
        assert_eq!(s.bridge_interface, "cbr0");
        assert_eq!(s.interface_name_prefix, "veth");
        assert!(s.masquerade_all);
        assert_eq!(s.masquerade_mark, 1 << 5);
        assert_eq!(
            s.nodeport_addresses,
            NodePortAddresses::Cidrs(vec![net("192.168.0.0/16"), net("fd00::/64")])
        );
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/etc/kube/proxy.conf")));
        assert_eq!(c.sync_period, Duration::from_secs(3600));
        assert_eq!(c.min_sync_period, Duration::ZERO);
        assert_eq!(c.healthz_bind, addr("[::]:1234"));
        assert_eq!(c.metrics_bind, addr("0.0.0.0:10249"));
        assert_eq!(c.verbosity, 4);
        assert_eq!(
            c.conntrack,
            ConntrackConfig {
                max_per_core: 0,
                min: 1000,
                tcp_established_timeout: Duration::from_secs(7200),
                tcp_close_wait_timeout: Duration::from_secs(30),
                tcp_be_liberal: true,
                udp_timeout: Duration::from_secs(30),
                udp_stream_timeout: Duration::from_secs(120),
            }
        );
    }

    #[test]
    fn flag_spellings() {
        // `--masquerade-all=false`, Go bool spellings, `=` forms, aliases, `-v`.
        let c = config(&["--masquerade-all=false", "--masquerade-bit=0", "-v", "2"]).unwrap();
        assert!(!c.settings.masquerade_all);
        assert_eq!(c.settings.masquerade_mark, 1); // bit 0
        assert_eq!(c.verbosity, 2);
        let c = config(&["--masquerade-all=T", "--v=10"]).unwrap();
        assert!(c.settings.masquerade_all);
        assert_eq!(c.verbosity, 10);
        // A bare `--masquerade-all` never swallows the next argument.
        let cli = TestCli::try_parse_from(["kproxy", "--masquerade-all", "dir"]).unwrap();
        assert_eq!(cli.flags.masquerade_all, Some(true));
        assert_eq!(cli.paths, ["dir"]);
        assert!(TestCli::try_parse_from(["kproxy", "--masquerade-all=maybe"]).is_err());
        // Other detect-local modes and their companions.
        let c = config(&[
            "--detect-local-mode=BridgeInterface",
            "--pod-bridge-interface=cbr0",
        ])
        .unwrap();
        assert_eq!(
            c.settings.detect_local_mode,
            DetectLocalMode::BridgeInterface
        );
        assert_eq!(c.settings.bridge_interface, "cbr0");
        let c = config(&["--detect-local-mode=NodeCIDR"]).unwrap();
        assert_eq!(c.settings.detect_local_mode, DetectLocalMode::NodeCidr);
        let c = config(&[
            "--detect-local-mode=ClusterCIDR",
            "--cluster-cidr=10.1.2.3/8",
        ])
        .unwrap();
        assert_eq!(c.settings.detect_local_mode, DetectLocalMode::ClusterCidr);
        // Host bits are cleared.
        assert_eq!(c.settings.cluster_cidrs, vec![net("10.0.0.0/8")]);
    }

    #[test]
    fn nodeport_address_forms() {
        let np = |v: &str| {
            config(&[&format!("--nodeport-addresses={v}")])
                .unwrap()
                .settings
                .nodeport_addresses
        };
        assert_eq!(np("primary"), NodePortAddresses::Primary);
        assert_eq!(np(""), NodePortAddresses::Primary);
        assert_eq!(
            np("all"),
            NodePortAddresses::Cidrs(vec![net("0.0.0.0/0"), net("::/0")])
        );
        assert_eq!(
            np("10.0.0.0/8, 10.0.0.0/8,0.0.0.0/0"),
            NodePortAddresses::Cidrs(vec![net("10.0.0.0/8"), net("0.0.0.0/0")])
        );
    }

    #[test]
    fn bind_address_forms() {
        let h = |v: &str| {
            config(&[&format!("--healthz-bind-address={v}")])
                .unwrap()
                .healthz_bind
        };
        assert_eq!(h("10.0.0.1:99"), addr("10.0.0.1:99"));
        assert_eq!(h("10.0.0.1"), addr("10.0.0.1:10256"));
        assert_eq!(h("::"), addr("[::]:10256"));
        assert_eq!(h("[::1]"), addr("[::1]:10256"));
        assert_eq!(h("[fd00::1]:80"), addr("[fd00::1]:80"));
    }

    #[test]
    fn flag_validation_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["--cluster-cidr=10.0.0.0/33"], r#"--cluster-cidr: "10.0.0.0/33" is not a CIDR"#),
            (&["--cluster-cidr=10.0.0.1"], r#"--cluster-cidr: "10.0.0.1" is not a CIDR"#),
            (&["--cluster-cidr=10.0.0.0/8,"], r#"--cluster-cidr: "" is not a CIDR"#),
            (
                &["--cluster-cidr=10.0.0.0/8,10.1.0.0/16"],
                "--cluster-cidr: 10.0.0.0/8 and 10.1.0.0/16 are both IPv4: give at most one CIDR per IP family",
            ),
            (
                &["--cluster-cidr=fd00::/64,fd01::/64"],
                "--cluster-cidr: fd00::/64 and fd01::/64 are both IPv6: give at most one CIDR per IP family",
            ),
            (
                &["--cluster-cidr=10.0.0.0/8,fd00::/64,10.1.0.0/16"],
                r#"--cluster-cidr: "10.0.0.0/8,fd00::/64,10.1.0.0/16" has 3 CIDRs: give one, or one IPv4 and one IPv6 CIDR"#,
            ),
            (
                &["--proxy-mode", "iptables"],
                r#"--proxy-mode "iptables" is not supported: kproxy only implements nftables"#,
            ),
            (
                &["--proxy-mode", "ipvs"],
                r#"--proxy-mode "ipvs" is not supported: kproxy only implements nftables"#,
            ),
            (
                &["--proxy-mode", "NFTables"],
                r#"--proxy-mode "NFTables" is not supported: kproxy only implements nftables"#,
            ),
            (
                &["--detect-local-mode", "BridgeInterface"],
                "--detect-local-mode BridgeInterface needs --pod-bridge-interface",
            ),
            (
                &["--detect-local-mode", "InterfaceNamePrefix", "--pod-bridge-interface=x"],
                "--detect-local-mode InterfaceNamePrefix needs --pod-interface-name-prefix",
            ),
            (
                &["--detect-local-mode", "clustercidr"],
                r#"--detect-local-mode: "clustercidr" is not a detect-local mode (ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix)"#,
            ),
            (
                &["--detect-local-mode=BridgeInterface", "--pod-bridge-interface=a-very-long-bridge0"],
                r#"--pod-bridge-interface: "a-very-long-bridge0" is longer than 15 bytes, the Linux limit for interface names"#,
            ),
            (
                &["--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=ve\"th"],
                r#"--pod-interface-name-prefix: "ve\"th" is not a valid interface name (contains '"')"#,
            ),
            (
                &["--nodeport-addresses=primary,10.0.0.0/8"],
                r#"--nodeport-addresses: "primary" cannot be combined with other addresses"#,
            ),
            (
                &["--nodeport-addresses=10.0.0.0/8,eth0"],
                r#"--nodeport-addresses: "eth0" is not a CIDR (expected "primary" or CIDRs)"#,
            ),
            (
                &["--nodeport-addresses=localhost"],
                r#"--nodeport-addresses: "localhost": NodePorts on loopback addresses are not supported in nftables mode"#,
            ),
            (
                &["--iptables-masquerade-bit=32"],
                "--iptables-masquerade-bit: 32 is not in the range 0..=31",
            ),
            (
                &["--masquerade-bit=-1"],
                "--iptables-masquerade-bit: -1 is not in the range 0..=31",
            ),
            (&["--v=11"], "--v: 11 is not in the range 0..=10"),
            (
                &["--iptables-sync-period=30"],
                r#"--iptables-sync-period: "30" is not a duration: missing unit (like s, m, h)"#,
            ),
            (
                &["--iptables-sync-period=0s"],
                "--iptables-sync-period: must be greater than 0",
            ),
            (
                &["--iptables-min-sync-period=-1s"],
                r#"--iptables-min-sync-period: "-1s": a negative duration is not allowed"#,
            ),
            (
                &["--iptables-min-sync-period=1m"],
                "--iptables-sync-period: 30s is shorter than the minimum sync period 1m0s",
            ),
            (
                &["--iptables-sync-period=10s", "--iptables-min-sync-period=1d"],
                r#"--iptables-min-sync-period: "1d" is not a duration: unknown unit "d""#,
            ),
            (
                &["--healthz-bind-address=localhost:10256"],
                r#"--healthz-bind-address: "localhost:10256" is not an IP address with an optional port"#,
            ),
            (
                &["--metrics-bind-address="],
                "--metrics-bind-address: an empty address (disabling the server) is not supported by kproxy",
            ),
            (
                &["--hostname-override= "],
                "--hostname-override: a node name cannot be blank",
            ),
            (
                &["--conntrack-min=-5"],
                "--conntrack-min: -5 is not in the range 0..=2147483647",
            ),
            (
                &["--conntrack-udp-timeout=5x"],
                r#"--conntrack-udp-timeout: "5x" is not a duration: unknown unit "x""#,
            ),
        ];
        for (args, want) in cases {
            let e = config(args).unwrap_err();
            assert!(e.is_usage(), "{e}");
            assert_eq!(e.to_string(), *want, "args {args:?}");
        }
    }

    #[test]
    fn empty_values_mean_unset() {
        // `--hostname-override=""` is not given (upstream); `--cluster-cidr=` is no CIDR.
        let c = config(&["--hostname-override=", "--cluster-cidr="]).unwrap();
        assert_eq!(c.settings.hostname, "node-a");
        assert!(c.settings.cluster_cidrs.is_empty());
    }

    const FULL_FILE: &str = "\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: \"\"
  burst: 10
  contentType: application/vnd.kubernetes.protobuf
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 5
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
configSyncPeriod: 15m0s
conntrack:
  maxPerCore: null
  min: 4096
  tcpBeLiberal: true
  tcpCloseWaitTimeout: 0s
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 10s
detectLocal:
  bridgeInterface: \"\"
  interfaceNamePrefix: cali
detectLocalMode: InterfaceNamePrefix
enableProfiling: false
featureGates: {}
healthzBindAddress: 0.0.0.0:20256
hostnameOverride: File-Node
iptables:
  localhostNodePorts: null
  masqueradeAll: true
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: \"\"
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: \"0\"
  verbosity: 3
metricsBindAddress: \"\"
mode: nftables
nftables:
  masqueradeAll: true
  masqueradeBit: 20
  minSyncPeriod: 2s
  syncPeriod: 1m
nodePortAddresses:
- 192.168.0.0/24
oomScoreAdj: null
portRange: \"\"
showHiddenMetricsForVersion: \"\"
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: \"\"
  rootHnsEndpointName: \"\"
  sourceVip: \"\"
";

    #[test]
    fn kubeadm_style_file() {
        let c = with_file(FULL_FILE, &[]).unwrap();
        let s = &c.settings;
        assert_eq!(s.hostname, "file-node");
        assert_eq!(
            s.cluster_cidrs,
            vec![net("10.244.0.0/16"), net("fd00:10:244::/56")]
        );
        assert_eq!(s.detect_local_mode, DetectLocalMode::InterfaceNamePrefix);
        assert_eq!(s.interface_name_prefix, "cali");
        assert_eq!(s.bridge_interface, "");
        assert!(s.masquerade_all);
        assert_eq!(s.masquerade_mark, 1 << 20);
        assert_eq!(
            s.nodeport_addresses,
            NodePortAddresses::Cidrs(vec![net("192.168.0.0/24")])
        );
        assert_eq!(c.sync_period, Duration::from_secs(60));
        assert_eq!(c.min_sync_period, Duration::from_secs(2));
        assert_eq!(c.healthz_bind, addr("0.0.0.0:20256"));
        assert_eq!(c.metrics_bind, addr("127.0.0.1:10249"));
        assert_eq!(
            c.kubeconfig,
            Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf"))
        );
        assert_eq!(c.verbosity, 3);
        assert_eq!(
            c.conntrack,
            ConntrackConfig {
                max_per_core: 32768,
                min: 4096,
                tcp_established_timeout: Duration::from_secs(86400),
                tcp_close_wait_timeout: Duration::ZERO,
                tcp_be_liberal: true,
                udp_timeout: Duration::from_secs(10),
                udp_stream_timeout: Duration::ZERO,
            }
        );
        assert!(c.config_file.is_some());
    }

    #[test]
    fn explicit_flags_override_the_file() {
        let c = with_file(
            FULL_FILE,
            &[
                "--hostname-override=flag-node",
                "--cluster-cidr=10.9.0.0/16",
                "--detect-local-mode=BridgeInterface",
                "--pod-bridge-interface=br0",
                "--masquerade-all=false",
                "--iptables-masquerade-bit=3",
                "--nodeport-addresses=primary",
                "--iptables-sync-period=2m",
                "--iptables-min-sync-period=0s",
                "--healthz-bind-address=127.0.0.1",
                "--metrics-bind-address=[::1]:9999",
                "--kubeconfig=/tmp/k",
                "--v=7",
                "--conntrack-min=1",
                "--conntrack-tcp-timeout-close-wait=5m",
                "--conntrack-tcp-be-liberal=false",
            ],
        )
        .unwrap();
        let s = &c.settings;
        assert_eq!(s.hostname, "flag-node");
        assert_eq!(s.cluster_cidrs, vec![net("10.9.0.0/16")]);
        assert_eq!(s.detect_local_mode, DetectLocalMode::BridgeInterface);
        assert_eq!(s.bridge_interface, "br0");
        assert_eq!(s.interface_name_prefix, "cali"); // from the file, unused
        assert!(!s.masquerade_all);
        assert_eq!(s.masquerade_mark, 1 << 3);
        assert_eq!(s.nodeport_addresses, NodePortAddresses::Primary);
        assert_eq!(c.sync_period, Duration::from_secs(120));
        assert_eq!(c.min_sync_period, Duration::ZERO);
        assert_eq!(c.healthz_bind, addr("127.0.0.1:10256"));
        assert_eq!(c.metrics_bind, addr("[::1]:9999"));
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/tmp/k")));
        assert_eq!(c.verbosity, 7);
        assert_eq!(c.conntrack.min, 1);
        assert_eq!(c.conntrack.tcp_close_wait_timeout, Duration::from_secs(300));
        assert!(!c.conntrack.tcp_be_liberal);
        // Not overridden: still the file's.
        assert_eq!(c.conntrack.udp_timeout, Duration::from_secs(10));
    }

    #[test]
    fn minimal_file_gets_defaults_and_zero_periods_mean_default() {
        let text = format!(
            "{HEAD}nftables:\n  syncPeriod: 0s\n  minSyncPeriod: 0s\nmode: \"\"\nhealthzBindAddress: \"::\"\n"
        );
        let c = with_file(&text, &[]).unwrap();
        assert_eq!(c.sync_period, DEFAULT_SYNC_PERIOD);
        assert_eq!(c.min_sync_period, DEFAULT_MIN_SYNC_PERIOD);
        assert_eq!(c.healthz_bind, addr("[::]:10256"));
        assert_eq!(c.settings.hostname, "node-a");
        assert_eq!(c.settings.nodeport_addresses, NodePortAddresses::Primary);
    }

    #[test]
    fn json_file() {
        let f = TempFile::new(
            "c.json",
            r#"{"apiVersion":"kubeproxy.config.k8s.io/v1alpha1","kind":"KubeProxyConfiguration",
                "clusterCIDR":"10.0.0.0/8","nftables":{"masqueradeBit":9}}"#,
        );
        let c = config(&[&f.arg()]).unwrap();
        assert_eq!(c.settings.cluster_cidrs, vec![net("10.0.0.0/8")]);
        assert_eq!(c.settings.masquerade_mark, 1 << 9);
    }

    #[test]
    fn file_errors() {
        let cases: Vec<(String, &[&str], &str)> = vec![
            (
                format!("{HEAD}clusterCidr: 10.0.0.0/8\n"),
                &[],
                r#"--config FILE: unknown field "clusterCidr" (KubeProxyConfiguration has no such field)"#,
            ),
            (
                format!("{HEAD}nftables:\n  masqueradeBits: 3\n"),
                &[],
                r#"--config FILE: unknown field "nftables.masqueradeBits" (nftables has no such field)"#,
            ),
            (
                format!("{HEAD}conntrack:\n  maxPerCpu: 3\n"),
                &[],
                r#"--config FILE: unknown field "conntrack.maxPerCpu" (conntrack has no such field)"#,
            ),
            (
                "apiVersion: kubeproxy.config.k8s.io/v1alpha2\nkind: KubeProxyConfiguration\n"
                    .to_string(),
                &[],
                "--config FILE: expected apiVersion kubeproxy.config.k8s.io/v1alpha1 and kind KubeProxyConfiguration, found kubeproxy.config.k8s.io/v1alpha2 KubeProxyConfiguration",
            ),
            (
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n"
                    .to_string(),
                &[],
                "--config FILE: expected apiVersion kubeproxy.config.k8s.io/v1alpha1 and kind KubeProxyConfiguration, found kubeproxy.config.k8s.io/v1alpha1 KubeletConfiguration",
            ),
            (
                "mode: nftables\n".to_string(),
                &[],
                "--config FILE: expected apiVersion kubeproxy.config.k8s.io/v1alpha1 and kind KubeProxyConfiguration, found <no apiVersion> <no kind>",
            ),
            (
                String::new(),
                &[],
                "--config FILE: the file is empty",
            ),
            (
                format!("{HEAD}nftables:\n  masqueradeBit: \"14\"\n"),
                &[],
                r#"--config FILE: nftables.masqueradeBit: invalid type: string "14", expected i64"#,
            ),
            (
                format!("{HEAD}nftables: 3\n"),
                &[],
                "--config FILE: nftables: expected a mapping",
            ),
            (
                format!("{HEAD}nodePortAddresses: 10.0.0.0/8\n"),
                &[],
                r#"--config FILE: nodePortAddresses: invalid type: string "10.0.0.0/8", expected a sequence"#,
            ),
            (
                format!("{HEAD}mode: iptables\n"),
                &[],
                r#"mode (in FILE) "iptables" is not supported: kproxy only implements nftables"#,
            ),
            (
                format!("{HEAD}clusterCIDR: 10.0.0.0/33\n"),
                &[],
                r#"clusterCIDR (in FILE): "10.0.0.0/33" is not a CIDR"#,
            ),
            (
                format!("{HEAD}detectLocalMode: BridgeInterface\n"),
                &[],
                "detectLocalMode (in FILE) BridgeInterface needs --pod-bridge-interface (or detectLocal.bridgeInterface in the config file)",
            ),
            (
                format!("{HEAD}nodePortAddresses: [primary, 10.0.0.0/8]\n"),
                &[],
                r#"nodePortAddresses (in FILE): "primary" cannot be combined with other addresses"#,
            ),
            (
                format!("{HEAD}nftables:\n  masqueradeBit: 40\n"),
                &[],
                "nftables.masqueradeBit (in FILE): 40 is not in the range 0..=31",
            ),
            (
                format!("{HEAD}nftables:\n  syncPeriod: 1x\n"),
                &[],
                r#"nftables.syncPeriod (in FILE): "1x" is not a duration: unknown unit "x""#,
            ),
            (
                format!("{HEAD}nftables:\n  syncPeriod: 1s\n  minSyncPeriod: 2s\n"),
                &[],
                "nftables.syncPeriod (in FILE): 1s is shorter than the minimum sync period 2s",
            ),
            (
                format!("{HEAD}metricsBindAddress: nope\n"),
                &[],
                r#"metricsBindAddress (in FILE): "nope" is not an IP address with an optional port"#,
            ),
            (
                format!("{HEAD}hostnameOverride: \"  \"\n"),
                &[],
                "hostnameOverride (in FILE): a node name cannot be blank",
            ),
            (
                format!("{HEAD}logging:\n  verbosity: 12\n"),
                &[],
                "logging.verbosity (in FILE): 12 is not in the range 0..=10",
            ),
            (
                format!("{HEAD}conntrack:\n  maxPerCore: -1\n"),
                &[],
                "conntrack.maxPerCore (in FILE): -1 is not in the range 0..=2147483647",
            ),
            (
                format!("{HEAD}mode: iptables\n"),
                &["--proxy-mode=nftables"],
                "",
            ),
        ];
        for (text, args, want) in cases {
            let got = match with_file(&text, args) {
                Ok(_) => String::new(),
                Err(ConfigError::Invalid { message, .. }) => message,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(got, want, "file:\n{text}");
        }
        // YAML syntax errors name the position.
        let e = file_err(&format!("{HEAD}mode: [\n"), &[]);
        assert!(
            e.starts_with("--config FILE: not valid YAML or JSON: "),
            "{e}"
        );
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn missing_config_file() {
        let e = config(&["--config=/nonexistent/kproxy/config.yaml"]).unwrap_err();
        assert!(matches!(e, ConfigError::ReadFile { .. }));
        assert!(!e.is_usage());
        assert!(
            e.to_string()
                .starts_with("--config /nonexistent/kproxy/config.yaml: "),
            "{e}"
        );
    }

    #[test]
    fn go_durations() {
        let ok = |s: &str, nanos: u64| {
            assert_eq!(parse_go_duration(s), Ok(Duration::from_nanos(nanos)), "{s}")
        };
        ok("0", 0);
        ok("-0", 0);
        ok("0s", 0);
        ok("30s", 30_000_000_000);
        ok("+5s", 5_000_000_000);
        ok("1m", 60_000_000_000);
        ok("1h0m0s", 3_600_000_000_000);
        ok("2h45m", 9_900_000_000_000);
        ok("1.5h", 5_400_000_000_000);
        ok(".5s", 500_000_000);
        ok("5.s", 5_000_000_000);
        ok("300ms", 300_000_000);
        ok("1us", 1_000);
        ok("1µs", 1_000);
        ok("1μs", 1_000);
        ok("7ns", 7);
        ok("1.0000000019s", 1_000_000_001);
        ok("1h1m1s1ms1us1ns", 3_661_001_001_001);
        ok("9223372036854775807ns", i64::MAX as u64);
        let bad = |s: &str, want: &str| assert_eq!(parse_go_duration(s), Err(want.to_string()));
        bad("", r#""" is not a duration (like 30s, 1m, 1h0m0s)"#);
        bad("-", r#""-" is not a duration (like 30s, 1m, 1h0m0s)"#);
        bad("s", r#""s" is not a duration (like 30s, 1m, 1h0m0s)"#);
        bad(".s", r#"".s" is not a duration (like 30s, 1m, 1h0m0s)"#);
        bad("1", r#""1" is not a duration: missing unit (like s, m, h)"#);
        bad(
            "1m30",
            r#""1m30" is not a duration: missing unit (like s, m, h)"#,
        );
        bad("1d", r#""1d" is not a duration: unknown unit "d""#);
        bad("1 s", r#""1 s" is not a duration: unknown unit " s""#);
        bad("-1s", r#""-1s": a negative duration is not allowed"#);
        bad(
            "9223372036854775808ns",
            r#""9223372036854775808ns" is too long a duration"#,
        );
        bad("3000000h", r#""3000000h" is too long a duration"#);
    }

    #[test]
    fn go_bools() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(t), Ok(true));
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(f), Ok(false));
        }
        assert_eq!(
            parse_go_bool("yes"),
            Err(r#""yes" is not a boolean (true or false)"#.to_string())
        );
    }

    #[test]
    fn duration_formatting() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_nanos(1_500)), "1500ns");
        assert_eq!(format_duration(Duration::from_micros(2)), "2µs");
    }
}
