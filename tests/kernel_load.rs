//! Tier 2: every scenario's rendered ruleset is loaded by the real kernel (`nft -f` inside a
//! throwaway network namespace), and what the kernel then holds matches what was meant:
//! the same chains with the same number of rules, the same sets and maps with the same
//! number of elements. `nft` is the test oracle only.

mod common;

use std::collections::BTreeMap;

use common::*;
use kproxy::nft::{text, Family};

/// (rules per chain, elements per set) as the kernel reports them.
fn kernel_view(ns: &Netns, family: Family) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let o = ns.exec("nft", &["-j", "list", "table", family.keyword(), "kproxy"]);
    assert!(o.status.success(), "nft list: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("nft -j output");
    let mut chains = BTreeMap::new();
    let mut sets = BTreeMap::new();
    for item in v["nftables"].as_array().expect("nftables array") {
        if let Some(c) = item.get("chain") {
            chains.insert(c["name"].as_str().unwrap().to_string(), 0);
        }
        for kind in ["set", "map"] {
            if let Some(s) = item.get(kind) {
                let n = s
                    .get("elem")
                    .and_then(|e| e.as_array())
                    .map_or(0, |e| e.len());
                sets.insert(s["name"].as_str().unwrap().to_string(), n);
            }
        }
        if let Some(r) = item.get("rule") {
            *chains
                .entry(r["chain"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    (chains, sets)
}

#[test]
fn every_scenario_loads_into_the_kernel_as_rendered() {
    if !kernel_tests_enabled("every_scenario_loads_into_the_kernel_as_rendered") {
        return;
    }
    for dir in scenarios() {
        // Affinity rules exist over netlink only (tests/netlink_backend.rs loads them).
        let rs = without_affinity_rules(&render_scenario(&dir));
        let ns = Netns::new("load");
        let file = std::env::temp_dir().join(format!("{}.nft", ns.name));
        std::fs::write(&file, text::ruleset(&rs)).unwrap();
        let o = ns.exec("nft", &["-f", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
        assert!(
            o.status.success(),
            "{}: the kernel refused the ruleset: {}",
            dir.display(),
            stderr(&o)
        );
        for table in &rs.tables {
            let (chains, sets) = kernel_view(&ns, table.family);
            let want_chains: BTreeMap<String, usize> = table
                .chains
                .values()
                .map(|c| (c.name.clone(), c.rules.len()))
                .collect();
            let want_sets: BTreeMap<String, usize> = table
                .sets
                .values()
                .map(|s| (s.name.clone(), s.elements.len()))
                .collect();
            assert_eq!(
                chains,
                want_chains,
                "{} {}: chains",
                dir.display(),
                table.family
            );
            assert_eq!(sets, want_sets, "{} {}: sets", dir.display(), table.family);
        }
    }
}

#[test]
fn golden_files_are_accepted_by_nft_check() {
    if !kernel_tests_enabled("golden_files_are_accepted_by_nft_check") {
        return;
    }
    let ns = Netns::new("check");
    for dir in scenarios() {
        let golden = dir.join("expected.nft");
        // Without the affinity rules, which nft 1.0.6 cannot parse (see `nft::text`).
        let text = std::fs::read_to_string(&golden).unwrap();
        let loadable: String = text
            .lines()
            .filter(|l| !l.contains(AFFINITY_RULE_MARK))
            .map(|l| format!("{l}\n"))
            .collect();
        let file = std::env::temp_dir().join(format!("{}.nft", ns.name));
        std::fs::write(&file, loadable).unwrap();
        let o = ns.exec("nft", &["-c", "-f", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
        assert!(o.status.success(), "{}: {}", golden.display(), stderr(&o));
    }
}
