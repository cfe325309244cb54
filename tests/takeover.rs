//! Taking a node over from kube-proxy: `kproxy run --cleanup --cleanup-kube-proxy` removes
//! upstream kube-proxy's nftables tables and iptables `KUBE-*` chains (nft and legacy
//! backends) and kproxy's own tables, and nothing else: another program's nftables table
//! and iptables chains stay. Needs root (a throwaway network namespace).

mod common;

use common::{kernel_tests_enabled, Netns};

fn sh(ns: &Netns, script: &str) -> String {
    let o = ns.exec("sh", &["-ec", script]);
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn cleanup_kube_proxy_removes_upstreams_rules_and_nothing_else() {
    if !kernel_tests_enabled("takeover::cleanup_kube_proxy") {
        return;
    }
    let ns = Netns::new("takeover");
    // Upstream's nftables mode, kproxy's own table, and someone else's table.
    sh(
        &ns,
        "nft add table ip kube-proxy; nft add chain ip kube-proxy services; \
         nft add table ip6 kube-proxy; \
         nft add table ip kproxy; nft add table ip6 kproxy; \
         nft add table inet firewall; nft add chain inet firewall input '{ type filter hook input priority 0; }'",
    );
    let iptables = have("iptables-nft") && have("iptables-legacy");
    if iptables {
        for v in ["nft", "legacy"] {
            sh(
                &ns,
                &format!(
                    "iptables-{v} -t nat -N KUBE-SERVICES; iptables-{v} -t nat -A PREROUTING -j KUBE-SERVICES; \
                     iptables-{v} -t nat -N KUBE-SVC-X; iptables-{v} -t nat -A KUBE-SERVICES -j KUBE-SVC-X; \
                     iptables-{v} -t filter -N KUBE-FORWARD; iptables-{v} -A FORWARD -m comment --comment 'kubernetes forwarding rules' -j KUBE-FORWARD; \
                     iptables-{v} -t nat -N DOCKER; iptables-{v} -t nat -A PREROUTING -j DOCKER; \
                     ip6tables-{v} -t nat -N KUBE-SERVICES; ip6tables-{v} -t nat -A OUTPUT -j KUBE-SERVICES"
                ),
            );
        }
    } else {
        println!("takeover: iptables-nft/iptables-legacy not installed; checking nftables only");
    }

    takeover(&ns);

    let tables = sh(&ns, "nft list tables");
    assert!(!tables.contains("kube-proxy"), "{tables}");
    assert!(!tables.contains("kproxy"), "{tables}");
    assert!(
        tables.contains("table inet firewall"),
        "someone else's table stays: {tables}"
    );
    if iptables {
        for v in ["nft", "legacy"] {
            let saved = sh(&ns, &format!("iptables-{v}-save; ip6tables-{v}-save"));
            assert!(
                !saved.contains("KUBE-"),
                "iptables-{v} still has KUBE-*:\n{saved}"
            );
            assert!(
                saved.contains(":DOCKER") && saved.contains("-A PREROUTING -j DOCKER"),
                "iptables-{v}: other chains and jumps stay:\n{saved}"
            );
        }
    }

    // A second run finds nothing and still succeeds.
    takeover(&ns);
}

fn takeover(ns: &Netns) {
    let o = ns.exec(
        env!("CARGO_BIN_EXE_kproxy"),
        &[
            "run",
            "--cleanup",
            "--cleanup-kube-proxy",
            "--hostname-override=node-a",
        ],
    );
    assert!(
        o.status.success(),
        "kproxy run --cleanup --cleanup-kube-proxy: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
