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
//!
//! The stages, low-level input to validated value, one file each:
//!
//! ```text
//!  command line ──clap──▶ flags::ProxyFlags   (raw: Options of strings and numbers)
//!  --config FILE ──read──▶ file::FileConfig   (raw: syntax, apiVersion/kind, known
//!                                              fields and JSON types checked)
//!                     │ both
//!                     ▼
//!  merge          precedence, upstream's defaults, validation → Config
//!                 (Config::settings is what model::build receives)
//!  go             Go's duration and boolean syntax, used by flags and merge
//!  configz        Config → upstream's `/configz` JSON (a v1alpha1 KubeProxyConfiguration)
//! ```
//!
//! This file holds the public result ([`Config`], [`ConntrackConfig`], [`Given`]), the error
//! ([`ConfigError`]), the defaults, and the entry points ([`Config::from_flags`], and
//! [`Config::from_flags_and_text`] for a configuration that is not a file).

mod configz;
mod file;
mod flags;
mod go;
mod merge;
#[cfg(test)]
mod tests;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::model::build::Settings;

pub use configz::{configz_json, CONFIGZ_GROUP};
pub use file::{API_VERSION, KIND};
pub use flags::ProxyFlags;
pub use go::{format_duration, parse_go_bool, parse_go_duration};

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
/// The `nodePortAddresses` keyword for the node's primary IPs (upstream's nftables default).
pub const NODEPORT_ADDRESSES_PRIMARY: &str = "primary";
/// Highest accepted `--v`.
pub const MAX_VERBOSITY: u8 = 10;

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
    /// Settings as the operator wrote them, before kproxy resolved them (for `/configz`).
    pub given: Given,
}

/// The settings upstream shows in `/configz` as written, before resolving them: kproxy
/// keeps the resolved form in [`Config::settings`] and these only to report them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Given {
    /// `--hostname-override` (trimmed and lowercased, as upstream does for the flag) or
    /// `hostnameOverride` (as written); empty when neither is given.
    pub hostname_override: String,
    /// `--cluster-cidr` / `clusterCIDR` as written; empty when unset.
    pub cluster_cidr: String,
    /// `--nodeport-addresses` / `nodePortAddresses` without blank items; `["primary"]`
    /// when unset or empty (upstream's nftables default, before it expands "primary" to
    /// the node IPs).
    pub nodeport_addresses: Vec<String>,
}

impl Default for Given {
    /// Nothing given: upstream's defaults.
    fn default() -> Given {
        Given {
            hostname_override: String::new(),
            cluster_cidr: String::new(),
            nodeport_addresses: vec![NODEPORT_ADDRESSES_PRIMARY.to_string()],
        }
    }
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
    /// A `KubeProxyConfiguration` given as text ([`Config::from_flags_and_text`]) is not
    /// valid, as [`ConfigError::File`]; `origin` names where the text came from.
    #[error("{origin}: {message}")]
    Text { origin: String, message: String },
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
            Some(path) => file::read(path)?,
            None => file::FileConfig::default(),
        };
        merge::merge(flags, flags.config.as_deref(), file, hostname)
    }

    /// [`Config::from_flags`] with the `KubeProxyConfiguration` given as text instead of
    /// a `--config` path (e.g. the cluster's kube-proxy ConfigMap): parsed and checked
    /// exactly as the file is, explicit flags still override it. `origin` names the text
    /// in messages, where a path would be (`ConfigMap kube-system/kube-proxy key
    /// config.conf`). `flags.config` is ignored.
    pub fn from_flags_and_text(
        flags: &ProxyFlags,
        origin: &str,
        text: &str,
    ) -> Result<Config, ConfigError> {
        Config::from_flags_and_text_with_hostname(flags, origin, text, system_hostname)
    }

    /// [`Config::from_flags_and_text`] with the host name lookup supplied (tests).
    pub fn from_flags_and_text_with_hostname(
        flags: &ProxyFlags,
        origin: &str,
        text: &str,
        hostname: impl FnOnce() -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let path = std::path::Path::new(origin);
        let file = file::parse_file(path, text).map_err(|e| match e {
            ConfigError::File { message, .. } => ConfigError::Text {
                origin: origin.to_string(),
                message,
            },
            e => e,
        })?;
        let mut config = merge::merge(flags, Some(path), file, hostname)?;
        config.config_file = None;
        Ok(config)
    }
}

/// The host name as upstream reads it (`os.Hostname()`), or `None`.
fn system_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}
