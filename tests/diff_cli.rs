//! `kproxy diff` through the real binary: every reviewed change under rules/diff prints
//! exactly its `expected.summary` and `expected.nft`, and exits 1 (0 for `no-change`);
//! JSON carries both; usage errors exit 64, unreadable input 66. In a throwaway network
//! namespace: `diff --node` reports exactly a hand-made change to kproxy's table (exit 1),
//! and nothing once `apply` has repaired it (exit 0).
//!
//! To accept a deliberate change: `UPDATE_GOLDEN=1 cargo test --test diff_cli`, then
//! review the diff of rules/diff/*/expected.* like code.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

/// The node every case is seen from.
const NODE: [&str; 2] = ["--hostname-override=node-a", "--cluster-cidr=10.244.0.0/16"];

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("rules/diff"))
        .expect("rules/diff")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("base.yaml").exists())
        .collect();
    v.sort();
    v
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// `kproxy diff --base CASE/base.yaml --change CASE/change.yaml NODE… ARGS… EXTRA…`.
fn diff_case(dir: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec![
        "diff".into(),
        "--base".into(),
        rel(&dir.join("base.yaml")),
        "--change".into(),
        rel(&dir.join("change.yaml")),
    ];
    args.extend(NODE.iter().map(|s| s.to_string()));
    args.extend(scenario_args(dir));
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    kproxy(&refs)
}

fn check(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|_| panic!("missing {}; run with UPDATE_GOLDEN=1", path.display()));
    if expected != actual {
        failures.push(format!(
            "{} differs:\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        ));
    }
}

#[test]
fn reviewed_changes_print_their_golden_files() {
    let cases = cases();
    assert!(cases.len() >= 12, "diff cases missing: {cases:?}");
    let mut failures = Vec::new();
    for dir in &cases {
        let unchanged = dir.ends_with("no-change");
        for (output, file) in [("summary", "expected.summary"), ("nft", "expected.nft")] {
            let o = diff_case(dir, &["-o", output]);
            let want = if unchanged { 0 } else { 1 };
            assert_eq!(
                o.status.code(),
                Some(want),
                "{} -o {output}: {}",
                dir.display(),
                stderr(&o)
            );
            check(&dir.join(file), &stdout(&o), &mut failures);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn json_carries_the_summary_the_transaction_and_each_port() {
    let dir = root().join("rules/diff/etp-local");
    let summary = stdout(&diff_case(&dir, &[]));
    let nft = stdout(&diff_case(&dir, &["-o", "nft"]));
    let o = diff_case(&dir, &["-o", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["changed"], true);
    assert_eq!(v["summary"].as_str(), Some(summary.as_str()));
    assert_eq!(v["nft"].as_str(), Some(nft.as_str()));
    let ports = v["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["port"], "shop/api:https (tcp)");
    assert_eq!(ports[0]["change"], "changed");
    assert_eq!(ports[0]["before"]["external_policy_local"], false);
    assert_eq!(ports[0]["after"]["external_policy_local"], true);

    let same = diff_case(&root().join("rules/diff/no-change"), &["-o", "json"]);
    assert_eq!(same.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&same.stdout).expect("valid JSON");
    assert_eq!(v["changed"], false);
    assert_eq!(v["nft"], "");
}

/// `kproxy diff ARGS… NODE…`: its exit code and stderr.
fn diff_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["diff"];
    all.extend(args);
    all.extend(NODE);
    let o = kproxy(&all);
    (o.status.code(), stderr(&o))
}

#[test]
fn usage_errors_exit_64_and_unreadable_input_66() {
    let b = "rules/diff/etp-local/base.yaml";
    let usage: &[&[&str]] = &[
        &[],
        &["--base", b],
        &["--base", b, "--change", b, "--node"],
        &["--base", b, "--change", b, "-f", b],
        &["--base", b, "--change", b, "--delete", "Service/shop/nope"],
        &["--base", b, "--change", b, "--delete", "Pod/shop/web"],
        &["--base", b, "cluster", "--change", b],
        &["--base", b, "--change", b, "-o", "yaml"],
        &["--base", b, "--change", b, "--no-such-flag"],
    ];
    for args in usage {
        let (code, err) = diff_exit(args);
        assert_eq!(code, Some(64), "{args:?}: {err}");
    }
    let (code, err) = diff_exit(&["--base", b, "--change", "rules/diff/no/such.yaml"]);
    assert_eq!(code, Some(66), "{err}");
    assert!(err.contains("no such file"), "{err}");
}

#[test]
fn deleting_objects_is_the_same_as_leaving_them_out() {
    let dir = root().join("rules/diff/service-deleted");
    let o = diff_case(&dir, &["-o", "summary"]);
    assert_eq!(o.status.code(), Some(1));
    let s = stdout(&o);
    assert!(s.contains("- shop/db:pg (tcp): removed"), "{s}");
    assert!(!s.contains("shop/web"), "{s}");
}

fn diff_node(ns: &Netns, manifests: &str, extra: &[&str]) -> Output {
    let mut args = vec!["diff", "--node", "-f", manifests];
    args.extend(NODE);
    args.extend(extra);
    ns.exec(env!("CARGO_BIN_EXE_kproxy"), &args)
}

fn apply(ns: &Netns, manifests: &str) {
    let mut args = vec!["apply", "-f", manifests];
    args.extend(NODE);
    let o = ns.exec(env!("CARGO_BIN_EXE_kproxy"), &args);
    assert!(o.status.success(), "apply: {}", stderr(&o));
}

fn nft(ns: &Netns, args: &[&str]) {
    let o = ns.exec("nft", args);
    assert!(o.status.success(), "nft {args:?}: {}", stderr(&o));
}

#[test]
fn diff_node_reports_exactly_a_hand_made_change() {
    if !kernel_tests_enabled("diff_node_reports_exactly_a_hand_made_change") {
        return;
    }
    let manifests = root().join("rules/diff/etp-local/base.yaml");
    let manifests = manifests.display().to_string();
    let ns = Netns::new("diffnode");
    apply(&ns, &manifests);
    let clean = diff_node(&ns, &manifests, &[]);
    assert_eq!(clean.status.code(), Some(0), "{}", stderr(&clean));
    assert!(stdout(&clean).starts_with("no drift"), "{}", stdout(&clean));

    // One element gone: exactly that element, named by its service.
    nft(
        &ns,
        &[
            "delete",
            "element",
            "ip",
            "kproxy",
            "cluster-ips",
            "{ 10.96.0.40 }",
        ],
    );
    let o = diff_node(&ns, &manifests, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "drift: 1 operation(s) would repair 1 service(s)' rules\n  \
         shop/db\n    cluster-ips: missing 10.96.0.40 comment \"shop/db\"\n"
    );
    let tx = diff_node(&ns, &manifests, &["-o", "nft"]);
    assert_eq!(tx.status.code(), Some(1));
    assert_eq!(
        stdout(&tx),
        "add element ip kproxy cluster-ips {\n\t10.96.0.40 comment \"shop/db\"\n}\n"
    );

    // A service chain flushed as well: both, each under its service.
    let chain = "service-KHN6ECMT-shop/web/tcp/http";
    nft(&ns, &["flush", "chain", "ip", "kproxy", chain]);
    let o = diff_node(&ns, &manifests, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("2 service(s)"), "{s}");
    assert!(
        s.contains(&format!(
            "  shop/web:http\n    chain {chain}: rules differ (kernel 0, meant 1)\n"
        )),
        "{s}"
    );
    let json = diff_node(&ns, &manifests, &["-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v["changed"], true);
    assert_eq!(v["summary"].as_str(), Some(s.as_str()));

    // Repaired by apply: no drift.
    apply(&ns, &manifests);
    let o = diff_node(&ns, &manifests, &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn diff_node_sees_no_drift_where_endpoint_lists_came_and_went() {
    if !kernel_tests_enabled("diff_node_sees_no_drift_where_endpoint_lists_came_and_went") {
        return;
    }
    // 40 services over two endpoint-map shards; then an early one goes away. The kernel
    // keeps every other list in its block (a fresh render would move each later list
    // down one): that is no drift.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut objects = kproxy::testutil::synthetic_cluster(40, 3, false);
    let before = dir.path().join("before.yaml");
    std::fs::write(&before, kproxy::testutil::fixtures::manifests(&objects)).expect("write");
    objects.services.remove(3);
    objects.slices.remove(3);
    let after = dir.path().join("after.yaml");
    std::fs::write(&after, kproxy::testutil::fixtures::manifests(&objects)).expect("write");
    let (before, after) = (before.display().to_string(), after.display().to_string());
    let ns = Netns::new("diffnode-moved");
    apply(&ns, &before);
    apply(&ns, &after);
    let o = diff_node(&ns, &after, &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).starts_with("no drift"), "{}", stdout(&o));
}
