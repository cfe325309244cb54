//! `/configz`'s JSON: upstream's v1alpha1 shape field by field and in order, for the
//! defaults and for a file of non-default values; Go's duration strings and escaping.

use super::*;
use crate::config::configz::go_duration;

/// What upstream v1.36.2 shows with `--proxy-mode=nftables` and nothing else, one field
/// per line (joined without separators: the body is compact).
const DEFAULT_FIELDS: &[&str] = &[
    r#"{"kubeproxy.config.k8s.io":{"#,
    r#""kind":"KubeProxyConfiguration","#,
    r#""apiVersion":"kubeproxy.config.k8s.io/v1alpha1","#,
    r#""clientConnection":{"kubeconfig":"","acceptContentTypes":"","#,
    r#""contentType":"application/vnd.kubernetes.protobuf","qps":5,"burst":10},"#,
    r#""logging":{"format":"text","flushFrequency":"5s","verbosity":0,"#,
    r#""options":{"text":{"infoBufferSize":"0"},"json":{"infoBufferSize":"0"}}},"#,
    r#""hostnameOverride":"","#,
    r#""bindAddress":"0.0.0.0","#,
    r#""healthzBindAddress":"0.0.0.0:10256","#,
    r#""metricsBindAddress":"127.0.0.1:10249","#,
    r#""bindAddressHardFail":false,"#,
    r#""enableProfiling":false,"#,
    r#""showHiddenMetricsForVersion":"","#,
    r#""mode":"nftables","#,
    r#""iptables":{"masqueradeBit":14,"masqueradeAll":false,"localhostNodePorts":true,"#,
    r#""syncPeriod":"0s","minSyncPeriod":"0s"},"#,
    r#""ipvs":{"syncPeriod":"0s","minSyncPeriod":"0s","scheduler":"","excludeCIDRs":null,"#,
    r#""strictARP":false,"tcpTimeout":"0s","tcpFinTimeout":"0s","udpTimeout":"0s"},"#,
    r#""nftables":{"masqueradeBit":14,"masqueradeAll":false,"syncPeriod":"30s","#,
    r#""minSyncPeriod":"1s"},"#,
    r#""winkernel":{"networkName":"","sourceVip":"","enableDSR":false,"#,
    r#""rootHnsEndpointName":"","forwardHealthCheckVip":false},"#,
    r#""detectLocalMode":"ClusterCIDR","#,
    r#""detectLocal":{"bridgeInterface":"","interfaceNamePrefix":""},"#,
    r#""clusterCIDR":"","#,
    r#""nodePortAddresses":["primary"],"#,
    r#""oomScoreAdj":-999,"#,
    r#""conntrack":{"maxPerCore":32768,"min":131072,"tcpEstablishedTimeout":"24h0m0s","#,
    r#""tcpCloseWaitTimeout":"1h0m0s","tcpBeLiberal":false,"udpTimeout":"0s","#,
    r#""udpStreamTimeout":"0s"},"#,
    r#""configSyncPeriod":"15m0s","#,
    r#""portRange":"""#,
    r#"}}"#,
];

#[test]
fn defaults_are_upstreams_field_by_field_and_in_order() {
    let json = configz_json(&config(&["--proxy-mode=nftables"]).unwrap());
    assert!(!json.ends_with('\n'));
    let mut rest = json.as_str();
    for field in DEFAULT_FIELDS {
        rest = rest
            .strip_prefix(field)
            .unwrap_or_else(|| panic!("expected {field:?} next, found {rest:?}"));
    }
    assert_eq!(rest, "");
    assert_eq!(json, configz_json(&config(&[]).unwrap()));
}

#[test]
fn a_file_of_non_default_values() {
    let file = format!(
        "{HEAD}{}",
        r#"clientConnection:
  kubeconfig: /etc/kube-proxy/a<b>&c.conf
logging:
  verbosity: 4
hostnameOverride: File-Node
healthzBindAddress: "[::]:20256"
metricsBindAddress: 0.0.0.0
mode: nftables
nftables:
  masqueradeBit: 10
  masqueradeAll: true
  syncPeriod: 1m
  minSyncPeriod: 250ms
detectLocalMode: BridgeInterface
detectLocal:
  bridgeInterface: cbr0
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
nodePortAddresses: [10.0.0.0/8, "fd00::/64"]
conntrack:
  maxPerCore: 0
  min: 4096
  tcpEstablishedTimeout: 2h30m
  tcpCloseWaitTimeout: 0s
  tcpBeLiberal: true
  udpTimeout: 10s
  udpStreamTimeout: 2m
"#
    );
    let json = configz_json(&with_file(&file, &[]).unwrap());
    for part in [
        r#""clientConnection":{"kubeconfig":"/etc/kube-proxy/a\u003cb\u003e\u0026c.conf","#,
        r#""logging":{"format":"text","flushFrequency":"5s","verbosity":4,"#,
        // As written in the file (the node name kproxy uses is "file-node").
        r#""hostnameOverride":"File-Node","bindAddress":"0.0.0.0","#,
        r#""healthzBindAddress":"[::]:20256","metricsBindAddress":"0.0.0.0:10249","#,
        r#""iptables":{"masqueradeBit":14,"masqueradeAll":false,"localhostNodePorts":true,"syncPeriod":"0s","minSyncPeriod":"0s"},"#,
        r#""nftables":{"masqueradeBit":10,"masqueradeAll":true,"syncPeriod":"1m0s","minSyncPeriod":"250ms"},"#,
        r#""detectLocalMode":"BridgeInterface","detectLocal":{"bridgeInterface":"cbr0","interfaceNamePrefix":""},"#,
        r#""clusterCIDR":"10.244.0.0/16,fd00:10:244::/56","#,
        r#""nodePortAddresses":["10.0.0.0/8","fd00::/64"],"oomScoreAdj":-999,"#,
        r#""conntrack":{"maxPerCore":0,"min":4096,"tcpEstablishedTimeout":"2h30m0s","tcpCloseWaitTimeout":"0s","tcpBeLiberal":true,"udpTimeout":"10s","udpStreamTimeout":"2m0s"},"#,
        r#""configSyncPeriod":"15m0s","portRange":""}}"#,
    ] {
        assert!(json.contains(part), "missing {part}\nin {json}");
    }
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v[CONFIGZ_GROUP]["clientConnection"]["kubeconfig"],
        "/etc/kube-proxy/a<b>&c.conf"
    );
}

#[test]
fn flags_show_as_upstream_stores_them() {
    let c = config(&[
        "--hostname-override= Node-B ",
        "--nodeport-addresses=10.0.0.0/8, 192.168.0.0/16",
        "--cluster-cidr=10.244.0.0/16",
        "--detect-local-mode=InterfaceNamePrefix",
        "--pod-interface-name-prefix=veth",
        "--iptables-min-sync-period=0",
    ])
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&configz_json(&c)).unwrap();
    let kp = &v[CONFIGZ_GROUP];
    // The flag is trimmed and lowercased, as upstream's processHostnameOverrideFlag does.
    assert_eq!(kp["hostnameOverride"], "node-b");
    assert_eq!(
        kp["nodePortAddresses"],
        serde_json::json!(["10.0.0.0/8", "192.168.0.0/16"])
    );
    assert_eq!(kp["clusterCIDR"], "10.244.0.0/16");
    assert_eq!(kp["detectLocalMode"], "InterfaceNamePrefix");
    assert_eq!(kp["detectLocal"]["interfaceNamePrefix"], "veth");
    assert_eq!(kp["nftables"]["minSyncPeriod"], "0s");
    // An empty list is upstream's nftables default.
    let c = config(&["--nodeport-addresses="]).unwrap();
    assert_eq!(c.given.nodeport_addresses, vec!["primary".to_string()]);
}

#[test]
fn durations_are_gos() {
    for (d, s) in [
        (Duration::ZERO, "0s"),
        (Duration::from_nanos(1), "1ns"),
        (Duration::from_nanos(1_500), "1.5µs"),
        (Duration::from_micros(2), "2µs"),
        (Duration::from_nanos(1_000_001), "1.000001ms"),
        (Duration::from_millis(250), "250ms"),
        (Duration::from_millis(1500), "1.5s"),
        (Duration::from_secs(30), "30s"),
        (Duration::from_secs(900), "15m0s"),
        (Duration::from_secs(86400), "24h0m0s"),
    ] {
        assert_eq!(go_duration(d), s, "{d:?}");
    }
}
