//! `kproxy apply` and `kproxy cleanup` against the real kernel, in throwaway network
//! namespaces: a second identical apply sends nothing; hand edits (a deleted element, a
//! flushed chain) are repaired exactly; `--dry-run` prints the transaction and sends
//! nothing; cleanup removes kproxy's tables and nothing else.

mod common;

use common::*;

fn scenario_dir(scenario: &str) -> std::path::PathBuf {
    root().join("rules/scenarios").join(scenario)
}

/// `kproxy apply -f FILE` with `scenario`'s flags and `extra`.
fn apply_file_in(
    ns: &Netns,
    scenario: &str,
    file: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args: Vec<String> = vec!["apply".into(), "-f".into(), file.display().to_string()];
    args.extend(scenario_args(&scenario_dir(scenario)));
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ns.exec(env!("CARGO_BIN_EXE_kproxy"), &refs)
}

/// `kproxy apply` of `scenario`'s manifests.
fn apply_in(ns: &Netns, scenario: &str, extra: &[&str]) -> std::process::Output {
    let file = scenario_dir(scenario).join("manifests.yaml");
    apply_file_in(ns, scenario, &file, extra)
}

/// `scenario`'s manifests, as text.
fn manifests_of(scenario: &str) -> String {
    std::fs::read_to_string(scenario_dir(scenario).join("manifests.yaml")).unwrap()
}

/// `kproxy apply` of other manifests (`text`) with `scenario`'s flags.
fn apply_text_in(ns: &Netns, scenario: &str, text: &str, extra: &[&str]) -> std::process::Output {
    let file = std::env::temp_dir().join(format!("{}.yaml", ns.name));
    std::fs::write(&file, text).unwrap();
    let o = apply_file_in(ns, scenario, &file, extra);
    let _ = std::fs::remove_file(&file);
    o
}

/// The commands of an `nft -f` transaction text (comments and element lines left out).
fn commands(tx: &str) -> impl Iterator<Item = &str> {
    tx.lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()))
}

fn list(ns: &Netns) -> String {
    let o = ns.exec("nft", &["list", "ruleset"]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// How many rules a chain of `ip kproxy` holds, as the kernel lists it.
fn rule_count(ns: &Netns, chain: &str) -> usize {
    let o = ns.exec("nft", &["-j", "list", "chain", "ip", "kproxy", chain]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("rule").is_some())
        .count()
}

/// The first element of `ip kproxy cluster-ips`, as the kernel lists it.
fn first_cluster_ip(ns: &Netns) -> String {
    let o = ns.exec("nft", &["-j", "list", "set", "ip", "kproxy", "cluster-ips"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let set = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i.get("set"))
        .expect("set");
    let first = &set["elem"][0];
    first["elem"]["val"]
        .as_str()
        .or(first.as_str())
        .expect("an address")
        .to_string()
}

#[track_caller]
fn assert_ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "kproxy failed: {}", stderr(o));
    stderr(o)
}

#[test]
fn second_apply_sends_nothing_and_hand_edits_are_repaired() {
    if !kernel_tests_enabled("second_apply_sends_nothing_and_hand_edits_are_repaired") {
        return;
    }
    for scenario in ["traffic-policy", "affinity", "dual-stack", "external"] {
        let ns = Netns::new("apply");
        let first = assert_ok(&apply_in(&ns, scenario, &[]));
        assert!(first.contains("committed"), "{scenario}: {first}");
        let programmed = list(&ns);
        let again = assert_ok(&apply_in(&ns, scenario, &[]));
        assert!(
            again.contains("nothing to do") && again.contains("0 operations"),
            "{scenario}: a second apply must send nothing: {again}"
        );
        assert_eq!(list(&ns), programmed);

        // Someone deletes one element by hand: exactly that element comes back.
        let ip = first_cluster_ip(&ns);
        let o = ns.exec(
            "nft",
            &[
                "delete",
                "element",
                "ip",
                "kproxy",
                "cluster-ips",
                &format!("{{ {ip} }}"),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let repair = assert_ok(&apply_in(&ns, scenario, &[]));
        assert!(
            repair.contains("elements +1 -0") && repair.contains("chains +0 ~0 -0"),
            "{scenario}: {repair}"
        );
        assert_eq!(list(&ns), programmed, "{scenario}: repaired exactly");

        // Someone flushes the dispatch chain: exactly its rules come back (the chain is
        // empty, so nothing needs flushing first).
        let rules = rule_count(&ns, "services");
        assert!(rules >= 2);
        let o = ns.exec("nft", &["flush", "chain", "ip", "kproxy", "services"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let repair = assert_ok(&apply_in(&ns, scenario, &[]));
        assert!(
            repair.contains(&format!("committed {rules} operations"))
                && repair.contains(&format!("rules {rules},"))
                && repair.contains("chains +0 ~0 -0")
                && repair.contains("elements +0 -0"),
            "{scenario}: {repair}"
        );
        assert_eq!(list(&ns), programmed, "{scenario}: repaired exactly");
    }
}

#[test]
fn every_scenario_applies_idempotently() {
    if !kernel_tests_enabled("every_scenario_applies_idempotently") {
        return;
    }
    for dir in scenarios() {
        let scenario = dir.file_name().unwrap().to_str().unwrap().to_string();
        let ns = Netns::new("idem");
        assert_ok(&apply_in(&ns, &scenario, &[]));
        let again = assert_ok(&apply_in(&ns, &scenario, &[]));
        assert!(
            again.contains("nothing to do"),
            "{scenario}: a second apply must send nothing: {again}"
        );
    }
}

#[test]
fn dry_run_prints_the_transaction_and_sends_nothing() {
    if !kernel_tests_enabled("dry_run_prints_the_transaction_and_sends_nothing") {
        return;
    }
    let ns = Netns::new("dry");
    let o = apply_in(&ns, "clusterip", &["--dry-run"]);
    let err = assert_ok(&o);
    assert!(err.contains("would send"), "{err}");
    let tx = stdout(&o);
    assert!(tx.contains("add table ip kproxy"), "{tx}");
    assert!(tx.contains("add element ip kproxy service-ips"), "{tx}");
    assert!(!list(&ns).contains("kproxy"), "a dry run changes nothing");
    // The printed transaction is itself valid nft input that programs the same rules.
    let file = std::env::temp_dir().join(format!("{}.nft", ns.name));
    std::fs::write(&file, &tx).unwrap();
    let o = ns.exec("nft", &["-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(o.status.success(), "{}", stderr(&o));
    let again = assert_ok(&apply_in(&ns, "clusterip", &[]));
    assert!(again.contains("nothing to do"), "{again}");
}

#[test]
fn cleanup_removes_only_kproxy_tables() {
    if !kernel_tests_enabled("cleanup_removes_only_kproxy_tables") {
        return;
    }
    let ns = Netns::new("cleanup");
    let o = ns.exec("nft", &["add", "table", "ip", "kube-proxy"]);
    assert!(o.status.success());
    let o = ns.exec("nft", &["add", "table", "inet", "someone-else"]);
    assert!(o.status.success());
    assert_ok(&apply_in(&ns, "clusterip", &[]));
    let o = ns.exec(env!("CARGO_BIN_EXE_kproxy"), &["cleanup"]);
    let err = assert_ok(&o);
    assert!(err.contains("deleted table ip kproxy") && err.contains("deleted table ip6 kproxy"));
    let tables = stdout(&ns.exec("nft", &["list", "tables"]));
    assert_eq!(
        tables.lines().collect::<Vec<_>>(),
        ["table ip kube-proxy", "table inet someone-else"]
    );
    let o = ns.exec(env!("CARGO_BIN_EXE_kproxy"), &["cleanup"]);
    assert!(assert_ok(&o).contains("no kproxy tables"));
}

/// An endpoint of `shop/web` flips to ready: `--dry-run` shows element operations only,
/// and the kernel, watched with `nft monitor` while the change is applied, announces only
/// elements (no rule, chain or set), in the endpoint map and nowhere else a rule reads.
#[test]
fn an_endpoint_change_reaches_the_kernel_as_elements_only() {
    if !kernel_tests_enabled("an_endpoint_change_reaches_the_kernel_as_elements_only") {
        return;
    }
    let text = manifests_of("clusterip");
    let flipped = text.replacen("conditions: {ready: false}", "conditions: {ready: true}", 1);
    assert_ne!(text, flipped);
    let ns = Netns::new("elems");
    assert_ok(&apply_in(&ns, "clusterip", &[]));
    let o = apply_text_in(&ns, "clusterip", &flipped, &["--dry-run"]);
    let err = assert_ok(&o);
    assert!(
        err.contains("chains +0 ~0 -0, rules 0, sets +0 -0"),
        "{err}"
    );
    let tx = stdout(&o);
    for line in commands(&tx) {
        assert!(
            line.starts_with("add element ip kproxy endpoints-")
                || line.starts_with("delete element ip kproxy endpoints-"),
            "not an endpoint-map element operation: {line}\n{tx}"
        );
    }
    // The real thing, with the kernel's own announcements recorded.
    let mut monitor = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "monitor", "ruleset"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("nft monitor");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_ok(&apply_text_in(&ns, "clusterip", &flipped, &[]));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = monitor.kill();
    let out = monitor.wait_with_output().expect("monitor output");
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    let events: Vec<&str> = seen.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!events.is_empty(), "the monitor saw nothing");
    for e in &events {
        assert!(
            e.starts_with("add element ip kproxy endpoints-")
                || e.starts_with("delete element ip kproxy endpoints-"),
            "the kernel announced more than elements: {e}\n{seen}"
        );
    }
    assert!(events.iter().any(|e| e.contains("10.244.2.8")), "{seen}");
}

/// A service added in front of the others (its name sorts first): `kproxy apply` reads
/// the kernel first and keeps every list where the kernel has it, so the new service's
/// chain, rule and elements are all it sends; no other service's block moves.
#[test]
fn apply_keeps_every_list_where_the_kernel_has_it() {
    if !kernel_tests_enabled("apply_keeps_every_list_where_the_kernel_has_it") {
        return;
    }
    let text = manifests_of("clusterip");
    let first = "
---
apiVersion: v1
kind: Service
metadata: {name: first, namespace: aaa}
spec:
  clusterIP: 10.96.0.99
  clusterIPs: [10.96.0.99]
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: first-abc
  namespace: aaa
  labels: {kubernetes.io/service-name: first}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- addresses: [10.244.2.99]
  nodeName: node-b
  conditions: {ready: true}
";
    let ns = Netns::new("keep");
    assert_ok(&apply_in(&ns, "clusterip", &[]));
    let o = apply_text_in(&ns, "clusterip", &format!("{text}{first}"), &["--dry-run"]);
    assert_ok(&o);
    let tx = stdout(&o);
    for line in commands(&tx) {
        assert!(
            !line.starts_with("delete") && !line.starts_with("flush"),
            "nothing the kernel holds moves: {line}\n{tx}"
        );
        if line.starts_with("add rule") || line.starts_with("add chain") {
            assert!(
                line.contains("aaa/first"),
                "only the new service's: {line}\n{tx}"
            );
        }
    }
    assert!(tx.contains("aaa/first"), "{tx}");
}
