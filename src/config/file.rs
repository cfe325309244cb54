//! Stage 1b, the `--config` file: a `KubeProxyConfiguration`
//! (`kubeproxy.config.k8s.io/v1alpha1`, YAML or JSON) read and strictly checked into the
//! raw [`FileConfig`].
//!
//! Owns: reading the file, its syntax, `apiVersion`/`kind`, the set of known fields (every
//! upstream v1alpha1 field is accepted; unknown ones are errors, as upstream decodes
//! strictly), and each used field's JSON type.
//!
//! Must not: validate or default values (that is `merge`'s job), or read any file but the
//! one it is given.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::ConfigError;

/// The config file's `apiVersion`.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// The config file's `kind`.
pub const KIND: &str = "KubeProxyConfiguration";

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
pub(super) struct FileConfig {
    pub(super) mode: Option<String>,
    pub(super) hostname_override: Option<String>,
    pub(super) cluster_cidr: Option<String>,
    pub(super) detect_local_mode: Option<String>,
    pub(super) bridge_interface: Option<String>,
    pub(super) interface_name_prefix: Option<String>,
    pub(super) nodeport_addresses: Option<Vec<String>>,
    pub(super) healthz_bind_address: Option<String>,
    pub(super) metrics_bind_address: Option<String>,
    pub(super) kubeconfig: Option<String>,
    pub(super) masquerade_bit: Option<i64>,
    pub(super) masquerade_all: Option<bool>,
    pub(super) sync_period: Option<String>,
    pub(super) min_sync_period: Option<String>,
    pub(super) verbosity: Option<i64>,
    pub(super) conntrack: FileConntrack,
}

/// The file's `conntrack` block.
#[derive(Debug, Default)]
pub(super) struct FileConntrack {
    pub(super) max_per_core: Option<i64>,
    pub(super) min: Option<i64>,
    pub(super) tcp_established_timeout: Option<String>,
    pub(super) tcp_close_wait_timeout: Option<String>,
    pub(super) tcp_be_liberal: Option<bool>,
    pub(super) udp_timeout: Option<String>,
    pub(super) udp_stream_timeout: Option<String>,
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
        file_error(self.file, message)
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

/// Reads and parses the `--config` file at `path`.
pub(super) fn read(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(path, &text)
}

/// Parses and strictly checks a `KubeProxyConfiguration` (YAML or JSON).
pub(super) fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let value = parse_syntax(path, text)?;
    let map = match &value {
        Value::Object(map) => map,
        Value::Null => return Err(file_error(path, "the file is empty".to_string())),
        _ => {
            return Err(file_error(
                path,
                format!(
                    "expected a {KIND} mapping, found {}",
                    match value {
                        Value::Array(_) => "a list",
                        _ => "a single value",
                    }
                ),
            ))
        }
    };
    let top = Block {
        map,
        path: String::new(),
        file: path,
    };
    check_type(&top)?;
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
        read_nftables(&b, &mut f)?;
    }
    if let Some(b) = top.block("logging")? {
        // Only the verbosity matters to kproxy; format, vmodule, … are ignored.
        f.verbosity = b.get("verbosity")?;
    }
    if let Some(b) = top.block("conntrack")? {
        f.conntrack = read_conntrack(&b)?;
    }
    // `iptables`, `ipvs`, `winkernel` and the other known fields: accepted, ignored.
    for key in ["iptables", "ipvs", "winkernel", "featureGates"] {
        top.block(key)?;
    }
    Ok(f)
}

fn file_error(path: &Path, message: String) -> ConfigError {
    ConfigError::File {
        path: path.to_path_buf(),
        message,
    }
}

/// The file's text as a JSON value: JSON when it looks like JSON and parses, else YAML.
fn parse_syntax(path: &Path, text: &str) -> Result<Value, ConfigError> {
    let trimmed = text.trim_start();
    let json = if trimmed.starts_with('{') {
        serde_json::from_str::<Value>(text).ok()
    } else {
        None
    };
    match json {
        Some(v) => Ok(v),
        None => serde_yaml_ng::from_str::<Value>(text)
            .map_err(|e| file_error(path, format!("not valid YAML or JSON: {e}"))),
    }
}

/// Checks `apiVersion` and `kind`.
fn check_type(top: &Block) -> Result<(), ConfigError> {
    let api_version: String = top.get("apiVersion")?.unwrap_or_default();
    let kind: String = top.get("kind")?.unwrap_or_default();
    if api_version != API_VERSION || kind != KIND {
        return Err(top.error(format!(
            "expected apiVersion {API_VERSION} and kind {KIND}, found {} {}",
            if api_version.is_empty() {
                "<no apiVersion>"
            } else {
                &api_version
            },
            if kind.is_empty() { "<no kind>" } else { &kind },
        )));
    }
    Ok(())
}

/// The `nftables` block.
fn read_nftables(b: &Block, f: &mut FileConfig) -> Result<(), ConfigError> {
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
    Ok(())
}

/// The `conntrack` block.
fn read_conntrack(b: &Block) -> Result<FileConntrack, ConfigError> {
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
    Ok(FileConntrack {
        max_per_core: b.get("maxPerCore")?,
        min: b.get("min")?,
        tcp_established_timeout: b.get("tcpEstablishedTimeout")?,
        tcp_close_wait_timeout: b.get("tcpCloseWaitTimeout")?,
        tcp_be_liberal: b.get("tcpBeLiberal")?,
        udp_timeout: b.get("udpTimeout")?,
        udp_stream_timeout: b.get("udpStreamTimeout")?,
    })
}
