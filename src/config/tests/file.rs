//! The `--config` file: a kubeadm-style file, precedence of explicit flags, defaulting,
//! JSON, and every file error.

use super::*;

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

/// Each `(file, flags, message)`: loading the file with the flags fails with exactly
/// `message` (the scratch path reads `FILE`), or succeeds when `message` is empty.
fn assert_file_cases(cases: Vec<(String, &[&str], &str)>) {
    for (text, args, want) in cases {
        let got = match with_file(&text, args) {
            Ok(_) => String::new(),
            Err(ConfigError::Invalid { message, .. }) => message,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(got, want, "file:\n{text}");
    }
}

/// The file's shape: unknown fields, apiVersion and kind, emptiness, JSON types.
#[test]
fn file_structure_errors() {
    assert_file_cases(vec![
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
    ]);
}

/// Invalid values in the file: the message names the field and the file.
#[test]
fn file_value_errors() {
    assert_file_cases(vec![
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
    ]);
}

/// An explicit flag replaces the file's value before it is validated.
#[test]
fn explicit_flag_replaces_an_invalid_file_value() {
    assert_file_cases(vec![(
        format!("{HEAD}mode: iptables\n"),
        &["--proxy-mode=nftables"],
        "",
    )]);
}

/// YAML syntax errors name the position.
#[test]
fn file_syntax_error() {
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

/// The same text from a file and as text (the cluster's kube-proxy ConfigMap): the same
/// settings, the same errors but for where they name the source.
#[test]
fn config_as_text_reads_as_the_file() {
    let text = format!("{HEAD}clusterCIDR: 10.244.0.0/16\nnodePortAddresses: [10.0.0.0/8]\n");
    let hostname = || Some("node-a".to_string());
    let from_text =
        Config::from_flags_and_text_with_hostname(&flags(&[]), "CM", &text, hostname).unwrap();
    let from_file = with_file(&text, &[]).unwrap();
    assert_eq!(
        from_text.settings.cluster_cidrs,
        from_file.settings.cluster_cidrs
    );
    assert_eq!(from_text.given, from_file.given);
    assert_eq!(from_text.config_file, None);

    // Explicit flags still win.
    let c = Config::from_flags_and_text_with_hostname(
        &flags(&["--cluster-cidr=10.9.0.0/16"]),
        "CM",
        &text,
        hostname,
    )
    .unwrap();
    assert_eq!(c.settings.cluster_cidrs, vec![net("10.9.0.0/16")]);

    let bad = format!("{HEAD}clusterCIDRs: 10.244.0.0/16\n");
    let e =
        Config::from_flags_and_text_with_hostname(&flags(&[]), "CM", &bad, hostname).unwrap_err();
    assert!(e.is_usage());
    assert_eq!(
        e.to_string(),
        "CM: unknown field \"clusterCIDRs\" (KubeProxyConfiguration has no such field)"
    );
    assert_eq!(
        file_err(&bad, &[]),
        "--config FILE: unknown field \"clusterCIDRs\" (KubeProxyConfiguration has no such field)"
    );
    let bad = format!("{HEAD}clusterCIDR: nope\n");
    let e =
        Config::from_flags_and_text_with_hostname(&flags(&[]), "CM", &bad, hostname).unwrap_err();
    assert!(e.to_string().starts_with("clusterCIDR (in CM): "), "{e}");
}
