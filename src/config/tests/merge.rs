//! Validation: every invalid flag value and its one-line message.

use super::*;

/// Each `(flags, message)`: the flags fail with exactly that usage error.
fn assert_flag_errors(cases: &[(&[&str], &str)]) {
    for (args, want) in cases {
        let e = config(args).unwrap_err();
        assert!(e.is_usage(), "{e}");
        assert_eq!(e.to_string(), *want, "args {args:?}");
    }
}

/// `--cluster-cidr`: CIDR syntax, at most one CIDR per family.
#[test]
fn cluster_cidr_errors() {
    assert_flag_errors(&[
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
    ]);
}

/// `--proxy-mode`: only nftables (spelled exactly).
#[test]
fn proxy_mode_errors() {
    assert_flag_errors(&[
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
    ]);
}

/// `--detect-local-mode` and the interface settings it depends on.
#[test]
fn detect_local_errors() {
    assert_flag_errors(&[
        (
            &["--detect-local-mode", "BridgeInterface"],
            "--detect-local-mode BridgeInterface needs --pod-bridge-interface",
        ),
        (
            &[
                "--detect-local-mode",
                "InterfaceNamePrefix",
                "--pod-bridge-interface=x",
            ],
            "--detect-local-mode InterfaceNamePrefix needs --pod-interface-name-prefix",
        ),
        (
            &["--detect-local-mode", "clustercidr"],
            r#"--detect-local-mode: "clustercidr" is not a detect-local mode (ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix)"#,
        ),
        (
            &[
                "--detect-local-mode=BridgeInterface",
                "--pod-bridge-interface=a-very-long-bridge0",
            ],
            r#"--pod-bridge-interface: "a-very-long-bridge0" is longer than 15 bytes, the Linux limit for interface names"#,
        ),
        (
            &[
                "--detect-local-mode=InterfaceNamePrefix",
                "--pod-interface-name-prefix=ve\"th",
            ],
            r#"--pod-interface-name-prefix: "ve\"th" is not a valid interface name (contains '"')"#,
        ),
    ]);
}

/// `--nodeport-addresses`.
#[test]
fn nodeport_address_errors() {
    assert_flag_errors(&[
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
    ]);
}

/// Numbers out of range: the masquerade bit, `--v`, conntrack counts.
#[test]
fn number_range_errors() {
    assert_flag_errors(&[
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
            &["--conntrack-min=-5"],
            "--conntrack-min: -5 is not in the range 0..=2147483647",
        ),
    ]);
}

/// Durations: syntax, sign, and the sync periods against each other.
#[test]
fn duration_errors() {
    assert_flag_errors(&[
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
            &[
                "--iptables-sync-period=10s",
                "--iptables-min-sync-period=1d",
            ],
            r#"--iptables-min-sync-period: "1d" is not a duration: unknown unit "d""#,
        ),
        (
            &["--conntrack-udp-timeout=5x"],
            r#"--conntrack-udp-timeout: "5x" is not a duration: unknown unit "x""#,
        ),
    ]);
}

/// Server addresses and the node name.
#[test]
fn bind_address_and_hostname_errors() {
    assert_flag_errors(&[
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
    ]);
}
