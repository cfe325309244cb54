//! Shared test helpers: scenario discovery, running the kproxy binary, and throwaway
//! network namespaces for kernel tests (removed on drop, also when a test fails).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every scenario directory under rules/scenarios, sorted.
pub fn scenarios() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("rules/scenarios"))
        .expect("rules/scenarios")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("manifests.yaml").exists())
        .collect();
    v.sort();
    v
}

/// The extra flags of a scenario (`args`: one per line).
pub fn scenario_args(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("args"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Runs the kproxy binary.
pub fn kproxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("run kproxy")
}

/// `kproxy SUB -f DIR/manifests.yaml ARGS… EXTRA…` for a scenario.
pub fn kproxy_scenario(sub: &str, dir: &Path, extra: &[&str]) -> Output {
    let manifests = dir
        .strip_prefix(root())
        .unwrap_or(dir)
        .join("manifests.yaml");
    let mut args: Vec<String> = vec![sub.into(), "-f".into(), manifests.display().to_string()];
    args.extend(scenario_args(dir));
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    kproxy(&refs)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub use kproxy::testutil::{in_netns, Netns};

/// Whether kernel tests can run. In CI (root) they always run: a missing privilege there
/// fails the test instead of skipping it. Elsewhere without root: one line, then skip.
pub fn kernel_tests_enabled(test: &str) -> bool {
    if kproxy::testutil::is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI is set but not running as root; kernel tests cannot run");
    }
    println!("skipping {test}: needs root for network namespaces (not root, CI unset)");
    false
}

pub fn run_ok(cmd: &str, args: &[&str]) -> Output {
    let o = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// A `Config` from kube-proxy flags, as the binary would parse them.
pub fn config_from_flags<S: AsRef<str>>(flags: &[S]) -> kproxy::config::Config {
    use clap::Parser;
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        proxy: kproxy::config::ProxyFlags,
    }
    let mut argv = vec!["kproxy"];
    argv.extend(flags.iter().map(|f| f.as_ref()));
    let f = Flags::try_parse_from(argv).expect("flags parse");
    kproxy::config::Config::from_flags(&f.proxy).expect("valid flags")
}

/// A scenario of rules/scenarios rendered in-process, with its flags (load and model
/// warnings allowed: some scenarios are about them).
pub fn render_scenario(dir: &Path) -> kproxy::nft::Ruleset {
    let config = config_from_flags(&scenario_args(dir));
    let loaded =
        kproxy::k8s::manifests::load_paths(&[dir.join("manifests.yaml")]).expect("manifests");
    let (model, _warnings) = kproxy::model::build(&loaded.objects, &config.settings);
    kproxy::render::render(&model)
}

/// The in-process pipeline: manifests text + kube-proxy flags → (model, warnings, ruleset).
pub fn pipeline(
    yaml: &str,
    flags: &[&str],
) -> (
    kproxy::model::Model,
    Vec<kproxy::model::Warning>,
    kproxy::nft::Ruleset,
) {
    let config = config_from_flags(flags);
    let loaded = kproxy::k8s::manifests::load_str("fixture.yaml", yaml);
    assert!(loaded.warnings.is_empty(), "fixture: {:?}", loaded.warnings);
    let (model, warnings) = kproxy::model::build(&loaded.objects, &config.settings);
    let rs = kproxy::render::render(&model);
    (model, warnings, rs)
}
pub mod daemon;
pub mod topology;
pub mod udp;

/// The cluster of the throwaway topology before any service: node-a (both families' pod
/// CIDRs and all four node addresses) and the dual-stack ServiceCIDRs.
pub fn node_objects() -> kproxy::model::Objects {
    use kproxy::nft::Family::{V4, V6};
    use kproxy::testutil::fixtures::{node, service_cidr};
    use topology::{cidr, node_ip, node_link_b_ip};
    let addresses = [
        node_ip(V4),
        node_ip(V6),
        node_link_b_ip(V4),
        node_link_b_ip(V6),
    ];
    let node = addresses.iter().fold(
        node("node-a").pod_cidrs(&[cidr(V4, "pods"), cidr(V6, "pods")]),
        |n, ip| n.internal_ip(&ip.to_string()),
    );
    kproxy::model::Objects {
        nodes: vec![node.build()],
        service_cidrs: vec![
            service_cidr("kubernetes", &["10.96.0.0/16", "fd00:10:96::/112"]).build(),
        ],
        ..Default::default()
    }
}

/// `rs` without its session-affinity rules: nft 1.0.6 cannot parse them (a map lookup as
/// the data of `update`, a lookup keyed by a lookup's result), so the tests that load a
/// ruleset with `nft -f` load it without them (the maps stay) and check those rules over
/// netlink instead. Their chains stay, empty.
#[allow(dead_code)]
pub fn without_affinity_rules(rs: &kproxy::nft::Ruleset) -> kproxy::nft::Ruleset {
    let mut rs = rs.clone();
    for t in &mut rs.tables {
        for c in t.chains.values_mut() {
            c.rules.retain(|r| {
                !r.stmts
                    .iter()
                    .any(|s| matches!(s, kproxy::nft::Stmt::DnatAffinity { .. }))
            });
        }
    }
    rs
}

/// Every affinity rule's text names the shard's endpoint map (and no other line does):
/// how tests leave those lines out of what they hand to `nft`.
#[allow(dead_code)]
pub const AFFINITY_RULE_MARK: &str = "map @affinity-endpoints-";
