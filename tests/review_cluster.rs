//! The review commands against a live cluster (the API server stand-in): `render
//! --kubeconfig` prints exactly what `render -f` prints for the same objects, a missing
//! node is a usage error, `--config-from-cluster` reads the kube-proxy ConfigMap,
//! `--context` picks a context, and `-f` with `--kubeconfig` overlays the cluster.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use kproxy::testutil::apiserver::ApiServer;
use serde_json::json;

/// A stand-in serving a scenario's objects, and a kubeconfig for it.
struct Cluster {
    server: ApiServer,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        let server = ApiServer::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        Cluster {
            server,
            _dir: dir,
            kubeconfig,
        }
    }

    fn with_manifests(path: &Path) -> Cluster {
        let c = Cluster::start();
        let o = kproxy::k8s::manifests::load_paths(&[path.to_path_buf()])
            .expect("manifests")
            .objects;
        c.server.apply_all(&o.nodes);
        c.server.apply_all(&o.service_cidrs);
        c.server.apply_all(&o.services);
        c.server.apply_all(&o.slices);
        c
    }

    fn kubeconfig(&self) -> String {
        self.kubeconfig.display().to_string()
    }
}

/// `kproxy render ARGS…` with `args` as strings.
fn render(args: &[String]) -> Output {
    let mut all = vec!["render".to_string()];
    all.extend(args.iter().cloned());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    kproxy(&refs)
}

fn manifests_of(dir: &Path) -> String {
    dir.join("manifests.yaml").display().to_string()
}

#[test]
fn render_from_cluster_matches_render_from_manifests() {
    let mut failures = Vec::new();
    for dir in scenarios() {
        let cluster = Cluster::with_manifests(&dir.join("manifests.yaml"));
        let from_files = kproxy_scenario("render", &dir, &[]);
        assert!(from_files.status.success(), "{}", stderr(&from_files));
        let mut args = vec!["--kubeconfig".to_string(), cluster.kubeconfig()];
        args.extend(scenario_args(&dir));
        let live = render(&args);
        if !live.status.success() {
            failures.push(format!("{}: {}", dir.display(), stderr(&live)));
        } else if stdout(&live) != stdout(&from_files) {
            failures.push(format!(
                "{}: render --kubeconfig differs from render -f:\n{}\n---\n{}",
                dir.display(),
                stdout(&live),
                stdout(&from_files)
            ));
        }
        // The cluster overlaid by the same manifests: every object replaced, none doubled.
        args.extend(["-f".to_string(), manifests_of(&dir)]);
        let overlaid = render(&args);
        if stdout(&overlaid) != stdout(&from_files) {
            failures.push(format!(
                "{}: overlay differs: {}",
                dir.display(),
                stderr(&overlaid)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_missing_node_is_a_usage_error() {
    let dir = root().join("rules/scenarios/clusterip");
    let cluster = Cluster::with_manifests(&dir.join("manifests.yaml"));
    let out = render(&[
        "--kubeconfig".into(),
        cluster.kubeconfig(),
        "--hostname-override=no-such-node".into(),
    ]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("node \"no-such-node\" does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn an_unreachable_cluster_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    {
        let server = ApiServer::start();
        server.write_kubeconfig(&kubeconfig).unwrap();
    }
    let out = render(&[
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--hostname-override=node-a".into(),
    ]);
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
}

fn proxy_config_map(text: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"namespace": "kube-system", "name": "kube-proxy"},
        "data": {"config.conf": text},
    })
}

#[test]
fn config_from_cluster_reads_the_kube_proxy_config_map() {
    let dir = root().join("rules/scenarios/clusterip");
    let cluster = Cluster::with_manifests(&dir.join("manifests.yaml"));
    let with_flag = kproxy_scenario("render", &dir, &[]);
    assert!(with_flag.status.success(), "{}", stderr(&with_flag));
    let without = kproxy(&[
        "render",
        "-f",
        &manifests_of(&dir),
        "--hostname-override=node-a",
    ]);
    assert_ne!(stdout(&with_flag), stdout(&without), "the CIDR must matter");

    cluster.server.apply(&proxy_config_map(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         mode: nftables\nclusterCIDR: 10.244.0.0/16,fd00:10:244::/56\n",
    ));
    let base = ["--kubeconfig".to_string(), cluster.kubeconfig()];
    let mut args = base.to_vec();
    args.extend([
        "--hostname-override=node-a".into(),
        "--config-from-cluster".into(),
    ]);
    let out = render(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out) == stdout(&with_flag), "{}", stdout(&out));

    // Named explicitly; an explicit flag still overrides the ConfigMap.
    cluster.server.apply(&json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": "other", "name": "proxy"},
        "data": {"config.conf": "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n\
                 kind: KubeProxyConfiguration\nclusterCIDR: 10.99.0.0/16\n"},
    }));
    let mut args = base.to_vec();
    args.extend([
        "--hostname-override=node-a".into(),
        "--config-from-cluster=other/proxy".into(),
        "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56".into(),
    ]);
    let out = render(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out) == stdout(&with_flag), "{}", stdout(&out));
}

#[test]
fn config_from_cluster_errors_read_as_config_file_errors() {
    let cluster = Cluster::with_manifests(&root().join("rules/scenarios/clusterip/manifests.yaml"));
    let base = vec![
        "--kubeconfig".to_string(),
        cluster.kubeconfig(),
        "--hostname-override=node-a".into(),
        "--config-from-cluster".into(),
    ];
    let out = render(&base);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ConfigMap kube-system/kube-proxy does not exist"),
        "{}",
        stderr(&out)
    );

    cluster.server.apply(&proxy_config_map(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         clusterCIDRs: 10.244.0.0/16\n",
    ));
    let out = render(&base);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "kproxy: --config-from-cluster kube-system/kube-proxy (key config.conf): unknown \
         field \"clusterCIDRs\" (KubeProxyConfiguration has no such field)\n"
    );
}

/// `kproxy ARGS…` with `$KUBECONFIG` set to `kubeconfig`.
fn with_kubeconfig_env(kubeconfig: &Path, args: &[String]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .current_dir(root())
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn context_selects_a_context() {
    let dir = root().join("rules/scenarios/clusterip");
    let cluster = Cluster::with_manifests(&dir.join("manifests.yaml"));
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = tmp.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: dead\n\
             clusters:\n- name: dead\n  cluster: {{server: 'http://127.0.0.1:1'}}\n\
             - name: live\n  cluster: {{server: '{}'}}\n\
             users:\n- name: u\n  user: {{}}\n\
             contexts:\n- name: dead\n  context: {{cluster: dead, user: u}}\n\
             - name: live\n  context: {{cluster: live, user: u}}\n",
            cluster.server.url()
        ),
    )
    .unwrap();
    let expected = kproxy_scenario("render", &dir, &[]);
    let mut args = vec!["render".to_string(), "--context=live".into()];
    args.extend(scenario_args(&dir));
    // No --kubeconfig: $KUBECONFIG, as kubectl.
    let out = with_kubeconfig_env(&kubeconfig, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), stdout(&expected));

    // The current context (a dead server): an input error.
    args.remove(1);
    let out = with_kubeconfig_env(&kubeconfig, &args);
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
}

#[test]
fn overlay_replaces_and_adds() {
    let dir = root().join("rules/scenarios/clusterip");
    // The cluster has only the Node; the manifests add everything else.
    let cluster = Cluster::start();
    let o = kproxy::k8s::manifests::load_paths(&[dir.join("manifests.yaml")])
        .unwrap()
        .objects;
    cluster.server.apply_all(&o.nodes);
    let expected = kproxy_scenario("render", &dir, &[]);
    let mut args = vec!["--kubeconfig".to_string(), cluster.kubeconfig()];
    args.extend(scenario_args(&dir));
    let empty = render(&args);
    assert!(empty.status.success(), "{}", stderr(&empty));
    assert_ne!(stdout(&empty), stdout(&expected));
    args.extend(["-f".to_string(), manifests_of(&dir)]);
    let out = render(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), stdout(&expected));
}

/// Writes `testutil::synthetic_cluster(50_000, 10)` as one JSON `kind: List` to
/// `$KPROXY_SYNTHETIC_OUT` (default `target/synthetic-50k.json`), for measuring `render
/// --kubeconfig` against `kproxy-apiserver -f` of the same file (see the module docs of
/// `kproxy::k8s::list`):
///
/// ```text
/// cargo test --features test-util --test review_cluster -- --ignored write_synthetic
/// kproxy-apiserver --kubeconfig /tmp/k -f target/synthetic-50k.json &
/// /usr/bin/time -v kproxy render --kubeconfig /tmp/k --hostname-override node-a \
///     --cluster-cidr 10.128.0.0/9 > /dev/null
/// ```
#[test]
#[ignore]
fn write_synthetic_cluster_manifest() {
    let out = std::env::var("KPROXY_SYNTHETIC_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target/synthetic-50k.json"));
    let o = kproxy::testutil::synthetic_cluster(50_000, 10, false);
    let mut items = Vec::new();
    let typed = |v: serde_json::Value, api: &str, kind: &str| {
        let mut v = v;
        v["apiVersion"] = json!(api);
        v["kind"] = json!(kind);
        v
    };
    for n in &o.nodes {
        items.push(typed(serde_json::to_value(n).unwrap(), "v1", "Node"));
    }
    for c in &o.service_cidrs {
        let v = serde_json::to_value(c).unwrap();
        items.push(typed(v, "networking.k8s.io/v1", "ServiceCIDR"));
    }
    for s in &o.services {
        items.push(typed(serde_json::to_value(s).unwrap(), "v1", "Service"));
    }
    for s in &o.slices {
        let v = serde_json::to_value(s).unwrap();
        items.push(typed(v, "discovery.k8s.io/v1", "EndpointSlice"));
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(&out, serde_json::to_vec(&list).unwrap()).unwrap();
    println!("wrote {}", out.display());
}

/// Writes `testutil::synthetic_cluster(10_000, 10)` as the files a user gives `kproxy
/// render -f` / `apply -f`: multi-document YAML and a JSON List (`$KPROXY_SYNTHETIC_OUT`,
/// default `target/synthetic-10k`, plus `.yaml` / `.json`). Render them for node-a:
///
/// ```text
/// cargo test --features test-util --test review_cluster -- --ignored write_synthetic_10k
/// kproxy render -f target/synthetic-10k.yaml --hostname-override node-a \
///     --cluster-cidr 10.128.0.0/9
/// ```
#[test]
#[ignore = "writes a 15 MB benchmark input"]
fn write_synthetic_10k_manifests() {
    let out = std::env::var("KPROXY_SYNTHETIC_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target/synthetic-10k"));
    let o = kproxy::testutil::synthetic_cluster(10_000, 10, false);
    let m = kproxy::testutil::manifests::synthetic_yaml(&o);
    std::fs::write(out.with_extension("yaml"), m).unwrap();
    let m = kproxy::testutil::manifests::synthetic_json(&o);
    std::fs::write(out.with_extension("json"), m).unwrap();
    println!("wrote {}.{{yaml,json}}", out.display());
}

/// `target/synthetic-affinity-N.yaml`: N services × 10 endpoints, every one ClientIP (the
/// issue's `kproxy apply` affinity measurements), for N in `KPROXY_AFFINITY_SIZES`
/// (default 1000,3000,10000).
#[test]
#[ignore = "writes measurement inputs; run on demand"]
fn write_synthetic_affinity_manifests() {
    let sizes = std::env::var("KPROXY_AFFINITY_SIZES").unwrap_or("1000,3000,10000".into());
    for n in sizes
        .split(',')
        .filter_map(|n| n.trim().parse::<usize>().ok())
    {
        let o = kproxy::testutil::synthetic_cluster_mix(n, 10, 1);
        let path = root().join(format!("target/synthetic-affinity-{n}.yaml"));
        std::fs::write(&path, kproxy::testutil::manifests::synthetic_yaml(&o)).unwrap();
        println!("wrote {}", path.display());
    }
}

#[test]
fn no_manifests_and_no_cluster_is_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .current_dir(root())
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", home.path())
        .args(["render", "--hostname-override=node-a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no -f PATH, and no API server configuration"),
        "{}",
        stderr(&out)
    );
}

/// `kproxy diff --base cluster --change FILE`: the live cluster as the base gives the same
/// review as the manifests it was loaded from (the eTP-flip golden case), and exit 1; the
/// same objects as the change give no difference, exit 0.
#[test]
fn diff_against_the_live_cluster() {
    let case = root().join("rules/diff/etp-local");
    let cluster = Cluster::with_manifests(&case.join("base.yaml"));
    let diff = |change: &Path| {
        let args = [
            "diff",
            "--kubeconfig",
            &cluster.kubeconfig(),
            "--base",
            "cluster",
            "--change",
            &change.display().to_string(),
            "--hostname-override=node-a",
            "--cluster-cidr=10.244.0.0/16",
        ];
        kproxy(&args)
    };
    let changed = diff(&case.join("change.yaml"));
    assert_eq!(changed.status.code(), Some(1), "{}", stderr(&changed));
    let expected = std::fs::read_to_string(case.join("expected.summary")).expect("golden");
    assert_eq!(stdout(&changed), expected);
    let same = diff(&case.join("base.yaml"));
    assert_eq!(same.status.code(), Some(0), "{}", stderr(&same));
}
