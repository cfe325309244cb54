//! Bad input, generated (issue 13 item 6): clusters of good objects plus objects with
//! fields malformed in every way (invalid, empty, overlong and unicode IPs and names, the
//! wrong family, ports 0 / 65536 / negative / strings, unknown protocols and enum values,
//! missing and null required fields, wrong JSON types, duplicate names, slices of missing
//! Services, absurd counts, bad annotations), fed as JSON and YAML manifests through the
//! loader, as API objects through the daemon's compact store, and to `model::build` whole
//! and in runs. For every generated cluster:
//!
//! - nothing panics;
//! - the good Services' model and rendered rules equal those of the good objects alone (a
//!   renderer that held the good cluster adds the bad objects' rules beside them and
//!   changes nothing of the good ones), and the validating fake kernel accepts the result;
//! - each bad object is named (`Kind namespace/name`) by a warning of the loader or of the
//!   build, unless it is one kube-proxy skips without a word (headless, ExternalName, no
//!   ClusterIP yet, FQDN slices, another proxy's); no warning names a good object;
//! - the JSON and the YAML manifests, the compact store, and a build in runs of services
//!   all give the same model and the same warnings.
//!
//! A kernel tier (root) commits a few generated clusters through the netlink backend.
//!
//! Cases: `PROPTEST_CASES` overrides the default count of each property (e.g.
//! `PROPTEST_CASES=20000 cargo test --release --test bad_input`).

mod common;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kproxy::backend::fake::FakeBackend;
use kproxy::backend::Backend;
use kproxy::diff::{diff, DiffOptions};
use kproxy::k8s::compact::{prune_node, prune_service_cidr, Interner, ServiceLite, SliceLite};
use kproxy::k8s::manifests::load_str;
use kproxy::model::build::{build, Objects, Settings};
use kproxy::model::{Model, ServiceKey, Warning};
use kproxy::nft::{valid_name, Ruleset, Table, Value as NftValue};
use kproxy::render::Renderer;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};
use serde_json::{json, Value};

const HOST: &str = "node-a";
const GOOD_NS: &str = "good";
const BAD_NS: &str = "bad";

/// Cases per property: `PROPTEST_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn settings() -> Settings {
    Settings {
        hostname: HOST.into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Settings::default()
    }
}

// ---------------------------------------------------------------------------------------
// JSON edits
// ---------------------------------------------------------------------------------------

/// One change to a JSON object: set or remove the value at a `|`-separated path
/// (numbers index lists; missing mappings are created).
#[derive(Clone, Debug)]
enum Edit {
    Set(String, Value),
    Remove(String),
}

fn set(path: &str, v: Value) -> Edit {
    Edit::Set(path.to_string(), v)
}

fn remove(path: &str) -> Edit {
    Edit::Remove(path.to_string())
}

fn apply_edit(root: &mut Value, edit: &Edit) {
    let (path, value) = match edit {
        Edit::Set(p, v) => (p, Some(v)),
        Edit::Remove(p) => (p, None),
    };
    let parts: Vec<&str> = path.split('|').collect();
    let (last, parents) = parts.split_last().expect("non-empty path");
    let mut at = root;
    for (n, p) in parents.iter().enumerate() {
        // What a missing step is made of: a list where the next step is an index.
        let next = parts[n + 1];
        let empty = || match next.parse::<usize>() {
            Ok(_) => json!([]),
            Err(_) => json!({}),
        };
        at = match (at, p.parse::<usize>()) {
            (Value::Array(a), Ok(i)) => {
                if a.len() <= i {
                    a.resize(i + 1, empty());
                }
                &mut a[i]
            }
            (v, _) => {
                if !v.is_object() {
                    *v = json!({});
                }
                v.as_object_mut()
                    .unwrap()
                    .entry(p.to_string())
                    .or_insert_with(empty)
            }
        };
    }
    match (at, last.parse::<usize>(), value) {
        (Value::Array(a), Ok(i), Some(v)) => {
            if a.len() <= i {
                a.resize(i + 1, json!({}));
            }
            a[i] = v.clone();
        }
        (Value::Array(a), Ok(i), None) => {
            if i < a.len() {
                a.remove(i);
            }
        }
        (v, _, Some(new)) => {
            if !v.is_object() {
                *v = json!({});
            }
            v.as_object_mut()
                .unwrap()
                .insert(last.to_string(), new.clone());
        }
        (Value::Object(m), _, None) => {
            m.remove(*last);
        }
        (_, _, None) => {}
    }
}

// ---------------------------------------------------------------------------------------
// Malformed values
// ---------------------------------------------------------------------------------------

/// Strings that are not IP addresses as Kubernetes writes them.
fn bad_ip() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(" ".to_string()),
        Just("10.0.0.300".to_string()),
        Just("1.2.3".to_string()),
        Just("1.2.3.4.5".to_string()),
        Just("not-an-ip".to_string()),
        Just("10.0.0.1/24".to_string()),
        Just(" 10.0.0.1".to_string()),
        Just("10.0.0.1 ".to_string()),
        Just("010.000.000.001".to_string()),
        Just("0x0a.0.0.1".to_string()),
        Just("fe80::1%eth0".to_string()),
        Just("::gg".to_string()),
        Just("1:2:3:4:5:6:7:8:9".to_string()),
        Just("١٠.٠.٠.١".to_string()),
        Just("10.0.0.1\u{0}".to_string()),
        Just("None".to_string()),
        Just("1".repeat(5000)),
        "[a-z0-9.:/%-]{1,40}"
            .prop_filter("not an address", |s| s.parse::<std::net::IpAddr>().is_err()),
    ]
}

/// Strings that are not CIDRs.
fn bad_cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("10.0.0.0/33".to_string()),
        Just("10.0.0.0".to_string()),
        Just("10.0.0.0/".to_string()),
        Just("/8".to_string()),
        Just("10.0.0.0/-1".to_string()),
        Just("::/129".to_string()),
        Just("10.0.0.0/8/8".to_string()),
        Just("10.0.0.0/08x".to_string()),
        Just(String::new()),
        Just("٣/8".to_string()),
        bad_ip()
            .prop_map(|s| format!("{s}/16"))
            // Source ranges are trimmed (as upstream does): padding is not malformed.
            .prop_filter("not a padded CIDR", |c| c
                .trim()
                .parse::<ipnetwork::IpNetwork>()
                .is_err()),
    ]
}

/// Integers that are not port numbers (1..=65535) but fit an int32.
fn bad_port_int() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(65536),
        Just(-1),
        Just(70000),
        Just(i32::MAX as i64),
        Just(i32::MIN as i64),
        (65536i64..=i32::MAX as i64),
        (i32::MIN as i64..0),
    ]
}

/// JSON values of the wrong type for an int32 field.
fn not_an_int32() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("80")),
        Just(json!(80.5)),
        Just(json!(2_147_483_648i64)),
        Just(json!(-2_147_483_649i64)),
        Just(json!(true)),
        Just(json!([80])),
        Just(json!({"port": 80})),
    ]
}

/// Protocol spellings that are not TCP, UDP or SCTP.
fn bad_protocol() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("ICMP".to_string()),
        Just(String::new()),
        Just("TCP ".to_string()),
        Just("ＴＣＰ".to_string()),
        Just("HTTP".to_string()),
        Just("tcp/udp".to_string()),
        "[A-Za-z]{5,12}",
    ]
}

/// Values of enum-like string fields that are none of the values Kubernetes allows.
fn bogus() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Bogus".to_string()),
        Just("local".to_string()),
        Just("clusterip".to_string()),
        Just("Ĺocal".to_string()),
        Just("x".repeat(300)),
    ]
}

/// Names Kubernetes would refuse for a namespace, a Service or a port (not DNS labels).
fn bad_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("UPPER".to_string()),
        Just("under_score".to_string()),
        Just("-leading".to_string()),
        Just("trailing-".to_string()),
        Just("has space".to_string()),
        Just("has/slash".to_string()),
        Just("has.dot".to_string()),
        Just("quo\"te".to_string()),
        Just("new\nline".to_string()),
        Just("nul\u{0}byte".to_string()),
        Just("ünïcödé".to_string()),
        Just("日本語".to_string()),
        Just("emoji-😀".to_string()),
        Just("a".repeat(64)),
        Just("b".repeat(100_000)),
        "[a-z]{1,5}[^a-z0-9-]{1,3}[a-z]{0,5}",
    ]
}

/// Strings that change nothing: any unicode, long or short.
fn noise_string() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,20}",
        Just("x".repeat(10_000)),
        Just("\u{0}\u{1}\u{7f}\"'\\{}[]: -#&*!|>%@`".to_string()),
    ]
}

// ---------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Service,
    EndpointSlice,
    Node,
    ServiceCIDR,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::ServiceCIDR => "ServiceCIDR",
        }
    }
}

/// What a bad object's mutations lead to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// A piece of the object is unusable: warned of, the rest is used.
    Warns,
    /// The whole object is unusable (for a Service or slice: not even known by its
    /// name), warned of before anything else is read.
    Drops,
    /// A Service that exists (slices of it are not "of a missing Service") but is not
    /// proxied, warned of.
    Unproxied,
    /// A slice that contributes nothing, warned of only when its Service is proxied
    /// (slices of Services kproxy skips are not read).
    Empties,
    /// Skipped without a warning, as upstream skips it (not malformed).
    Silent,
    /// The wrong JSON type somewhere: the loader cannot read it (warned of); the API
    /// server would never serve it.
    Unreadable,
}

#[derive(Clone, Debug)]
struct Mutation {
    what: &'static str,
    edits: Vec<Edit>,
    effect: Effect,
}

fn m(what: &'static str, effect: Effect, edits: Vec<Edit>) -> Mutation {
    Mutation {
        what,
        edits,
        effect,
    }
}

/// A bad object: a valid base, local mutations (each warned of, the object still used),
/// then at most one terminal mutation (the object dropped, warned of or not).
#[derive(Clone, Debug)]
struct Bad {
    kind: Kind,
    base: Value,
    locals: Vec<Mutation>,
    terminal: Option<Mutation>,
    /// Name of another bad object of the same kind (and namespace) to take: a duplicate.
    duplicate_of: Option<String>,
    /// A slice's Service (`namespace/name`).
    target: Option<String>,
}

impl Bad {
    fn value(&self) -> Value {
        let mut v = self.base.clone();
        if let Some(name) = &self.duplicate_of {
            apply_edit(&mut v, &set("metadata|name", json!(name)));
        }
        for mu in self.locals.iter().chain(&self.terminal) {
            for e in &mu.edits {
                apply_edit(&mut v, e);
            }
        }
        v
    }

    fn effect(&self) -> Effect {
        match &self.terminal {
            Some(t) => t.effect,
            None => Effect::Warns,
        }
    }

    /// Whether some warning must name this object, in the cluster of `all` bad objects.
    fn must_warn(&self, all: &[Bad]) -> bool {
        if self.locals.is_empty() && self.terminal.is_none() && self.duplicate_of.is_none() {
            return false;
        }
        match self.effect() {
            Effect::Silent => false,
            Effect::Drops | Effect::Unreadable | Effect::Unproxied => true,
            Effect::Warns | Effect::Empties => {
                // A slice is read only when its Service is proxied (or missing: warned).
                let Some(target) = &self.target else {
                    return true;
                };
                let known: Vec<&Bad> = all
                    .iter()
                    .filter(|b| b.kind == Kind::Service)
                    .filter(|b| !matches!(b.effect(), Effect::Drops | Effect::Unreadable))
                    .filter(|b| object_key(Kind::Service, &b.value()) == *target)
                    .collect();
                !known
                    .iter()
                    .any(|b| matches!(b.effect(), Effect::Silent | Effect::Unproxied))
            }
        }
    }
}

/// How a warning names an object: `(kind, "namespace/name" or "name")`, read leniently.
fn object_key(kind: Kind, v: &Value) -> String {
    let meta = v.get("metadata");
    let name = match meta.and_then(|m| m.get("name")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    match kind {
        Kind::Service | Kind::EndpointSlice => {
            let ns = match meta.and_then(|m| m.get("namespace")) {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                _ => "default".to_string(),
            };
            format!("{ns}/{name}")
        }
        Kind::Node | Kind::ServiceCIDR => name,
    }
}

// ---- the good cluster ---------------------------------------------------------------

#[derive(Clone, Debug)]
struct GoodSvc {
    kind: u8,
    dual: bool,
    ports: u8,
    affinity: bool,
    etp_local: bool,
    itp_local: bool,
    external_ip: bool,
    lb: bool,
    endpoints: Vec<(u8, bool, Option<bool>)>,
    noise: Vec<Edit>,
}

fn good_service(i: usize, g: &GoodSvc) -> (Value, Vec<Value>) {
    let name = format!("g{i}");
    let v4 = format!("10.96.{}.{}", i / 250, i % 250 + 1);
    let v6 = format!("fd00:96::{:x}", i + 1);
    let type_ = ["ClusterIP", "NodePort", "LoadBalancer"][g.kind as usize % 3];
    let port_names = ["http", "dns", "metrics"];
    let ports: Vec<Value> = (0..g.ports.max(1))
        .map(|k| {
            let mut p = json!({
                "name": port_names[k as usize],
                "port": 80 + k as i64,
                "protocol": if k == 1 { "UDP" } else { "TCP" },
                "targetPort": 8080 + k as i64,
            });
            if type_ != "ClusterIP" {
                p["nodePort"] = json!(30000 + i as i64 * 4 + k as i64);
            }
            p
        })
        .collect();
    let mut spec = json!({
        "type": type_,
        "clusterIP": v4,
        "clusterIPs": if g.dual { json!([v4, v6]) } else { json!([v4]) },
        "ports": ports,
        "selector": {"app": name},
    });
    if g.affinity {
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 600}});
    }
    if g.etp_local && type_ != "ClusterIP" {
        spec["externalTrafficPolicy"] = json!("Local");
        if type_ == "LoadBalancer" {
            spec["healthCheckNodePort"] = json!(32000 + i as i64);
        }
    }
    if g.itp_local {
        spec["internalTrafficPolicy"] = json!("Local");
    }
    if g.external_ip {
        spec["externalIPs"] = json!([format!("203.0.113.{}", i + 1)]);
    }
    let mut svc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": GOOD_NS},
        "spec": spec,
    });
    if g.lb && type_ == "LoadBalancer" {
        svc["status"] =
            json!({"loadBalancer": {"ingress": [{"ip": format!("198.51.100.{}", i + 1)}]}});
        svc["spec"]["loadBalancerSourceRanges"] = json!(["192.0.2.0/24"]);
    }
    for e in &g.noise {
        apply_edit(&mut svc, e);
    }
    let slice_ports: Vec<Value> = (0..g.ports.max(1))
        .map(|k| {
            json!({"name": port_names[k as usize], "port": 8080 + k as i64,
                   "protocol": if k == 1 { "UDP" } else { "TCP" }})
        })
        .collect();
    let endpoints = |v6: bool| -> Vec<Value> {
        g.endpoints
            .iter()
            .enumerate()
            .map(|(j, (node, ready, serving))| {
                let addr = if v6 {
                    format!("fd00:244::{:x}:{:x}", i + 1, j + 1)
                } else {
                    format!("10.244.{}.{}", i % 250, j + 1)
                };
                let mut e = json!({
                    "addresses": [addr],
                    "conditions": {"ready": ready},
                    "nodeName": format!("node-{}", ["a", "b", "c"][*node as usize % 3]),
                });
                if let Some(s) = serving {
                    e["conditions"]["serving"] = json!(s);
                }
                e
            })
            .collect()
    };
    let slice = |family: &str, v6: bool| {
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-{}", family.to_lowercase()),
                "namespace": GOOD_NS,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": family,
            "endpoints": endpoints(v6),
            "ports": slice_ports,
        })
    };
    let mut slices = vec![slice("IPv4", false)];
    if g.dual {
        slices.push(slice("IPv6", true));
    }
    (svc, slices)
}

fn good_node() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": HOST, "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24", "fd00:244::/64"]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "192.168.0.10"},
            {"type": "InternalIP", "address": "fd00:192::10"},
            {"type": "Hostname", "address": HOST},
        ]},
    })
}

fn good_service_cidr() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"},
        "spec": {"cidrs": ["10.96.0.0/16", "fd00:96::/112"]},
    })
}

/// Changes that are no change: unknown fields, annotations, labels kproxy does not read,
/// odd strings where kproxy does not look.
fn noise_edits() -> impl Strategy<Value = Vec<Edit>> {
    let one = prop_oneof![
        (noise_string(), noise_string()).prop_map(|(k, v)| set(
            // (Not a number: the path would index a list.)
            &format!("metadata|annotations|x{}", k.replace('|', "")),
            json!(v)
        )),
        noise_string().prop_map(|v| set(
            "metadata|annotations|kubectl.kubernetes.io/last-applied-configuration",
            json!(v)
        )),
        noise_string().prop_map(|v| set("metadata|labels|app", json!(v))),
        noise_string().prop_map(|v| set("spec|unknownField", json!(v))),
        noise_string().prop_map(|v| set("someFutureField", json!({"nested": [v]}))),
        noise_string().prop_map(|v| set("spec|ports|0|appProtocol", json!(v))),
        noise_string().prop_map(|v| set("spec|ports|0|targetPort", json!(v))),
        noise_string().prop_map(|v| set("metadata|uid", json!(v))),
        Just(set(
            "metadata|managedFields",
            json!([{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}])
        )),
        Just(set("metadata|resourceVersion", json!("123456789"))),
    ];
    prop::collection::vec(one, 0..3)
}

fn good_svc_strategy() -> impl Strategy<Value = GoodSvc> {
    (
        (0u8..3, any::<bool>(), 1u8..4, prop::bool::weighted(0.3)),
        (prop::bool::weighted(0.3), prop::bool::weighted(0.2)),
        (any::<bool>(), any::<bool>()),
        prop::collection::vec(
            (0u8..3, any::<bool>(), prop::option::of(any::<bool>())),
            0..5,
        ),
        noise_edits(),
    )
        .prop_map(
            |(
                (kind, dual, ports, affinity),
                (etp_local, itp_local),
                (external_ip, lb),
                endpoints,
                noise,
            )| {
                GoodSvc {
                    kind,
                    dual,
                    ports,
                    affinity,
                    etp_local,
                    itp_local,
                    external_ip,
                    lb,
                    endpoints,
                    noise,
                }
            },
        )
}

// ---- bad objects ----------------------------------------------------------------------

/// A valid Service in the bad namespace, with addresses and ports no good object uses.
fn bad_service_base(k: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": format!("b{k}"), "namespace": BAD_NS},
        "spec": {
            "type": "NodePort",
            "clusterIP": format!("10.97.{}.1", k % 250),
            "clusterIPs": [format!("10.97.{}.1", k % 250)],
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080,
                 "nodePort": 31000 + k as i64 * 4},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353,
                 "nodePort": 31001 + k as i64 * 4},
            ],
        },
    })
}

fn bad_slice_base(k: usize, namespace: &str, service: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("x{k}-bad"),
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [format!("10.245.{}.1", k % 250)], "conditions": {"ready": true},
             "nodeName": HOST},
            {"addresses": [format!("10.245.{}.2", k % 250)], "nodeName": "node-b"},
        ],
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "dns", "port": 5353, "protocol": "UDP"},
        ],
    })
}

fn bad_service_cidr_base(k: usize) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": {"name": format!("bad-cidr-{k}")},
        "spec": {"cidrs": ["10.96.0.0/16"]},
    })
}

/// Mutations of a Service after which it is still proxied (each warned of).
fn service_local(k: usize) -> impl Strategy<Value = Mutation> {
    let pool_v4b = format!("10.97.{}.3", k % 250);
    prop_oneof![
        bogus().prop_map(|t| m(
            "unknown type",
            Effect::Warns,
            vec![set("spec|type", json!(t))]
        )),
        bad_ip().prop_map(move |ip| m(
            "a bad second cluster IP",
            Effect::Warns,
            vec![set(
                "spec|clusterIPs",
                json!([format!("10.97.{}.1", k % 250), ip])
            )]
        )),
        Just(m(
            "two IPv4 cluster IPs",
            Effect::Warns,
            vec![set(
                "spec|clusterIPs",
                json!([format!("10.97.{}.1", k % 250), pool_v4b])
            )]
        )),
        (0usize..2, bad_port_int()).prop_map(|(i, p)| m(
            "bad port",
            Effect::Warns,
            vec![set(&format!("spec|ports|{i}|port"), json!(p))]
        )),
        (0usize..2, bad_protocol()).prop_map(|(i, p)| m(
            "bad protocol",
            Effect::Warns,
            vec![set(&format!("spec|ports|{i}|protocol"), json!(p))]
        )),
        (
            0usize..2,
            bad_port_int().prop_filter("0 means none", |p| *p != 0)
        )
            .prop_map(|(i, p)| m(
                "bad nodePort",
                Effect::Warns,
                vec![set(&format!("spec|ports|{i}|nodePort"), json!(p))]
            )),
        Just(m(
            "duplicate port names",
            Effect::Warns,
            vec![set("spec|ports|1|name", json!("http"))]
        )),
        Just(m(
            "duplicate port numbers",
            Effect::Warns,
            vec![
                set("spec|ports|1|port", json!(80)),
                set("spec|ports|1|protocol", json!("TCP"))
            ]
        )),
        (0usize..2, bad_name()).prop_map(|(i, n)| m(
            "bad port name",
            Effect::Warns,
            vec![set(&format!("spec|ports|{i}|name"), json!(n))]
        )),
        bad_ip().prop_map(|ip| m(
            "bad externalIP",
            Effect::Warns,
            vec![set("spec|externalIPs", json!([ip]))]
        )),
        // (An empty ip is an unset one: a hostname-only ingress.)
        bad_ip()
            .prop_filter("set", |ip| !ip.is_empty())
            .prop_map(|ip| m(
                "bad LB ingress IP",
                Effect::Warns,
                vec![set("status|loadBalancer|ingress", json!([{"ip": ip}]))]
            )),
        bogus().prop_map(move |mode| m(
            "unknown ipMode",
            Effect::Warns,
            vec![set(
                "status|loadBalancer|ingress",
                json!([{"ip": format!("198.51.100.{}", 100 + k % 100), "ipMode": mode}])
            )]
        )),
        bad_cidr().prop_map(|c| m(
            "bad source range",
            Effect::Warns,
            vec![set("spec|loadBalancerSourceRanges", json!([c]))]
        )),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(86_401),
            Just(i32::MIN as i64),
            Just(i32::MAX as i64)
        ]
        .prop_map(|t| m(
            "bad affinity timeout",
            Effect::Warns,
            vec![
                set("spec|sessionAffinity", json!("ClientIP")),
                set(
                    "spec|sessionAffinityConfig|clientIP|timeoutSeconds",
                    json!(t)
                ),
            ]
        )),
        bogus().prop_map(|a| m(
            "unknown sessionAffinity",
            Effect::Warns,
            vec![set("spec|sessionAffinity", json!(a))]
        )),
        bogus().prop_map(|p| m(
            "unknown externalTrafficPolicy",
            Effect::Warns,
            vec![set("spec|externalTrafficPolicy", json!(p))]
        )),
        bogus().prop_map(|p| m(
            "unknown internalTrafficPolicy",
            Effect::Warns,
            vec![set("spec|internalTrafficPolicy", json!(p))]
        )),
        bad_port_int()
            .prop_filter("0 means none", |p| *p != 0)
            .prop_map(|p| m(
                "bad healthCheckNodePort",
                Effect::Warns,
                vec![
                    set("spec|type", json!("LoadBalancer")),
                    set("spec|externalTrafficPolicy", json!("Local")),
                    set("spec|healthCheckNodePort", json!(p)),
                ]
            )),
        (1usize..400).prop_map(|n| m(
            "absurdly many ports, all the same",
            Effect::Warns,
            vec![set(
                "spec|ports",
                Value::Array(
                    (0..n + 1)
                        .map(|i| json!({"name": format!("p{i}"), "port": 80, "protocol": "TCP"}))
                        .collect()
                )
            ),]
        )),
        Just(m("no ports", Effect::Warns, vec![remove("spec|ports")])),
        Just(m(
            "empty ports",
            Effect::Warns,
            vec![set("spec|ports", json!([]))]
        )),
    ]
}

/// Mutations after which a Service is not proxied at all.
fn service_terminal(k: usize) -> impl Strategy<Value = Mutation> {
    let _ = k;
    prop_oneof![
        // Dropped, warned of.
        Just(m("no name", Effect::Drops, vec![remove("metadata|name")])),
        Just(m(
            "null name",
            Effect::Drops,
            vec![set("metadata|name", Value::Null)]
        )),
        Just(m(
            "empty name",
            Effect::Drops,
            vec![set("metadata|name", json!(""))]
        )),
        bad_name().prop_map(|n| m(
            "invalid name",
            Effect::Drops,
            vec![set("metadata|name", json!(n))]
        )),
        bad_name().prop_map(|n| m(
            "invalid namespace",
            Effect::Drops,
            vec![set("metadata|namespace", json!(n))]
        )),
        bad_ip()
            .prop_filter("not headless", |ip| ip != "None" && !ip.is_empty())
            .prop_map(|ip| m(
                "bad cluster IP",
                Effect::Unproxied,
                vec![
                    set("spec|clusterIP", json!(ip)),
                    set("spec|clusterIPs", json!([ip]))
                ]
            )),
        bad_ip()
            .prop_filter("not headless", |ip| ip != "None" && !ip.is_empty())
            .prop_map(|ip| m(
                "bad clusterIP, no clusterIPs",
                Effect::Unproxied,
                vec![set("spec|clusterIP", json!(ip)), remove("spec|clusterIPs")]
            )),
        // Skipped without a word, as upstream does.
        Just(m("no spec", Effect::Silent, vec![remove("spec")])),
        Just(m(
            "null spec",
            Effect::Silent,
            vec![set("spec", Value::Null)]
        )),
        Just(m(
            "no cluster IP yet",
            Effect::Silent,
            vec![remove("spec|clusterIP"), remove("spec|clusterIPs")]
        )),
        Just(m(
            "headless",
            Effect::Silent,
            vec![
                set("spec|clusterIP", json!("None")),
                set("spec|clusterIPs", json!(["None"]))
            ]
        )),
        Just(m(
            "ExternalName",
            Effect::Silent,
            vec![
                set("spec|type", json!("ExternalName")),
                set("spec|externalName", json!("example.com"))
            ]
        )),
        Just(m(
            "another proxy's",
            Effect::Silent,
            vec![set(
                "metadata|labels|service.kubernetes.io/service-proxy-name",
                json!("other")
            )]
        )),
        // The wrong JSON types.
        prop_oneof![Just(json!("spec")), Just(json!(42)), Just(json!([]))].prop_map(|v| m(
            "spec of the wrong type",
            Effect::Unreadable,
            vec![set("spec", v)]
        )),
        (0usize..2, not_an_int32()).prop_map(|(i, v)| m(
            "port of the wrong type",
            Effect::Unreadable,
            vec![set(&format!("spec|ports|{i}|port"), v)]
        )),
        Just(m(
            "null port",
            Effect::Unreadable,
            vec![set("spec|ports|0|port", Value::Null)]
        )),
        Just(m(
            "ports not a list",
            Effect::Unreadable,
            vec![set("spec|ports", json!({"port": 80}))]
        )),
        Just(m(
            "clusterIPs not a list",
            Effect::Unreadable,
            vec![set("spec|clusterIPs", json!("10.97.0.1"))]
        )),
        Just(m(
            "externalIPs a mapping",
            Effect::Unreadable,
            vec![set("spec|externalIPs", json!({}))]
        )),
        Just(m(
            "name a number",
            Effect::Unreadable,
            vec![set("metadata|name", json!(42))]
        )),
        Just(m(
            "labels a list",
            Effect::Unreadable,
            vec![set("metadata|labels", json!(["a"]))]
        )),
        Just(m(
            "annotation value a number",
            Effect::Unreadable,
            vec![set("metadata|annotations|a", json!(1))]
        )),
        Just(m(
            "timeout a string",
            Effect::Unreadable,
            vec![set(
                "spec|sessionAffinityConfig|clientIP|timeoutSeconds",
                json!("600")
            )]
        )),
        Just(m(
            "status a number",
            Effect::Unreadable,
            vec![set("status", json!(7))]
        )),
        Just(m(
            "protocol a number",
            Effect::Unreadable,
            vec![set("spec|ports|0|protocol", json!(6))]
        )),
    ]
}

/// Mutations of a slice of a bad Service after which it is still used.
fn slice_local() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0usize..2).prop_map(|j| m("no addresses", Effect::Warns,
            vec![set(&format!("endpoints|{j}|addresses"), json!([]))])),
        (0usize..2).prop_map(|j| m("no addresses field (read as none)", Effect::Warns,
            vec![remove(&format!("endpoints|{j}|addresses"))])),
        (0usize..2, bad_ip()).prop_map(|(j, ip)| m("bad address", Effect::Warns,
            vec![set(&format!("endpoints|{j}|addresses"), json!([ip]))])),
        (0usize..2).prop_map(|j| m("address of the other family", Effect::Warns,
            vec![set(&format!("endpoints|{j}|addresses"), json!([format!("fd00:245::{j}")]))])),
        (0usize..2, bad_port_int()).prop_map(|(i, p)| m("bad port", Effect::Warns,
            vec![set(&format!("ports|{i}|port"), json!(p))])),
        (0usize..2).prop_map(|i| m("null port", Effect::Warns, vec![set(&format!("ports|{i}|port"), Value::Null)])),
        (0usize..2).prop_map(|i| m("no port name", Effect::Warns, vec![remove(&format!("ports|{i}|name"))])),
        (0usize..2, bad_name()).prop_map(|(i, n)| m("port name matching nothing", Effect::Warns,
            vec![set(&format!("ports|{i}|name"), json!(n))])),
        (0usize..2, bad_protocol()).prop_map(|(i, p)| m("bad protocol", Effect::Warns,
            vec![set(&format!("ports|{i}|protocol"), json!(p))])),
        (1usize..3000).prop_map(|n| m("many endpoints, one bad", Effect::Warns, vec![set("endpoints",
            Value::Array((0..n).map(|i| json!({"addresses": [format!("10.245.{}.{}", 250 + i / 65536 % 6, i % 256)]}))
                .chain(std::iter::once(json!({"addresses": ["bad"]}))).collect()))])),
    ]
}

/// Mutations after which a slice contributes nothing, whatever Service it names.
fn slice_terminal() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop_oneof![
            Just("IPv5"),
            Just(""),
            Just("ipv4"),
            Just("IP"),
            Just("ĪPv4")
        ]
        .prop_map(|t| m(
            "unknown addressType",
            Effect::Drops,
            vec![set("addressType", json!(t))]
        )),
        Just(m(
            "no service-name label",
            Effect::Drops,
            vec![remove("metadata|labels")]
        )),
        Just(m(
            "empty service-name label",
            Effect::Drops,
            vec![set("metadata|labels|kubernetes.io/service-name", json!(""))]
        )),
        Just(m("no name", Effect::Drops, vec![remove("metadata|name")])),
        Just(m(
            "every port unusable",
            Effect::Empties,
            vec![set(
                "ports",
                json!([{"name": "nomatch", "port": 8080, "protocol": "TCP"}, {"name": "http", "port": 0}])
            )]
        )),
        bad_ip().prop_map(|ip| m(
            "every address unusable",
            Effect::Empties,
            vec![set(
                "endpoints",
                json!([{"addresses": [ip]}, {"addresses": []}, {"addresses": ["fd00:245::1"]}])
            )]
        )),
        Just(m(
            "FQDN",
            Effect::Silent,
            vec![set("addressType", json!("FQDN"))]
        )),
        // The wrong JSON types.
        prop_oneof![Just(json!(4)), Just(Value::Null)].prop_map(|v| m(
            "addressType of the wrong type",
            Effect::Unreadable,
            vec![set("addressType", v)]
        )),
        Just(m(
            "no addressType (read as empty)",
            Effect::Drops,
            vec![remove("addressType")]
        )),
        Just(m(
            "endpoints a string",
            Effect::Unreadable,
            vec![set("endpoints", json!("10.245.0.1"))]
        )),
        Just(m(
            "addresses a string",
            Effect::Unreadable,
            vec![set("endpoints|0|addresses", json!("10.245.0.1"))]
        )),
        Just(m(
            "ready a string",
            Effect::Unreadable,
            vec![set("endpoints|0|conditions|ready", json!("yes"))]
        )),
        not_an_int32().prop_map(|v| m(
            "port of the wrong type",
            Effect::Unreadable,
            vec![set("ports|0|port", v)]
        )),
        Just(m(
            "zone hint a number",
            Effect::Unreadable,
            vec![set("endpoints|0|hints|forZones", json!([{"name": 1}]))]
        )),
    ]
}

/// Mutations of the own Node after which everything read from it is what the good Node
/// gives (bad entries appended after good ones).
fn node_local() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        bad_ip().prop_map(|ip| m(
            "bad InternalIP appended",
            Effect::Warns,
            vec![set(
                "status|addresses|3",
                json!({"type": "InternalIP", "address": ip})
            )]
        )),
        bad_ip().prop_map(|ip| m(
            "bad ExternalIP appended",
            Effect::Warns,
            vec![set(
                "status|addresses|3",
                json!({"type": "ExternalIP", "address": ip})
            )]
        )),
        bad_cidr().prop_map(|c| m(
            "bad pod CIDR appended",
            Effect::Warns,
            vec![set("spec|podCIDRs|2", json!(c))]
        )),
    ]
}

fn node_terminal() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        Just(m(
            "addresses a string",
            Effect::Unreadable,
            vec![set("status|addresses", json!("192.168.0.10"))]
        )),
        Just(m(
            "podCIDRs a string",
            Effect::Unreadable,
            vec![set("spec|podCIDRs", json!("10.244.0.0/24"))]
        )),
        Just(m(
            "address type a number",
            Effect::Unreadable,
            vec![set("status|addresses|0|type", json!(5))]
        )),
    ]
}

fn service_cidr_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        bad_cidr().prop_map(|c| m(
            "bad CIDR",
            Effect::Drops,
            vec![set("spec|cidrs", json!([c]))]
        )),
        (bad_cidr(), bad_cidr()).prop_map(|(a, b)| m(
            "two bad CIDRs",
            Effect::Drops,
            vec![set("spec|cidrs", json!([a, b]))]
        )),
        Just(m(
            "cidrs a string",
            Effect::Unreadable,
            vec![set("spec|cidrs", json!("10.96.0.0/16"))]
        )),
        Just(m(
            "cidrs numbers",
            Effect::Unreadable,
            vec![set("spec|cidrs", json!([10, 96]))]
        )),
        Just(m("no spec", Effect::Silent, vec![remove("spec")])),
    ]
}

#[derive(Clone, Debug)]
struct Generated {
    good_services: Vec<GoodSvc>,
    bad: Vec<Bad>,
    /// The own Node replaced by a mutated one, if any.
    node: Option<Bad>,
    /// Another node (not ours), with garbage: ignored.
    other_node: Option<Vec<Edit>>,
}

fn bad_service(k: usize) -> impl Strategy<Value = Bad> {
    (
        prop::collection::vec(service_local(k), 0..3),
        prop::option::weighted(0.5, service_terminal(k)),
        prop::option::weighted(0.15, 0..k.max(1)),
    )
        .prop_filter("at least one change", |(l, t, _)| {
            !l.is_empty() || t.is_some()
        })
        .prop_map(move |(locals, terminal, dup)| Bad {
            kind: Kind::Service,
            base: bad_service_base(k),
            locals,
            terminal,
            duplicate_of: dup.filter(|j| *j < k).map(|j| format!("b{j}")),
            target: None,
        })
}

/// A bad slice: of a bad Service (any mutation), of a missing one, or of a good Service
/// (then it must contribute nothing: a terminal mutation).
fn bad_slice(k: usize, bad_services: usize, good_services: usize) -> impl Strategy<Value = Bad> {
    let target = prop_oneof![
        (0..bad_services.max(1)).prop_map(|j| (BAD_NS.to_string(), format!("b{j}"), false)),
        Just((BAD_NS.to_string(), format!("nope{k}"), false)),
        (0..good_services.max(1)).prop_map(|j| (GOOD_NS.to_string(), format!("g{j}"), true)),
    ];
    (
        target,
        prop::collection::vec(slice_local(), 0..3),
        slice_terminal(),
        any::<bool>(),
    )
        .prop_map(move |((ns, svc, good), locals, terminal, with_terminal)| {
            let missing = svc.starts_with("nope");
            let terminal = (good || with_terminal || missing).then_some(terminal);
            let mut locals = if good { Vec::new() } else { locals };
            if missing && terminal.is_none() && locals.is_empty() {
                locals.push(m("no such Service", Effect::Drops, Vec::new()));
            }
            let mut b = Bad {
                kind: Kind::EndpointSlice,
                base: bad_slice_base(k, &ns, &svc),
                locals,
                terminal,
                duplicate_of: None,
                target: Some(format!("{ns}/{svc}")),
            };
            // A slice of a missing Service is warned of whatever else is wrong with it,
            // unless it cannot even be read (then the loader names it).
            if missing {
                if let Some(t) = &b.terminal {
                    if t.effect == Effect::Silent {
                        b.terminal = None;
                        b.locals
                            .push(m("no such Service", Effect::Drops, Vec::new()));
                    }
                }
            }
            b
        })
}

fn generated() -> impl Strategy<Value = Generated> {
    (1usize..6, 0usize..6, 0usize..5, 0usize..2)
        .prop_flat_map(|(n_good, n_bad_svc, n_bad_slice, n_bad_cidr)| {
            let bad_services: Vec<_> = (0..n_bad_svc).map(|k| bad_service(k).boxed()).collect();
            let bad_slices: Vec<_> = (0..n_bad_slice)
                .map(|k| bad_slice(k, n_bad_svc, n_good).boxed())
                .collect();
            let bad_cidrs: Vec<_> = (0..n_bad_cidr)
                .map(|k| {
                    service_cidr_mutation()
                        .prop_map(move |mu| Bad {
                            kind: Kind::ServiceCIDR,
                            base: bad_service_cidr_base(k),
                            locals: Vec::new(),
                            terminal: Some(mu),
                            duplicate_of: None,
                            target: None,
                        })
                        .boxed()
                })
                .collect();
            let node = prop::option::weighted(
                0.3,
                (
                    prop::collection::vec(node_local(), 0..3),
                    prop::option::weighted(0.3, node_terminal()),
                )
                    .prop_filter("a change", |(l, t)| !l.is_empty() || t.is_some())
                    .prop_map(|(locals, terminal)| Bad {
                        kind: Kind::Node,
                        base: good_node(),
                        locals,
                        terminal,
                        duplicate_of: None,
                        target: None,
                    }),
            );
            (
                prop::collection::vec(good_svc_strategy(), n_good),
                bad_services,
                bad_slices,
                bad_cidrs,
                node,
                prop::option::weighted(0.2, noise_edits()),
            )
        })
        .prop_map(|(good_services, s, sl, c, node, other_node)| Generated {
            good_services,
            bad: s.into_iter().chain(sl).chain(c).collect(),
            node,
            other_node,
        })
}

// ---------------------------------------------------------------------------------------
// The cluster as documents
// ---------------------------------------------------------------------------------------

struct Docs {
    /// `(kind, value, good)`, in a fixed order.
    docs: Vec<(Kind, Value, bool)>,
}

impl Generated {
    fn docs(&self, with_bad: bool) -> Docs {
        let mut docs = Vec::new();
        let own_node = match (&self.node, with_bad) {
            (Some(n), true) => (n.value(), false),
            _ => (good_node(), true),
        };
        docs.push((Kind::Node, own_node.0, own_node.1));
        if let (Some(edits), true) = (&self.other_node, with_bad) {
            let mut v = good_node();
            v["metadata"]["name"] = json!("node-b");
            for e in edits {
                apply_edit(&mut v, e);
            }
            docs.push((Kind::Node, v, false));
        }
        docs.push((Kind::ServiceCIDR, good_service_cidr(), true));
        for (i, g) in self.good_services.iter().enumerate() {
            let (svc, slices) = good_service(i, g);
            docs.push((Kind::Service, svc, true));
            docs.extend(slices.into_iter().map(|s| (Kind::EndpointSlice, s, true)));
        }
        if with_bad {
            docs.extend(self.bad.iter().map(|b| (b.kind, b.value(), false)));
        }
        Docs { docs }
    }

    /// The objects the result must equal: the good ones, without the own Node when its
    /// replacement cannot be read.
    fn oracle_docs(&self) -> Docs {
        let mut d = self.docs(false);
        if let Some(n) = &self.node {
            if n.effect() == Effect::Unreadable {
                d.docs.retain(|(k, _, _)| *k != Kind::Node);
            }
        }
        d
    }

    /// Every bad object that must be named by a warning, with the name.
    fn must_warn(&self) -> Vec<(Kind, String, &'static str)> {
        let mut out: Vec<(Kind, String, &'static str)> = self
            .bad
            .iter()
            .filter(|b| b.must_warn(&self.bad))
            .map(|b| (b.kind, object_key(b.kind, &b.value()), describe(b)))
            .collect();
        if let Some(n) = &self.node {
            if n.must_warn(&[]) {
                out.push((Kind::Node, HOST.to_string(), describe(n)));
            }
        }
        out
    }
}

fn describe(b: &Bad) -> &'static str {
    b.terminal
        .as_ref()
        .or(b.locals.last())
        .map_or("duplicate name", |m| m.what)
}

impl Docs {
    fn json_stream(&self) -> String {
        self.docs
            .iter()
            .map(|(_, v, _)| serde_json::to_string_pretty(v).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn json_list(&self) -> String {
        let items: Vec<Value> = self.docs.iter().map(|(_, v, _)| v.clone()).collect();
        serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": items})).unwrap()
    }

    fn yaml(&self) -> String {
        self.docs
            .iter()
            .map(|(_, v, _)| serde_yaml_ng::to_string(v).unwrap())
            .collect::<Vec<_>>()
            .join("---\n")
    }

    /// The objects as the API server would serve them: only those of the right types.
    fn api_objects(&self) -> Objects {
        let mut o = Objects::default();
        for (kind, v, _) in &self.docs {
            match kind {
                Kind::Service => {
                    if let Ok(x) = serde_json::from_value::<Service>(v.clone()) {
                        o.services.push(x)
                    }
                }
                Kind::EndpointSlice => {
                    if let Ok(x) = serde_json::from_value::<EndpointSlice>(v.clone()) {
                        o.slices.push(x)
                    }
                }
                Kind::Node => {
                    if let Ok(x) = serde_json::from_value::<Node>(v.clone()) {
                        o.nodes.push(x)
                    }
                }
                Kind::ServiceCIDR => {
                    if let Ok(x) = serde_json::from_value::<ServiceCIDR>(v.clone()) {
                        o.service_cidrs.push(x)
                    }
                }
            }
        }
        o
    }
}

/// The objects as the daemon's informer cache keeps and hands them to the build.
fn through_compact_store(o: &Objects) -> Objects {
    let mut i = Interner::default();
    Objects {
        services: o
            .services
            .iter()
            .map(|s| ServiceLite::from_k8s(s.clone(), &mut i).to_k8s())
            .collect(),
        slices: o
            .slices
            .iter()
            .map(|s| SliceLite::from_k8s(s.clone(), &mut i).to_k8s())
            .collect(),
        nodes: o.nodes.iter().cloned().map(prune_node).collect(),
        service_cidrs: o
            .service_cidrs
            .iter()
            .cloned()
            .map(prune_service_cidr)
            .collect(),
    }
}

/// One build of everything, and builds of runs of `n` services concatenated (what
/// `render -o nft`, `apply` and the daemon's full syncs do).
fn build_in_runs(o: &Objects, n: usize) -> (Model, Vec<Warning>) {
    let mut model = Model::default();
    let mut warnings = Vec::new();
    for chunk in o.clone().into_chunks(n) {
        let (m, w) = build(&chunk, &settings());
        warnings.extend(w);
        if model.families.is_empty() {
            model = m;
        } else {
            for (into, from) in model.families.iter_mut().zip(m.families) {
                assert_eq!(into.settings, from.settings, "node-level settings per run");
                into.services.extend(from.services);
            }
        }
    }
    warnings.sort();
    warnings.dedup();
    (model, warnings)
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// The good services of a model (namespace `good`), per family, with the family settings.
fn good_part(m: &Model) -> Vec<(String, Vec<kproxy::model::ServicePort>)> {
    m.families
        .iter()
        .map(|f| {
            (
                format!("{:?}", f.settings),
                f.services
                    .iter()
                    .filter(|sp| sp.name.namespace == GOOD_NS)
                    .cloned()
                    .collect(),
            )
        })
        .collect()
}

fn in_bad_pool(v: &NftValue) -> bool {
    match v {
        NftValue::Addr(ip) => {
            let s = ip.to_string();
            s.starts_with("10.245.") || s.starts_with("10.97.") || s.starts_with("fd00:245:")
        }
        _ => false,
    }
}

/// Everything of `good` is in `all` unchanged; whatever else `all` holds belongs to a bad
/// object (a chain named after one, an element commented with one, a hairpin element of
/// a bad endpoint, a shard map of bad lists only).
fn check_superset(good: &Table, all: &Table) -> Result<(), String> {
    for (name, c) in &good.chains {
        if all.chains.get(name) != Some(c) {
            return Err(format!("chain {name} changed: {:?}", all.chains.get(name)));
        }
    }
    for (name, s) in &all.chains {
        if !good.chains.contains_key(name) && !s.name.contains("-bad/") {
            return Err(format!("chain {name} added, not a bad service's"));
        }
    }
    for (name, s) in &good.sets {
        let Some(a) = all.sets.get(name) else {
            return Err(format!("set {name} removed"));
        };
        let mut decl = a.clone();
        decl.elements = s.elements.clone();
        if &decl != s {
            return Err(format!("set {name} declared differently"));
        }
        for e in s.elements.iter() {
            if a.elements.get(&e.key) != Some(e) {
                return Err(format!(
                    "set {name}: element {:?} changed to {:?}",
                    e,
                    a.elements.get(&e.key)
                ));
            }
        }
    }
    for (name, a) in &all.sets {
        let g = good.sets.get(name);
        for e in a.elements.iter() {
            if g.is_some_and(|g| g.elements.contains_key(&e.key)) {
                continue;
            }
            let bad_comment = e.comment.as_deref().is_some_and(|c| c.starts_with("bad/"));
            let bad_key = e.key.iter().any(in_bad_pool);
            if !bad_comment && !bad_key {
                return Err(format!(
                    "set {name}: element {e:?} added, not a bad service's"
                ));
            }
        }
    }
    Ok(())
}

/// Names nft can load, all within the kernel's limit.
fn check_names(rs: &Ruleset) -> Result<(), String> {
    for t in &rs.tables {
        for name in t.chains.keys().chain(t.sets.keys()) {
            if !valid_name(name) {
                return Err(format!("invalid name {name:?}"));
            }
        }
    }
    Ok(())
}

/// Loads `text` as the file `file`: the objects and every warning line (loader's and
/// the build's).
fn load_and_build(file: &str, text: &str) -> (Model, Vec<Warning>, Vec<String>) {
    let loaded = load_str(file, text);
    let (model, warnings) = build(&loaded.objects, &settings());
    (model, warnings, loaded.warnings)
}

/// Whether some warning names `kind key`.
/// Whether some warning names `kind key` (the loader calls a nameless object
/// `<unnamed>`, the build leaves the name empty).
fn named(kind: Kind, key: &str, model_warnings: &[Warning], loader: &[String]) -> bool {
    let object = format!("{} {key}", kind.name());
    let loader_object = match key.strip_suffix('/') {
        Some(ns) => format!("{} {ns}/<unnamed>", kind.name()),
        None if key.is_empty() => format!("{} <unnamed>", kind.name()),
        None => object.clone(),
    };
    model_warnings.iter().any(|w| w.object == object)
        || loader.iter().any(|w| {
            w.contains(&format!(": {loader_object}: "))
                || w.ends_with(&format!(": {loader_object}"))
        })
}

fn check_cluster(g: &Generated) -> Result<(), TestCaseError> {
    let all = g.docs(true);
    let oracle = g.oracle_docs();

    // Manifests, three ways.
    let (m_json, w_json, l_json) = load_and_build("cluster.json", &all.json_stream());
    let (m_list, w_list, _) = load_and_build("list.json", &all.json_list());
    let (m_yaml, w_yaml, l_yaml) = load_and_build("cluster.yaml", &all.yaml());
    prop_assert_eq!(&m_json, &m_list, "JSON stream vs List");
    prop_assert_eq!(&w_json, &w_list);
    prop_assert_eq!(&m_json, &m_yaml, "JSON vs YAML");
    prop_assert_eq!(&w_json, &w_yaml);
    prop_assert_eq!(
        l_json.len(),
        l_yaml.len(),
        "loader warnings: {:?} / {:?}",
        l_json,
        l_yaml
    );

    // The good objects alone.
    let (m_good, w_good, l_good) = load_and_build("good.json", &oracle.json_stream());
    prop_assert!(l_good.is_empty(), "good objects: {:?}", l_good);
    prop_assert!(
        w_good.iter().all(|w| w.object.starts_with("Node ")),
        "good objects warned of: {:?}",
        w_good
    );

    // Other services untouched: the model...
    prop_assert_eq!(
        good_part(&m_json),
        good_part(&m_good),
        "good services' model"
    );
    // ... and the rules: a renderer holding the good cluster adds only the bad objects'.
    let mut r = Renderer::new();
    let rs_good = r.full(&m_good);
    let rs_all = r.full(&m_json);
    for t in &rs_good.tables {
        let a = rs_all.table(t.family).expect("family");
        if let Err(e) = check_superset(t, a) {
            return Err(TestCaseError::fail(format!("{:?}: {e}", t.family)));
        }
    }
    check_names(&rs_all).map_err(TestCaseError::fail)?;
    // The validating fake kernel takes it, from nothing and from the good ruleset.
    let mut fake = FakeBackend::new();
    let tx = diff(&Ruleset::default(), &rs_all, &DiffOptions::default()).tx;
    if let Err(e) = fake.apply(&tx) {
        return Err(TestCaseError::fail(format!("fake kernel refused: {e}")));
    }
    let mut fake = FakeBackend::with_state(rs_good.clone());
    let tx = diff(&rs_good, &rs_all, &DiffOptions::default()).tx;
    if let Err(e) = fake.apply(&tx) {
        return Err(TestCaseError::fail(format!(
            "fake kernel refused the update: {e}"
        )));
    }

    // Warnings name every bad object, and no good one.
    for (kind, key, what) in g.must_warn() {
        prop_assert!(
            named(kind, &key, &w_json, &l_json),
            "{} {} ({}) not named by a warning:\n{:#?}\n{:#?}",
            kind.name(),
            key,
            what,
            w_json,
            l_json
        );
    }
    for w in &w_json {
        prop_assert!(
            !w.object.starts_with(&format!("Service {GOOD_NS}/"))
                && !(w.object.starts_with(&format!("EndpointSlice {GOOD_NS}/g"))),
            "a good object warned of: {}",
            w
        );
    }

    // The daemon's way: an incremental update of a renderer that held the good cluster
    // (every service named as changed), committed on top of the good ruleset, holds what
    // a full render holds.
    let mut inc = Renderer::new();
    inc.full(&m_good);
    let changed: BTreeSet<ServiceKey> = m_json
        .families
        .iter()
        .chain(&m_good.families)
        .flat_map(|f| &f.services)
        .map(|sp| ServiceKey::new(sp.name.namespace.clone(), sp.name.name.clone()))
        .collect();
    if let Some(partial) = inc.update(&m_json, &changed) {
        let tx = diff(&partial.before, &partial.after, &DiffOptions::default()).tx;
        let mut fake = FakeBackend::with_state(rs_good.clone());
        if let Err(e) = fake.apply(&tx) {
            return Err(TestCaseError::fail(format!(
                "fake kernel refused the partial update: {e}"
            )));
        }
        let rest = diff(fake.state(), &inc.ruleset(), &DiffOptions::default()).tx;
        prop_assert!(
            rest.is_empty(),
            "partial update left {} ops",
            rest.ops.len()
        );
        for t in &rs_good.tables {
            let a = fake.state().table(t.family).expect("family");
            if let Err(e) = check_superset(t, a) {
                return Err(TestCaseError::fail(format!(
                    "partial update, {:?}: {e}",
                    t.family
                )));
            }
        }
    }

    // The API path: the same objects (those of the right types) through the compact store.
    let api = all.api_objects();
    let (m_api, w_api) = build(&api, &settings());
    let (m_compact, w_compact) = build(&through_compact_store(&api), &settings());
    prop_assert_eq!(&m_api, &m_compact, "compact store changed the model");
    prop_assert_eq!(&w_api, &w_compact, "compact store changed the warnings");
    prop_assert_eq!(good_part(&m_api), good_part(&m_good));
    // Builds in runs.
    for n in [1, 3] {
        let (m_runs, w_runs) = build_in_runs(&api, n);
        prop_assert_eq!(&m_runs, &m_api, "build in runs of {}", n);
        prop_assert_eq!(&w_runs, &w_api, "warnings in runs of {}", n);
    }
    Ok(())
}

/// Edits at random places of a manifest's text: a byte removed, a character inserted, a
/// line duplicated, moved or indented, the text cut short.
#[derive(Clone, Debug)]
enum TextEdit {
    Remove(usize),
    Insert(usize, char),
    DuplicateLine(usize),
    Indent(usize, usize),
    Truncate(usize),
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    let special = prop_oneof![
        Just(':'),
        Just('-'),
        Just(' '),
        Just('\n'),
        Just('\t'),
        Just('"'),
        Just('\''),
        Just('['),
        Just(']'),
        Just('{'),
        Just('}'),
        Just('#'),
        Just('&'),
        Just('*'),
        Just('!'),
        Just('|'),
        Just('>'),
        Just(','),
        Just('\\'),
        Just('\u{0}'),
        Just('ü'),
        any::<char>(),
    ];
    prop_oneof![
        any::<usize>().prop_map(TextEdit::Remove),
        (any::<usize>(), special).prop_map(|(at, c)| TextEdit::Insert(at, c)),
        any::<usize>().prop_map(TextEdit::DuplicateLine),
        (any::<usize>(), 1usize..6).prop_map(|(at, n)| TextEdit::Indent(at, n)),
        any::<usize>().prop_map(TextEdit::Truncate),
    ]
}

fn apply_text_edit(text: &mut String, e: &TextEdit) {
    let boundary = |t: &String, at: usize| {
        let mut at = at % (t.len() + 1);
        while !t.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    match *e {
        TextEdit::Remove(at) => {
            let at = boundary(text, at);
            if at < text.len() {
                text.remove(at);
            }
        }
        TextEdit::Insert(at, c) => {
            let at = boundary(text, at);
            text.insert(at, c);
        }
        TextEdit::DuplicateLine(at) | TextEdit::Indent(at, _) => {
            let lines: Vec<&str> = text.split('\n').collect();
            let i = at % lines.len();
            let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            match *e {
                TextEdit::DuplicateLine(_) => out.insert(i, lines[i].to_string()),
                TextEdit::Indent(_, n) => out[i] = format!("{}{}", " ".repeat(n), lines[i]),
                _ => unreachable!(),
            }
            *text = out.join("\n");
        }
        TextEdit::Truncate(at) => {
            let at = boundary(text, at);
            text.truncate(at);
        }
    }
}

/// Reads mangled manifest text as every way the loader can: no panic, and the same text
/// always loads the same.
fn check_text(text: &str) -> Result<(), TestCaseError> {
    for name in ["x.yaml", "x.json"] {
        let a = load_str(name, text);
        let b = load_str(name, text);
        prop_assert_eq!(&a.warnings, &b.warnings);
        let (m, w) = build(&a.objects, &settings());
        let _ = Renderer::new().full(&m);
        let _ = w;
    }
    Ok(())
}

proptest! {
    #![proptest_config(PtConfig { cases: cases(192), ..PtConfig::default() })]

    #[test]
    fn bad_objects_are_warned_of_and_touch_no_other_service(g in generated()) {
        check_cluster(&g)?;
    }

    /// Manifest text mangled at random places (YAML in kubectl's style, block and flow,
    /// and JSON) never makes the loader or the build panic.
    #[test]
    fn mangled_manifest_text_never_panics(
        g in generated(),
        edits in prop::collection::vec(text_edit(), 1..8),
        form in 0u8..3,
    ) {
        let docs = g.docs(true);
        let mut text = match form {
            0 => docs.yaml(),
            1 => docs.json_stream(),
            _ => docs.json_list(),
        };
        for e in &edits {
            apply_text_edit(&mut text, e);
        }
        check_text(&text)?;
    }

    /// Any text at all.
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        check_text(&text)?;
    }
}

// ---------------------------------------------------------------------------------------
// Kernel tier
// ---------------------------------------------------------------------------------------

/// A few generated clusters, committed through the netlink backend in a throwaway
/// namespace: the good cluster, then good + bad as one update. The kernel takes both and
/// holds exactly the render.
#[test]
fn kernel_commits_generated_clusters() {
    if !common::kernel_tests_enabled("kernel_commits_generated_clusters") {
        return;
    }
    use kproxy::backend::netlink::NetlinkBackend;
    use kproxy::testutil::Netns;
    let mut runner = TestRunner::new(PtConfig {
        cases: cases(6).min(64),
        failure_persistence: None,
        ..PtConfig::default()
    });
    let ns = Netns::new("badin");
    let result = runner.run(&generated(), |g| {
        let (m_good, _, _) = load_and_build("good.json", &g.oracle_docs().json_stream());
        let (m_all, _, _) = load_and_build("all.json", &g.docs(true).json_stream());
        let mut r = Renderer::new();
        let rs_good = r.full(&m_good);
        let rs_all = r.full(&m_all);
        let out = ns.run_in(move || {
            let mut b = NetlinkBackend::new("kproxy").expect("netlink socket");
            let cleanup = diff(
                &b.dump().map_err(|e| e.to_string())?,
                &Ruleset::default(),
                &DiffOptions::default(),
            )
            .tx;
            b.apply(&cleanup).map_err(|e| format!("cleanup: {e}"))?;
            let tx = diff(&Ruleset::default(), &rs_good, &DiffOptions::default()).tx;
            b.apply(&tx).map_err(|e| format!("good: {e}"))?;
            let tx = diff(&rs_good, &rs_all, &DiffOptions::default()).tx;
            b.apply(&tx).map_err(|e| format!("good + bad: {e}"))?;
            let back = b.dump().map_err(|e| e.to_string())?;
            let rest = diff(&back, &rs_all, &DiffOptions::default()).tx;
            if !rest.is_empty() {
                return Err(format!(
                    "kernel differs from the render: {} ops",
                    rest.ops.len()
                ));
            }
            Ok::<(), String>(())
        });
        out.map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
