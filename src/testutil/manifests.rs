//! Synthetic manifests (feature `test-util`): [`synthetic_cluster`](super::synthetic_cluster)
//! as the files a user would give `kproxy render -f` / `apply -f`.
//!
//! Owns: turning a synthetic cluster into multi-document YAML (one object per document, as
//! `kubectl get -o yaml` writes each object) and into a JSON `kind: List`, with the fields
//! the API server adds (uid, resourceVersion, creationTimestamp, labels, owner references,
//! clusterIPs, ipFamilies, endpoint conditions; not the pods' target references, to stay
//! near the 15 MB of 10k × 10 that issue #10 measures), so that reading
//! them costs what reading a real cluster's dump costs.
//!
//! Must not: be used by the daemon or the CLI.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

use super::fixtures::time;
use crate::model::Objects;

/// A uid-shaped string unique to `(kind, i)`.
fn uid(kind: u32, i: usize) -> String {
    format!(
        "{kind:08x}-{:04x}-4{:03x}-8000-{i:012x}",
        i % 0xffff,
        i % 0xfff
    )
}

/// `o`'s Services and EndpointSlices with the fields the API server and controllers set.
fn realistic(o: &Objects) -> Objects {
    let mut o = o.clone();
    let created = time("2026-01-01T00:00:00Z");
    for (i, s) in o.services.iter_mut().enumerate() {
        let name = s.metadata.name.clone().unwrap_or_default();
        let m = &mut s.metadata;
        m.uid = Some(uid(1, i));
        m.resource_version = Some((1000 + i).to_string());
        m.creation_timestamp = Some(created.clone());
        m.labels = Some([("app".to_string(), name.clone())].into());
        let spec = s.spec.get_or_insert_with(Default::default);
        spec.cluster_ips = spec.cluster_ip.clone().map(|ip| vec![ip]);
        spec.ip_families = Some(vec!["IPv4".into()]);
        spec.ip_family_policy = Some("SingleStack".into());
        spec.internal_traffic_policy = Some("Cluster".into());
        spec.external_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
        spec.session_affinity.get_or_insert_with(|| "None".into());
        spec.selector = Some([("app".to_string(), name)].into());
    }
    for (i, sl) in o.slices.iter_mut().enumerate() {
        let name = sl.metadata.name.clone().unwrap_or_default();
        let service = name.trim_end_matches("-abcde");
        let m = &mut sl.metadata;
        m.uid = Some(uid(2, i));
        m.resource_version = Some((100_000 + i).to_string());
        m.creation_timestamp = Some(created.clone());
        m.generate_name = Some(format!("{service}-"));
        m.generation = Some(1);
        m.labels.get_or_insert_with(Default::default).insert(
            "endpointslice.kubernetes.io/managed-by".into(),
            "endpointslice-controller.k8s.io".into(),
        );
        for ep in sl.endpoints.iter_mut().flatten() {
            ep.conditions.get_or_insert_with(Default::default).ready = Some(true);
        }
    }
    o
}

/// `value` with `apiVersion` and `kind` (keys come out sorted, as kubectl prints them).
fn typed(mut value: Value, api_version: &str, kind: &str) -> Value {
    value["apiVersion"] = json!(api_version);
    value["kind"] = json!(kind);
    value
}

/// Every object of `o` as a JSON value with apiVersion and kind: Nodes, ServiceCIDRs, then
/// each Service followed by its EndpointSlices (as `synthetic_cluster` pairs them).
fn documents(o: &Objects) -> Vec<Value> {
    let o = realistic(o);
    let to = |v: Result<Value, serde_json::Error>| v.expect("objects serialize");
    let mut docs = Vec::new();
    for n in &o.nodes {
        docs.push(typed(to(serde_json::to_value(n)), "v1", "Node"));
    }
    for c in &o.service_cidrs {
        let v = to(serde_json::to_value(c));
        docs.push(typed(v, "networking.k8s.io/v1", "ServiceCIDR"));
    }
    let svc = |s: &Service| typed(to(serde_json::to_value(s)), "v1", "Service");
    let slice = |s: &EndpointSlice| {
        typed(
            to(serde_json::to_value(s)),
            "discovery.k8s.io/v1",
            "EndpointSlice",
        )
    };
    let mut slices = o.slices.iter();
    for s in &o.services {
        docs.push(svc(s));
        if let Some(sl) = slices.next() {
            docs.push(slice(sl));
        }
    }
    docs.extend(slices.map(slice));
    docs
}

/// `o` as multi-document YAML (`---` before every document).
pub fn synthetic_yaml(o: &Objects) -> String {
    let mut out = String::new();
    for doc in documents(o) {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&doc).expect("yaml"));
    }
    out
}

/// `o` as one JSON `kind: List` (as `kubectl get -o json` writes several objects).
pub fn synthetic_json(o: &Objects) -> String {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": documents(o)});
    serde_json::to_string_pretty(&list).expect("json")
}
