//! HTTP: the listener thread, routing, query parsing, discovery, object reads, paginated
//! lists, Status responses and the request log.
//!
//! Owns: mapping a request to what it names ([`Route`], [`Verb`]) and answering reads of
//! the store (`get`, `list` with continue tokens over snapshots); handing watches to
//! `watch` and Event writes to `events`.
//!
//! Must not: change objects (only `store` does; tests change them through the control
//! API) or keep per-connection state.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::events::events;
use super::faults::KillableListener;
use super::select::{parse_field_selector, parse_label_selector, Filter};
use super::store::{Obj, State};
use super::watch::start_watch;
use super::{lock, Kind, LoggedRequest, Shared, Verb};

/// The version `/version` reports.
const GIT_VERSION: &str = "v1.34.0";

/// The server thread: enters `netns` (if any), starts a runtime, binds 127.0.0.1:0,
/// reports the address (or the error) on `ready` and serves until `stop`.
pub(super) fn serve_thread(
    shared: Arc<Shared>,
    netns: Option<String>,
    ready: std::sync::mpsc::Sender<io::Result<SocketAddr>>,
    stop: oneshot::Receiver<()>,
) {
    if let Some(ns) = netns {
        let path = Path::new("/var/run/netns").join(ns);
        if let Err(e) = crate::netlink::enter_netns(&path) {
            let _ = ready.send(Err(io::Error::new(
                e.kind(),
                format!("entering {}: {e}", path.display()),
            )));
            return;
        }
    }
    // Built after setns: the runtime's threads are spawned from this one and so share its
    // namespace; the listener is bound in it either way.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kproxy-apiserver-rt")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let addr = listener.local_addr();
        let ok = addr.is_ok();
        let _ = ready.send(addr);
        if !ok {
            return;
        }
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = KillableListener {
            inner: listener,
            shared,
        };
        tokio::select! {
            _ = async { axum::serve(listener, app).await } => {}
            _ = stop => {}
        }
    });
    // Drops every connection and watch task.
    rt.shutdown_background();
}

pub(super) fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub(super) fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn json_response(code: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(super) fn status_value(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

pub(super) fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let v = status_value(code.as_u16(), reason, message);
    json_response(code, serde_json::to_vec(&v).unwrap_or_default())
}

/// A request refused with a `Status` body: code, reason, message.
pub(super) struct Failure(
    pub(super) StatusCode,
    pub(super) &'static str,
    pub(super) String,
);

impl Failure {
    pub(super) fn response(self) -> Response {
        status(self.0, self.1, &self.2)
    }
}

pub(super) fn value_response(code: StatusCode, v: &Value) -> Response {
    json_response(code, serde_json::to_vec(v).unwrap_or_default())
}

/// What a path names.
pub(super) enum Route {
    Version,
    ApiVersions,
    ApiGroups,
    Health,
    GroupVersion(&'static str),
    Resource {
        kind: Kind,
        ns: Option<String>,
        name: Option<String>,
    },
    Events {
        api_version: &'static str,
        ns: Option<String>,
        name: Option<String>,
    },
    NotFound,
}

const GROUP_VERSIONS: [&str; 4] = [
    "v1",
    "discovery.k8s.io/v1",
    "networking.k8s.io/v1",
    "events.k8s.io/v1",
];

pub(super) fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest): (&str, &[&str]) = match segs.as_slice() {
        ["version"] => return Route::Version,
        ["api"] => return Route::ApiVersions,
        ["apis"] => return Route::ApiGroups,
        ["healthz" | "livez" | "readyz"] => return Route::Health,
        ["api", "v1", rest @ ..] => ("v1", rest),
        ["apis", g, v, rest @ ..] => {
            let gv = format!("{g}/{v}");
            match GROUP_VERSIONS.iter().find(|x| **x == gv) {
                Some(x) => (x, rest),
                None => return Route::NotFound,
            }
        }
        _ => return Route::NotFound,
    };
    let (ns, plural, name) = match rest {
        [] => return Route::GroupVersion(gv),
        ["namespaces", ns, plural] => (Some(ns.to_string()), *plural, None),
        ["namespaces", ns, plural, name] => (Some(ns.to_string()), *plural, Some(name.to_string())),
        [plural] => (None, *plural, None),
        [plural, name] if *plural != "namespaces" => (None, *plural, Some(name.to_string())),
        _ => return Route::NotFound,
    };
    if plural == "events" && (gv == "v1" || gv == "events.k8s.io/v1") {
        return Route::Events {
            api_version: gv,
            ns,
            name,
        };
    }
    match Kind::from_group_version(gv, plural) {
        Some(kind) if ns.is_none() || kind.namespaced() => Route::Resource { kind, ns, name },
        _ => Route::NotFound,
    }
}

pub(super) fn is_true(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("1" | "true" | "True"))
}

/// Answers one request (after the configured latency) and logs it.
pub(super) async fn handle(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    req: Request<Body>,
) -> Response {
    let latency = Duration::from_micros(shared.latency_us.load(Ordering::SeqCst));
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let at = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let params = parse_query(&query);
    let route = route(&path);
    let (verb, resource) = classify(&route, &method, &params);

    let resp = if shared.down.load(Ordering::SeqCst) {
        status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the API server stand-in is down",
        )
    } else {
        match respond(&shared, route, verb, &path, &params, req).await {
            Ok(r) => r,
            // An Event body that could not be read is answered without a log entry.
            Err(r) => return r,
        }
    };
    lock(&shared.log).push(LoggedRequest {
        method: method.to_string(),
        path,
        query,
        params,
        verb,
        resource,
        status: resp.status().as_u16(),
        at,
    });
    resp
}

/// What a request does, and the resource it names, for the request log and dispatch.
fn classify(
    route: &Route,
    method: &Method,
    params: &BTreeMap<String, String>,
) -> (Verb, Option<String>) {
    match route {
        Route::Resource { kind, name, .. } => {
            let verb = if method != Method::GET {
                Verb::Other
            } else if is_true(params.get("watch")) {
                Verb::Watch
            } else if name.is_some() {
                Verb::Get
            } else {
                Verb::List
            };
            (verb, Some(kind.plural().to_string()))
        }
        Route::Events { name, .. } => {
            let verb = match (method, name) {
                (&Method::POST, _) => Verb::Create,
                (&Method::PATCH, _) => Verb::Patch,
                (&Method::GET, None) => Verb::List,
                (&Method::GET, Some(_)) => Verb::Get,
                _ => Verb::Other,
            };
            (verb, Some("events".to_string()))
        }
        Route::NotFound => (Verb::Other, None),
        _ => (Verb::Discovery, None),
    }
}

/// The answer to a request while the server is up; `Err` when the Event body could not be
/// read (answered, but not logged).
async fn respond(
    shared: &Arc<Shared>,
    route: Route,
    verb: Verb,
    path: &str,
    params: &BTreeMap<String, String>,
    req: Request<Body>,
) -> Result<Response, Response> {
    Ok(match route {
        Route::Version => version(),
        Route::ApiVersions => value_response(
            StatusCode::OK,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": []}),
        ),
        Route::ApiGroups => api_groups(),
        Route::Health => {
            let mut r = Response::new(Body::from("ok"));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        }
        Route::GroupVersion(gv) => group_version_resources(gv),
        Route::NotFound => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        ),
        Route::Resource { kind, ns, name } => match verb {
            Verb::Watch => start_watch(shared, kind, ns, name, params),
            Verb::Get => get_object(shared, kind, ns, name.unwrap_or_default()),
            Verb::List => list(shared, kind, ns, params),
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("the API server stand-in serves {} read-only", kind.plural()),
            ),
        },
        Route::Events {
            api_version,
            ns,
            name,
        } => {
            let body = match axum::body::to_bytes(req.into_body(), 64 << 20).await {
                Ok(b) => b,
                Err(e) => {
                    return Err(status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &e.to_string(),
                    ))
                }
            };
            events(shared, verb, api_version, ns, name, &body)
        }
    })
}

/// `/version`.
fn version() -> Response {
    value_response(
        StatusCode::OK,
        &json!({
            "major": "1", "minor": "34", "gitVersion": GIT_VERSION,
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
        }),
    )
}

/// `/apis`: every group but core, each with its one version.
fn api_groups() -> Response {
    let groups: Vec<Value> = GROUP_VERSIONS[1..]
        .iter()
        .map(|gv| {
            let (g, v) = gv.split_once('/').expect("group/version");
            let ver = json!({"groupVersion": gv, "version": v});
            json!({"name": g, "versions": [ver.clone()], "preferredVersion": ver})
        })
        .collect();
    value_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

fn group_version_resources(gv: &str) -> Response {
    let mut resources: Vec<Value> = Kind::ALL
        .into_iter()
        .filter(|k| k.api_version() == gv)
        .map(|k| {
            json!({"name": k.plural(), "singularName": k.name().to_lowercase(),
                   "namespaced": k.namespaced(), "kind": k.name(),
                   "verbs": ["get", "list", "watch"]})
        })
        .collect();
    if gv == "v1" || gv == "events.k8s.io/v1" {
        resources.push(
            json!({"name": "events", "singularName": "event", "namespaced": true,
                              "kind": "Event", "verbs": ["create", "get", "list", "patch"]}),
        );
    }
    value_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                "resources": resources}),
    )
}

pub(super) fn filter_from(
    ns: Option<String>,
    name: Option<String>,
    params: &BTreeMap<String, String>,
) -> Result<Filter, String> {
    let labels = match params.get("labelSelector") {
        Some(s) => parse_label_selector(s)?,
        None => Vec::new(),
    };
    let fields = match params.get("fieldSelector") {
        Some(s) => parse_field_selector(s)?,
        None => Vec::new(),
    };
    Ok(Filter {
        ns,
        name,
        labels,
        fields,
    })
}

fn get_object(shared: &Shared, kind: Kind, ns: Option<String>, name: String) -> Response {
    let st = shared.state();
    let key = (ns.unwrap_or_default(), name);
    match st.kinds[kind.idx()].objects.get(&key) {
        Some(o) => json_response(StatusCode::OK, o.bytes.clone()),
        None => {
            let mut v = status_value(
                404,
                "NotFound",
                &format!("{} \"{}\" not found", kind.plural(), key.1),
            );
            v["details"] = json!({"name": key.1, "kind": kind.plural(),
                                  "group": kind.api_version().rsplit_once('/').map(|x| x.0).unwrap_or("")});
            value_response(StatusCode::NOT_FOUND, &v)
        }
    }
}

/// Where a list page comes from: a fresh listing or a snapshot a continue token names.
struct ListSource {
    rv: u64,
    items: Arc<Vec<Arc<Obj>>>,
    offset: usize,
    snapshot: Option<u64>,
}

/// A collection GET: one page (`limit`) of the objects `filter` selects, with a continue
/// token over a snapshot taken at the first page.
fn list(
    shared: &Shared,
    kind: Kind,
    ns: Option<String>,
    params: &BTreeMap<String, String>,
) -> Response {
    let filter = match filter_from(ns, None, params) {
        Ok(f) => f,
        Err(m) => return status(StatusCode::BAD_REQUEST, "BadRequest", &m),
    };
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let mut st = shared.state();
    let source = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => resume_list(&st, kind, token),
        None => fresh_list(&st, kind, &filter, params),
    };
    let ListSource {
        rv,
        items,
        offset,
        snapshot,
    } = match source {
        Ok(s) => s,
        Err(f) => return f.response(),
    };
    let end = match limit {
        Some(l) => offset.saturating_add(l).min(items.len()),
        None => items.len(),
    };
    let start = offset.min(end);
    let token = continue_token(&mut st, kind, rv, &items, end, snapshot);
    drop(st);
    list_response(kind, rv, token, &items, start, end)
}

/// A list answered 410 `Expired`.
fn expired(m: &str) -> Failure {
    Failure(StatusCode::GONE, "Expired", m.to_string())
}

/// The snapshot a continue token (`kp<id>.<offset>`) names.
fn resume_list(st: &State, kind: Kind, token: &str) -> Result<ListSource, Failure> {
    let parsed = token
        .strip_prefix("kp")
        .and_then(|t| t.split_once('.'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<usize>().ok()?)));
    let Some((id, offset)) = parsed else {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "invalid continue token".to_string(),
        ));
    };
    match st.snapshots.get(&id) {
        Some(s) if s.kind == kind => Ok(ListSource {
            rv: s.rv,
            items: s.items.clone(),
            offset,
            snapshot: Some(id),
        }),
        _ => Err(expired(
            "The provided continue parameter is too old to display a consistent \
             list result. You can start a new list without the continue parameter.",
        )),
    }
}

/// The current objects `filter` selects.
fn fresh_list(
    st: &State,
    kind: Kind,
    filter: &Filter,
    params: &BTreeMap<String, String>,
) -> Result<ListSource, Failure> {
    // resourceVersion / resourceVersionMatch are tolerated: every list is served from
    // the current state, except an Exact match older than the compaction floor.
    if params.get("resourceVersionMatch").map(String::as_str) == Some("Exact") {
        if let Some(rv) = params
            .get("resourceVersion")
            .and_then(|r| r.parse::<u64>().ok())
        {
            if rv < st.floor {
                return Err(expired(&format!(
                    "too old resource version: {rv} ({})",
                    st.floor
                )));
            }
        }
    }
    let items: Vec<Arc<Obj>> = st.kinds[kind.idx()]
        .objects
        .values()
        .filter(|o| filter.matches(o))
        .cloned()
        .collect();
    Ok(ListSource {
        rv: st.rv,
        items: Arc::new(items),
        offset: 0,
        snapshot: None,
    })
}

/// The continue token when items remain after `end` (snapshotting a first page); a
/// finished snapshot is forgotten.
fn continue_token(
    st: &mut State,
    kind: Kind,
    rv: u64,
    items: &Arc<Vec<Arc<Obj>>>,
    end: usize,
    snapshot: Option<u64>,
) -> Option<String> {
    if end < items.len() {
        let id = match snapshot {
            Some(id) => id,
            None => st.save_snapshot(kind, rv, items.clone()),
        };
        Some(format!("kp{id}.{end}"))
    } else {
        if let Some(id) = snapshot {
            st.snapshots.remove(&id);
        }
        None
    }
}

/// The `<Kind>List` body: metadata, then the page's stored bytes concatenated.
fn list_response(
    kind: Kind,
    rv: u64,
    token: Option<String>,
    items: &[Arc<Obj>],
    start: usize,
    end: usize,
) -> Response {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(t) = token {
        meta["continue"] = Value::String(t);
        meta["remainingItemCount"] = Value::from((items.len() - end) as u64);
    }
    let page = &items[start..end];
    let mut out = Vec::with_capacity(page.iter().map(|o| o.bytes.len() + 1).sum::<usize>() + 256);
    out.extend_from_slice(
        format!(
            r#"{{"kind":"{}List","apiVersion":"{}","metadata":{},"items":["#,
            kind.name(),
            kind.api_version(),
            meta
        )
        .as_bytes(),
    );
    for (i, o) in page.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&o.bytes);
    }
    out.extend_from_slice(b"]}");
    json_response(StatusCode::OK, out)
}
