//! The command line → `Config`: every flag, its spellings and value forms.

use super::*;

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
fn empty_values_mean_unset() {
    // `--hostname-override=""` is not given (upstream); `--cluster-cidr=` is no CIDR.
    let c = config(&["--hostname-override=", "--cluster-cidr="]).unwrap();
    assert_eq!(c.settings.hostname, "node-a");
    assert!(c.settings.cluster_cidrs.is_empty());
}
