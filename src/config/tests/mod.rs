//! Unit tests of `config`, one file per stage: `flags` (command line → `Config`),
//! `merge` (validation messages), `file` (the `--config` file and its precedence), `go`
//! (Go value syntax). This file holds the shared helpers and the defaults.

mod file;
mod flags;
mod go;
mod merge;

use super::*;
use crate::model::build::{DetectLocalMode, NodePortAddresses};
use clap::Parser;
use ipnetwork::IpNetwork;
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

const HEAD: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";

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
