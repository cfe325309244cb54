//! Golden tests: every scenario under rules/scenarios renders exactly its reviewed
//! `expected.nft` (the ruleset), `expected.summary` (the reviewer's table) and
//! `expected.warnings` (what was skipped and why), through the real binary.
//!
//! To accept a deliberate change: `UPDATE_GOLDEN=1 cargo test --test golden`, then review
//! the diff of rules/scenarios/*/expected.* like code.

mod common;

use common::*;

fn check(dir: &std::path::Path, file: &str, actual: &str, failures: &mut Vec<String>) {
    let path = dir.join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}; run with UPDATE_GOLDEN=1", path.display()));
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        failures.push(format!(
            "{} differs from line {}:\n  expected: {:?}\n  actual:   {:?}",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first)
        ));
    }
}

#[test]
fn scenarios_render_their_golden_files() {
    let mut failures = Vec::new();
    let scenarios = scenarios();
    assert!(scenarios.len() >= 10, "scenarios missing");
    for dir in &scenarios {
        let nft = kproxy_scenario("render", dir, &["-o", "nft"]);
        assert!(nft.status.success(), "{}: {}", dir.display(), stderr(&nft));
        check(dir, "expected.nft", &stdout(&nft), &mut failures);
        check(dir, "expected.warnings", &stderr(&nft), &mut failures);
        let summary = kproxy_scenario("render", dir, &["-o", "summary"]);
        assert!(summary.status.success());
        check(dir, "expected.summary", &stdout(&summary), &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn json_output_is_the_same_ruleset() {
    let dir = common::root().join("rules/scenarios/clusterip");
    let nft = stdout(&kproxy_scenario("render", &dir, &[]));
    let json = kproxy_scenario("render", &dir, &["-o", "json"]);
    assert!(json.status.success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("valid JSON");
    assert_eq!(v["ruleset"].as_str(), Some(nft.as_str()));
    let v4 = &v["families"][0];
    assert_eq!(v4["family"], "ip");
    let http = v4["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"]["port"] == "http")
        .expect("shop/web:http");
    assert_eq!(http["cluster_ip"], "10.96.0.20");
    // Named target port "http-alt" resolved through the slice's port named "http".
    let eps: Vec<String> = http["cluster_endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}:{}", e["ip"].as_str().unwrap(), e["port"]))
        .collect();
    assert_eq!(
        eps,
        ["10.244.1.5:8080", "10.244.2.7:8080", "10.244.3.9:8080"]
    );
}

#[test]
fn usage_errors_exit_64() {
    let dir = common::root().join("rules/scenarios/clusterip");
    for bad in [
        vec!["--cluster-cidr", "10.0.0.0/33"],
        vec!["--proxy-mode", "iptables"],
        vec!["--detect-local-mode", "BridgeInterface"],
        vec!["--output", "yaml"],
    ] {
        let o = kproxy_scenario("render", &dir, &bad);
        assert_eq!(o.status.code(), Some(64), "{bad:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty());
    }
    let o = kproxy(&["render"]);
    assert_eq!(o.status.code(), Some(64), "missing -f");
    let o = kproxy(&["render", "-f", "/nonexistent/kproxy-manifests.yaml"]);
    assert_eq!(o.status.code(), Some(66));
    assert!(stderr(&o).contains("/nonexistent/kproxy-manifests.yaml"));
}

#[test]
fn masquerade_bit_flag_reaches_the_rules() {
    // `config` turns the bit into the mark (and rejects bits outside 0..=31); the model and
    // the renderer carry the mark unchanged.
    let dir = common::root().join("rules/scenarios/clusterip");
    let o = kproxy_scenario("render", &dir, &["--masquerade-bit=5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let nft = stdout(&o);
    assert!(
        nft.contains("meta mark set meta mark | 0x00000020"),
        "{nft}"
    );
    assert!(nft.contains("meta mark & 0x00000020 == 0 return"), "{nft}");
    assert!(!nft.contains("0x00004000"), "{nft}");
    let o = kproxy_scenario("render", &dir, &["--masquerade-bit=32"]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
}
