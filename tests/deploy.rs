//! The deployment files in `deploy/`, parsed with the Kubernetes API types and checked
//! for what matters on a node: host network, not privileged, only NET_ADMIN/NET_RAW, probes
//! on the health server's paths and port, RBAC exactly least privilege, the ConfigMap a
//! configuration kproxy loads (with the DaemonSet's own command line), and a Grafana
//! dashboard that only queries metrics kproxy exports.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kproxy::admin;
use kproxy::config::{Config, ProxyFlags};
use kproxy::metrics::Metrics;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(name))
        .unwrap_or_else(|e| panic!("deploy/{name}: {e}"))
}

/// Every YAML document of `deploy/<name>`, as `T`.
fn docs<T: DeserializeOwned>(name: &str) -> Vec<T> {
    let text = read(name);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| T::deserialize(d).unwrap_or_else(|e| panic!("deploy/{name}: {e}")))
        .collect()
}

fn one<T: DeserializeOwned>(name: &str) -> T {
    let mut d = docs::<T>(name);
    assert_eq!(d.len(), 1, "deploy/{name} holds one object");
    d.remove(0)
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec.template.spec.as_ref().expect("pod spec")
}

fn kproxy_container(ds: &DaemonSet) -> &Container {
    let c = &pod_spec(ds).containers;
    assert_eq!(c.len(), 1, "one container");
    &c[0]
}

#[test]
fn kustomization_lists_every_manifest() {
    let k: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read("kustomization.yaml")).unwrap();
    assert_eq!(k["namespace"].as_str(), Some("kube-system"));
    let resources: Vec<&str> = k["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("path"))
        .collect();
    assert_eq!(
        resources,
        [
            "serviceaccount.yaml",
            "rbac.yaml",
            "configmap.yaml",
            "daemonset.yaml"
        ]
    );
    for r in resources {
        assert!(deploy_dir().join(r).is_file(), "{r} exists");
    }
    // The image the DaemonSet names is the one the kustomization sets.
    let ds: DaemonSet = one("daemonset.yaml");
    let image = kproxy_container(&ds).image.as_deref();
    assert_eq!(k["images"][0]["name"].as_str(), image);
}

#[test]
fn daemonset_is_host_network_unprivileged_and_probed_on_the_health_server() {
    let ds: DaemonSet = one("daemonset.yaml");
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    let pod = pod_spec(&ds);
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.host_pid, None);
    assert_eq!(pod.host_ipc, None);
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    // One toleration matching every taint: operator Exists, no key, no effect.
    let tolerations = pod.tolerations.as_ref().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "{tolerations:?}"
    );
    let sa: ServiceAccount = one("serviceaccount.yaml");
    assert_eq!(pod.service_account_name, sa.metadata.name);
    // Cluster DNS is a Service kproxy programs: the node's resolver.
    assert_eq!(pod.dns_policy.as_deref(), Some("Default"));

    let c = kproxy_container(&ds);
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["NET_ADMIN", "NET_RAW"]));
    assert!(pod
        .security_context
        .as_ref()
        .is_none_or(|s| s.sysctls.is_none()));

    // Probes: /livez (liveness) and /healthz (readiness) on the healthz port.
    let healthz_port = loaded_config().healthz_bind.port();
    for (probe, path) in [
        (c.liveness_probe.as_ref(), "/livez"),
        (c.readiness_probe.as_ref(), "/healthz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{path} probe"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(i32::from(healthz_port)));
        assert_eq!(get.host, None, "kubelet probes the node address");
    }
    assert_eq!(healthz_port, 10256);

    // Resources: requests, and a memory limit.
    let res = c.resources.as_ref().expect("resources");
    let requests = res.requests.as_ref().expect("requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    assert!(res.limits.as_ref().expect("limits").contains_key("memory"));

    // The node name from the downward API.
    let env = c.env.as_ref().expect("env");
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
    let command = c.command.as_ref().expect("command");
    assert!(command.contains(&"--hostname-override=$(NODE_NAME)".to_string()));
    assert!(command.contains(&"--config=/var/lib/kube-proxy/config.conf".to_string()));

    // Volumes: the ConfigMap at /var/lib/kube-proxy, /lib/modules read-only, the xtables lock.
    let mounts: BTreeMap<&str, (&str, bool)> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            (
                m.mount_path.as_str(),
                (m.name.as_str(), m.read_only == Some(true)),
            )
        })
        .collect();
    let volumes = pod.volumes.as_ref().expect("volumes");
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("volume {name}"))
    };
    let (cfg_volume, ro) = mounts["/var/lib/kube-proxy"];
    assert!(ro);
    let cm: ConfigMap = one("configmap.yaml");
    assert_eq!(
        volume(cfg_volume).config_map.as_ref().map(|c| &c.name),
        cm.metadata.name.as_ref()
    );
    let (modules, ro) = mounts["/lib/modules"];
    assert!(ro, "/lib/modules is read-only");
    assert_eq!(
        volume(modules).host_path.as_ref().map(|h| h.path.as_str()),
        Some("/lib/modules")
    );
    let (lock, _) = mounts["/run/xtables.lock"];
    let hp = volume(lock).host_path.as_ref().expect("hostPath");
    assert_eq!(hp.path, "/run/xtables.lock");
    assert_eq!(hp.type_.as_deref(), Some("FileOrCreate"));
}

/// `kproxy`'s flags as the DaemonSet passes them (the `run` subcommand's).
#[derive(Parser)]
struct RunFlags {
    #[command(flatten)]
    proxy: ProxyFlags,
}

/// The DaemonSet's command line (after `kproxy run`, `$(NODE_NAME)` = `node-a`) with the
/// ConfigMap's `config.conf` at the path the command names, loaded as `kproxy run` would.
fn loaded_config() -> Config {
    let ds: DaemonSet = one("daemonset.yaml");
    let cm: ConfigMap = one("configmap.yaml");
    let data = cm.data.expect("data");
    let dir = tempfile::tempdir().expect("tempdir");
    for (k, v) in &data {
        std::fs::write(dir.path().join(k), v).expect("write");
    }
    let command = kproxy_container(&ds).command.clone().expect("command");
    assert_eq!(command[..2], ["/usr/local/bin/kproxy", "run"]);
    let args = command[2..].iter().map(|a| {
        a.replace("$(NODE_NAME)", "node-a")
            .replace("/var/lib/kube-proxy", &dir.path().display().to_string())
    });
    let flags = RunFlags::try_parse_from(std::iter::once("kproxy".to_string()).chain(args))
        .unwrap_or_else(|e| panic!("the DaemonSet's flags: {e}"))
        .proxy;
    Config::from_flags_with_hostname(&flags, || Some("ignored".into()))
        .unwrap_or_else(|e| panic!("the ConfigMap's config.conf: {e}"))
}

#[test]
fn configmap_is_a_kube_proxy_configuration_kproxy_loads() {
    let cm: ConfigMap = one("configmap.yaml");
    assert_eq!(cm.metadata.namespace.as_deref(), Some("kube-system"));
    let data = cm.data.as_ref().expect("data");
    let conf: serde_yaml_ng::Value = serde_yaml_ng::from_str(&data["config.conf"]).unwrap();
    assert_eq!(
        conf["apiVersion"].as_str(),
        Some("kubeproxy.config.k8s.io/v1alpha1")
    );
    assert_eq!(conf["kind"].as_str(), Some("KubeProxyConfiguration"));
    assert_eq!(conf["mode"].as_str(), Some("nftables"));

    let c = loaded_config();
    assert_eq!(c.settings.hostname, "node-a", "--hostname-override applies");
    assert_eq!(
        c.healthz_bind,
        "0.0.0.0:10256".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        c.metrics_bind,
        "127.0.0.1:10249".parse::<SocketAddr>().unwrap()
    );
    // Unprivileged: /proc/sys is read-only, so conntrack sysctls are left alone.
    assert_eq!(c.conntrack.max_per_core, 0);
    assert!(c.conntrack.tcp_established_timeout.is_zero());
    assert!(c.conntrack.tcp_close_wait_timeout.is_zero());
    // The API server through kubeconfig.conf (mounted beside config.conf), never the
    // kubernetes Service's ClusterIP.
    let kc = c.kubeconfig.expect("clientConnection.kubeconfig");
    assert_eq!(
        kc.file_name().and_then(|f| f.to_str()),
        Some("kubeconfig.conf")
    );
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&data["kubeconfig.conf"]).unwrap();
    let cluster = kubeconfig.clusters[0].cluster.as_ref().expect("cluster");
    assert!(cluster
        .server
        .as_deref()
        .is_some_and(|s| s.starts_with("https://")));
    let user = kubeconfig.auth_infos[0].auth_info.as_ref().expect("user");
    assert_eq!(
        user.token_file.as_deref(),
        Some("/var/run/secrets/kubernetes.io/serviceaccount/token")
    );
}

#[test]
fn rbac_is_exactly_least_privilege() {
    let docs: Vec<serde_yaml_ng::Value> = docs("rbac.yaml");
    assert_eq!(docs.len(), 2);
    let role: ClusterRole = serde_yaml_ng::from_value(docs[0].clone()).unwrap();
    let binding: ClusterRoleBinding = serde_yaml_ng::from_value(docs[1].clone()).unwrap();

    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.as_ref().expect("rules") {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                granted
                    .entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    let read = ["list", "watch"];
    let events = ["create", "patch"];
    let expected: BTreeMap<(String, String), BTreeSet<String>> = [
        ("", "services", &read),
        ("", "nodes", &read),
        ("discovery.k8s.io", "endpointslices", &read),
        ("networking.k8s.io", "servicecidrs", &read),
        ("", "events", &events),
        ("events.k8s.io", "events", &events),
    ]
    .into_iter()
    .map(|(g, r, v)| {
        (
            (g.to_string(), r.to_string()),
            v.iter().map(|s| s.to_string()).collect(),
        )
    })
    .collect();
    assert_eq!(granted, expected);

    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let sa: ServiceAccount = one("serviceaccount.yaml");
    let subjects = binding.subjects.as_ref().expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);
}

#[test]
fn dockerfile_builds_the_binary_into_a_slim_runtime() {
    let d = read("Dockerfile");
    let instructions: Vec<&str> = d
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(
        froms,
        [
            &"FROM rust:1-bookworm AS build",
            &"FROM debian:bookworm-slim"
        ]
    );
    assert!(d.contains("cargo build --release --locked --bin kproxy"));
    // The shared libraries the binary links, and their headers at build time.
    assert!(d.contains(
        "install -y --no-install-recommends libnftnl11 libmnl0 ca-certificates iptables"
    ));
    assert!(d.contains("install -y --no-install-recommends libnftnl-dev libmnl-dev pkg-config"));
    assert!(d.contains("COPY --from=build /src/target/release/kproxy /usr/local/bin/kproxy"));
    // Every path the build copies exists in the repository.
    for l in &instructions {
        if let Some(rest) = l.strip_prefix("COPY ").filter(|r| !r.starts_with("--from")) {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                assert!(
                    Path::new(env!("CARGO_MANIFEST_DIR")).join(src).exists(),
                    "COPY {src}"
                );
            }
        }
    }
}

/// Every metric `Metrics` defines, with a sample (the text format omits a family with no
/// series yet), plus the process collector `admin::spawn` registers.
fn exported_metric_families() -> BTreeMap<String, String> {
    let m = Metrics::new();
    let f = ["IPv4"];
    for h in [
        &m.sync_duration,
        &m.sync_full_duration,
        &m.sync_partial_duration,
        &m.network_programming_duration,
        &m.conntrack_reconcile_duration,
        &m.transaction_operations,
        &m.kernel_commit_duration,
    ] {
        h.with_label_values(&f).observe(1.0);
    }
    m.last_sync_timestamp.with_label_values(&f).set(1.0);
    m.last_queued_timestamp.with_label_values(&f).set(1.0);
    m.endpoint_changes_pending.set(1);
    m.endpoint_changes_total.inc();
    m.service_changes_pending.set(1);
    m.service_changes_total.inc();
    m.healthz_total.with_label_values(&["200"]).inc();
    m.livez_total.with_label_values(&["200"]).inc();
    m.invalid_objects.with_label_values(&["Service"]).inc();
    m.programmed_service_ports.with_label_values(&f).set(1);
    m.api_events.with_label_values(&["services", "ADDED"]).inc();
    m.last_sync_kind.set(1.0);
    // Labelled series appear on first use, as upstream's.
    m.no_local_endpoints
        .with_label_values(&["IPv4", "internal"])
        .set(0);
    m.conntrack_deleted_entries.with_label_values(&f).inc();
    assert!(admin::register_process_metrics(&m));
    m.encode()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').expect("TYPE line");
            (name.to_string(), kind.to_string())
        })
        .collect()
}

/// Every string under a key named `expr`, `query` or `definition`.
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// Identifiers in a PromQL expression that name kproxy's, upstream's or process metrics.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| {
            ["kubeproxy_", "kproxy_", "process_"]
                .iter()
                .any(|p| w.starts_with(p))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn grafana_dashboard_queries_only_exported_metrics() {
    let dash: Value = serde_json::from_str(&read("grafana-dashboard.json")).expect("JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let ids: BTreeSet<i64> = panels
        .iter()
        .map(|p| p["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels {
        assert!(
            !p["targets"].as_array().expect("targets").is_empty(),
            "{}",
            p["title"]
        );
    }

    let mut exprs = Vec::new();
    queries(&dash, &mut exprs);
    let families = exported_metric_families();
    let mut used = BTreeSet::new();
    for e in &exprs {
        for name in metric_names(e) {
            let family = if families.contains_key(&name) {
                name.clone()
            } else {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or_else(|| panic!("{name} (in {e}) is not exported"));
                assert_eq!(
                    families.get(base).map(String::as_str),
                    Some("histogram"),
                    "{name} (in {e}) is not a histogram series"
                );
                base.to_string()
            };
            used.insert(family);
        }
    }
    // The panels the on-call needs.
    for needed in [
        "kubeproxy_sync_full_proxy_rules_duration_seconds",
        "kubeproxy_sync_partial_proxy_rules_duration_seconds",
        "kubeproxy_network_programming_duration_seconds",
        "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
        "kproxy_drift_repairs_total",
        "kproxy_transaction_operations",
        "kproxy_kernel_commit_duration_seconds",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "kubeproxy_sync_proxy_rules_service_changes_total",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
        "kubeproxy_proxy_healthz_total",
        "kubeproxy_conntrack_reconciler_deleted_entries_total",
        "process_resident_memory_bytes",
    ] {
        assert!(used.contains(needed), "no panel queries {needed}");
    }
}
