//! The informer cache and the Event recorder against a plain-HTTP API server stand-in
//! (axum, loopback only), and the cache's memory per object.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use k8s_openapi::api::core::v1::{LoadBalancerStatus, ObjectReference, Service, ServiceStatus};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    FieldsV1, ManagedFieldsEntry, OwnerReference,
};
use kproxy::health::ProxyHealth;
use kproxy::k8s::cache::{Cache, Update, PROXY_LABEL_SELECTOR};
use kproxy::k8s::events::EventRecorder;
use kproxy::metrics::Metrics;
use kproxy::model::{ServiceKey, Warning};
use kproxy::sync::{Source, Trigger, WarningSink};
use kproxy::testutil::fixtures as fx;
use kproxy::testutil::Counting;
use kube::runtime::watcher::Event;
use serde_json::{json, Value};
use tokio::sync::broadcast;

// ---------------------------------------------------------------------------------------
// Allocation counting (per thread, so parallel tests do not disturb each other)
// ---------------------------------------------------------------------------------------

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    Counting::thread_live()
}

// ---------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------

/// A `managedFields` entry as the API server writes it.
fn managed(manager: &str, operation: &str, api_version: &str, fields: Value) -> ManagedFieldsEntry {
    ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some(operation.into()),
        api_version: Some(api_version.into()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(FieldsV1(fields)),
        ..ManagedFieldsEntry::default()
    }
}

/// A realistic Service (what kubectl apply leaves: labels, last-applied, managed fields),
/// as the API server serves it.
fn svc(name: &str, ip: &str, rv: u32) -> Value {
    let s = fx::svc("ns", name)
        .uid(&format!("uid-{name}"))
        .resource_version(&rv.to_string())
        .labels(&[("app", name), ("app.kubernetes.io/part-of", "bench")])
        .annotation(
            "kubectl.kubernetes.io/last-applied-configuration",
            "{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{}}",
        )
        .with(|s| {
            s.metadata.creation_timestamp = Some(fx::time("2024-01-01T00:00:00Z"));
            let fields = json!({"f:spec": {"f:ports": {}, "f:selector": {}}});
            s.metadata.managed_fields = Some(vec![managed("kubectl", "Apply", "v1", fields)]);
            s.status = Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus::default()),
                ..ServiceStatus::default()
            });
        })
        .type_("ClusterIP")
        .cluster_ip(ip)
        .cluster_ips(&[ip])
        .ip_families(&["IPv4"])
        .ip_family_policy("SingleStack")
        .itp("Cluster")
        .session_affinity("None")
        .selector(&[("app", name)])
        .port("http", 80, "TCP")
        .target_port(8080);
    serde_json::to_value(s.build()).expect("service JSON")
}

/// A realistic EndpointSlice (as the EndpointSlice controller writes it) with `endpoints`
/// ready pods, as the API server serves it.
fn slice(name: &str, service: &str, endpoints: usize, rv: u32) -> Value {
    let eps = (0..endpoints).map(|i| {
        fx::ep(&format!(
            "10.{}.{}.{}",
            i % 200,
            (i / 200) % 250,
            1 + i % 250
        ))
        .ready(true)
        .serving(true)
        .terminating(false)
        .node(&format!("node-{}", i % 50))
        .zone("zone-a")
        .with(|e| {
            e.target_ref = Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some("ns".into()),
                name: Some(format!("{service}-7d9f8c6b5-{i:05}")),
                uid: Some(format!("0f0e0d0c-0b0a-0908-0706-{i:012}")),
                ..ObjectReference::default()
            })
        })
    });
    let s = fx::slice("ns", name, service)
        .uid(&format!("uid-{name}"))
        .resource_version(&rv.to_string())
        .labels(&[
            (
                "endpointslice.kubernetes.io/managed-by",
                "endpointslice-controller.k8s.io",
            ),
            ("app", service),
        ])
        .annotation(
            "endpoints.kubernetes.io/last-change-trigger-time",
            "2024-01-01T00:00:00Z",
        )
        .with(|s| {
            let m = &mut s.metadata;
            m.generation = Some(1);
            m.generate_name = Some(format!("{service}-"));
            m.owner_references = Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: service.into(),
                uid: format!("uid-{service}"),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]);
            let fields = json!({"f:endpoints": {}, "f:ports": {}});
            let entry = managed(
                "kube-controller-manager",
                "Update",
                "discovery.k8s.io/v1",
                fields,
            );
            m.managed_fields = Some(vec![entry]);
        })
        .port("http", 8080, "TCP")
        .endpoints(eps);
    serde_json::to_value(s.build()).expect("slice JSON")
}

fn node() -> Value {
    let n = fx::node("node-a")
        .uid("uid-node-a")
        .resource_version("1")
        .internal_ip("192.168.0.10");
    serde_json::to_value(n.build()).expect("node JSON")
}

// ---------------------------------------------------------------------------------------
// API server stand-in
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Api {
    /// Resource path → objects by name.
    lists: HashMap<&'static str, Vec<Value>>,
    rv: u64,
    /// Query strings of list and watch requests, by resource.
    queries: Vec<(String, HashMap<String, String>)>,
    watches: HashMap<String, usize>,
    events: Vec<Value>,
}

#[derive(Clone)]
struct Mock {
    api: Arc<Mutex<Api>>,
    /// Watch lines, by resource.
    tx: Arc<HashMap<&'static str, broadcast::Sender<String>>>,
}

impl Mock {
    fn new() -> Mock {
        let tx = ["services", "endpointslices", "nodes"]
            .into_iter()
            .map(|r| (r, broadcast::channel(64).0))
            .collect();
        Mock {
            api: Arc::new(Mutex::new(Api::default())),
            tx: Arc::new(tx),
        }
    }

    fn set(&self, resource: &'static str, objects: Vec<Value>) {
        let mut api = self.api.lock().unwrap();
        api.rv += 1;
        api.lists.insert(resource, objects);
    }

    fn send(&self, resource: &str, line: Value) {
        self.tx[resource].send(line.to_string()).unwrap();
    }

    fn watches(&self, resource: &str) -> usize {
        *self.api.lock().unwrap().watches.get(resource).unwrap_or(&0)
    }
}

async fn resource(State(mock): State<Mock>, uri: Uri) -> Response {
    let q = query(&uri);
    let name = uri
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let resource: &'static str = match name.as_str() {
        "services" => "services",
        "endpointslices" => "endpointslices",
        "nodes" => "nodes",
        _ => {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "the server could not find the requested resource",
                "reason": "NotFound", "code": 404});
            return (StatusCode::NOT_FOUND, Json(status)).into_response();
        }
    };
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let mut api = mock.api.lock().unwrap();
    api.queries.push((resource.to_string(), q));
    if watch {
        *api.watches.entry(resource.to_string()).or_default() += 1;
        let rx = mock.tx[resource].subscribe();
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(line) => Some((Ok::<_, Infallible>(Bytes::from(line + "\n")), rx)),
                Err(_) => None,
            }
        });
        return Body::from_stream(stream).into_response();
    }
    let items = api.lists.get(resource).cloned().unwrap_or_default();
    Json(json!({"apiVersion": "v1", "kind": "List",
        "metadata": {"resourceVersion": api.rv.to_string()}, "items": items}))
    .into_response()
}

/// The query string, form-decoded.
fn query(uri: &Uri) -> HashMap<String, String> {
    let decode = |s: &str| {
        let b = s.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn create_event(
    State(mock): State<Mock>,
    Path(_ns): Path<String>,
    Json(ev): Json<Value>,
) -> Response {
    mock.api.lock().unwrap().events.push(ev.clone());
    (StatusCode::CREATED, Json(ev)).into_response()
}

async fn serve(mock: Mock) -> String {
    let app = Router::new()
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events",
            post(create_event),
        )
        .route("/api/v1/{*path}", get(resource))
        .route("/apis/{*path}", get(resource))
        .with_state(mock);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn keys(names: &[&str]) -> BTreeSet<ServiceKey> {
    names.iter().map(|n| ServiceKey::new("ns", *n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_a_plain_http_api_server() {
    let mock = Mock::new();
    mock.set("services", vec![svc("a", "10.96.0.1", 1)]);
    mock.set("endpointslices", vec![slice("a-1", "a", 2, 2)]);
    mock.set("nodes", vec![node()]);
    let url = serve(mock.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: k, cluster: {{server: '{url}'}}}}]\n\
             users: [{{name: u, user: {{}}}}]\n\
             contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n"
        ),
    )
    .unwrap();
    let client = kproxy::k8s::client::client(Some(&kubeconfig))
        .await
        .unwrap();

    let metrics = Arc::new(Metrics::new());
    let trigger = Trigger::new(
        Arc::new(ProxyHealth::new(Duration::from_secs(60))),
        metrics.clone(),
    );
    let (cache, watchers) = Cache::start(client.clone(), "node-a", trigger, metrics.clone());

    // Synced without ServiceCIDRs (404 here).
    eventually("sync", || cache.synced()).await;
    eventually("node", || !cache.objects(None).nodes.is_empty()).await;
    let changes = cache.take_changes();
    assert_eq!(changes.services, keys(&["a"]));
    let o = cache.objects(None);
    assert_eq!((o.services.len(), o.slices.len()), (1, 1));
    {
        let api = mock.api.lock().unwrap();
        for (res, q) in &api.queries {
            match res.as_str() {
                "services" | "endpointslices" => {
                    assert_eq!(
                        q.get("labelSelector").map(String::as_str),
                        Some(PROXY_LABEL_SELECTOR)
                    )
                }
                "nodes" => assert_eq!(
                    q.get("fieldSelector").map(String::as_str),
                    Some("metadata.name=node-a")
                ),
                _ => {}
            }
        }
    }

    // A watch event.
    eventually("slice watch", || mock.watches("endpointslices") >= 1).await;
    mock.send(
        "endpointslices",
        json!({"type": "MODIFIED", "object": slice("a-1", "a", 3, 10)}),
    );
    eventually("slice change", || {
        cache.objects(None).slices[0]
            .endpoints
            .as_ref()
            .unwrap()
            .len()
            == 3
    })
    .await;
    assert_eq!(cache.take_changes().services, keys(&["a"]));

    // 410 Gone: the watcher relists; a is gone from the new list, b is new.
    eventually("service watch", || mock.watches("services") >= 1).await;
    mock.set("services", vec![svc("b", "10.96.0.2", 11)]);
    mock.send(
        "services",
        json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
            "status": "Failure", "reason": "Expired", "code": 410,
            "message": "too old resource version"}}),
    );
    eventually("relist", || {
        cache
            .objects(None)
            .services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect::<Vec<_>>()
            == ["b"]
    })
    .await;
    eventually("relist changes", || {
        let c = cache.take_changes();
        c.services == keys(&["a", "b"])
    })
    .await;

    // An Event for b, with its uid from the cache.
    let (recorder, _task) = EventRecorder::start(client, "node-a", Some(cache.clone()));
    recorder.warn(&Warning {
        object: "Service ns/b".into(),
        reason: "spec.ports[0].port 0 is outside 1..65535; port ignored".into(),
    });
    recorder.warn(&Warning {
        object: "Service ns/b".into(),
        reason: "spec.ports[0].port 0 is outside 1..65535; port ignored".into(),
    });
    eventually("event", || !mock.api.lock().unwrap().events.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let events = mock.api.lock().unwrap().events.clone();
    assert_eq!(events.len(), 1, "the duplicate is suppressed");
    assert_eq!(events[0]["regarding"]["uid"], "uid-b");
    assert_eq!(events[0]["reportingController"], "kproxy");
    assert_eq!(events[0]["type"], "Warning");

    // Stopping the watchers keeps the contents.
    drop(watchers);
    assert_eq!(cache.objects(None).services.len(), 1);
}

/// Bytes the cache keeps per Service and per 10-endpoint EndpointSlice (realistic objects
/// with managed fields, annotations and target refs), and what `objects(None)` allocates.
#[test]
fn memory_per_object() {
    const N: usize = 2000;
    let metrics = Arc::new(Metrics::new());
    let trigger = Trigger::new(
        Arc::new(ProxyHealth::new(Duration::from_secs(60))),
        metrics.clone(),
    );
    let cache = Cache::new("node-a", trigger, metrics);
    cache.apply(Update::Service(Event::Init));
    cache.apply(Update::Service(Event::InitDone));
    cache.apply(Update::Slice(Event::Init));
    cache.apply(Update::Slice(Event::InitDone));

    // Objects are made inside the loops: what they allocate and free nets out, what the
    // cache keeps remains.
    let base = live();
    for i in 0..N {
        let s: Service = serde_json::from_value(svc(
            &format!("svc-{i}"),
            &format!("10.96.{}.{}", i / 250, i % 250),
            1,
        ))
        .unwrap();
        cache.apply(Update::Service(Event::Apply(s)));
    }
    let per_service = (live() - base) / N as isize;
    let base = live();
    for i in 0..N {
        let s: EndpointSlice =
            serde_json::from_value(slice(&format!("svc-{i}-abcde"), &format!("svc-{i}"), 10, 1))
                .unwrap();
        cache.apply(Update::Slice(Event::Apply(s)));
    }
    let per_slice = (live() - base) / N as isize;
    cache.take_changes();
    let base = live();
    let objects = cache.objects(None);
    let per_materialized = (live() - base) / N as isize;
    drop(objects);
    println!(
        "cache: {per_service} B per Service, {per_slice} B per 10-endpoint EndpointSlice; \
         objects(None): {per_materialized} B per Service + slice (transient)"
    );
    assert!(per_service < 1024, "{per_service} B per Service");
    assert!(per_slice < 2048, "{per_slice} B per slice");
}
